"""Compressed formats (quantization, sparsity, small floats) in pure PyTorch, and their capacity.

See docs/formats.md. Never imports megatron.
"""
from .errors import SpecError
from .shard import LOCAL, ShardContext
from .spec import CompressionSpec
from .parser import parse_spec

__all__ = ["parse_spec", "CompressionSpec", "SpecError", "ShardContext", "LOCAL"]
