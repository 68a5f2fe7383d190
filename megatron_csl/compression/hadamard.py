"""Block-diagonal orthonormal Walsh-Hadamard rotation along the last dimension."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.linalg
import torch


@lru_cache(maxsize=None)
def hadamard_matrix(size: int, device: str) -> torch.Tensor:
    """Orthonormal Sylvester Hadamard matrix H (symmetric, so H^T = H = H^-1), float32."""
    h = scipy.linalg.hadamard(size).astype(np.float64) / np.sqrt(size)
    return torch.tensor(h, dtype=torch.float32, device=device)


def block_hadamard(x: torch.Tensor, block: int) -> torch.Tensor:
    """x @ blockdiag(H, H, ...) along the last dim; its own inverse. Needs block | x.shape[-1]."""
    h = hadamard_matrix(block, str(x.device))
    shape = x.shape
    return (x.reshape(*shape[:-1], shape[-1] // block, block) @ h).reshape(shape)
