"""Capacity of a format: Gaussian MSE (GMSE) and the predicted effective parameter multiplier.

GMSE(R) is the mean squared error format R reaches on standard Gaussian data at its best scale
(Panferov et al. 2025). Exact (closed form over decision intervals, see gaussian.py) for:
element-wise integer grids and float formats with the rms scale rule per row or tensor (Hadamard
rotations leave iid Gaussian data iid Gaussian, so `had` does not change it), and unstructured
magnitude sparsity per row or tensor (weights) or per token (activation sparsity), and noise
injection (`noise:w4` has the GMSE of w4 by construction). Everything else (groups,
absmax/absmean, N:M, mx/nv, sparsity + quantization, vector quantization, outliers) is measured
by Monte Carlo: the format's own compress function on a
fixed-seed Gaussian matrix of 2^22 entries (relative standard error ~0.1%), cached per spec.

rho(GMSE) = Lc * tanh(F * log_{1/4}(GMSE))^C; composition is multiplicative, so a spec with
weight and activation parts predicts rho(W) * rho(A) (a part the spec leaves alone counts 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch

from . import floats
from .gaussian import (TERNARY_LEVELS, alpha_star, magnitude_pruning_mse, scalar_quantizer_mse,
                       symmetric_levels, ternary_star, zero_grid_step_star, zero_point_levels)
from .parser import parse_spec
from .spec import CompressionSpec

MONTE_CARLO_SEED = 0
MONTE_CARLO_ENTRIES = 2**22


@dataclass(frozen=True)
class CapacityParams:
    """rho(g) = Lc * tanh(F * log_{1/4}(g))^C (defaults: the Llama/C4 fit of Panferov et al. 2025, arXiv 2506.01863)."""

    Lc: float = 1.0
    F: float = 0.41
    C: float = 1.39

    def rho(self, gmse: float | None) -> float:
        if gmse is None:
            return 1.0  # the part is not compressed
        if gmse <= 0.0:
            return self.Lc
        if gmse >= 1.0:
            return 0.0  # no better than predicting zero: no capacity left
        return self.Lc * math.tanh(self.F * math.log(gmse) / math.log(0.25)) ** self.C


def _exact_quantizer_gmse(q) -> float | None:
    """Closed-form GMSE of an element-wise quantizer at its best scale, or None if not exact."""
    if q.kind not in ("int", "float") or q.outliers:
        return None
    if q.kind == "float":
        if q.scaling in ("row", "tensor"):
            return floats.optimal_format_scale(q.fmt)[1]
        return None
    if q.scale != "rms" or q.granularity not in ("row", "tensor"):
        return None
    if q.ternary:
        return scalar_quantizer_mse(TERNARY_LEVELS, ternary_star())
    b = int(q.bits)
    if q.grid == "zero":
        return scalar_quantizer_mse(zero_point_levels(b), zero_grid_step_star(b))
    return scalar_quantizer_mse(symmetric_levels(b), alpha_star(b))


def _monte_carlo_shape(spec: CompressionSpec) -> tuple[int, int]:
    """A [rows, cols] Gaussian matrix of ~2^22 entries whose cols every block size divides."""
    cols = 4096
    for part in (spec.sparsity_format, spec.weight, spec.activation,
                 spec.activation_sparsity_format):
        if part is not None:
            for _, size in part.block_sizes():
                cols = math.lcm(cols, size)
    return max(1, MONTE_CARLO_ENTRIES // cols), cols


@lru_cache(maxsize=None)
def _monte_carlo_gmse(spec: CompressionSpec, role: str) -> float:
    rows, cols = _monte_carlo_shape(spec)
    gen = torch.Generator().manual_seed(MONTE_CARLO_SEED)
    x = torch.randn(rows, cols, generator=gen)
    with torch.no_grad():
        y = spec.compress_weight(x) if role == "weight" else spec.quantize_activation(x)
    return float((y - x).double().pow(2).mean())


def _weight_gmse(spec: CompressionSpec) -> float | None:
    if not spec.compresses_weights:
        return None
    sp, w = spec.sparsity_format, spec.weight
    if w is not None and w.kind == "noise":
        return w.gmse()
    if w is None and sp.pattern in ("row", "tensor"):
        return magnitude_pruning_mse(sp.fraction)
    if sp is None:
        exact = _exact_quantizer_gmse(w)
        if exact is not None:
            return exact
    return _monte_carlo_gmse(CompressionSpec(sp, w, None), "weight")


def _activation_gmse(spec: CompressionSpec) -> float | None:
    a, sp = spec.activation, spec.activation_sparsity_format
    if a is None and sp is None:
        return None
    if a is None:
        return magnitude_pruning_mse(sp.fraction)  # top-k per token = magnitude pruning per row
    exact = _exact_quantizer_gmse(a) if sp is None else None
    return exact if exact is not None else _monte_carlo_gmse(CompressionSpec(None, None, a, sp),
                                                             "activation")


def gaussian_mse_parts(spec) -> tuple[float | None, float | None]:
    """(weights' GMSE or None, activations' GMSE or None) of a spec (string or CompressionSpec)."""
    spec = parse_spec(spec)
    return _weight_gmse(spec), _activation_gmse(spec)


def gaussian_mse(spec) -> float:
    """The weights' GMSE (activation-only specs: the activations'; dense: 0.0)."""
    w, a = gaussian_mse_parts(spec)
    if w is not None:
        return w
    return a if a is not None else 0.0


def predicted_epm(spec, params: CapacityParams = CapacityParams()) -> float:
    """rho(GMSE_W) * rho(GMSE_A); 1.0 for dense."""
    w, a = gaussian_mse_parts(spec)
    return params.rho(w) * params.rho(a)
