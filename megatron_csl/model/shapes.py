"""Llama model shapes and the model-size ladder (names are non-embedding parameter counts)."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """The shape of a Llama-style decoder (everything `count_parameters` and the config need).

    `num_query_groups` None means multi-head attention (as many key/value heads as heads).
    The head dimension is `hidden_size // num_attention_heads`.
    """

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    ffn_hidden_size: int
    num_query_groups: Optional[int] = None

    def __post_init__(self):
        for field in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelShape.{field} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; valid head counts: "
                f"{_divisors(self.hidden_size, limit=self.hidden_size // 32 or 1)}"
            )
        groups = self.num_query_groups
        if groups is not None and (
            not isinstance(groups, int) or groups <= 0 or self.num_attention_heads % groups
        ):
            raise ValueError(
                f"num_query_groups {groups!r} must divide num_attention_heads "
                f"{self.num_attention_heads}; valid: {_divisors(self.num_attention_heads)}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.num_query_groups or self.num_attention_heads


def _divisors(n: int, limit: Optional[int] = None) -> list[int]:
    return [d for d in range(1, (limit or n) + 1) if n % d == 0]


def llama_ffn_size(hidden_size: int, multiple_of: Optional[int] = None) -> int:
    """SwiGLU hidden size: 8/3 * hidden rounded up to a multiple of 64 (hidden < 1024) or 256,
    as in the Llama models, which keeps the MLP's parameters at about 8 * hidden^2."""
    if multiple_of is None:
        multiple_of = 256 if hidden_size >= 1024 else 64
    return multiple_of * math.ceil(8 * hidden_size / 3 / multiple_of)


def _llama(num_layers: int, hidden_size: int, head_dim: int) -> ModelShape:
    return ModelShape(
        num_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=hidden_size // head_dim,
        ffn_hidden_size=llama_ffn_size(hidden_size),
    )


# Non-embedding sizes from ~1M to ~10B. Width/depth ratios (hidden/layers of about 25-110) follow
# the Pythia/Chinchilla families; head dim 64 below hidden 2048, 128 from there; the 300m and 1b
# rows match the shapes measured on the GPU machine (24 x 1024, FFN 2816; hidden 2048, FFN 5632).
# Every head count is even so TP=2 works on every rung. The test checks each name within 15%.
LADDER: dict[str, ModelShape] = {
    "1m": _llama(5, 128, 64),       # 1.07M
    "3m": _llama(4, 256, 64),       # 3.21M
    "10m": _llama(6, 384, 64),      # 10.6M
    "30m": _llama(10, 512, 64),     # 32.1M
    "50m": _llama(10, 640, 64),     # 49.6M
    "100m": _llama(14, 768, 64),    # 99.1M
    "300m": _llama(24, 1024, 64),   # 308M
    "1b": _llama(20, 2048, 128),    # 1.03B
    "3b": _llama(28, 3072, 128),    # 3.17B
    "10b": _llama(48, 4096, 128),   # 9.72B
}


def get_shape(name: str) -> ModelShape:
    """The ladder entry called `name` (e.g. "10m"); ValueError listing the valid names."""
    key = str(name).strip().lower()
    if key not in LADDER:
        raise ValueError(f"unknown model size {name!r}; valid sizes: {', '.join(LADDER)}")
    return LADDER[key]


def nominal_size(name: str) -> float:
    """The parameter count a ladder name stands for: "30m" -> 3e7, "1b" -> 1e9."""
    key = str(name).strip().lower()
    units = {"k": 1e3, "m": 1e6, "b": 1e9}
    if not key or key[-1] not in units:
        raise ValueError(f"size name {name!r} must end in one of k, m, b (e.g. '30m')")
    try:
        return float(key[:-1]) * units[key[-1]]
    except ValueError:
        raise ValueError(f"size name {name!r} must be a number followed by k, m or b") from None
