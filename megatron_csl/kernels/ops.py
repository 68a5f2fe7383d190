"""Launchers of the Triton kernels: plain tensor functions, no autograd, no dispatch decisions.

Each function mirrors one reference computation (named in its docstring) and returns tensors
on the input's device. Inputs are made contiguous; masks come back as torch.bool. The
parameters of a format come from the reference's own dataclasses (IntQuant, Sparsity), so the
constants (alpha*, beta*, tau*, trust tolerance and clip) are the reference's own numbers.
"""
from __future__ import annotations

import functools

import torch

# Largest segment (row, token, group) a program holds in registers. Longer segments are not
# covered by the kernels (the dispatcher leaves them to the reference).
MAX_SEGMENT = 16384
# Elements per program for the segment kernels and the whole-tensor passes.
TILE = 4096
TENSOR_BLOCK = 8192


def _kernels():
    from . import triton_kernels

    return triton_kernels


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _tile(seg_len: int):
    """(BLOCK_R, BLOCK_C, num_warps) for segments of seg_len elements."""
    if seg_len > MAX_SEGMENT:
        raise ValueError(f"segment length {seg_len} exceeds the kernels' MAX_SEGMENT "
                         f"{MAX_SEGMENT}; use the reference implementation")
    block_c = _next_pow2(seg_len)
    block_r = max(1, TILE // block_c)
    return block_r, block_c, 4 if block_r * block_c <= 4096 else (8 if block_c <= 8192 else 16)


# Launch options: no FMA contraction (a * b + c rounds twice, as in eager PyTorch).
_EXACT = dict(enable_fp_fusion=False)


# ---- integer fake-quant -------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _int_constants(quantizer):
    """Compile-time flags and the float64 / float32 constants of an IntQuant."""
    from megatron_csl.compression.quantizers import (ONE_BIT_TRUST_CLIP, SQRT_HALF_PI,
                                                     TRUST_TOLERANCE)

    ternary = quantizer.ternary
    bits = 2 if ternary else int(quantizer.bits)
    qmin, qmax = quantizer._code_range()
    sym = quantizer.grid == "sym" and not ternary
    flags = dict(
        QMIN=qmin, QMAX=qmax,
        SCALE={"absmax": 0, "rms": 1, "absmean": 2}[quantizer.scale],
        FLOOR_GRID=sym,
        ZERO_ABSMAX=quantizer.scale == "absmax" and quantizer.grid == "zero" and not ternary,
        HALF_RANGE=sym,
        TRUST=quantizer.estimator == "trust",
        ONE_BIT=quantizer.estimator == "trust" and quantizer.bits == 1,
    )
    consts64 = (float(quantizer._rms_multiplier()), float(2 ** (bits - 1)),
                float(2 ** bits - 1), SQRT_HALF_PI)
    consts32 = (1.0 + TRUST_TOLERANCE, ONE_BIT_TRUST_CLIP[bool(quantizer.had)])
    return flags, consts64, consts32


@functools.lru_cache(maxsize=None)
def _constant_tensors(quantizer, device: torch.device):
    """The constants as device tensors, made once per quantizer and device: torch.tensor(...,
    device="cuda") is a host-to-device copy that synchronizes, so it must not run per call
    (tests/kernels/test_no_host_sync.py)."""
    flags, c64, c32 = _int_constants(quantizer)
    return (flags, torch.tensor(c64, dtype=torch.float64, device=device),
            torch.tensor(c32, dtype=torch.float32, device=device))


def int_fake_quant(x: torch.Tensor, quantizer, seg_len: int, keep: torch.Tensor | None = None,
                   *, step: torch.Tensor | None = None, rms: torch.Tensor | None = None,
                   return_stats: bool = False):
    """IntQuant.quantize of x viewed as [-1, seg_len] (one statistic per segment), with the
    survivors' statistics and `value * keep` of fake_quantize when `keep` is given.

    Returns (out in x's dtype and shape, trust mask (bool, trust mask | ~keep) or None[, step
    fp32 [segments], rms fp64 [segments]]). `step`/`rms` given (0-d or [segments]) replace the
    segment statistics (whole-tensor granularity).
    """
    k = _kernels()
    x = x.contiguous()
    n = x.numel()
    if n % seg_len:
        raise ValueError(f"{n} elements do not split into segments of {seg_len}")
    n_seg = n // seg_len
    flags, c64, c32 = _constant_tensors(quantizer, x.device)
    block_r, block_c, warps = _tile(seg_len)
    out = torch.empty_like(x)
    gmask = torch.empty(x.shape, dtype=torch.uint8, device=x.device) if flags["TRUST"] else out
    keep_u8 = keep.contiguous().view(torch.uint8) if keep is not None else x
    step_out = torch.empty(n_seg, dtype=torch.float32, device=x.device)
    rms_out = torch.empty(n_seg, dtype=torch.float64, device=x.device)
    given = step is not None
    if given:
        step_in = step.reshape(-1).to(torch.float32)
        rms_in = (rms if rms is not None else torch.zeros_like(step, dtype=torch.float64)
                  ).reshape(-1).to(torch.float64)
        stride = 0 if step_in.numel() == 1 else 1
    else:
        step_in, rms_in, stride = step_out, rms_out, 0
    grid = (triton_cdiv(n_seg, block_r),)
    k.int_fake_quant_kernel[grid](
        x, keep_u8, step_in, rms_in, out, gmask, step_out, rms_out, c64, c32,
        n_seg, seg_len, stride, HAS_KEEP=keep is not None, STEP_GIVEN=given,
        STORE_STATS=return_stats and not given, OUT_BF16=x.dtype == torch.bfloat16,
        BLOCK_R=block_r, BLOCK_C=block_c,
        num_warps=warps, **flags, **_EXACT)
    mask = gmask.view(torch.bool) if flags["TRUST"] else None
    if return_stats:
        return out, mask, step_out, rms_out
    return out, mask


def segment_sums(x: torch.Tensor, seg_len: int, keep: torch.Tensor | None = None):
    """Per-segment (sum x^2 fp64, sum |x| fp64, max |x| fp32, count fp64) over the survivors."""
    k = _kernels()
    x = x.contiguous()
    n_seg = x.numel() // seg_len
    block_r, block_c, warps = _tile(seg_len)
    outs = [torch.empty(n_seg, dtype=d, device=x.device)
            for d in (torch.float64, torch.float64, torch.float32, torch.float64)]
    keep_u8 = keep.contiguous().view(torch.uint8) if keep is not None else x
    k.segment_sums_kernel[(triton_cdiv(n_seg, block_r),)](
        x, keep_u8, *outs, n_seg, seg_len, HAS_KEEP=keep is not None, BLOCK_R=block_r,
        BLOCK_C=block_c, num_warps=warps, **_EXACT)
    return outs


def tensor_step(quantizer, sums) -> tuple[torch.Tensor, torch.Tensor]:
    """IntQuant.step for one whole-tensor statistic from segment_sums' partials, in the
    reference's float64 order. Returns (step fp32 0-d, rms fp64 0-d)."""
    from megatron_csl.compression.quantizers import SQRT_HALF_PI

    sum_sq, sum_abs, amax, count = sums
    count = count.sum().clamp(min=1.0)
    rms = (sum_sq.sum() / count).sqrt()
    if quantizer.scale == "absmax":
        size = amax.max().double()
        if quantizer.grid == "zero" and not quantizer.ternary:
            size = size / 2 ** (int(quantizer.bits) - 1)
    else:
        stat = rms if quantizer.scale == "rms" else sum_abs.sum() / count
        size = (stat if quantizer.scale == "rms" else stat * SQRT_HALF_PI) \
            * quantizer._rms_multiplier()
    if quantizer.grid == "sym" and not quantizer.ternary:
        size = size * 2.0 / (2 ** int(quantizer.bits) - 1)
    return size.float(), rms


# ---- top-k masks --------------------------------------------------------------------------------

def segment_topk(x: torch.Tensor, seg_len: int, keep_count: int, *, values: bool = False):
    """Keep the `keep_count` largest |x| of every segment of `seg_len` (per-row top-k: the row;
    N:M: M with keep_count N); ties go to the lowest index. Returns (keep bool, x * keep or None).
    """
    k = _kernels()
    x = x.contiguous()
    n_seg = x.numel() // seg_len
    if not 1 <= keep_count <= seg_len:
        raise ValueError(f"keep_count must be in 1..{seg_len}, got {keep_count}")
    block_r, block_c, warps = _tile(seg_len)
    keep = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    out = torch.empty_like(x) if values else x
    k.segment_topk_kernel[(triton_cdiv(n_seg, block_r),)](
        x, keep, out, n_seg, seg_len, keep_count, STORE_VALUE=values, BLOCK_R=block_r,
        BLOCK_C=block_c, num_warps=warps, **_EXACT)
    return keep.view(torch.bool), (out if values else None)


def tensor_topk(x: torch.Tensor, keep_count: int, *, values: bool = False):
    """Keep the `keep_count` largest |x| of the whole tensor (flattened, row-major), ties to the
    lowest flat index: radix select on the float bits, 8 bits per pass (4 histogram passes,
    each followed by a one-program select), then one pass counting ties per block and one
    writing the mask: 10 kernel launches and a cumsum, no sort, no host sync.
    Returns (keep bool, x * keep or None)."""
    k = _kernels()
    x = x.contiguous()
    n = x.numel()
    if not 1 <= keep_count <= n:
        raise ValueError(f"keep_count must be in 1..{n}, got {keep_count}")
    dev = x.device
    blocks = triton_cdiv(n, TENSOR_BLOCK)
    prefix = torch.zeros((), dtype=torch.int32, device=dev)
    remaining = torch.full((), keep_count, dtype=torch.int64, device=dev)
    hist = torch.zeros(512, dtype=torch.int32, device=dev)  # cleared by each select
    for shift in (24, 16, 8, 0):
        k.radix_histogram_kernel[(blocks,)](x, n, prefix, hist, SHIFT=shift,
                                            BLOCK=TENSOR_BLOCK, **_EXACT)
        k.radix_select_kernel[(1,)](hist, prefix, remaining, SHIFT=shift, **_EXACT)
    tie_counts = torch.empty(blocks, dtype=torch.int64, device=dev)
    k.tie_count_kernel[(blocks,)](x, n, prefix, tie_counts, BLOCK=TENSOR_BLOCK, **_EXACT)
    offsets = tie_counts.cumsum(0) - tie_counts
    keep = torch.empty(x.shape, dtype=torch.uint8, device=dev)
    out = torch.empty_like(x) if values else x
    k.threshold_mask_kernel[(blocks,)](x, n, prefix, remaining, offsets, keep, out,
                                       STORE_VALUE=values, BLOCK=TENSOR_BLOCK, **_EXACT)
    return keep.view(torch.bool), (out if values else None)


def triton_cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def bytes_of(*tensors) -> int:
    """Bytes of the given tensors (for bandwidth figures)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


__all__ = ["MAX_SEGMENT", "int_fake_quant", "segment_sums", "tensor_step", "segment_topk",
           "tensor_topk", "bytes_of"]
