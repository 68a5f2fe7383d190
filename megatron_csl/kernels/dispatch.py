"""When a Triton kernel replaces the reference, and the autograd around it.

`compress_weight(spec, w, shard)` / `quantize_activation(spec, x, shard)` return the kernel's
result, or None when no kernel covers the case; the compression formats call them only for CUDA
tensors (megatron_csl.compression.spec), so CPU results never change. A covered case gives the
reference's result: the same kept set (ties: lowest index, which is what CUDA's torch.topk
keeps), the same integer codes, the same values, and the same gradient (straight-through or the
trust mask, | ~keep for pruned entries).

Covered: integer quantizers (any bits incl. ternary, sym/zero grid, rms/absmax/absmean scale,
row/g<size>/tensor granularity, ste/trust) without Hadamard; sparsity per row, per tensor and
N:M with the straight-through backward; their composition (s50+w4, ...); activation quantizers
of the same integer kind (per token). Left to the reference: float formats (fp8, fp4, mx, nv),
Hadamard rotations, RBBM, segments longer than MAX_SEGMENT, and statistics that span a
tensor-parallel split (RowParallelLinear at TP > 1 and per-tensor statistics of any sharded
weight), which need the reference's collectives.

Environment: MEGATRON_CSL_KERNELS=0 turns the kernels off, =check runs kernel and reference
side by side and raises on any difference (for a first run on a new GPU / Triton version).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from typing import Callable, Optional

import torch

ENV_VAR = "MEGATRON_CSL_KERNELS"
_MODES = ("1", "0", "check")
_override: list = [None]  # use_kernels() sets a mode for the current process


def triton_available() -> bool:
    """True when `import triton` would succeed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def kernel_mode() -> str:
    """'1' (kernels where covered), '0' (reference only) or 'check' (both, compared)."""
    if _override[0] is not None:
        return _override[0]
    mode = os.environ.get(ENV_VAR, "1").strip().lower() or "1"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR} must be one of {', '.join(_MODES)}, got {mode!r}")
    return mode


@contextlib.contextmanager
def use_kernels(mode):
    """Temporarily set the kernel mode: True/'1', False/'0' or 'check'."""
    mode = {True: "1", False: "0"}.get(mode, mode)
    if mode not in _MODES:
        raise ValueError(f"mode must be True, False, '1', '0' or 'check', got {mode!r}")
    previous, _override[0] = _override[0], mode
    try:
        yield
    finally:
        _override[0] = previous


# ---- coverage -----------------------------------------------------------------------------------

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _quantizer_reason(quantizer, seg_len: int) -> Optional[str]:
    if quantizer.kind != "int":
        return "float formats run on the reference"
    if quantizer.had:
        return "Hadamard rotation runs on the reference"
    from .ops import MAX_SEGMENT

    if seg_len > MAX_SEGMENT:
        return f"segments of {seg_len} > MAX_SEGMENT {MAX_SEGMENT}"
    return None


def _segment(granularity, cols: int) -> int:
    """Elements per statistic: the row, a group, or (whole tensor) the row as partial sums."""
    return granularity if isinstance(granularity, int) else cols


def weight_kernel_reason(spec, shape, shard=None) -> Optional[str]:
    """None when the kernels cover `spec.compress_weight` for a weight of `shape` under `shard`,
    else why not."""
    from megatron_csl.compression import LOCAL

    shard = LOCAL if shard is None else shard
    if not spec.compresses_weights:
        return "the format leaves weights alone"
    if len(shape) != 2 or 0 in shape:
        return f"weight shape {tuple(shape)} is not a non-empty matrix"
    rows, cols = shape
    split_rows = shard.weight_group(1) is not None      # per-row statistics span ranks
    split_tensor = shard.weight_tensor_group() is not None
    sparsity, quantizer = spec.sparsity_format, spec.weight
    if sparsity is not None:
        if sparsity.rbbm:
            return "RBBM backward runs on the reference"
        pattern = sparsity.pattern
        if pattern == "row" and split_rows or pattern == "tensor" and split_tensor:
            return f"per-{pattern} top-k over a tensor-parallel split needs the reference's gather"
        if pattern == "row":
            from .ops import MAX_SEGMENT

            if cols > MAX_SEGMENT:
                return f"rows of {cols} > MAX_SEGMENT {MAX_SEGMENT}"
    if quantizer is not None:
        if quantizer.kind != "int":
            return _quantizer_reason(quantizer, cols)
        granularity = quantizer.granularity
        if granularity == "row" and split_rows or granularity == "tensor" and split_tensor:
            return (f"per-{granularity} statistics over a tensor-parallel split need the "
                    "reference's all-reduce")
        return _quantizer_reason(quantizer, _segment(granularity, cols))
    return None


def activation_kernel_reason(spec, last_dim: int, shard=None) -> Optional[str]:
    """None when the kernels cover `spec.quantize_activation` for this last dimension."""
    from megatron_csl.compression import LOCAL

    shard = LOCAL if shard is None else shard
    quantizer = spec.activation
    if quantizer is None:
        return "the format leaves activations alone"
    if shard.activation_group() is not None:
        return "per-token statistics over a tensor-parallel split need the reference's all-reduce"
    return _quantizer_reason(quantizer, _segment(getattr(quantizer, "granularity", "row"),
                                                 last_dim))


