"""Closed-form Gaussian mean squared error of element-wise scalar quantizers and of magnitude pruning.

A scalar quantizer here is a sorted level set `L` times a scale `s`: x maps to the nearest level
s*l. On standard Gaussian data its MSE is an exact sum over the decision intervals (the midpoints
between neighbouring levels) of  integral_a^b (x - l)^2 phi(x) dx, which has the antiderivative
    Phi(x) - x phi(x) + 2 l phi(x) + l^2 Phi(x).
The clipping constants (alpha*_b, ...) and float-format scale constants used by the quantizers are
derived here by minimising that MSE over the scale, not pasted in.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
# scipy.special, not scipy.stats: the training path imports this module, and scipy.stats adds
# about 1.3 s to every run's start-up for three one-line functions.
from scipy.special import ndtr as _std_normal_cdf
from scipy.special import ndtri as _std_normal_ppf


def _std_normal_pdf(x):
    return np.exp(-0.5 * np.square(x)) / np.sqrt(2.0 * np.pi)


def _interval_mse(levels: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Sum over i of integral_{lo_i}^{hi_i} (x - levels_i)^2 phi(x) dx."""

    def antiderivative(x, level):
        # x phi(x) -> 0 at +-inf; evaluate it at 0 there to keep inf * 0 from producing nan.
        finite = np.isfinite(x)
        x_phi = np.where(finite, np.where(finite, x, 0.0) * _std_normal_pdf(x), 0.0)
        cdf, pdf = _std_normal_cdf(x), _std_normal_pdf(x)
        return cdf - x_phi + 2.0 * level * pdf + level**2 * cdf

    return float(np.sum(antiderivative(hi, levels) - antiderivative(lo, levels)))


def scalar_quantizer_mse(levels, scale: float = 1.0) -> float:
    """Exact MSE on N(0, 1) of rounding to the nearest of `levels * scale`."""
    lv = np.unique(np.asarray(levels, dtype=np.float64)) * scale
    mids = (lv[1:] + lv[:-1]) / 2.0
    lo = np.concatenate([[-np.inf], mids])
    hi = np.concatenate([mids, [np.inf]])
    return _interval_mse(lv, lo, hi)


def _mse_over_scales(levels: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """scalar_quantizer_mse(levels, s) for every s in `scales`, vectorised (levels sorted, unique)."""
    lv = scales[:, None] * levels[None, :]
    mids = (lv[:, 1:] + lv[:, :-1]) / 2.0
    inf = np.full((len(scales), 1), np.inf)
    lo = np.concatenate([-inf, mids], axis=1)
    hi = np.concatenate([mids, inf], axis=1)
    cdf_lo, cdf_hi = _std_normal_cdf(lo), _std_normal_cdf(hi)
    pdf_lo, pdf_hi = _std_normal_pdf(lo), _std_normal_pdf(hi)
    xpdf_lo = np.where(np.isfinite(lo), np.where(np.isfinite(lo), lo, 0.0) * pdf_lo, 0.0)
    xpdf_hi = np.where(np.isfinite(hi), np.where(np.isfinite(hi), hi, 0.0) * pdf_hi, 0.0)
    per_interval = ((cdf_hi - cdf_lo) * (1.0 + lv**2) - (xpdf_hi - xpdf_lo)
                    + 2.0 * lv * (pdf_hi - pdf_lo))
    return per_interval.sum(axis=1)


def optimal_scale(levels, *, lo: float, hi: float, grid_points: int = 0) -> tuple[float, float]:
    """The scale minimising `scalar_quantizer_mse(levels, scale)` over [lo, hi] and its MSE.

    With grid_points > 0, first scan a log-spaced grid (float formats have many local minima,
    roughly periodic in log2(scale)), then refine around the best grid point.
    """
    from scipy import optimize  # only where a scale is searched, not on every import

    levels = np.unique(np.asarray(levels, dtype=np.float64))

    def mse(s):
        return scalar_quantizer_mse(levels, s)

    if grid_points:
        grid = np.geomspace(lo, hi, grid_points)
        best = int(np.argmin(_mse_over_scales(levels, grid)))
        lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid_points - 1)]
    res = optimize.minimize_scalar(mse, bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-12 * max(hi, 1.0)})
    return float(res.x), float(res.fun)


def symmetric_levels(bits: int) -> np.ndarray:
    """Symmetric grid without zero in units of its half-range s: +-1/(2^b-1), +-3/(2^b-1), ... +-1."""
    n = 2**bits
    return (np.arange(n) - (n - 1) / 2.0) * 2.0 / (n - 1)


def zero_point_levels(bits: int) -> np.ndarray:
    """Grid with a zero level in units of its step: -2^(b-1) ... 2^(b-1) - 1."""
    return np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=np.float64)


TERNARY_LEVELS = np.array([-1.0, 0.0, 1.0])


@lru_cache(maxsize=None)
def alpha_star(bits: int) -> float:
    """Gaussian-MSE-optimal half-range (RMS units) of the symmetric b-bit grid (QuEST, arXiv 2502.05003: alpha*_b)."""
    return optimal_scale(symmetric_levels(bits), lo=0.1, hi=8.0)[0]


@lru_cache(maxsize=None)
def zero_grid_step_star(bits: int) -> float:
    """Gaussian-MSE-optimal step (RMS units) of the zero-point grid {-2^(b-1) .. 2^(b-1)-1}."""
    return optimal_scale(zero_point_levels(bits), lo=1e-3, hi=4.0)[0]


@lru_cache(maxsize=None)
def ternary_star() -> float:
    """Gaussian-MSE-optimal level s (RMS units) of the ternary grid {-s, 0, s}."""
    return optimal_scale(TERNARY_LEVELS, lo=0.1, hi=4.0)[0]


def magnitude_pruning_mse(fraction: float) -> float:
    """MSE on N(0, 1) of zeroing the `fraction` of entries with the smallest magnitude.

    Threshold t = Phi^-1((1 + fraction) / 2); MSE = integral_{-t}^{t} x^2 phi = (2 Phi(t) - 1) - 2 t phi(t).
    """
    if fraction <= 0.0:
        return 0.0
    t = _std_normal_ppf(0.5 + fraction / 2.0)
    return float((2.0 * _std_normal_cdf(t) - 1.0) - 2.0 * t * _std_normal_pdf(t))
