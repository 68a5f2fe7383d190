"""Vector quantization `vq<d>:<bits>` on Gaussian-MSE-optimal grids (HIGGS-style).

Each row is rotated by a block Hadamard transform (so its entries look iid Gaussian), scaled by
its RMS, cut into consecutive d-vectors, and every d-vector replaced by the nearest of the
2^(d*bits) points of a fixed grid, times the RMS. The grid is the Lloyd (k-means) optimum for
the standard d-dimensional Gaussian: computed once from fixed-seed Gaussian samples, started from
the product of the scalar optimal uniform grid (so it can only improve on it), memoised in the
process; the fitted grids ship with the package (vq_grids.npz, rewritten by
`python -m megatron_csl.compression.vector`). Only grids of at most 256 points are supported
(d * bits <= 8: vq2:1..4, vq4:1..2): the fit stays within minutes and codes fit a byte.

Backward (the paper's trust estimator): straight-through for a d-vector inside the grid's
hypersphere (|y| <= the largest grid norm, in RMS units) and zero gradient outside, in the rotated
basis; `ste` passes every gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .gaussian import alpha_star, symmetric_levels
from .quantizers import TRUST_TOLERANCE, _had_option
from .stats import Grouped

DIMENSIONS = (2, 4)
MAX_GRID_POINTS = 256
GRID_SEED = 0
LLOYD_ITERATIONS = 60
SAMPLES_PER_POINT = 1024
MIN_SAMPLES = 2**18  # small grids get more samples per point (less overfit to the sample set)
GRID_FILE = Path(__file__).with_name("vq_grids.npz")  # write_grid_file() regenerates it
_CHUNK = 1 << 15  # d-vectors per distance block (memory: _CHUNK * 256 floats)


def supported_bits(dim: int) -> list[int]:
    """Bits per weight with at most MAX_GRID_POINTS grid points in `dim` dimensions."""
    return [b for b in range(1, 9) if 2 ** (dim * b) <= MAX_GRID_POINTS]


def valid_formats() -> str:
    return ", ".join(f"vq{d}:{b}" for d in DIMENSIONS for b in supported_bits(d))


def _lloyd(samples: torch.Tensor, grid: torch.Tensor, iterations: int) -> torch.Tensor:
    """Lloyd iterations (float64): assign each sample to its nearest point, move points to the
    means of their cells (an empty cell keeps its point). The assignment uses a BLAS matmul for
    speed: the fit only produces the shipped table, which is what every run reads."""
    for _ in range(iterations):
        idx = torch.cat([((grid * grid).sum(dim=1) / 2 - chunk @ grid.t()).argmin(dim=1)
                         for chunk in samples.split(_CHUNK * 4)])
        sums = torch.zeros_like(grid).index_add_(0, idx, samples)
        counts = torch.bincount(idx, minlength=grid.shape[0]).to(grid.dtype)[:, None]
        grid = torch.where(counts > 0, sums / counts.clamp(min=1.0), grid)
    return grid


def fit_grid(dim: int, bits: int) -> np.ndarray:
    """The Lloyd grid [2^(dim*bits), dim] for N(0, I_dim), float64, from fixed-seed samples
    (max(1024 per point, 2^18) of them).

    Cost grows with the grid: under a second for 16 points, about half a minute for 256 points
    on one CPU core; the shipped table (GRID_FILE) spares every run the fit.
    """
    points = 2 ** (dim * bits)
    gen = torch.Generator().manual_seed(GRID_SEED)
    count = max(points * SAMPLES_PER_POINT, MIN_SAMPLES)
    samples = torch.randn(count, dim, generator=gen, dtype=torch.float64)
    axis = torch.tensor(symmetric_levels(bits) * alpha_star(bits), dtype=torch.float64)
    start = torch.cartesian_prod(*[axis] * dim).reshape(points, dim)
    return _lloyd(samples, start, LLOYD_ITERATIONS).numpy()


def _key(dim: int, bits: int) -> str:
    return f"vq{dim}_{bits}"


def write_grid_file(path: Path = GRID_FILE) -> None:
    """Fit every supported grid and write them to `path` (npz; atomically)."""
    import io

    from tqdm import tqdm

    from megatron_csl.atomic import atomic_write_bytes

    grids = {}
    jobs = [(d, b) for d in DIMENSIONS for b in supported_bits(d)]
    for d, b in tqdm(jobs, desc="fitting vq grids"):
        grids[_key(d, b)] = fit_grid(d, b)
    buf = io.BytesIO()
    np.savez(buf, **grids)
    atomic_write_bytes(str(path), buf.getvalue())


@lru_cache(maxsize=None)
def gaussian_grid(dim: int, bits: int) -> np.ndarray:
    """The Lloyd grid of vq<dim>:<bits> [2^(dim*bits), dim] (float64), from the shipped table;
    fitted here (fit_grid) if the table lacks it. The shipped table keeps every machine (and
    every tensor-parallel rank) on the very same grid."""
    try:
        with np.load(GRID_FILE) as table:
            if _key(dim, bits) in table.files:
                return table[_key(dim, bits)]
    except OSError:
        pass
    return fit_grid(dim, bits)


@lru_cache(maxsize=None)
def _grid_tensor(dim: int, bits: int, device: str) -> torch.Tensor:
    return torch.tensor(gaussian_grid(dim, bits), dtype=torch.float32, device=device)


@lru_cache(maxsize=None)
def grid_radius(dim: int, bits: int) -> float:
    """The largest norm of a grid point (float32 grid, as used), computed once on the host: the
    trust mask's radius, without a device-to-host copy per forward."""
    return float(_grid_tensor(dim, bits, "cpu").norm(dim=1).max())


