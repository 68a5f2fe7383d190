"""Integer x integer formats (w8a8, w4a4, ...) through a real int8 GEMM (torch._int_mm).

The formats' integer codes (CompressionSpec.weight_codes / activation_codes) are small integers:
the sym grid's odd codes 2k+1 with k in [-2^(b-1), 2^(b-1)-1], the zero grid's and ternary's
codes q themselves. For b <= 8 bits, k (or q) fits int8, so

    sum_j (2a_j+1)(2b_j+1) = 4 sum_j a_j b_j + 2 sum_j a_j + 2 sum_j b_j + K

is one int8 GEMM (int32 accumulate, exact) plus row sums: the exact integer result that the
float path (`F.linear(codes_x, codes_w)`) computes with rounding. The layer multiplies the units
afterwards, as on its float32 integer-codes path. The backward is the float linear's on the
codes (grad @ codes_w, grad^T @ codes_x), so the formats' estimators (straight-through, trust)
are unchanged. Fake-quant stays the reference these are tested against
(tests/kernels/test_int8_gemm.py, tests/kernels/test_gpu_int8.py).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

INT32_LIMIT = 2 ** 31


def _is_sym(quantizer) -> bool:
    """Whether the codes are the sym grid's odd 2k+1 (else the codes themselves)."""
    return quantizer.grid == "sym" and not quantizer.ternary


def int8_gemm_reason(spec, in_features: int) -> Optional[str]:
    """None when `spec`'s matmul can run as an int8 GEMM over `in_features` inputs, else why
    not."""
    reason = spec.integer_codes_reason()
    if reason is not None:
        return reason
    w, a = spec.weight, spec.activation
    if max(w.bits, a.bits) > 8:
        return "more than 8 bits"
    bw, ba = (2 if q.ternary else int(q.bits) for q in (w, a))
    # |4 sum ab| + |2 sum a| + |2 sum b| + K, the largest intermediate of int_codes_matmul
    if in_features * (2 ** (bw + ba) + 2 ** bw + 2 ** ba + 1) >= INT32_LIMIT:
        return f"sums over {in_features} inputs may overflow int32"
    return None


def _int8(codes: torch.Tensor, sym: bool) -> torch.Tensor:
    """int8 k (sym: codes = 2k+1) or q (zero grid, ternary) from integer-valued float codes."""
    k = (codes.float() - 1.0) * 0.5 if sym else codes.float()
    return k.to(torch.int8)


def _pad_to(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    pad_rows, pad_cols = rows - t.shape[0], cols - t.shape[1]
    return F.pad(t, (0, pad_cols, 0, pad_rows)) if pad_rows or pad_cols else t


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch._int_mm(a [m, k] int8, b [k, n] int8) -> int32 [m, n], zero-padded to what the
    kernels need (zeros add nothing to the sums): k a multiple of 8 (CUDA's rule; on a CPU,
    torch 2.13 returns wrong sums for k = 1 and n > 1), and on CUDA m > 16, n a multiple of 8."""
    m, k = a.shape
    n = b.shape[1]
    inner = -(-k // 8) * 8
    rows, cols = (max(m, 17), -(-n // 8) * 8) if a.is_cuda else (m, n)
    a, b = _pad_to(a, rows, inner), _pad_to(b, inner, cols)
    return torch._int_mm(a, b)[:m, :n]


def int_codes_matmul(codes_x: torch.Tensor, codes_w: torch.Tensor, sym_x: bool,
                     sym_w: bool) -> torch.Tensor:
    """codes_x [m, k] @ codes_w [n, k]^T exactly, as float32, through one int8 GEMM."""
    kx, kw = _int8(codes_x, sym_x), _int8(codes_w, sym_w)
    total = int_mm(kx, kw.t())
    inner = codes_x.shape[1]
    if sym_x and sym_w:
        total = (4 * total + 2 * kx.sum(1, dtype=torch.int32)[:, None]
                 + 2 * kw.sum(1, dtype=torch.int32)[None, :] + inner)
    elif sym_x:   # sum (2a+1) b = 2 sum ab + sum b
        total = 2 * total + kw.sum(1, dtype=torch.int32)[None, :]
    elif sym_w:
        total = 2 * total + kx.sum(1, dtype=torch.int32)[:, None]
    return total.float()


class Int8CodesLinear(torch.autograd.Function):
    """codes_x [..., k] @ codes_w [n, k]^T on the int8 GEMM (float32 out); backward as the
    float linear on the codes."""

    @staticmethod
    def forward(ctx, codes_x, codes_w, sym_x: bool, sym_w: bool):
        ctx.save_for_backward(codes_x, codes_w)
        flat = codes_x.reshape(-1, codes_x.shape[-1])
        out = int_codes_matmul(flat, codes_w, sym_x, sym_w)
        return out.reshape(*codes_x.shape[:-1], codes_w.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        codes_x, codes_w = ctx.saved_tensors
        grad = grad.to(codes_w.dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ codes_w
        if ctx.needs_input_grad[1]:
            grad_w = grad.reshape(-1, grad.shape[-1]).t() @ codes_x.reshape(-1, codes_x.shape[-1])
        return grad_x, grad_w, None, None


def int8_linear(spec, codes_x: torch.Tensor, x_unit: torch.Tensor, codes_w: torch.Tensor,
                w_unit: torch.Tensor) -> torch.Tensor:
    """The format's output codes_x codes_w^T * units, in codes_x's dtype (see module doc)."""
    out = Int8CodesLinear.apply(codes_x, codes_w, _is_sym(spec.activation), _is_sym(spec.weight))
    return (out * x_unit.float() * w_unit.reshape(-1).float()).to(codes_x.dtype)
