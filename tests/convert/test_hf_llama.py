"""Name/layout mapping megatron <-> Hugging Face Llama (pure tensor shuffling)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.hf_llama import LlamaDims, fuse_qkv, hf_to_megatron, megatron_to_hf, split_qkv


def _random_megatron_state(dims: LlamaDims, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, f = dims.hidden_size, dims.ffn_hidden_size
    state = {"embedding.word_embeddings.weight": torch.randn(dims.vocab_size, h, generator=g),
             "decoder.final_layernorm.weight": torch.randn(h, generator=g),
             "output_layer.weight": torch.randn(dims.vocab_size, h, generator=g)}
    for i in range(dims.num_layers):
        p = f"decoder.layers.{i}."
        state[p + "input_layernorm.weight"] = torch.randn(h, generator=g)
        state[p + "pre_mlp_layernorm.weight"] = torch.randn(h, generator=g)
        state[p + "self_attention.linear_qkv.weight"] = torch.randn(dims.qkv_rows, h, generator=g)
        state[p + "self_attention.linear_proj.weight"] = torch.randn(h, dims.num_attention_heads * dims.head_dim, generator=g)
        state[p + "mlp.linear_fc1.weight"] = torch.randn(2 * f, h, generator=g)
        state[p + "mlp.linear_fc2.weight"] = torch.randn(h, f, generator=g)
    return state


@st.composite
def dims(draw):
    groups = draw(st.integers(1, 4))
    heads = groups * draw(st.integers(1, 3))
    head_dim = draw(st.sampled_from([2, 4, 8]))
    return LlamaDims(num_layers=draw(st.integers(1, 2)), hidden_size=heads * head_dim,
                     num_attention_heads=heads, num_query_groups=groups,
                     ffn_hidden_size=draw(st.integers(1, 12)), vocab_size=draw(st.integers(1, 20)),
                     head_dim=head_dim)


@settings(max_examples=30, deadline=None)
@given(d=dims())
def test_round_trip(d):
    state = _random_megatron_state(d)
    hf = megatron_to_hf(state, d)
    assert hf["model.layers.0.self_attn.q_proj.weight"].shape == (d.num_attention_heads * d.head_dim, d.hidden_size)
    assert hf["model.layers.0.self_attn.k_proj.weight"].shape == (d.num_query_groups * d.head_dim, d.hidden_size)
    back = hf_to_megatron(hf, d)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_qkv_rows_follow_megatrons_group_layout():
    # 4 heads, 2 groups, head_dim 1: rows are [q0 q1 k0 v0 | q2 q3 k1 v1].
    d = LlamaDims(1, 4, 4, 2, 1, 1, 1)
    rows = torch.tensor([[0.], [1.], [10.], [20.], [2.], [3.], [11.], [21.]])
    q, k, v = split_qkv(rows, d)
    assert q.flatten().tolist() == [0, 1, 2, 3]
    assert k.flatten().tolist() == [10, 11] and v.flatten().tolist() == [20, 21]
    assert torch.equal(fuse_qkv(q, k, v, d), rows)


def test_swiglu_gate_is_the_first_half():
    d = LlamaDims(1, 2, 1, 1, 3, 1, 2)
    state = _random_megatron_state(d)
    hf = megatron_to_hf(state, d)
    fc1 = state["decoder.layers.0.mlp.linear_fc1.weight"]
    assert torch.equal(hf["model.layers.0.mlp.gate_proj.weight"], fc1[:3])
    assert torch.equal(hf["model.layers.0.mlp.up_proj.weight"], fc1[3:])


def test_te_style_norm_names_are_read():
    d = LlamaDims(1, 4, 2, 2, 3, 5, 2)
    state = _random_megatron_state(d)
    state["decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"] = state.pop("decoder.layers.0.input_layernorm.weight")
    hf = megatron_to_hf(state, d)
    assert torch.equal(hf["model.layers.0.input_layernorm.weight"],
                       state["decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"])


def test_missing_and_misshaped_tensors_are_named():
    d = LlamaDims(1, 4, 2, 2, 3, 5, 2)
    state = _random_megatron_state(d)
    del state["decoder.layers.0.mlp.linear_fc2.weight"]
    with pytest.raises(ConversionError, match="linear_fc2.weight"):
        megatron_to_hf(state, d)
    state = _random_megatron_state(d)
    state["output_layer.weight"] = torch.zeros(6, 4)
    with pytest.raises(ConversionError, match=r"output_layer.weight has shape \(6, 4\), expected \(5, 4\)"):
        megatron_to_hf(state, d)