def nearest_points(y: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Index of the nearest grid point for every row of y [n, d] (ties: the lowest index).

    |y - c|^2 - |y|^2 = |c|^2 - 2 y.c, with y.c summed over d explicitly (outer products and
    adds, no BLAS reduction), so a vector's index never depends on how many vectors are processed
    together: sharded and unsharded weights pick the same points.
    """
    half_sq = (grid * grid).sum(dim=1) / 2
    columns = y.t().contiguous()
    out = torch.empty(y.shape[0], dtype=torch.long, device=y.device)
    for start in range(0, y.shape[0], _CHUNK):
        stop = min(start + _CHUNK, y.shape[0])
        scores = torch.outer(columns[0, start:stop], grid[:, 0]).neg_().add_(half_sq)
        for j in range(1, grid.shape[1]):
            scores.sub_(torch.outer(columns[j, start:stop], grid[:, j]))
        out[start:stop] = scores.argmin(dim=1)
    return out


@dataclass(frozen=True)
class VectorQuant:
    dim: int                 # 2 or 4
    bits: int                # per weight: 2^(dim * bits) grid points
    had: int = 128           # Hadamard block of the row rotation
    estimator: str = "trust"  # "trust" | "ste"

    kind = "vector"
    granularity = "row"
    outliers = 0.0

    @property
    def element_bits(self) -> float:
        return float(self.bits)

    def storage_bits(self) -> float:
        """Bits per weight: dim * bits per d-vector code (the per-row scale is negligible)."""
        return float(self.bits)

    def block_sizes(self) -> list[tuple[str, int]]:
        return [(_had_option(self.had), self.had)]

    def grid(self, device="cpu") -> torch.Tensor:
        return _grid_tensor(self.dim, self.bits, str(device))

    @torch.no_grad()
    def scale(self, x: torch.Tensor, row_group) -> torch.Tensor:
        """Per-row RMS [rows, 1] (float32), completed over the row's tensor-parallel group."""
        grouped = Grouped(x, "row", row_group)
        return grouped.moments(grouped.view(x), None, "rms").float().reshape(x.shape[0], 1)

    @torch.no_grad()
    def quantize_codes(self, x: torch.Tensor, row_group):
        """(codes [rows, cols / dim] long, scale [rows, 1]) of the rotated float32 x [rows, cols]."""
        rows, cols = x.shape
        scale = self.scale(x, row_group)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        y = (x / safe).reshape(-1, self.dim)
        return nearest_points(y, self.grid(x.device)).reshape(rows, cols // self.dim), scale

    @torch.no_grad()
    def quantize(self, x: torch.Tensor, row_group, tensor_group, mask=None):
        """(values, grad_mask or None) of the rotated float32 x [rows, cols]."""
        if mask is not None:
            raise ValueError("vector quantization does not take a sparsity mask")
        rows, cols = x.shape
        codes, scale = self.quantize_codes(x, row_group)
        grid = self.grid(x.device)
        value = (grid[codes] * scale[:, :, None]).reshape(rows, cols)
        if self.estimator != "trust":
            return value, None
        radius = grid_radius(self.dim, self.bits) * (1.0 + TRUST_TOLERANCE)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        norms = (x / safe).reshape(rows, cols // self.dim, self.dim).norm(dim=2, keepdim=True)
        inside = (norms <= radius) | (scale[:, :, None] <= 0)
        return value, inside.expand(rows, cols // self.dim, self.dim).reshape(rows, cols)

    def head(self) -> str:
        return f"vq{self.dim}"

    def options(self, **_) -> list[str]:
        out = [str(self.bits)]
        if self.had != 128:
            out.append(_had_option(self.had))
        if self.estimator != "trust":
            out.append(self.estimator)
        return out


if __name__ == "__main__":
    write_grid_file()
