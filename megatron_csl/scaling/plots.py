"""PNG plots of a fit (matplotlib, Agg backend): loss vs N, EPMs, Pareto frontiers."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from .fitting import FitResult, epm_names  # noqa: E402
from .formats import COST_MODES, format_info  # noqa: E402
from .outputs import save_figure  # noqa: E402
from .pareto import optimal_loss, pareto_front, run_costs  # noqa: E402
from .predict import law_loss  # noqa: E402

PLOT_FILES = ("loss_vs_N.png", "epm.png", "pareto.png")


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", ":", "-.")


def format_styles(formats) -> dict:
    """A (colour, marker, line style) per format: tab10's ten colours, then the next marker and line
    style for each further ten, so 80 formats stay distinct (colours alone repeat after ten)."""
    cmap = plt.get_cmap("tab10")
    return {f: {"color": cmap(i % 10), "marker": MARKERS[(i // 10) % len(MARKERS)],
                "linestyle": LINESTYLES[(i // 10) % len(LINESTYLES)]}
            for i, f in enumerate(formats)}


# Mantissas of round tick values per decade, from sparse to dense (axes spanning a decade or more).
_NICE_MANTISSAS = ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 7))


def nice_log_ticks(lo: float, hi: float, max_ticks: int) -> list[float]:
    """Round values in [lo, hi] for a log axis, at most `max_ticks` of them: the densest set of
    round mantissas per decade for a range of a decade or more, evenly spaced round values (as a
    linear axis has) for a narrower one, such as a validation loss between 2.4 and 3.1."""
    if hi / lo < 10:
        locator = MaxNLocator(nbins=max(2, max_ticks - 1), steps=[1, 2, 2.5, 5, 10])
        return [float(t) for t in locator.tick_values(lo, hi) if lo <= t <= hi]
    first, last = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    best: list[float] = []
    for mantissas in _NICE_MANTISSAS:
        ticks = [float(f"{m * 10.0 ** k:.6g}") for k in range(first, last + 1) for m in mantissas]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) > max_ticks:
            break
        best = ticks
    if not best:  # more decades than max_ticks: every few decades
        step = int(np.ceil((last - first + 1) / max_ticks))
        best = [10.0 ** k for k in range(first, last + 1, step) if lo <= 10.0 ** k <= hi]
    return best


def plain_number(value: float, _pos=None) -> str:
    """Tick text: plain decimals (2.5, 3, 1200) where they are short, m·10^k beyond (no "5.04×10⁰")."""
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e4:
        return f"{value:.4g}"
    exponent = int(np.floor(np.log10(abs(value))))
    mantissa = float(f"{value / 10.0 ** exponent:.3g}")
    if mantissa == 10:
        mantissa, exponent = 1.0, exponent + 1
    power = f"$10^{{{exponent}}}$"
    return power if mantissa == 1 else f"{mantissa:g}·{power}"


def readable_log_axis(axis, max_ticks: int) -> None:
    """Label a log axis at round values in plain numbers; minor ticks stay, unlabelled."""
    lo, hi = sorted(axis.get_view_interval())
    axis.set_major_locator(FixedLocator(nice_log_ticks(lo, hi, max_ticks)))
    axis.set_major_formatter(FuncFormatter(plain_number))
    axis.set_minor_formatter(NullFormatter())


def _legend_handles(styles, labels) -> list:
    return [Line2D([], [], label=labels[f], **style) for f, style in styles.items()]


def plot_loss_vs_n(result: FitResult, path):
    fig = loss_vs_n_figure(result)
    save_figure(fig, path)
    plt.close(fig)


def loss_vs_n_figure(result: FitResult):
    """Runs per format with the fitted curve at the format's median tokens-per-parameter ratio."""
    runs = result.problem.runs
    formats = epm_names(result)
    styles = format_styles(formats)
    labels = {}
    fig, ax = plt.subplots(figsize=(7 + (2.5 if len(formats) > 6 else 0), 5), layout="constrained")
    for f in formats:
        m = runs.formats == f
        style = styles[f]
        ax.scatter(runs.N[m], runs.loss[m], s=18, color=style["color"], marker=style["marker"], alpha=0.8)
        ratio = float(np.median(runs.D[m] / runs.N[m]))
        n_grid = np.geomspace(runs.N[m].min() / 1.5, runs.N[m].max() * 1.5, 100)
        curve = law_loss(result, n_grid, ratio * n_grid, result.epm[f])
        ax.plot(n_grid, curve, color=style["color"], linestyle=style["linestyle"])
        labels[f] = f"{f} (EPM {result.epm[f]:.3g}, D/N {ratio:.3g})"
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("N (non-embedding parameters)")
    ax.set_ylabel("validation loss")
    ax.set_title(f"{result.law} law, {result.form} form: fit at each format's median D/N")
    readable_log_axis(ax.xaxis, max_ticks=7)
    readable_log_axis(ax.yaxis, max_ticks=8)
    if len(formats) > 6:  # beside the plot, where it hides no run
        ax.legend(handles=_legend_handles(styles, labels), fontsize=7, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    else:
        ax.legend(handles=_legend_handles(styles, labels), fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    return fig


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
    fig = pareto_figure(result, info)
    save_figure(fig, path)
    plt.close(fig)


def pareto_figure(result: FitResult, info=format_info):
    """Loss vs training cost, linear and quadratic speedup counting (one panel each)."""
    runs = result.problem.runs
    formats = epm_names(result)
    styles = format_styles(formats)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True, layout="constrained")
    for ax, mode in zip(axes, COST_MODES):
        factors = np.array([info(f).cost_factor(mode) for f in runs.formats])
        cost = run_costs(runs.N, runs.D, factors)
        for f in formats:
            m = runs.formats == f
            style = styles[f]
            ax.scatter(cost[m], runs.loss[m], s=14, color=style["color"], marker=style["marker"], alpha=0.6)
            grid = np.geomspace(cost.min() / 2, cost.max() * 2, 100)
            curve = optimal_loss(result, result.epm[f], info(f).cost_factor(mode), grid)
            if np.all(np.isfinite(curve)):
                ax.plot(grid, curve, color=style["color"], linestyle=style["linestyle"], lw=1)
        front = pareto_front(cost, runs.loss)
        ax.step(cost[front], runs.loss[front], where="post", color="black", lw=1.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"training cost, bf16-equivalent FLOPs ({mode} speedup counting)")
        ax.set_title({"linear": "linear: b-bit costs max(bw,ba)/16",
                      "quadratic": "quadratic: bw*ba/256"}[mode] + ", sparsity (1-s)")
        readable_log_axis(ax.xaxis, max_ticks=6)
        ax.grid(True, which="major", alpha=0.3)
    readable_log_axis(axes[0].yaxis, max_ticks=8)
    axes[0].set_ylabel("validation loss")
    handles = _legend_handles(styles, {f: f for f in formats})
    handles.append(Line2D([], [], color="black", lw=1.5, label="Pareto frontier (runs)"))
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)
    fig.suptitle("lines: the fit's compute-optimal loss per format")
    return fig


def write_plots(result: FitResult, report: dict, out_dir) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in PLOT_FILES]
    plot_loss_vs_n(result, paths[0])
    plot_epm(report, paths[1])
    plot_pareto(result, paths[2])
    return paths
