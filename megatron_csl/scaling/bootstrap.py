"""Bootstrap over runs: percentile intervals for every parameter and every EPM.

Two resampling units:

- ``run`` (default): stratified by format: each resample draws, within every format, as many runs as
  the format has, with replacement. A plain resample over all runs would now and then leave a
  format with no runs at all, and its EPM would then stay wherever the optimiser started.
- ``size``: paired by model size: each resample draws whole (N, D) points of the sweep with
  replacement and takes every format's run at each drawn point. A sweep trains every format at the
  same sizes, and an EPM is a comparison at equal size; the paired bootstrap keeps that pairing,
  so a size that trained unusually well or badly moves all formats together instead of being
  compared against another format's different sizes. Use it when every format shares the sizes
  (the shipped sweeps do); it is the cluster bootstrap of a paired design.

A resample is a re-weighting of the runs (weight = how often a run was drawn), so the problem's
arrays are never copied. Every resample is fitted with L-BFGS-B warm-started from the full-data
optimum and from the next ``extra_starts`` distinct local optima the full fit found (the full
4,500-start grid per resample would cost 1000x the fit); the best optimum is kept. Resample
weights are drawn up front from one seeded generator, so results do not depend on the number of
worker processes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fitting import FitOptions, FitResult, reported_params
from .parallel import FitPool

# Other local optima of the full fit are tried on each resample only if their objective is within
# this factor of the best: resampling moves the objective by a few percent, not by multiples.
COMPETITIVE = 1.25


@dataclass
class Interval:
    value: float
    lo: float
    hi: float

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi}


@dataclass
class BootstrapResult:
    n_resamples: int
    seed: int
    level: float
    thetas: np.ndarray               # [B, n_params] in fitted space
    params: dict                     # name -> Interval (value = full-data fit)
    epm: dict                        # format -> Interval
    extra_starts: int
    unit: str = "run"                # "run" (stratified by format) or "size" (paired)
    n_failed: int = 0                # resamples whose best L-BFGS-B run did not converge


def resample_weights(fmt: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[n_resamples, n_runs] multiplicities of a bootstrap stratified by format index ``fmt``."""
    n = len(fmt)
    weights = np.zeros((n_resamples, n))
    rows = np.arange(n_resamples)[:, None]
    for k in np.unique(fmt):
        members = np.flatnonzero(fmt == k)
        draws = rng.integers(0, len(members), size=(n_resamples, len(members)))
        np.add.at(weights, (rows, members[draws]), 1.0)
    return weights


def resample_weights_paired(group: np.ndarray, n_resamples: int,
                            rng: np.random.Generator) -> np.ndarray:
    """[n_resamples, n_runs] multiplicities of a bootstrap over groups (cluster bootstrap): each
    resample draws as many groups as there are, with replacement, and every run of a drawn group
    counts once per draw."""
    labels, index = np.unique(group, return_inverse=True)
    draws = rng.integers(0, len(labels), size=(n_resamples, len(labels)))
    counts = np.zeros((n_resamples, len(labels)))
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1.0)
    return counts[:, index]


def size_groups(problem) -> np.ndarray:
    """One label per run: its (N, D) point, the unit of the paired bootstrap."""
    keys = np.round(np.stack([problem.log_n, problem.log_d], axis=1), 9)
    _, labels = np.unique(keys, axis=0, return_inverse=True)
    return labels.reshape(-1)


BOOTSTRAP_UNITS = ("run", "size")


def warm_starts(result: FitResult, extra_starts: int, competitive: float = COMPETITIVE):
    """The full-data optimum plus up to ``extra_starts`` other local optima of the full fit whose
    objective is within ``competitive`` times the best (a worse one never wins a resample).

    Optima within 1e-6 (relative) of the best objective are the same basin reached with slightly
    different parameters along a flat direction, not alternatives worth a second start.
    """
    best = result.optima_objective[0]
    others = [t for v, t in zip(result.optima_objective[1:], result.optima[1:])
              if best * (1 + 1e-6) < v <= competitive * best]
    return [result.optima[0]] + others[: max(0, extra_starts)]


def percentile_interval(samples: np.ndarray, value: float, level: float) -> Interval:
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return Interval(float(value), float(lo), float(hi))


def bootstrap_fit(result: FitResult, n_resamples: int = 1000, seed: int = 0, *,
                  workers: int = 1, extra_starts: int = 2, level: float = 0.95,
                  options: FitOptions | None = None, progress: bool = False,
                  unit: str = "run") -> BootstrapResult:
    if unit not in BOOTSTRAP_UNITS:
        raise ValueError(f"bootstrap unit must be one of {', '.join(BOOTSTRAP_UNITS)}, got {unit!r}")
    if n_resamples < 2:
        raise ValueError(f"--bootstrap needs at least 2 resamples, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    options = options or FitOptions()
    problem = result.problem
    rng = np.random.default_rng(seed)
    if unit == "size":
        weights = resample_weights_paired(size_groups(problem), n_resamples, rng)
    else:
        weights = resample_weights(problem.fmt, n_resamples, rng)
    starts = np.array(warm_starts(result, extra_starts))
    with FitPool(problem, options, workers, progress) as pool:
        fits = pool.resample(weights, starts)
    thetas = np.array([theta for _, theta, _ in fits])
    n_failed = sum(1 for _, _, converged in fits if not converged)

    param_samples = [reported_params(problem, t) for t in thetas]
    params = {name: percentile_interval(np.array([p[name] for p in param_samples]), value, level)
              for name, value in result.params.items()}
    n_base = problem.layout.n_base
    epm_samples = [problem.law.epm(t[n_base:]) for t in thetas]
    epm = {f: percentile_interval(np.array([e[f] for e in epm_samples]), result.epm[f], level)
           for f in result.formats}
    return BootstrapResult(n_resamples, seed, level, thetas, params, epm, extra_starts, unit,
                           n_failed)
