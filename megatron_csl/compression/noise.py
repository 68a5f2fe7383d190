"""Gaussian noise injection `noise:<weight format>` (e.g. `noise:w4`), the paper's optimality-gap
tool: instead of quantizing, add Gaussian noise whose variance is the format's Gaussian MSE times
each row's mean square, w + sqrt(GMSE) * RMS(row) * n, n ~ N(0, 1) drawn afresh in every forward
(CompressionSpec.weight_is_deterministic is False, so the layers never cache the noisy weight).
On Gaussian weights this has exactly the format's MSE, without its structure. Backward:
straight-through. Weights stay in full precision (16 bits): noise emulates a format, it stores
nothing compressed.

Tensor-parallel exactness: the noise is drawn for the full (unsharded) weight from a generator
seeded by one draw of the default CPU generator (the same on every tensor-parallel rank, which
megatron seeds identically), and each rank keeps its slice. So every call advances the default
CPU generator by one draw.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .fake_quant import attach_gradient
from .shard import ShardContext, local_slice
from .stats import Grouped

SEED_RANGE = 2**62


@dataclass(frozen=True)
class NoiseInjection:
    target: object  # the weight-only CompressionSpec whose Gaussian MSE the noise has

    kind = "noise"
    had = 0
    granularity = "row"
    outliers = 0.0
    estimator = "ste"

    def storage_bits(self) -> float:
        return 16.0

    def block_sizes(self) -> list[tuple[str, int]]:
        return []

    def gmse(self) -> float:
        from .capacity import gaussian_mse

        return gaussian_mse(self.target)

    def head(self) -> str:
        return "noise"

    def options(self, **_) -> list[str]:
        return [self.target.canonical]

    def apply(self, x: torch.Tensor, shard: ShardContext) -> torch.Tensor:
        """Noisy float32 weight [out, in_local], straight-through gradient."""
        with torch.no_grad():
            xd = x.detach()
            grouped = Grouped(xd, "row", shard.weight_group(1))
            rms = grouped.moments(grouped.view(xd), None, "rms").float().reshape(-1, 1)
            seed = int(torch.randint(0, SEED_RANGE, (1,)))
            split, group = shard.weight_split_dim, shard.weight_tensor_group()
            full_shape = list(xd.shape)
            if group is not None:
                full_shape[split] *= torch.distributed.get_world_size(group)
            gen = torch.Generator(device=xd.device).manual_seed(seed)
            noise = torch.randn(full_shape, generator=gen, device=xd.device, dtype=torch.float32)
            if group is not None:
                noise = local_slice(noise, split, xd.shape[split], group)
            value = xd + noise * (math.sqrt(self.gmse()) * rms)
        return attach_gradient(x, value, None)
