"""Forward value + defined backward: attach a quantizer's (and sparsity's) gradient to its input.

The forward value is computed without autograd; the gradient is attached with the detach trick
    out = value + (x - x.detach()) * grad_mask
whose forward adds an exact zero and whose backward is `grad * grad_mask` (straight-through when
grad_mask is None). With a Hadamard block the quantizer works in the rotated basis
x_rot = x H and the result is rotated back (H is symmetric and orthonormal, so the layer sees the
weight/activation in its original basis and (x_hat)(w_hat)^T = Q(xH) Q(wH)^T); the trust mask then
applies in the rotated basis: grad_x = ((grad H) * mask) H.
"""
from __future__ import annotations

import torch

from .hadamard import block_hadamard


def attach_gradient(x: torch.Tensor, value: torch.Tensor, grad_mask: torch.Tensor | None,
                    had: int = 0) -> torch.Tensor:
    """value (no grad) with the backward of the estimator: identity or masked (in had basis)."""
    if not x.requires_grad:
        return value
    delta = x - x.detach()
    if grad_mask is None:
        return value + delta
    if had:
        return value + block_hadamard(block_hadamard(delta, had) * grad_mask, had)
    return value + delta * grad_mask


def fake_quantize(quantizer, x: torch.Tensor, row_group, tensor_group,
                  keep: torch.Tensor | None = None, sparse_grad: torch.Tensor | None = None,
                  prune=None):
    """Quantize float32 matrix x [rows, cols] (optionally after pruning).

    keep: surviving entries (statistics over survivors, pruned entries exactly 0).
    sparse_grad: the sparsity's own gradient mask (RBBM), None for straight-through.
    prune: instead of keep/sparse_grad, a function of the (rotated, with a Hadamard quantizer)
        input returning (keep, sparse_grad): with `had` the order is rotate, prune, quantize the
        survivors, rotate back (QuEST), and keep and both masks live in the rotated basis.
    """
    with torch.no_grad():
        xd = x.detach()
        had = quantizer.had if quantizer is not None else 0
        basis = block_hadamard(xd, had) if had else xd
        if prune is not None:
            keep, sparse_grad = prune(basis)
        if quantizer is None:
            value, qgrad = basis * keep, None
        else:
            value, qgrad = quantizer.quantize(basis, row_group, tensor_group, keep)
            if keep is not None:
                value = value * keep
        if had:
            value = block_hadamard(value, had)
        grad = _combined_grad(qgrad, keep, sparse_grad)
    return attach_gradient(x, value, grad, had)


def _combined_grad(qgrad, keep, sparse_grad):
    """The estimator's gradient mask: pruned entries take the sparsity's gradient (RBBM or
    straight-through); survivors also the quantizer's mask (trust). None = straight-through."""
    grad = sparse_grad
    if qgrad is not None:
        qgrad = qgrad if keep is None else (qgrad | ~keep)
        grad = qgrad.float() if grad is None else grad * qgrad.float()
    return grad


def integer_operand(quantizer, x: torch.Tensor, row_group, tensor_group,
                    keep: torch.Tensor | None = None, sparse_grad: torch.Tensor | None = None):
    """fake_quantize split into (codes, unit): integer-valued codes [rows, cols] with
    codes * unit == fake_quantize(...) (same float) and unit [rows, 1] or [1, 1].

    codes carry fake_quantize's gradient divided by unit, so a matmul on codes followed by the
    product of units has fake_quantize's backward. The point: a matmul of integer codes is exact
    in float32 (below 2^24), so it does not depend on how tensor parallelism splits its sum.
    Needs an integer quantizer without Hadamard and with per-row or per-tensor statistics.
    """
    with torch.no_grad():
        codes, unit, qgrad = quantizer.quantize_codes(x.detach(), row_group, tensor_group, keep)
        if keep is not None:
            codes = codes * keep
        grad = _combined_grad(qgrad, keep, sparse_grad)
        # An all-zero row (unit 0) has all-zero codes; it passes no gradient through its codes.
        per_unit = torch.where(unit > 0, 1.0 / torch.where(unit > 0, unit, 1.0), 0.0)
        grad = per_unit if grad is None else grad * per_unit
    return attach_gradient(x, codes, grad), unit
