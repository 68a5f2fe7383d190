"""Activation sparsity `as<p>`: keep the largest-magnitude (100 - p) percent of each token's
inputs to a linear layer, zero the rest (k = n - floor(p n / 100) per token, exact via top-k
indices; over a tensor-parallel split of the hidden dimension the magnitudes are gathered first).

Composes with an activation quantizer (`as50+w4a4`): prune, then quantize the survivors with
statistics over them; with a Hadamard activation rotation the pruning happens in the rotated basis
(rotate, prune, quantize, rotate back). Backward: the mask (a pruned input did not reach the
matmul, so it gets no gradient), times the quantizer's estimator on the survivors.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .shard import gather_along, local_slice
from .sparsity import _number, pruned_count


@dataclass(frozen=True)
class ActivationSparsity:
    percent: float  # percent of each token's inputs zeroed, 0 < percent < 100

    @property
    def fraction(self) -> float:
        return self.percent / 100.0

    @property
    def canonical(self) -> str:
        return f"as{_number(self.percent)}"

    def block_sizes(self) -> list[tuple[str, int]]:
        return []

    @torch.no_grad()
    def mask(self, x: torch.Tensor, group):
        """(keep bool [tokens, hidden_local], gradient mask float) for activations x."""
        mags = x.detach().abs().float()
        full = gather_along(mags, 1, group) if group is not None else mags
        n = full.shape[1]
        idx = torch.topk(full, n - pruned_count(self.percent, n), dim=1, sorted=False).indices
        keep = torch.zeros_like(full, dtype=torch.bool).scatter_(1, idx, True)
        if group is not None:
            keep = local_slice(keep, 1, mags.shape[1], group)
        return keep, keep.float()
