"""Magnitude top-k weight sparsity (per row, per tensor, N:M) and its backward masks.

The mask keeps the k largest magnitudes of each unit (row / tensor / group of M consecutive input
weights), k = n - floor(p n / 100) for p percent pruned, recomputed every forward. The kept count
is exact even with repeated magnitudes: the mask is built from torch.topk indices. Over a split
dimension the magnitudes are all-gathered, the mask is computed on the full tensor and the local
slice kept, so sharded and unsharded runs pick the same entries.

Backward: straight-through (every weight, pruned or not, gets its gradient) or RBBM (banded
backward masking): with T_k = the smallest kept magnitude of the unit and
T_p = RMS(theta) Phi^-1(0.5 + p_b) (p_b = rbbm percent / 100; RMS over the row, or the tensor for
per-tensor sparsity), gradients flow only where |theta| < min(T_p, T_k) or |theta| > max(T_p, T_k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Union

import torch
from scipy.special import ndtri  # the standard normal quantile, without scipy.stats' import cost

from .shard import ShardContext, gather_along, local_slice
from .stats import Grouped

Pattern = Union[str, tuple]  # "row" | "tensor" | (N, M)


def pruned_count(percent: float, n: int) -> int:
    """floor(percent * n / 100), exactly (percent as written in the spec, e.g. 87.5)."""
    return math.floor(Fraction(str(percent)) * n / 100)


def _topk_mask(mags: torch.Tensor, keep: int, dim: int) -> torch.Tensor:
    idx = torch.topk(mags, keep, dim=dim, sorted=False).indices
    return torch.zeros_like(mags, dtype=torch.bool).scatter_(dim, idx, True)


def _min_kept(mags: torch.Tensor, mask: torch.Tensor, dims) -> torch.Tensor:
    return torch.where(mask, mags, torch.full_like(mags, math.inf)).amin(dim=dims, keepdim=True)


@dataclass(frozen=True)
class Sparsity:
    percent: float               # fraction pruned, in percent, 0 < percent < 100
    pattern: Pattern = "row"
    rbbm: float = 0.0            # banded backward masking percent (0 = straight-through)

    @property
    def fraction(self) -> float:
        return self.percent / 100.0

    @property
    def percent_text(self) -> str:
        """The percent as written in the canonical spec (N:M: rounded to 2 decimals)."""
        if isinstance(self.pattern, tuple):
            return f"{round(self.percent, 2):g}"
        return _number(self.percent)

    def block_sizes(self) -> list[tuple[str, int]]:
        if isinstance(self.pattern, tuple):
            n, m = self.pattern
            return [(f"nm{n}/{m}", m)]
        return []

    def options(self) -> list[str]:
        out = []
        if self.pattern != "row":
            out.append(self.pattern if isinstance(self.pattern, str)
                       else f"nm{self.pattern[0]}/{self.pattern[1]}")
        if self.rbbm:
            out.append(f"rbbm{_number(self.rbbm)}")
        return out

    @torch.no_grad()
    def mask(self, w: torch.Tensor, shard: ShardContext):
        """(keep mask bool [out, in_local], gradient mask float or None) for weight w."""
        mags = w.detach().abs().float()
        if isinstance(self.pattern, tuple):
            return self._nm_mask(mags, shard)
        split = shard.weight_split_dim
        group = shard.weight_group(1) if self.pattern == "row" else shard.weight_tensor_group()
        full = gather_along(mags, split, group) if group is not None else mags
        if self.pattern == "row":
            n = full.shape[1]
            keep = _topk_mask(full, n - pruned_count(self.percent, n), dim=1)
            dims = (1,)
        else:
            flat = full.reshape(-1)
            keep = _topk_mask(flat, flat.numel() - pruned_count(self.percent, flat.numel()), 0)
            keep = keep.reshape(full.shape)
            dims = (0, 1)
        grad_mask = None
        if self.rbbm:
            t_k = _min_kept(full, keep, dims)
            rms = (full.double().pow(2).mean(dim=dims, keepdim=True)).sqrt().float()
            grad_mask = self._band(full, t_k, rms)
        if group is not None:
            local = mags.shape[split]
            keep = local_slice(keep, split, local, group)
            grad_mask = None if grad_mask is None else local_slice(grad_mask, split, local, group)
        return keep, grad_mask

    def _nm_mask(self, mags: torch.Tensor, shard: ShardContext):
        n, m = self.pattern
        rows, cols = mags.shape
        groups = mags.reshape(rows, cols // m, m)
        keep = _topk_mask(groups, n, dim=2)
        grad_mask = None
        if self.rbbm:
            t_k = _min_kept(groups, keep, (2,))
            rms = Grouped(mags, "row", shard.weight_group(1)).moments(
                mags.reshape(rows, 1, cols), None, "rms").float().reshape(rows, 1, 1)
            grad_mask = self._band(groups, t_k, rms).reshape(rows, cols)
        return keep.reshape(rows, cols), grad_mask

    def _band(self, mags, t_k, rms):
        t_p = rms * float(ndtri(0.5 + self.rbbm / 100.0))
        lo, hi = torch.minimum(t_p, t_k), torch.maximum(t_p, t_k)
        return ((mags < lo) | (mags > hi)).float()


def _number(x: float) -> str:
    """Shortest text that parses back to x: 50 -> "50", 87.5 -> "87.5"."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))
