"""Element quantizers: integer grids (symmetric, zero-point, ternary) and small floats.

A quantizer maps a float32 matrix [rows, cols] (weights [out, in], activations [tokens, hidden]) to
its dequantized values and, for the trust estimator, a gradient mask. Statistics come from
`stats.Grouped` (so they are completed over a tensor-parallel group when needed) and are computed
without autograd. Gradients are attached by `fake_quant.py`.

Integer grids, in terms of the grid step:
    sym   2^b levels without zero, (k + 1/2) * step for k in -2^(b-1) .. 2^(b-1)-1, half-range
          s = (2^b - 1)/2 * step; decision boundaries at multiples of step (floor rounding).
    zero  codes q in -2^(b-1) .. 2^(b-1)-1, value q * step (round half to even).
    ternary (w1.58)  {-s, 0, s}, step = s.
Scale rules (how the step follows from the statistic of each row/group/tensor):
    rms      Gaussian-MSE-optimal: sym s = alpha*_b RMS; zero step = beta*_b RMS; ternary s = tau* RMS.
    absmax   no clipping: sym s = absmax; zero step = absmax / 2^(b-1) (the most negative code
             reaches -absmax; a positive absmax clips to (2^(b-1)-1) step); ternary s = absmax.
    absmean  the rms rule with RMS estimated from the mean magnitude, RMS ~ sqrt(pi/2) mean|x|
             (exact for Gaussian data; robust to outliers). Not BitNet's s = mean|x|.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch

from . import floats
from .gaussian import alpha_star, ternary_star, zero_grid_step_star
from .sparsity import _number
from .stats import Grouped

TERNARY = 1.58  # the `bits` value that stands for the ternary grid (w1.58)
TRUST_TOLERANCE = 1e-6  # relative slack so float rounding never masks an in-range value
OUTLIER_BITS = 16.0 + 16.0  # a bf16 value and a 16-bit column index per full-precision outlier
ONE_BIT_TRUST_CLIP = {True: 1.30, False: 1.25}  # QuEST 1-bit clip mask, with / without Hadamard
SQRT_HALF_PI = math.sqrt(math.pi / 2.0)

Granularity = Union[str, int]  # "row", "tensor" or a group size


def format_bits(bits: float) -> str:
    return "1.58" if bits == TERNARY else str(int(bits))


def _safe_apply(step: torch.Tensor, fn):
    """fn(step) where step > 0, and 0 where the statistic was 0 (an all-zero group)."""
    positive = step > 0
    value = fn(torch.where(positive, step, torch.ones_like(step)))
    return torch.where(positive, value, torch.zeros_like(value)), positive


@dataclass(frozen=True)
class IntQuant:
    bits: float                    # 1..8, or TERNARY (1.58)
    grid: str = "sym"              # "sym" | "zero" (ignored for ternary)
    scale: str = "rms"             # "rms" | "absmax" | "absmean"
    granularity: Granularity = "row"  # weights only; activations are always per token
    had: int = 0                   # Hadamard block size, 0 = none
    estimator: str = "ste"         # "ste" | "trust"
    outliers: float = 0.0          # percent of each row kept in full precision (weights only)
    learned: str = ""              # "" | "lsq" | "pact": the step is a model parameter (learned.py)

    kind = "int"

    @property
    def ternary(self) -> bool:
        return self.bits == TERNARY

    @property
    def element_bits(self) -> float:
        return math.log2(3.0) if self.ternary else float(self.bits)

    def storage_bits(self) -> float:
        """Bits per value including a bf16 scale per group (row/tensor scales are negligible).

        With outliers (p percent per row kept in bf16): the other (1 - p) entries store a code,
        each outlier a bf16 value and a 16-bit column index (rows up to 65536 inputs).
        """
        granularity = self.granularity
        overhead = 16.0 / granularity if isinstance(granularity, int) else 0.0
        share = self.outliers / 100.0
        return (self.element_bits + overhead) * (1.0 - share) + share * OUTLIER_BITS

    def block_sizes(self) -> list[tuple[str, int]]:
        """(option, size) pairs whose size must divide the (local) input dimension."""
        granularity = self.granularity
        out = []
        if isinstance(granularity, int):
            out.append((f"g{granularity}", granularity))
        if self.had:
            out.append((_had_option(self.had), self.had))
        return out

    def _code_range(self) -> tuple[int, int]:
        if self.ternary:
            return -1, 1
        b = int(self.bits)
        return -(2 ** (b - 1)), 2 ** (b - 1) - 1

    def _rms_multiplier(self) -> float:
        """Step (zero/ternary) or half-range (sym) in RMS units under the rms rule."""
        if self.ternary:
            return ternary_star()
        if self.grid == "zero":
            return zero_grid_step_star(int(self.bits))
        return alpha_star(int(self.bits))

    @torch.no_grad()
    def step(self, x_v: torch.Tensor, grouped: Grouped, mask_v) -> torch.Tensor:
        """The grid step of every group (float32, broadcastable against x_v)."""
        if self.scale == "absmax":
            # sym: half-range = absmax; zero: 2^(b-1) steps reach -absmax; ternary: s = absmax.
            size = grouped.moments(x_v, mask_v, "absmax")
            if self.grid == "zero" and not self.ternary:
                size = size / 2 ** (int(self.bits) - 1)
        else:
            stat = grouped.moments(x_v, mask_v, self.scale)
            rms = stat if self.scale == "rms" else stat * SQRT_HALF_PI
            size = rms * self._rms_multiplier()
        if self.grid == "sym" and not self.ternary:
            size = size * 2.0 / (2 ** int(self.bits) - 1)  # half-range -> step
        return size.float()

    @property
    def code_bound(self) -> int:
        """Largest |integer code| of `codes` (sym grids use odd codes 2k+1, see `_codes`)."""
        if self.ternary:
            return 1
        b = int(self.bits)
        return 2 ** b - 1 if self.grid == "sym" else 2 ** (b - 1)

    def _codes(self, x_v: torch.Tensor, step: torch.Tensor):
        """(codes, unit, positive): integer-valued codes and the unit with value = codes * unit.

        The sym grid's levels (k + 1/2) step are the odd codes 2k+1 times step/2, so both grids
        have integer codes; codes * unit is one rounding of the exact level, the same float as
        (k + 1/2) * step. Groups whose statistic is 0 get codes 0 and unit 0.
        """
        qmin, qmax = self._code_range()
        positive = step > 0
        safe_step = torch.where(positive, step, torch.ones_like(step))
        if self.grid == "sym" and not self.ternary:
            codes = (x_v / safe_step).floor().clamp(qmin, qmax) * 2.0 + 1.0
            unit = safe_step / 2.0
        else:
            codes = (x_v / safe_step).round().clamp(qmin, qmax)
            unit = safe_step
        zero = torch.zeros_like(unit)
        return torch.where(positive, codes, zero), torch.where(positive, unit, zero), positive

    def _trust_mask(self, x_v, value, step, positive, grouped, mask_v):
        if self.bits == 1:
            rms = grouped.moments(x_v, mask_v, "rms").float()
            return x_v.abs() <= ONE_BIT_TRUST_CLIP[bool(self.had)] * rms
        half_step = step / 2.0 * (1.0 + TRUST_TOLERANCE)
        return ((value - x_v).abs() <= half_step) | ~positive

    @torch.no_grad()
    def quantize_codes(self, x: torch.Tensor, row_group, tensor_group,
                       mask: torch.Tensor | None = None):
        """(codes [rows, cols], unit, grad_mask or None) with `quantize`'s value = codes * unit.

        unit is [rows, 1] for per-row statistics, [1, 1] for per-tensor ones and
        [rows, cols / g] for groups of g columns (then it does not factor out of a matmul).
        """
        granularity = self.granularity
        grouped = Grouped(x, granularity, tensor_group if granularity == "tensor" else
                          (row_group if granularity == "row" else None))
        x_v = grouped.view(x)
        mask_v = None if mask is None else grouped.view(mask)
        step = self.step(x_v, grouped, mask_v)
        codes, unit, positive = self._codes(x_v, step)
        grad_mask = None
        if self.estimator == "trust":
            value = codes * unit
            grad_mask = grouped.unview(self._trust_mask(x_v, value, step, positive, grouped,
                                                        mask_v))
        unit = unit[:1] if granularity == "tensor" else unit
        return grouped.unview(codes), unit.reshape(unit.shape[0], -1), grad_mask

    @torch.no_grad()
    def quantize(self, x: torch.Tensor, row_group, tensor_group, mask: torch.Tensor | None = None):
        """(values, grad_mask or None) for float32 x [rows, cols]; statistics over mask's survivors.

        row_group / tensor_group: process groups completing per-row / whole-tensor statistics.
        """
        codes, unit, grad_mask = self.quantize_codes(x, row_group, tensor_group, mask)
        if isinstance(self.granularity, int):
            unit = unit.repeat_interleave(self.granularity, dim=1)
        return codes * unit, grad_mask

    def options(self, *, with_granularity: bool = True) -> list[str]:
        """Non-default options in canonical order."""
        granularity = self.granularity
        out = []
        if self.grid != "sym" and not self.ternary:
            out.append(self.grid)
        if self.scale != "rms":
            out.append(self.scale)
        if with_granularity and granularity != "row":
            out.append(granularity if isinstance(granularity, str) else f"g{granularity}")
        if self.had:
            out.append(_had_option(self.had))
        if self.outliers:
            out.append(f"out{_number(self.outliers)}")
        if self.estimator != "ste":
            out.append(self.estimator)
        if self.learned:
            out.append(self.learned)
        return out


def _had_option(block: int) -> str:
    return "had" if block == 128 else f"had{block}"


@dataclass(frozen=True)
class FloatQuant:
    fmt: str                   # key of floats.FORMATS
    scaling: str = "row"       # "row" | "tensor" | "mx" | "nv"
    had: int = 0
    estimator: str = "ste"     # "ste" | "trust" (zero gradient where the value was clipped)

    kind = "float"
    outliers = 0.0  # outlier-preserving is an integer-format option
    MX_BLOCK = 32
    NV_BLOCK = 16

    @property
    def element_bits(self) -> float:
        return float(floats.FORMATS[self.fmt].bits)

    def storage_bits(self) -> float:
        """Bits per value including block scales (mx: 8-bit E8M0 per 32, nv: 8-bit E4M3 per 16)."""
        overhead = {"mx": 8.0 / self.MX_BLOCK, "nv": 8.0 / self.NV_BLOCK}.get(self.scaling, 0.0)
        return self.element_bits + overhead

    def block_sizes(self) -> list[tuple[str, int]]:
        out = []
        if self.scaling == "mx":
            out.append(("mx", self.MX_BLOCK))
        if self.scaling == "nv":
            out.append(("nv", self.NV_BLOCK))
        if self.had:
            out.append((_had_option(self.had), self.had))
        return out

    @torch.no_grad()
    def quantize(self, x: torch.Tensor, row_group, tensor_group, mask: torch.Tensor | None = None):
        """(values, grad_mask or None) for float32 x [rows, cols].

        Straight-through by default; with the trust estimator the gradient is zero where the
        format clipped: |x / scale| beyond the largest value plus half the top gap (the float
        analogue of the integer grids' |Q(x) - x| <= step / 2). All-zero groups pass gradient.
        """
        codes_max = floats.FORMATS[self.fmt].trust_bound()
        masks = []

        def rounded(xs, scale):
            value, positive = _safe_apply(scale,
                                          lambda s: floats.round_to_format(xs / s, self.fmt) * s)
            if self.estimator == "trust":
                safe = torch.where(positive, scale, torch.ones_like(scale))
                masks.append((xs.abs() <= codes_max * (1.0 + TRUST_TOLERANCE) * safe) | ~positive)
            return value

        value = self._quantize_values(x, row_group, tensor_group, mask, rounded)
        grad_mask = masks[0].reshape(x.shape) if masks else None
        return value, grad_mask

    def _quantize_values(self, x, row_group, tensor_group, mask, rounded):
        fmt = floats.FORMATS[self.fmt]

        if self.scaling in ("row", "tensor"):
            scaling = self.scaling
            grouped = Grouped(x, scaling, tensor_group if scaling == "tensor" else row_group)
            x_v = grouped.view(x)
            mask_v = None if mask is None else grouped.view(mask)
            kappa = floats.optimal_format_scale(self.fmt)[0]
            scale = (grouped.moments(x_v, mask_v, "rms") * kappa).float()
            return grouped.unview(rounded(x_v, scale))
        if self.scaling == "mx":
            # OCP MX: shared power-of-two scale 2^(floor(log2 amax) - emax_elem) per block of 32.
            grouped = Grouped(x, self.MX_BLOCK)
            x_v = grouped.view(x)
            amax = grouped.amax((x_v if mask is None else x_v * grouped.view(mask)).abs()).float()
            _, exponent = torch.frexp(amax)  # amax = m * 2^e with m in [0.5, 1)
            scale = torch.ldexp(torch.ones_like(amax), exponent - 1 - fmt.emax)
            scale = torch.where(amax > 0, scale, torch.zeros_like(scale))
            return grouped.unview(rounded(x_v, scale))
        # nv (NVFP4-style): per block of 16 an E4M3 scale amax_block / max_elem, expressed relative
        # to an FP32 per-row (per-token) scale amax_row / (448 * max_elem) so it fits E4M3's range.
        grouped = Grouped(x, self.NV_BLOCK)
        x_v = grouped.view(x)
        mags = (x_v if mask is None else x_v * grouped.view(mask)).abs()
        block_amax = mags.amax(dim=2, keepdim=True)
        row_amax = Grouped(x, "row", row_group).amax(block_amax.amax(dim=1, keepdim=True)).float()
        e4m3_max = floats.FORMATS["e4m3"].max_value
        row_scale = row_amax / (e4m3_max * fmt.max_value)
        ratio, _ = _safe_apply(row_scale, lambda rs: block_amax / (fmt.max_value * rs))
        scale = floats.round_to_format(ratio, "e4m3") * row_scale
        return grouped.unview(rounded(x_v, scale))

    def options(self, *, with_granularity: bool = True, with_format: bool = True) -> list[str]:
        out = []
        if with_format and self.fmt != floats.FORMATS_BY_BITS[int(self.element_bits)][0]:
            out.append(self.fmt)
        scaling = self.scaling
        if scaling != "row" and (with_granularity or scaling in ("mx", "nv")):
            out.append(scaling)
        if self.had:
            out.append(_had_option(self.had))
        if self.estimator != "ste":
            out.append(self.estimator)
        return out
