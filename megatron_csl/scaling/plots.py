"""PNG plots of a fit (matplotlib, Agg backend): loss vs N, EPMs, Pareto frontiers."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .fitting import FitResult, epm_names  # noqa: E402
from .formats import COST_MODES, format_info  # noqa: E402
from .outputs import save_figure  # noqa: E402
from .pareto import optimal_loss, pareto_front, run_costs  # noqa: E402
from .predict import law_loss  # noqa: E402

PLOT_FILES = ("loss_vs_N.png", "epm.png", "pareto.png")


def _colors(formats):
    cmap = plt.get_cmap("tab10")
    return {f: cmap(i % 10) for i, f in enumerate(formats)}


def plot_loss_vs_n(result: FitResult, path):
    """Runs per format with the fitted curve at the format's median tokens-per-parameter ratio."""
    runs = result.problem.runs
    formats = epm_names(result)
    colors = _colors(formats)
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    for f in formats:
        m = runs.formats == f
        ax.scatter(runs.N[m], runs.loss[m], s=18, color=colors[f], alpha=0.8)
        ratio = float(np.median(runs.D[m] / runs.N[m]))
        n_grid = np.geomspace(runs.N[m].min() / 1.5, runs.N[m].max() * 1.5, 100)
        curve = law_loss(result, n_grid, ratio * n_grid, result.epm[f])
        ax.plot(n_grid, curve, color=colors[f], label=f"{f} (EPM {result.epm[f]:.3g}, D/N {ratio:.3g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (non-embedding parameters)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{result.law} law, {result.form} form: fit at each format's median D/N")
    ax.legend(fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)


def plot_epm(report: dict, path):
    rows = report["formats"]
    names = [r["spec"] for r in rows]
    values = np.array([r["epm"]["value"] for r in rows])
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(rows) + 2), 4), layout="constrained")
    x = np.arange(len(rows))
    ax.bar(x, values, color="#4c72b0", alpha=0.8)
    if report["bootstrap"]:
        lo = np.array([r["epm"]["lo"] for r in rows])
        hi = np.array([r["epm"]["hi"] for r in rows])
        ax.errorbar(x, values, yerr=[values - lo, hi - values], fmt="none", ecolor="black", capsize=4,
                    label=f"{100 * report['bootstrap']['level']:g}% bootstrap interval")
        ax.legend(fontsize=8)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("effective parameter multiplier")
    ax.set_title(f"EPM per format ({report['law']} law)")
    save_figure(fig, path)
    plt.close(fig)


def plot_pareto(result: FitResult, path, info=format_info):
    """Loss vs training cost, linear and quadratic speedup counting (one panel each)."""
    runs = result.problem.runs
    formats = epm_names(result)
    colors = _colors(formats)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True, layout="constrained")
    for ax, mode in zip(axes, COST_MODES):
        factors = np.array([info(f).cost_factor(mode) for f in runs.formats])
        cost = run_costs(runs.N, runs.D, factors)
        for f in formats:
            m = runs.formats == f
            ax.scatter(cost[m], runs.loss[m], s=14, color=colors[f], alpha=0.6, label=f)
            grid = np.geomspace(cost.min() / 2, cost.max() * 2, 100)
            curve = optimal_loss(result, result.epm[f], info(f).cost_factor(mode), grid)
            if np.all(np.isfinite(curve)):
                ax.plot(grid, curve, color=colors[f], lw=1)
        front = pareto_front(cost, runs.loss)
        ax.step(cost[front], runs.loss[front], where="post", color="black", lw=1.5,
                label="Pareto frontier (runs)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"training cost, bf16-equivalent FLOPs ({mode} speedup counting)")
        ax.set_title({"linear": "linear: b-bit costs max(bw,ba)/16",
                      "quadratic": "quadratic: bw*ba/256"}[mode] + ", sparsity (1-s)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("validation loss")
    axes[0].legend(fontsize=8)
    fig.suptitle("lines: the fit's compute-optimal loss per format")
    save_figure(fig, path)
    plt.close(fig)


def write_plots(result: FitResult, report: dict, out_dir) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in PLOT_FILES]
    plot_loss_vs_n(result, paths[0])
    plot_epm(report, paths[1])
    plot_pareto(result, paths[2])
    return paths
