"""What the fitter needs to know about a format, from ``megatron_csl.compression``.

Bits for the table and size gain, the Gaussian MSE parts for the capacity law, and the compute
cost factor for Pareto plots (Frantar et al. 2025, arXiv 2502.16440): linear counting makes a b-bit matmul cost b/16 of
bf16, quadratic (b_w * b_a) / 256; sparsity s multiplies either by (1 - s). For linear counting b is
the wider operand, max(b_w, b_a): a matmul with one 16-bit operand runs at 16-bit speed, so
weight-only quantization buys no compute.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

COST_MODES = ("linear", "quadratic")

# A format key is a canonical spec, optionally followed by "@<method>" naming how a run reached
# that format when it was not trained in it: "w4@ptq-rtn", "w4@ptq-gptq" (tools/ptq.py). Runs
# with different methods are different formats to the fitter (each its own multiplier); bits and
# Gaussian MSE are the spec's.
METHOD_SEPARATOR = "@"
_METHOD = re.compile(r"[a-z0-9][a-z0-9-]*")


def split_format_key(key: str) -> tuple[str, str | None]:
    """("w4", "ptq-rtn") for "w4@ptq-rtn", ("w4", None) for "w4"; ValueError on a bad method."""
    spec, sep, method = key.partition(METHOD_SEPARATOR)
    if not sep:
        return key, None
    if not _METHOD.fullmatch(method):
        raise ValueError(f"format {key!r}: the method after '{METHOD_SEPARATOR}' must be lower-case "
                         f"letters, digits and '-' (e.g. 'w4{METHOD_SEPARATOR}ptq-gptq'), got {method!r}")
    return spec, method


def format_key(spec: str, method: str | None = None) -> str:
    return spec if method is None else f"{spec}{METHOD_SEPARATOR}{method}"


@dataclass(frozen=True)
class FormatInfo:
    canonical: str
    w_bits: float
    a_bits: float
    sparsity: float
    effective_w_bits: float

    @property
    def size_factor(self) -> float:
        """Storage gain over bf16 per parameter: 16 / effective weight bits."""
        return 16.0 / self.effective_w_bits

    def cost_factor(self, mode: str) -> float:
        if mode == "linear":
            factor = max(self.w_bits, self.a_bits) / 16.0
        elif mode == "quadratic":
            factor = self.w_bits * self.a_bits / 256.0
        else:
            raise ValueError(f"unknown cost mode {mode!r}; valid: {', '.join(COST_MODES)}")
        return factor * (1.0 - self.sparsity)


DENSE_INFO = FormatInfo("dense", 16.0, 16.0, 0.0, 16.0)


@lru_cache(maxsize=None)
def format_info(spec: str) -> FormatInfo:
    if spec == "dense":
        return DENSE_INFO  # no torch import for dense-only fits
    from megatron_csl.compression import parse_spec

    base, method = split_format_key(spec)
    s = parse_spec(base)
    return FormatInfo(format_key(s.canonical, method), float(s.w_bits), float(s.a_bits),
                      float(s.sparsity), float(s.effective_w_bits))


@lru_cache(maxsize=None)
def gmse_parts(spec: str):
    """(weight GMSE or None, activation GMSE or None), as the capacity law needs them."""
    if spec == "dense":
        return (None, None)
    from megatron_csl.compression import gaussian_mse_parts

    return gaussian_mse_parts(split_format_key(spec)[0])


def precision_bits(spec: str) -> tuple[float, float]:
    """(weight bits, activation bits) the precision law uses: weights at their effective bits
    (w_bits * (1 - sparsity)), so sparsity counts as fewer bits per parameter."""
    info = format_info(spec)
    return (info.effective_w_bits, info.a_bits)


def law_inputs(law: str, formats) -> dict:
    """The per-format data a law needs, as keyword arguments of ``fit_runs``."""
    if law == "capacity":
        return {"gmse_parts": {f: gmse_parts(f) for f in formats}}
    if law == "precision":
        return {"bits": {f: precision_bits(f) for f in formats}}
    return {}
