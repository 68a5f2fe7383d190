"""Name and layout mapping between a megatron-core GPTModel (Llama recipe) and Hugging Face Llama.

Works on *full* (unsharded, single pipeline stage) state dicts: name -> tensor, as a GPTModel built
with TP=1 and PP=1 returns from ``state_dict()``. The two layouts differ in three places:

* ``linear_qkv`` fuses Q, K and V with the rows grouped per query group:
  ``[q_head_0 .. q_head_{h/g-1}, k, v]`` for group 0, then group 1, ... (each block ``head_dim`` rows).
  Hugging Face keeps ``q_proj`` (heads in order), ``k_proj`` and ``v_proj`` separate.
* ``linear_fc1`` fuses the SwiGLU projections as ``[gate; up]`` (megatron's ``glu`` takes
  ``act(first half) * second half``); Hugging Face has ``gate_proj`` and ``up_proj``.
* The RMSNorm weights live in ``input_layernorm`` / ``pre_mlp_layernorm`` (local spec) or inside the
  following linear as ``layer_norm_weight`` (Transformer Engine's fused spec); both are read.

Rotary embeddings need no permutation: megatron's default (``rotary_interleaved=False``) rotates
halves of each head (``rotate_half``), which is what Hugging Face Llama does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from megatron_csl.convert.errors import ConversionError

# Megatron module-local names of the linear layers that compression applies to.
COMPRESSED_LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj",
                      "mlp.linear_fc1", "mlp.linear_fc2")


@dataclass(frozen=True)
class LlamaDims:
    """The sizes that decide tensor shapes on both sides."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    vocab_size: int  # rows of the embedding / output layer as stored (megatron's padded vocabulary)
    head_dim: int

    def __post_init__(self):
        if self.num_attention_heads % self.num_query_groups:
            raise ConversionError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_query_groups={self.num_query_groups}")

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    @property
    def qkv_rows(self) -> int:
        return (self.num_attention_heads + 2 * self.num_query_groups) * self.head_dim


def megatron_layer_prefix(i: int) -> str:
    return f"decoder.layers.{i}."


def _take(state: Mapping[str, torch.Tensor], names: tuple[str, ...], expected_shape) -> torch.Tensor:
    """The first of `names` present in `state`, checked against `expected_shape`."""
    for name in names:
        if name in state:
            tensor = state[name]
            if tuple(tensor.shape) != tuple(expected_shape):
                raise ConversionError(
                    f"tensor {name} has shape {tuple(tensor.shape)}, expected {tuple(expected_shape)} "
                    "for the model shape in run.json")
            return tensor
    raise ConversionError(f"checkpoint has none of {list(names)}; it is not a megatron-core GPT "
                          "(Llama recipe) checkpoint or it is incomplete")


def split_qkv(qkv: torch.Tensor, dims: LlamaDims) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Megatron's grouped fused QKV weight [rows, hidden] -> (q, k, v) in Hugging Face row order."""
    g, hpg, d = dims.num_query_groups, dims.heads_per_group, dims.head_dim
    grouped = qkv.reshape(g, (hpg + 2) * d, qkv.shape[-1])
    q = grouped[:, : hpg * d].reshape(g * hpg * d, -1)
    k = grouped[:, hpg * d: (hpg + 1) * d].reshape(g * d, -1)
    v = grouped[:, (hpg + 1) * d:].reshape(g * d, -1)
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dims: LlamaDims) -> torch.Tensor:
    """Inverse of `split_qkv`."""
    g, hpg, d = dims.num_query_groups, dims.heads_per_group, dims.head_dim
    cols = q.shape[-1]
    grouped = torch.cat([q.reshape(g, hpg * d, cols), k.reshape(g, d, cols), v.reshape(g, d, cols)], dim=1)
    return grouped.reshape(dims.qkv_rows, cols)


