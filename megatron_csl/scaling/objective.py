"""Huber objective of a three-term log-sum-exp loss law, with its analytic gradient.

Every law this package fits predicts log loss as

    log L = LSE(t1, t2, t3),  t1 = A0 - b * (log N + log eff_i),  t2 = B0 - d * log D,  t3 = E0

(A0 = log a, B0 = log c, E0 = log e; eff_i = 1 for dense runs and for the plain Chinchilla law).
The laws differ only in how ``log eff_i`` depends on the parameters, so this module takes the
per-point ``log eff`` and its Jacobian from the law and does the rest: residuals
``log(observed) - prediction``, Huber loss with delta 1e-3 **summed** over points (a mean makes
L-BFGS stop early; Epoch AI's replication, arXiv 2404.10102), optional per-point weights (bootstrap multiplicities), and the
gradient by the chain rule. Everything is vectorised over points, because the bootstrap calls this
hundreds of thousands of times.
"""
from __future__ import annotations

import numpy as np

HUBER_DELTA = 1e-3


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Huber loss, quadratic within ``delta`` and linear outside (continuous first derivative)."""
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def huber_grad(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    return np.clip(r, -delta, delta)


def log_sum_exp_terms(t1, t2, t3):
    """Row-wise log(e^t1 + e^t2 + e^t3) and the softmax weights (the terms' shares of the loss).

    ``t2`` may be None (a law without a data term). Shifted by the row max so large coefficients
    from the start grid (log a = 25) never overflow.
    """
    if t2 is None:
        m = np.maximum(t1, t3)
        e1, e3 = np.exp(t1 - m), np.exp(t3 - m)
        s = e1 + e3
        return m + np.log(s), e1 / s, None, e3 / s
    m = np.maximum(np.maximum(t1, t2), t3)
    e1, e2, e3 = np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)
    s = e1 + e2 + e3
    return m + np.log(s), e1 / s, e2 / s, e3 / s
