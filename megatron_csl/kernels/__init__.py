"""Fast compression kernels (Triton) with megatron_csl.compression as reference and fallback.

The formats in megatron_csl.compression call `compress_weight` / `quantize_activation` for CUDA
tensors; these return the kernels' result when a kernel covers the format and None otherwise
(the reference then runs). See dispatch.py for what is covered and docs/performance.md.
Importing this package does not import triton; the kernels are compiled on first use.
"""
from .dispatch import (ENV_VAR, activation_kernel_reason, compress_weight, describe, kernel_mode,
                       quantize_activation, triton_available, use_kernels, weight_kernel_reason)

__all__ = [
    "ENV_VAR", "compress_weight", "quantize_activation", "kernel_mode", "use_kernels",
    "triton_available", "weight_kernel_reason", "activation_kernel_reason", "describe",
]