def megatron_to_hf(state: Mapping[str, torch.Tensor], dims: LlamaDims) -> dict[str, torch.Tensor]:
    """Full megatron GPTModel state dict -> Hugging Face ``LlamaForCausalLM`` state dict.

    Raises ConversionError naming the first missing or mis-shaped tensor.
    """
    h, f = dims.hidden_size, dims.ffn_hidden_size
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": _take(state, ("embedding.word_embeddings.weight",), (dims.vocab_size, h)),
        "model.norm.weight": _take(state, ("decoder.final_layernorm.weight",), (h,)),
        "lm_head.weight": _take(state, ("output_layer.weight",), (dims.vocab_size, h)),
    }
    for i in range(dims.num_layers):
        m, o = megatron_layer_prefix(i), f"model.layers.{i}."
        out[o + "input_layernorm.weight"] = _take(
            state, (m + "input_layernorm.weight", m + "self_attention.linear_qkv.layer_norm_weight"), (h,))
        out[o + "post_attention_layernorm.weight"] = _take(
            state, (m + "pre_mlp_layernorm.weight", m + "mlp.linear_fc1.layer_norm_weight"), (h,))
        q, k, v = split_qkv(_take(state, (m + "self_attention.linear_qkv.weight",), (dims.qkv_rows, h)), dims)
        out[o + "self_attn.q_proj.weight"] = q
        out[o + "self_attn.k_proj.weight"] = k
        out[o + "self_attn.v_proj.weight"] = v
        out[o + "self_attn.o_proj.weight"] = _take(
            state, (m + "self_attention.linear_proj.weight",), (h, dims.num_attention_heads * dims.head_dim))
        gate, up = _take(state, (m + "mlp.linear_fc1.weight",), (2 * f, h)).chunk(2, dim=0)
        out[o + "mlp.gate_proj.weight"] = gate
        out[o + "mlp.up_proj.weight"] = up
        out[o + "mlp.down_proj.weight"] = _take(state, (m + "mlp.linear_fc2.weight",), (h, f))
    # Contiguous copies: safetensors refuses views that share storage.
    return {name: t.detach().contiguous().clone() for name, t in out.items()}


def hf_to_megatron(state: Mapping[str, torch.Tensor], dims: LlamaDims) -> dict[str, torch.Tensor]:
    """Inverse of `megatron_to_hf` (local-spec names)."""
    h, f = dims.hidden_size, dims.ffn_hidden_size
    out = {
        "embedding.word_embeddings.weight": _take(state, ("model.embed_tokens.weight",), (dims.vocab_size, h)),
        "decoder.final_layernorm.weight": _take(state, ("model.norm.weight",), (h,)),
        "output_layer.weight": _take(state, ("lm_head.weight",), (dims.vocab_size, h)),
    }
    for i in range(dims.num_layers):
        m, o = megatron_layer_prefix(i), f"model.layers.{i}."
        qkv_dim = dims.num_query_groups * dims.head_dim
        out[m + "input_layernorm.weight"] = _take(state, (o + "input_layernorm.weight",), (h,))
        out[m + "pre_mlp_layernorm.weight"] = _take(state, (o + "post_attention_layernorm.weight",), (h,))
        out[m + "self_attention.linear_qkv.weight"] = fuse_qkv(
            _take(state, (o + "self_attn.q_proj.weight",), (dims.num_attention_heads * dims.head_dim, h)),
            _take(state, (o + "self_attn.k_proj.weight",), (qkv_dim, h)),
            _take(state, (o + "self_attn.v_proj.weight",), (qkv_dim, h)), dims)
        out[m + "self_attention.linear_proj.weight"] = _take(
            state, (o + "self_attn.o_proj.weight",), (h, dims.num_attention_heads * dims.head_dim))
        out[m + "mlp.linear_fc1.weight"] = torch.cat(
            [_take(state, (o + "mlp.gate_proj.weight",), (f, h)), _take(state, (o + "mlp.up_proj.weight",), (f, h))])
        out[m + "mlp.linear_fc2.weight"] = _take(state, (o + "mlp.down_proj.weight",), (h, f))
    return out


def compressed_linear_names(dims: LlamaDims) -> list[str]:
    """Megatron weight names of every linear layer that compression applies to."""
    return [megatron_layer_prefix(i) + name + ".weight"
            for i in range(dims.num_layers) for name in COMPRESSED_LINEARS]


def hf_llama_config(dims: LlamaDims, *, max_position_embeddings: int, rms_norm_eps: float,
                    rope_theta: float, dtype: torch.dtype, bos_token_id=None, eos_token_id=None,
                    pad_token_id=None, **extra):
    """A ``transformers.LlamaConfig`` matching the megatron model (no biases, untied embeddings).

    ``extra`` keys are stored in config.json as-is (e.g. the compression the weights carry).
    """
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=dims.vocab_size, hidden_size=dims.hidden_size, intermediate_size=dims.ffn_hidden_size,
        num_hidden_layers=dims.num_layers, num_attention_heads=dims.num_attention_heads,
        num_key_value_heads=dims.num_query_groups, head_dim=dims.head_dim, hidden_act="silu",
        max_position_embeddings=max_position_embeddings, rms_norm_eps=rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        architectures=["LlamaForCausalLM"], dtype=dtype)
    for key, value in extra.items():
        setattr(config, key, value)
    return config
