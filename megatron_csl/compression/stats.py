"""Per-row / per-group / per-tensor statistics, completed over a tensor-parallel group.

Every quantizer sees its input as a 2-D matrix [rows, cols] (weights: [out, in]; activations:
[tokens, hidden]) and a granularity:
    "row"     one statistic per row (per output channel / per token),
    "tensor"  one statistic for the whole matrix,
    int g     one statistic per row and group of g consecutive columns.
Sums are accumulated in float64, so the all-reduced sum of the shards' partial sums rounds to the
same float32 value as the unsharded sum (bit-identical except with probability ~1e-9 per value).
Maxima are exact. Optional `mask` restricts statistics to the surviving (unpruned) entries.
"""
from __future__ import annotations

import math

import torch

from .shard import all_reduce_max_, all_reduce_sum_


class Grouped:
    """A [rows, cols] matrix viewed as [rows, groups, group_size] with its reduction dims."""

    def __init__(self, x: torch.Tensor, granularity, group=None):
        rows, cols = x.shape
        if granularity == "tensor":
            self.view_shape, self.dims = (rows, 1, cols), (0, 2)
        elif granularity == "row":
            self.view_shape, self.dims = (rows, 1, cols), (2,)
        else:
            self.view_shape, self.dims = (rows, cols // granularity, granularity), (2,)
        self.shape = x.shape
        self.group = group  # process group completing the reduction (None: local)

    def view(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.view_shape)

    def unview(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(self.shape)

    # All statistics are float64 tensors broadcastable against view(x).
    def count(self, mask_v: torch.Tensor | None, device) -> torch.Tensor:
        if mask_v is None:
            n = math.prod(self.view_shape[d] for d in self.dims)
            shape = [1 if d in self.dims else s for d, s in enumerate(self.view_shape)]
            c = torch.full(shape, float(n), dtype=torch.float64, device=device)
        else:
            c = mask_v.sum(dim=self.dims, keepdim=True, dtype=torch.float64)
        return all_reduce_sum_(c, self.group)

    def sum(self, t_v: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum_(t_v.sum(dim=self.dims, keepdim=True, dtype=torch.float64), self.group)

    def amax(self, t_v: torch.Tensor) -> torch.Tensor:
        return all_reduce_max_(t_v.amax(dim=self.dims, keepdim=True), self.group).double()

    @torch.no_grad()
    def moments(self, x_v: torch.Tensor, mask_v: torch.Tensor | None, kind: str) -> torch.Tensor:
        """kind "rms", "absmean" or "absmax" of x over each group (survivors only with a mask)."""
        if mask_v is not None:
            x_v = x_v * mask_v
        if kind == "absmax":
            return self.amax(x_v.abs())
        count = self.count(mask_v, x_v.device).clamp(min=1.0)
        if kind == "rms":
            return (self.sum(x_v * x_v) / count).sqrt()
        if kind == "absmean":
            return self.sum(x_v.abs()) / count
        raise ValueError(f"unknown statistic {kind!r}")
