"""Compressed formats (quantization, sparsity, small floats) in pure PyTorch, and their capacity.

See docs/formats.md. Never imports megatron.
"""
from .errors import SpecError
from .shard import LOCAL, ShardContext
from .spec import CompressionSpec
from .parser import parse_spec
from .capacity import CapacityParams, gaussian_mse, gaussian_mse_parts, predicted_epm

__all__ = ["parse_spec", "CompressionSpec", "SpecError", "ShardContext", "LOCAL",
           "gaussian_mse", "gaussian_mse_parts", "predicted_epm", "CapacityParams"]
