"""Kernel benchmark: each compression kernel's time and achieved bandwidth against the device's
copy bandwidth measured in the same run, next to the PyTorch reference it replaces.

Both sides run through the public path with autograd on (the weight requires grad, as in
training; forward only): the kernel via megatron_csl.kernels.compress_weight /
quantize_activation, the reference via spec.compress_weight / quantize_activation with the
kernels off. Bandwidth counts the nominal traffic, reading the input once and writing the output
(and the trust mask) once, so it compares directly with the copy's read + write bandwidth.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import torch

from .timing import copy_bandwidth, median_time

# (what is measured, spec, "weight" | "activation")
CASES = (
    ("int4 fake-quant per row, STE", "w4", "weight"),
    ("int4 fake-quant per row, trust mask", "w4:trust", "weight"),
    ("int2 fake-quant per row", "w2", "weight"),
    ("int4 fake-quant per group of 128", "w4:g128", "weight"),
    ("int4 fake-quant per tensor", "w4:tensor", "weight"),
    ("top-k mask per row (50%)", "s50", "weight"),
    ("top-k mask per tensor (50%)", "s50:tensor", "weight"),
    ("N:M 2:4 mask", "s50:nm2/4", "weight"),
    ("N:M 64:128 mask", "s50:nm64/128", "weight"),
    ("top-k per row + int4 per row", "s50+w4", "weight"),
    ("int4 fake-quant per token", "a4", "activation"),
    ("int8 fake-quant per token", "a8", "activation"),
)


@dataclasses.dataclass
class KernelResult:
    name: str
    spec: str
    shape: tuple
    dtype: str
    nbytes: int
    kernel_s: Optional[float] = None
    reference_s: Optional[float] = None
    equal: Optional[bool] = None          # kernel output == reference output, bit for bit
    mismatches: int = 0
    note: str = ""                        # why no kernel ran

    def kernel_gbps(self) -> Optional[float]:
        return None if self.kernel_s is None else self.nbytes / self.kernel_s / 1e9

    def reference_gbps(self) -> Optional[float]:
        return None if self.reference_s is None else self.nbytes / self.reference_s / 1e9


def parse_shape(text: str) -> tuple:
    try:
        rows, cols = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"shape must look like ROWSxCOLS (e.g. 11008x4096), got {text!r}") \
            from None
    if rows < 1 or cols < 1:
        raise ValueError(f"shape must be positive, got {text!r}")
    return rows, cols


def bench_case(name: str, text: str, kind: str, shape: tuple, dtype: torch.dtype,
               device: torch.device, *, warmup: int, iters: int) -> KernelResult:
    from megatron_csl import kernels
    from megatron_csl.compression import parse_spec

    spec = parse_spec(text)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
    elem = x.element_size()
    quantizer = spec.weight if kind == "weight" else spec.activation
    trust = quantizer is not None and getattr(quantizer, "estimator", "ste") == "trust"
    nbytes = x.numel() * (2 * elem + (1 if trust else 0))
    result = KernelResult(name=name, spec=spec.canonical, shape=tuple(shape),
                          dtype=str(dtype).replace("torch.", ""), nbytes=nbytes)
    if kind == "weight":
        fast: Callable = lambda: kernels.compress_weight(spec, x, require_cuda=False)  # noqa: E731
        reference: Callable = lambda: spec.compress_weight(x)  # noqa: E731
        why = kernels.weight_kernel_reason(spec, x.shape)
    else:
        fast = lambda: kernels.quantize_activation(spec, x, require_cuda=False)  # noqa: E731
        reference = lambda: spec.quantize_activation(x)  # noqa: E731
        why = kernels.activation_kernel_reason(spec, x.shape[-1])
    with kernels.use_kernels(False):
        expected = reference().detach()
        result.reference_s = median_time(reference, device, warmup=warmup, iters=iters)
    if why is not None or not kernels.triton_available():
        result.note = why or "triton is not installed"
        return result
    out = fast()
    if out is None:
        result.note = "no kernel for this case"
        return result
    diff = out.detach() != expected
    result.mismatches = int(diff.sum())
    result.equal = result.mismatches == 0
    result.kernel_s = median_time(fast, device, warmup=warmup, iters=iters)
    return result


def run_kernel_bench(weight_shapes: Sequence[tuple], activation_shapes: Sequence[tuple],
                     dtype: torch.dtype, device: torch.device, *, copy_bytes: int, warmup: int,
                     iters: int, cases=CASES, progress: Callable[[str], None] = print):
    """(results, copy bandwidth bytes/s)."""
    progress(f"measuring the copy bandwidth ({copy_bytes / 2 ** 20:.0f} MiB) ...")
    bandwidth = copy_bandwidth(device, copy_bytes)
    results = []
    for name, text, kind in cases:
        for shape in (weight_shapes if kind == "weight" else activation_shapes):
            progress(f"{text} {shape[0]}x{shape[1]} ...")
            results.append(bench_case(name, text, kind, shape, dtype, device, warmup=warmup,
                                      iters=iters))
    return results, bandwidth


def _gbps(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.2g}"


def format_kernel_table(results, bandwidth: float, device: torch.device) -> str:
    from tabulate import tabulate

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    head = (f"device: {name}; copy bandwidth {bandwidth / 1e9:,.0f} GB/s measured (read + "
            f"write); bytes = input read + output (+ trust mask) written once")
    rows = []
    for r in results:
        k_gbps, ref_gbps = r.kernel_gbps(), r.reference_gbps()
        rows.append([
            r.name, r.spec, f"{r.shape[0]}x{r.shape[1]}", r.dtype,
            "" if r.kernel_s is None else f"{r.kernel_s * 1e3:.3f}",
            "" if k_gbps is None else _gbps(k_gbps),
            "" if k_gbps is None else f"{100 * k_gbps * 1e9 / bandwidth:.0f}%",
            f"{r.reference_s * 1e3:.3f}", _gbps(ref_gbps),
            "" if r.kernel_s is None else f"{r.reference_s / r.kernel_s:.1f}x",
            {True: "yes", False: f"NO ({r.mismatches})", None: ""}[r.equal] + r.note,
        ])
    table = tabulate(rows, headers=["operation", "spec", "shape", "dtype", "kernel ms",
                                    "kernel GB/s", "of copy", "reference ms", "ref GB/s",
                                    "speed-up", "bitwise equal"])
    return head + "\n" + table


def results_as_dicts(results, bandwidth: float) -> dict:
    return {"copy_bytes_per_s": bandwidth,
            "results": [dict(dataclasses.asdict(r), kernel_gbps=r.kernel_gbps(),
                             reference_gbps=r.reference_gbps()) for r in results]}
