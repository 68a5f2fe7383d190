"""Checkpoint conversion: other TP/PP layouts, Hugging Face Llama, packed low-bit export."""
from megatron_csl.convert.errors import ConversionError

__all__ = ["ConversionError"]
