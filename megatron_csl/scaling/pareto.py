"""Loss against training cost, for Pareto plots (the paper's Figure 4).

The cost of a run is its training FLOPs 6 N D in bf16-equivalents: times the format's cost factor
(``FormatInfo.cost_factor``: linear b/16 or quadratic b_w*b_a/256, times 1 - sparsity).

Besides the runs' own frontier, the fitted law gives each format's compute-optimal loss at cost K:
with D = K / (6 N f), minimising a/(N eff)^b + c (6 N f / K)^d + e over N gives
N* = (b a eff^-b / (d c (6 f / K)^d))^(1/(b+d)). In the reduced form (one ratio r) the runs lie on
D = r N, so N = sqrt(K / (6 r f)).
"""
from __future__ import annotations

import numpy as np

from .fitting import FitResult
from .predict import law_loss


def run_costs(N, D, factors) -> np.ndarray:
    return 6.0 * np.asarray(N, float) * np.asarray(D, float) * np.asarray(factors, float)


def pareto_front(cost, loss) -> np.ndarray:
    """Indices of the runs no cheaper-or-equal run beats, ordered by cost."""
    cost, loss = np.asarray(cost, float), np.asarray(loss, float)
    order = np.lexsort((loss, cost))
    front, best = [], np.inf
    for i in order:
        if loss[i] < best:
            front.append(i)
            best = loss[i]
    return np.array(front, dtype=int)


def _abcde(result: FitResult):
    p = result.params
    if result.law == "chinchilla":
        return p["A"], p["alpha"], p.get("B"), p.get("beta"), p["E"]
    return p["a"], p["b"], p.get("c"), p.get("d"), p["e"]


def optimal_size(result: FitResult, eff: float, factor: float, cost):
    """Loss-minimising N at each training cost (bf16-equivalent FLOPs) for one format."""
    a, b, c, d, e = _abcde(result)
    cost = np.asarray(cost, float)
    if not result.has_data_term:
        return np.sqrt(cost / (6.0 * result.tokens_per_param * factor))
    if b <= 0 or d <= 0:
        return np.full(cost.shape, np.nan)  # a flat term: no interior optimum to draw
    k = 6.0 * factor / cost
    return (b * a * eff ** (-b) / (d * c * k ** d)) ** (1.0 / (b + d))


def optimal_loss(result: FitResult, eff: float, factor: float, cost):
    """The fitted law's compute-optimal loss at each cost for one format."""
    n = optimal_size(result, eff, factor, cost)
    d = np.asarray(cost, float) / (6.0 * n * factor)
    return law_loss(result, n, d, eff)
