"""Llama on megatron-core: shapes, the size ladder, parameter counts, config and model builder."""
from .build import build_gpt_model
from .config import llama_transformer_config, shape_from_config
from .counting import ParamCount, count_parameters, layer_parameters
from .shapes import LADDER, ModelShape, get_shape, llama_ffn_size, nominal_size
from .validation import LayoutError, local_linear_shapes, padded_vocab_size, validate_parallel_layout

__all__ = [
    "ModelShape", "LADDER", "get_shape", "llama_ffn_size", "nominal_size",
    "ParamCount", "count_parameters", "layer_parameters",
    "llama_transformer_config", "shape_from_config", "build_gpt_model",
    "LayoutError", "validate_parallel_layout", "local_linear_shapes", "padded_vocab_size",
]
