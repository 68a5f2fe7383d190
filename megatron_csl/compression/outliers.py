"""Outlier-preserving quantization (`w4:out1`): the largest magnitudes of each row stay exact.

The p percent largest |w| of every row (k = floor(p * in / 100) entries, exact count via top-k
indices; over a tensor-parallel split of the row the magnitudes are gathered first, as for
per-row sparsity) keep their full-precision value; the quantizer sees the other entries only (its
statistics are computed over them) and replaces them by grid values. Backward: straight-through
for the outliers, the quantizer's estimator for the rest. Storage: see IntQuant.storage_bits.
"""
from __future__ import annotations

import torch

from .fake_quant import attach_gradient
from .shard import ShardContext, gather_along, local_slice
from .sparsity import pruned_count


@torch.no_grad()
def outlier_mask(x: torch.Tensor, percent: float, shard: ShardContext) -> torch.Tensor:
    """bool [rows, cols_local]: the floor(percent * in / 100) largest |x| of each (full) row."""
    mags = x.detach().abs().float()
    group = shard.weight_group(1)
    full = gather_along(mags, 1, group) if group is not None else mags
    count = pruned_count(percent, full.shape[1])
    mask = torch.zeros_like(full, dtype=torch.bool)
    if count:
        idx = torch.topk(full, count, dim=1, sorted=False).indices
        mask.scatter_(1, idx, True)
    return local_slice(mask, 1, mags.shape[1], group) if group is not None else mask


def fake_quantize_with_outliers(quantizer, x: torch.Tensor, shard: ShardContext) -> torch.Tensor:
    """Quantize float32 weight x [out, in_local] keeping each row's outliers exact."""
    with torch.no_grad():
        xd = x.detach()
        outliers = outlier_mask(xd, quantizer.outliers, shard)
        value, qgrad = quantizer.quantize(xd, shard.weight_group(1), shard.weight_tensor_group(),
                                          ~outliers)
        value = torch.where(outliers, xd, value)
        grad = None if qgrad is None else (qgrad | outliers).float()
    return attach_gradient(x, value, grad)
