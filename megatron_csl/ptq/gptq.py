"""GPTQ (Frantar et al. 2022) onto this project's integer grids, in plain PyTorch.

`gptq_quantize(weight, hessian, quantizer)` returns the weight quantized column by column, each
column's rounding error spread over the columns not yet quantized so that the layer's output on
the calibration inputs (whose second moment is `hessian` = 2 X^T X / n) changes least:

    H <- H + damp * mean(diag H) * I          (dead inputs, diag 0, get H_jj = 1 and weight 0)
    U  = upper Cholesky factor of H^-1         (H^-1 = U^T U)
    for each block of B columns (lazy batch updates):
        for column j in the block:
            q_j   = Q(w_j)                      the grid of `quantizer`, step fixed (below)
            e_j   = (w_j - q_j) / U_jj
            w_k  -= e_j * U_jk   for the block's later columns k
        W[:, after block] -= E_block @ U[block, after block]

The grid is the quantizer's own, with the step its scale rule gives (rms, absmax, absmean): per
row / per tensor from the weight before any update (as RTN), per group of g columns from the
group's updated weights when the sweep reaches it (GPTQ's non-static groups). Columns are taken
in their natural order (no act-order). Integer formats without Hadamard; anything else is refused
by `check_gptq_quantizer`.
"""
from __future__ import annotations

import dataclasses

import torch

from megatron_csl.compression.quantizers import IntQuant
from megatron_csl.compression.stats import Grouped

DAMP = 0.01        # the paper's percdamp: 1% of the mean diagonal
BLOCK_SIZE = 128   # columns per lazy batch update


class GPTQError(ValueError):
    """A weight format GPTQ cannot quantize to, or a Hessian that does not fit the weight."""


def check_gptq_quantizer(spec) -> IntQuant:
    """The integer weight quantizer of `spec` if GPTQ supports it, else GPTQError naming why."""
    w = spec.weight
    why = None
    if spec.sparsity_format is not None:
        why = "sparsity"
    elif spec.activation is not None:
        why = "activation quantization"
    elif not isinstance(w, IntQuant):
        why = "float formats" if w is not None else "a spec without a weight quantizer"
    elif w.had:
        why = "'had' (the calibration Hessian would have to be rotated too)"
    elif w.learned:
        why = f"'{w.learned}' (a learned step needs training)"
    if why is not None:
        raise GPTQError(f"GPTQ quantizes weights to an integer grid (w<b> with sym/zero, "
                        f"rms/absmax/absmean, row/tensor/g<size>); {spec.canonical!r} has {why}; "
                        f"use --method rtn")
    return w


def _steps(quantizer: IntQuant, w: torch.Tensor) -> torch.Tensor:
    """The grid step of every row [rows, 1] or of the tensor [1, 1] for weight w."""
    grouped = Grouped(w, quantizer.granularity, None)
    step = quantizer.step(grouped.view(w), grouped, None)
    return step.reshape(-1, 1) if quantizer.granularity == "row" else step.reshape(1, 1)


def _round(quantizer: IntQuant, column: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    codes, unit, _ = quantizer._codes(column, step)
    return codes * unit


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, quantizer: IntQuant,
                  block_size: int = BLOCK_SIZE, damp: float = DAMP) -> torch.Tensor:
    """GPTQ-quantized copy of weight [rows, cols] (same dtype); hessian [cols, cols]."""
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise GPTQError(f"the Hessian is {tuple(hessian.shape)} but the weight has {cols} "
                        f"input columns")
    group = quantizer.granularity if isinstance(quantizer.granularity, int) else None
    if group is not None and cols % group:
        raise GPTQError(f"group size {group} does not divide the {cols} input columns")
    W = weight.detach().double().clone()
    H = hessian.detach().double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    if group is not None:   # whole groups per block, so a group's columns are all in W1
        block_size = group * max(1, block_size // group)
        per_row = dataclasses.replace(quantizer, granularity="row")
    step = None if group is not None else _steps(quantizer, W)
    Q = torch.zeros_like(W)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        W1, U1 = W[:, start:end].clone(), U[start:end, start:end]
        E1 = torch.zeros_like(W1)
        for i in range(end - start):
            col = start + i
            if group is not None and col % group == 0:
                # the group's step, from its weights as updated so far
                step = _steps(per_row, W1[:, i:i + group])
            w = W1[:, i:i + 1]
            q = _round(quantizer, w, step)
            Q[:, col:col + 1] = q
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err * U1[i:i + 1, i:]
            E1[:, i:i + 1] = err
        W[:, end:] -= E1 @ U[start:end, end:]
    return Q.to(weight.dtype)


def layer_output_error(weight: torch.Tensor, quantized: torch.Tensor,
                       hessian: torch.Tensor) -> float:
    """tr((W - Q) H (W - Q)^T): the squared error of the layer's output on the calibration
    inputs (up to GPTQ's factor 2/n), the quantity GPTQ minimises."""
    d = (weight.double() - quantized.double())
    return float(torch.einsum("ij,jk,ik->", d, hessian.double(), d))
