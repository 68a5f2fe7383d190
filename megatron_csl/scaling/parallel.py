"""Process pool for many independent L-BFGS-B runs (grid starts, bootstrap resamples).

Each worker receives the ``FitProblem`` once (pool initializer) and then only small tasks: a chunk
of start vectors, or a chunk of bootstrap weight rows. Results come back in task order, so the
output never depends on the number of workers. ``workers=1`` runs everything in-process.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from .fitting import FitOptions, minimize_from
from .problem import FitProblem

_STATE: dict = {}


def single_threaded_blas():
    """Context manager: BLAS on one thread.

    The optimiser's BLAS calls are tiny; a multi-threaded OpenBLAS spends more time waking and
    spinning its threads than computing (measured: 10-20x slower fits on a loaded 2-core machine).
    Parallelism comes from processes instead.
    """
    return threadpool_limits(limits=1, user_api="blas")


def _init(problem: FitProblem, options: FitOptions, worker: bool = False):
    _STATE["problem"] = problem
    _STATE["options"] = options
    if worker:
        _STATE["blas_limit"] = single_threaded_blas()  # held for the worker's lifetime


def _minimize_chunk(starts):
    return minimize_from(_STATE["problem"], starts, _STATE["options"])


def _resample_chunk(args):
    weight_rows, starts = args
    return [best_of(_STATE["problem"], starts, _STATE["options"], w) for w in weight_rows]


def best_of(problem, starts, options, weights):
    """Best (objective, theta, converged) over L-BFGS-B runs from ``starts`` on a weighted
    objective; a non-finite objective never wins."""
    fits = minimize_from(problem, starts, options, weights, with_status=True)
    return min(fits, key=lambda r: r[0] if np.isfinite(r[0]) else np.inf)


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _chunks(n, n_chunks):
    bounds = np.linspace(0, n, n_chunks + 1).astype(int)
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


class FitPool:
    """Context manager; with ``workers <= 1`` no processes are started."""

    def __init__(self, problem: FitProblem, options: FitOptions, workers: int = 1,
                 progress: bool = False):
        self.problem, self.options = problem, options
        self.workers = max(1, int(workers))
        self.progress = progress
        self._ex = None

    def __enter__(self):
        if self.workers > 1:
            self._ex = ProcessPoolExecutor(self.workers, initializer=_init,
                                           initargs=(self.problem, self.options, True))
        return self

    def __exit__(self, *exc):
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
        return False

    def _map(self, fn, tasks, desc, total_items):
        bar = tqdm(total=total_items, desc=desc, disable=not self.progress, leave=False)
        out = []
        try:
            if self._ex is None:
                _init(self.problem, self.options)
                with single_threaded_blas():
                    for task in tasks:
                        res = fn(task)
                        out.extend(res)
                        bar.update(len(res))
            else:
                for res in self._ex.map(fn, tasks):
                    out.extend(res)
                    bar.update(len(res))
        finally:
            bar.close()
        return out

    def minimize_starts(self, starts: np.ndarray):
        """L-BFGS-B from every start; [(objective, theta)] in start order."""
        n_chunks = 1 if self._ex is None else self.workers * 8
        tasks = [starts[lo:hi] for lo, hi in _chunks(len(starts), n_chunks)]
        return self._map(_minimize_chunk, tasks, "fit starts", len(starts))

    def resample(self, weights: np.ndarray, starts: np.ndarray):
        """Best optimum per weight row (bootstrap resample); [(objective, theta, converged)] in
        row order."""
        n_chunks = max(1, min(len(weights), 50 if self._ex is None else self.workers * 25))
        tasks = [(weights[lo:hi], starts) for lo, hi in _chunks(len(weights), n_chunks)]
        return self._map(_resample_chunk, tasks, "bootstrap", len(weights))
