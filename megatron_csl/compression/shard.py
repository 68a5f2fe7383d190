"""Tensor-parallel context and the collectives that complete statistics over a split dimension.

A format computes scales, thresholds and masks from statistics over rows, tokens or the whole
tensor. When tensor parallelism splits such a dimension over ranks, each rank only sees a slice;
these helpers reduce (sums, maxima) or gather (top-k) over the group so that every rank computes
exactly the statistic of the unsharded tensor. All of them run without autograd: statistics carry
no gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ShardContext:
    """How the tensor handed to a format is split over a tensor-parallel group.

    group: the tensor-parallel process group (None: the tensor is not split).
    weight_split_dim: 0 when output rows are split (ColumnParallelLinear), 1 when the input
        dimension is split (RowParallelLinear), None when the weight is whole.
    input_split: True when the activation's last dimension is split (RowParallelLinear).
    Shards are assumed equal-sized and ordered by rank within the group (megatron's layout).
    """

    group: Any = None
    weight_split_dim: int | None = None
    input_split: bool = False

    def __post_init__(self):
        if self.weight_split_dim not in (None, 0, 1):
            raise ValueError(
                f"ShardContext.weight_split_dim must be 0 (output rows split), 1 (input dim split) "
                f"or None, got {self.weight_split_dim!r}")

    def _active_group(self):
        if self.group is None or not dist.is_available() or not dist.is_initialized():
            return None
        return self.group if dist.get_world_size(self.group) > 1 else None

    def weight_group(self, dim: int):
        """The group to reduce over for a statistic spanning weight dimension `dim` (or None)."""
        group = self._active_group()
        return group if group is not None and self.weight_split_dim == dim else None

    def weight_tensor_group(self):
        """The group to reduce over for a whole-weight statistic (or None)."""
        group = self._active_group()
        return group if group is not None and self.weight_split_dim is not None else None

    def activation_group(self):
        """The group to reduce over for a per-token activation statistic (or None)."""
        group = self._active_group()
        return group if group is not None and self.input_split else None


LOCAL = ShardContext()


def all_reduce_sum_(t: torch.Tensor, group) -> torch.Tensor:
    """In-place SUM over `group`; a no-op when group is None."""
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def all_reduce_max_(t: torch.Tensor, group) -> torch.Tensor:
    """In-place MAX over `group`; a no-op when group is None."""
    if group is not None:
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def gather_along(t: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Concatenate every rank's (equal-sized) slice along `dim`, in rank order."""
    if group is None:
        return t
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def local_slice(full: torch.Tensor, dim: int, local_size: int, group) -> torch.Tensor:
    """This rank's slice of a tensor produced by `gather_along`."""
    if group is None:
        return full
    return full.narrow(dim, dist.get_rank(group) * local_size, local_size)
