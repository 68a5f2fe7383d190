"""Learned-step quantizers: LSQ (Esser et al. 2020) and PACT (Choi et al. 2018), pure PyTorch.

The step (LSQ) or clip (PACT) is a tensor the caller owns -- a model parameter of the compressed
linear (megatron_csl/layers/learned.py) -- so these functions take it as an argument and give it
the paper's gradient. The grid is the integer quantizer's own (quantizers.IntQuant: `sym` levels
(k + 1/2) * step, `zero` levels k * step, ternary {-s, 0, s}); only how the step is found changes.

LSQ, step s (one per output row of a weight, one per activation tensor):
    value   = s * L(x / s), L the grid level of x / s, clamped to the code range
    d/dx    = 1 where x / s lies inside the code range, else 0
    d/ds    = g * (L(x/s) - x/s) inside, g * L (the clamped end level) outside
    g       = 1 / sqrt(n * Qp): n values share a step (a weight row's in_features, an activation's
              features per token), Qp the number of positive levels (below)
    init    s0 = 2 * mean|x| / sqrt(Qp)
PACT, clip alpha (one per activation tensor), symmetric for the signed inputs of a linear:
    value   = the grid with half-range alpha (its outermost levels at +-alpha) applied to x, which
              clips x to [-alpha, alpha]
    d/dx    = 1 where |x| < alpha, else 0 (straight through the rounding)
    d/dalpha = sign(x) where |x| >= alpha, else 0 (the paper's: rounding ignored)
    init    alpha0 = PACT_INIT_ALPHA
"""
from __future__ import annotations

import math

import torch

from .quantizers import IntQuant

PACT_INIT_ALPHA = 10.0   # Choi et al. 2018 initialise every clip at 10
MIN_STEP = 1e-8          # a learned step/clip is used as max(value, MIN_STEP): never 0 or negative


def positive_levels(q: IntQuant) -> int:
    """LSQ's Qp: the number of positive grid levels (sym 2^(b-1), zero 2^(b-1) - 1, ternary 1)."""
    if q.ternary:
        return 1
    b = int(q.bits)
    return 2 ** (b - 1) if q.grid == "sym" else 2 ** (b - 1) - 1


def lsq_gradient_scale(q: IntQuant, values_per_step: int) -> float:
    """g = 1 / sqrt(n * Qp)."""
    return 1.0 / math.sqrt(values_per_step * positive_levels(q))


def lsq_init_step(q: IntQuant, mean_abs: torch.Tensor) -> torch.Tensor:
    """s0 = 2 * mean|x| / sqrt(Qp)."""
    return 2.0 * mean_abs / math.sqrt(positive_levels(q))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for 16-bit inputs (as the fixed-rule formats), the input's own for wider ones."""
    return torch.promote_types(x.dtype, torch.float32)


def _levels(q: IntQuant, x: torch.Tensor, step: torch.Tensor):
    """(values on the grid with this step, inside-the-code-range mask), without autograd."""
    codes, unit, _ = q._codes(x, step)
    lo, hi = q._code_range()
    r = x / step
    if q.grid == "sym" and not q.ternary:   # level floor(r) + 1/2, clamped to lo..hi
        inside = (r >= lo) & (r < hi + 1)
    else:                                   # level round(r), clamped to lo..hi
        inside = (r >= lo) & (r <= hi)
    return codes * unit, inside


def lsq_quantize(q: IntQuant, x: torch.Tensor, step: torch.Tensor,
                 gradient_scale: float) -> torch.Tensor:
    """LSQ fake quantization of x [..., cols] with `step` broadcastable against it (e.g. [rows, 1]
    for a weight, [1] for an activation). Same dtype as x; gradients to x and step as above."""
    dtype = _compute_dtype(x)
    xf = x.to(dtype)
    s = step.to(dtype).clamp_min(MIN_STEP)
    with torch.no_grad():
        xd, sd = xf.detach(), s.detach()
        value, inside = _levels(q, xd, sd)
        inside = inside.to(xf.dtype)
        # d value / d s = (L - inside * x/s), the paper's gradient, written per unit of step.
        ds_coeff = (value - inside * xd) / sd
    scaled = s * gradient_scale
    delta_s = scaled - scaled.detach()      # value 0, gradient g per unit of s
    out = value + (xf - xd) * inside + ds_coeff * delta_s
    return out.to(x.dtype)


def pact_step(q: IntQuant, alpha: torch.Tensor) -> torch.Tensor:
    """The grid step whose outermost levels reach +-alpha (the absmax rule with absmax = alpha)."""
    if q.ternary:
        return alpha
    b = int(q.bits)
    if q.grid == "zero":
        return alpha / 2 ** (b - 1)
    return alpha * 2.0 / (2 ** b - 1)


def pact_quantize(q: IntQuant, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """PACT fake quantization of x with clip `alpha` (broadcastable, e.g. [1]); gradients as
    above."""
    dtype = _compute_dtype(x)
    xf = x.to(dtype)
    a = alpha.to(dtype).clamp_min(MIN_STEP)
    with torch.no_grad():
        xd, ad = xf.detach(), a.detach()
        value, _ = _levels(q, xd, pact_step(q, ad))
        inside = xd.abs() < ad
        outside_sign = torch.where(inside, torch.zeros_like(xd), torch.sign(xd))
        inside = inside.to(xf.dtype)
    out = value + (xf - xd) * inside + outside_sign * (a - ad)
    return out.to(x.dtype)
