"""Parameter counts of the Llama GPTModel that `build_gpt_model` builds, without building it."""
from __future__ import annotations

from typing import NamedTuple

from .shapes import ModelShape


class ParamCount(NamedTuple):
    total: int
    non_embedding: int   # transformer blocks + final norm (the N of the scaling laws)
    embedding: int       # input word embedding (rope: no position embedding)
    output_layer: int    # untied output projection


def layer_parameters(shape: ModelShape) -> int:
    """One transformer layer: two RMSNorm weights, QKV, attention output, SwiGLU MLP; no biases."""
    h = shape.hidden_size
    q = shape.num_attention_heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    attention = h * (q + 2 * kv) + q * h
    mlp = h * 2 * shape.ffn_hidden_size + shape.ffn_hidden_size * h
    norms = 2 * h
    return attention + mlp + norms


def count_parameters(shape: ModelShape, vocab_size: int) -> ParamCount:
    """Exact parameter count of the (unsharded) model; equals sum(p.numel()) over the model."""
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    non_embedding = shape.num_layers * layer_parameters(shape) + shape.hidden_size
    embedding = vocab_size * shape.hidden_size
    output_layer = vocab_size * shape.hidden_size
    return ParamCount(
        total=non_embedding + embedding + output_layer,
        non_embedding=non_embedding,
        embedding=embedding,
        output_layer=output_layer,
    )
