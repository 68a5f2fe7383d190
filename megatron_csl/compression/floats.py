"""Small floating-point element formats (FP8 E4M3/E5M2, FP6 E3M2/E2M3, FP4 E2M1).

Each format is described by its exponent/mantissa widths; its finite non-negative values are
enumerated into a sorted codebook, and rounding is nearest-value with ties to the even code (the
codebook index parity equals the mantissa's last bit, because non-negative values of these formats
increase with their bit pattern), i.e. IEEE round-to-nearest-even, saturating at the largest finite
value. This matches torch's float8 casts for in-range values (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .gaussian import optimal_scale, scalar_quantizer_mse


@dataclass(frozen=True)
class FloatFormat:
    name: str          # "e4m3", ...
    exp_bits: int
    man_bits: int
    reserved_top: str  # "none": every code finite (OCP FP6/FP4); "nan_code": only S.1111.111 is NaN
    #                    (E4M3 fn); "ieee": the top exponent is inf/NaN (E5M2)

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    def positive_values(self) -> np.ndarray:
        """Sorted finite non-negative values (0 first), one per non-negative code."""
        values = []
        top_exp = 2**self.exp_bits - 1
        for e in range(top_exp + 1):
            if self.reserved_top == "ieee" and e == top_exp:
                break
            for m in range(2**self.man_bits):
                if self.reserved_top == "nan_code" and e == top_exp and m == 2**self.man_bits - 1:
                    continue
                if e == 0:
                    values.append(m / 2**self.man_bits * 2.0 ** (1 - self.bias))
                else:
                    values.append((1 + m / 2**self.man_bits) * 2.0 ** (e - self.bias))
        return np.array(values, dtype=np.float64)

    @property
    def max_value(self) -> float:
        return float(self.positive_values()[-1])

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value (the OCP MX spec's emax_elem)."""
        return int(np.floor(np.log2(self.max_value)))

    def trust_bound(self) -> float:
        """The largest |x / scale| that rounds to the largest value without clipping by more than
        half the top gap: max + (max - second largest) / 2."""
        pos = self.positive_values()
        return float(pos[-1] + (pos[-1] - pos[-2]) / 2.0)

    def levels(self) -> np.ndarray:
        pos = self.positive_values()
        return np.concatenate([-pos[:0:-1], pos])


FORMATS = {
    "e4m3": FloatFormat("e4m3", 4, 3, "nan_code"),
    "e5m2": FloatFormat("e5m2", 5, 2, "ieee"),
    "e3m2": FloatFormat("e3m2", 3, 2, "none"),
    "e2m3": FloatFormat("e2m3", 2, 3, "none"),
    "e2m1": FloatFormat("e2m1", 2, 1, "none"),
}
# Formats by total bit width; the first is the default for that width.
FORMATS_BY_BITS = {8: ("e4m3", "e5m2"), 6: ("e2m3", "e3m2"), 4: ("e2m1",)}


@lru_cache(maxsize=None)
def _codebook(name: str, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.tensor(FORMATS[name].positive_values(), dtype=torch.float32, device=device)
    return pos, (pos[1:] + pos[:-1]) / 2  # midpoints are exact in float32 for these formats


def round_to_format(y: torch.Tensor, name: str) -> torch.Tensor:
    """Round float32 `y` to the nearest value of format `name` (ties to even, saturating)."""
    pos, mids = _codebook(name, str(y.device))
    mag = y.abs().clamp(max=pos[-1])
    lower = torch.bucketize(mag, mids, right=False)  # at a tie: the smaller value
    upper = torch.bucketize(mag, mids, right=True)   # at a tie: the larger value
    idx = torch.where((lower != upper) & (lower % 2 == 1), upper, lower)
    return torch.copysign(pos[idx], y)


@lru_cache(maxsize=None)
def optimal_format_scale(name: str) -> tuple[float, float]:
    """(scale, GMSE): the scale s minimising the MSE of s * round(x / s) on N(0, 1), exact.

    E.g. FP4 E2M1: s = 0.48708 (QuEST, Panferov et al. 2025, arXiv 2502.05003). Float formats have many local minima (roughly
    periodic in log2 s), so the search scans a log grid from "the largest value sits at 1 sigma"
    over 2^12 of range before refining.
    """
    fmt = FORMATS[name]
    lo = 1.0 / fmt.max_value
    return optimal_scale(fmt.levels(), lo=lo, hi=lo * 2**12, grid_points=1201)


def format_gmse(name: str, scale: float) -> float:
    return scalar_quantizer_mse(FORMATS[name].levels(), scale)