def _runtime_reason(t: torch.Tensor, require_cuda: bool) -> Optional[str]:
    if kernel_mode() == "0":
        return f"{ENV_VAR}=0"
    if require_cuda and not t.is_cuda:
        return "not a CUDA tensor"
    if t.dtype not in _DTYPES:
        return f"dtype {t.dtype}"
    if not triton_available():
        return "triton is not installed"
    return None


# ---- forward computations -----------------------------------------------------------------------

def _int_quantize(quantizer, x: torch.Tensor, keep):
    """(value, trust mask | ~keep or None) of quantizer on x [rows, cols] (or [..., cols])."""
    from . import ops

    cols = x.shape[-1]
    granularity = quantizer.granularity
    if granularity == "tensor":
        step, rms = ops.tensor_step(quantizer, ops.segment_sums(x, cols, keep))
        return ops.int_fake_quant(x, quantizer, cols, keep, step=step, rms=rms)
    return ops.int_fake_quant(x, quantizer, _segment(granularity, cols), keep)


def _weight_forward(spec, w: torch.Tensor):
    from megatron_csl.compression.sparsity import pruned_count

    from . import ops

    sparsity, quantizer = spec.sparsity_format, spec.weight
    keep = None
    if sparsity is not None:
        rows, cols = w.shape
        values = quantizer is None
        if sparsity.pattern == "row":
            keep, value = ops.segment_topk(w, cols, cols - pruned_count(sparsity.percent, cols),
                                           values=values)
        elif sparsity.pattern == "tensor":
            n = w.numel()
            keep, value = ops.tensor_topk(w, n - pruned_count(sparsity.percent, n), values=values)
        else:
            n_keep, m = sparsity.pattern
            keep, value = ops.segment_topk(w, m, n_keep, values=values)
        if quantizer is None:
            return value, None  # straight-through: no gradient mask
    return _int_quantize(quantizer, w, keep)


class _KernelFakeQuant(torch.autograd.Function):
    """Forward: a kernel's value. Backward: grad (straight-through) or grad * mask — what the
    reference's `value + (x - x.detach()) * mask` gives, without its extra elementwise passes."""

    @staticmethod
    def forward(ctx, x, compute: Callable):
        out, grad_mask = compute(x.detach())
        ctx.has_mask = grad_mask is not None
        if ctx.has_mask:
            ctx.save_for_backward(grad_mask)
        return out

    @staticmethod
    def backward(ctx, grad):
        if ctx.has_mask:
            (grad_mask,) = ctx.saved_tensors
            return grad * grad_mask.to(grad.dtype), None
        return grad, None


# ---- hooks the formats call ---------------------------------------------------------------------

def compress_weight(spec, w: torch.Tensor, shard=None, *, require_cuda: bool = True):
    """The kernels' `spec.compress_weight(w, shard)`, or None when they do not cover it.

    require_cuda=False lets tests run the kernels on CPU tensors (TRITON_INTERPRET=1)."""
    shard = _local_if_none(shard)
    if _runtime_reason(w, require_cuda) or weight_kernel_reason(spec, w.shape, shard):
        return None
    out = _KernelFakeQuant.apply(w, functools.partial(_weight_forward, spec))
    if kernel_mode() == "check":
        _check("compress_weight", spec, out, w, lambda: spec.compress_weight(w, shard))
    return out


def quantize_activation(spec, x: torch.Tensor, shard=None, *, require_cuda: bool = True):
    """The kernels' `spec.quantize_activation(x, shard)`, or None when they do not cover it."""
    shard = _local_if_none(shard)
    if (x.dim() < 1 or _runtime_reason(x, require_cuda)
            or activation_kernel_reason(spec, x.shape[-1], shard)):
        return None
    quantizer = spec.activation
    out = _KernelFakeQuant.apply(x, functools.partial(_int_quantize, quantizer, keep=None))
    if kernel_mode() == "check":
        _check("quantize_activation", spec, out, x, lambda: spec.quantize_activation(x, shard))
    return out


def _local_if_none(shard):
    if shard is None:
        from megatron_csl.compression import LOCAL

        return LOCAL
    return shard


def _check(what: str, spec, out: torch.Tensor, x: torch.Tensor, reference: Callable) -> None:
    with use_kernels(False), torch.no_grad():
        expected = reference()
    if not torch.equal(out.detach(), expected):
        bad = (out.detach() != expected)
        raise RuntimeError(
            f"{ENV_VAR}=check: the Triton kernel's {what} for {spec.canonical!r} differs from "
            f"the reference at {int(bad.sum())} of {bad.numel()} entries (shape "
            f"{tuple(x.shape)}, dtype {x.dtype}); run with {ENV_VAR}=0 and report it")


def describe(spec, weight_shape=(4096, 4096), activation_dim: Optional[int] = None,
             shard=None) -> str:
    """One line: which parts of `spec` run on kernels, for tables and logs."""
    parts = []
    if spec.compresses_weights:
        why = weight_kernel_reason(spec, weight_shape, shard)
        parts.append("W: kernel" if why is None else f"W: reference ({why})")
    if spec.compresses_activations:
        dim = weight_shape[1] if activation_dim is None else activation_dim
        why = activation_kernel_reason(spec, dim, shard)
        parts.append("A: kernel" if why is None else f"A: reference ({why})")
    return "; ".join(parts) or "-"
