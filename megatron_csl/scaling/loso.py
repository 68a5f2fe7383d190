"""Leave-one-size-out refits: how much each model size moves the fit, and how well the law
predicts a size it has not seen.

For every distinct model size N, the law is refitted (same law, same full/reduced form) on the runs
at the other sizes, warm-started from the full fit's best optima. Each
refit gives the EPMs without that size (``diagnostics.py`` flags a size that moves an EPM by more
than its bootstrap interval) and the log-loss residuals of the left-out runs (the out-of-sample
error of ``--compare-laws``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bootstrap import warm_starts
from .fitting import FitOptions, FitResult
from .parallel import best_of, single_threaded_blas
from .problem import FitProblem

# Each refit starts from the full fit's optimum and its competitive other optima (as a bootstrap
# resample does): dropping one size moves the optimum a little, not to another basin.
EXTRA_STARTS = 2


@dataclass
class LosoFit:
    N: float                       # the size left out (the median size of a group of sizes)
    epm: dict                      # format -> EPM fitted without that size
    formats_present: frozenset     # formats that still have runs (the others' EPM means nothing)
    heldout_resid: np.ndarray      # log(observed) - log(predicted) of the left-out runs
    heldout_formats: np.ndarray    # their formats


# A sweep has a handful of sizes; tables of runs at scattered sizes (every run its own N) are
# left out in at most this many groups of neighbouring sizes, so the check costs at most this
# many refits.
MAX_GROUPS = 20


def size_labels(N: np.ndarray, max_groups: int = MAX_GROUPS) -> np.ndarray:
    """One label per run: its size (sizes equal to 9 significant digits count as one), or, with
    more than ``max_groups`` sizes, its group of neighbouring sizes (equal counts of sizes)."""
    _, index = np.unique(np.round(np.log(N), 9), return_inverse=True)
    index = index.reshape(-1)
    n_sizes = int(index.max()) + 1 if len(index) else 0
    if n_sizes <= max_groups:
        return index
    return index * max_groups // n_sizes


def leave_one_size_out(result: FitResult, options: FitOptions | None = None) -> list[LosoFit]:
    """One refit per model size, skipping sizes whose removal leaves fewer than two sizes."""
    options = options or FitOptions()
    full = result.problem
    runs = full.runs
    labels = size_labels(runs.N)
    sizes = np.unique(labels)
    if len(sizes) < 3:
        return []
    starts = np.array(warm_starts(result, EXTRA_STARTS))
    out = []
    for size in sizes:
        keep = labels != size
        sub = runs.subset(keep)
        problem = FitProblem(full.law, sub, full.layout.has_data_term)
        with single_threaded_blas():
            value, theta, _ = best_of(problem, starts, options, None)
        held = ~keep
        pred = full.predict_log(theta, full.log_n[held], full.log_d[held], full.fmt[held])
        out.append(LosoFit(
            N=_median_size(runs.N[held]),
            epm=full.law.epm(theta[full.layout.n_base:]),
            formats_present=frozenset(sub.formats.tolist()),
            heldout_resid=full.y[held] - pred,
            heldout_formats=runs.formats[held],
        ))
    return out


def _median_size(N: np.ndarray) -> float:
    return float(N[0]) if np.ptp(N) == 0 else float(np.exp(np.median(np.log(N))))


def loso_rmse(fits: list[LosoFit]) -> float | None:
    """RMSE of log loss over every left-out run (None without refits)."""
    if not fits:
        return None
    resid = np.concatenate([f.heldout_resid for f in fits])
    return float(np.sqrt(np.mean(resid ** 2)))
