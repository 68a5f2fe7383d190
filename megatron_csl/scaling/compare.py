"""``--compare-laws``: several laws fitted to the same runs, side by side.

Per law: its parameter count, RMSE of log loss in sample, the leave-one-size-out RMSE (each size's
runs predicted by the law fitted without them; ``loso.py``) and the AIC of a Gaussian likelihood on
log loss, ``n log(RSS / n) + 2 k``. A lower AIC (differences above ~2 matter) and a lower
out-of-sample error say which law the data support; a law that wins only in sample overfits.
"""
from __future__ import annotations

import math

import numpy as np

from .fitting import FitOptions, fit_runs
from .formats import law_inputs
from .laws import LAW_NAMES
from .loso import leave_one_size_out, loso_rmse


def parse_law_list(text: str) -> list[str]:
    """``compression,capacity,precision`` -> names, each checked; at least two, no repeats."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in LAW_NAMES]
    if bad:
        raise ValueError(f"--compare-laws: unknown law {bad[0]!r}; valid: {', '.join(LAW_NAMES)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"--compare-laws takes two or more different laws separated by commas, "
                         f"e.g. compression,capacity,precision; got {text!r}")
    return names


def aic(resid: np.ndarray, n_params: int) -> float:
    n = len(resid)
    rss = max(float(np.sum(resid ** 2)), 1e-300)
    return n * math.log(rss / n) + 2 * n_params


def law_row(result, options: FitOptions, loso=None) -> dict:
    """``loso``: this fit's leave_one_size_out, when the caller already has it."""
    problem = result.problem
    resid = problem.y - problem.predict_log(result.theta)
    if loso is None:
        loso = leave_one_size_out(result, options)
    return {"law": result.law, "form": result.form, "params": problem.layout.n,
            "rmse_log": result.rmse_log, "loso_rmse_log": loso_rmse(loso),
            "aic": aic(resid, problem.layout.n), "epm": dict(result.epm)}


def compare_laws(names, runs, options: FitOptions, workers: int = 1, progress: bool = False,
                 fitted: dict | None = None, loso: dict | None = None) -> list[dict]:
    """One row per law (``fitted``: {law: FitResult} already available, ``loso``: {law: its
    leave_one_size_out} already computed), with ``delta_aic`` to the best."""
    fitted, loso = fitted or {}, loso or {}
    rows = []
    for name in names:
        result = fitted.get(name) or fit_runs(name, runs, options=options, workers=workers,
                                              progress=progress,
                                              **law_inputs(name, runs.format_names()))
        rows.append(law_row(result, options, loso.get(name)))
    best = min(r["aic"] for r in rows)
    for r in rows:
        r["delta_aic"] = r["aic"] - best
    return rows


def format_comparison(rows) -> str:
    header = ["law", "form", "params", "RMSE(log)", "leave-one-size-out RMSE(log)", "AIC", "dAIC"]
    table = [[r["law"], r["form"], str(r["params"]), f"{r['rmse_log']:.4g}",
              "-" if r["loso_rmse_log"] is None else f"{r['loso_rmse_log']:.4g}",
              f"{r['aic']:.2f}", f"{r['delta_aic']:.2f}"] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    lines = ["", "law comparison (same runs; lower AIC and out-of-sample error = better supported):",
             "  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(t, widths)) for t in table]
    return "\n".join(lines) + "\n"
