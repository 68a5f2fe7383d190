"""Layer specs: megatron-core's GPT layer spec with compressed linears swapped in.

Compression applies to the four linears inside each transformer block (linear_qkv, linear_proj,
linear_fc1, linear_fc2); embeddings and the output layer are built by GPTModel itself and stay
uncompressed.
"""
from __future__ import annotations

import copy

from megatron.core.transformer.spec_utils import ModuleSpec

from megatron_csl.compression.resolve import is_dense, resolve_compression

IMPLS = ("local", "te")
# Core attention: "megatron" keeps the spec's own module (DotProductAttention for local,
# TEDotProductAttention for te); "sdpa" swaps in megatron_csl.layers.attention.SDPAttention.
ATTENTIONS = ("megatron", "sdpa")
COMPRESSED_LINEARS = ("linear_qkv", "linear_proj", "linear_fc1", "linear_fc2")


def local_layer_spec() -> ModuleSpec:
    """megatron-core's own local (no TE, no apex) GPT layer spec with RMSNorm."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(normalization="RMSNorm")


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    return impl


def _check_attention(attention: str) -> str:
    if attention not in ATTENTIONS:
        raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    return attention


def compressed_layer_spec(compression="dense", impl: str = "local",
                          attention: str = "megatron") -> ModuleSpec:
    """The transformer-layer spec for `compression` ("dense", "w4a4", "s50+w4", ... or a
    CompressionSpec) on `impl` ("local": megatron-core modules; "te": Transformer Engine), with
    `attention` as core attention ("megatron": the spec's own; "sdpa": SDPAttention, flash
    attention through torch's scaled_dot_product_attention).

    dense + local + megatron is exactly megatron-core's
    `get_gpt_layer_local_spec(normalization="RMSNorm")`.
    """
    impl = _check_impl(impl)
    attention = _check_attention(attention)
    spec = _linears_spec(compression, impl)
    if attention == "sdpa":
        from .attention import SDPAttention

        spec = copy.deepcopy(spec)
        spec.submodules.self_attention.submodules.core_attention = SDPAttention
    return spec


def _linears_spec(compression, impl: str) -> ModuleSpec:
    if impl == "te":
        from .te import te_compressed_layer_spec

        return te_compressed_layer_spec(compression)
    spec = local_layer_spec()
    if is_dense(compression):
        return spec
    from .linear import CompressedColumnParallelLinear, CompressedRowParallelLinear

    fmt = resolve_compression(compression)
    spec = copy.deepcopy(spec)
    attention = spec.submodules.self_attention.submodules
    mlp = spec.submodules.mlp.submodules
    params = {"compression": fmt}
    attention.linear_qkv = ModuleSpec(module=CompressedColumnParallelLinear, params=params)
    attention.linear_proj = ModuleSpec(module=CompressedRowParallelLinear, params=params)
    mlp.linear_fc1 = ModuleSpec(module=CompressedColumnParallelLinear, params=params)
    mlp.linear_fc2 = ModuleSpec(module=CompressedRowParallelLinear, params=params)
    return spec
