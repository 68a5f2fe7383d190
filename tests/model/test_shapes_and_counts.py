"""Model shapes, the size ladder, parameter counting against real megatron models, the config."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.model import (
    LADDER, ModelShape, count_parameters, get_shape, llama_ffn_size, llama_transformer_config,
    nominal_size,
)


def test_ladder_sizes_match_names_and_increase():
    previous = 0
    assert list(LADDER)[0] == "1m" and list(LADDER)[-1] == "10b"
    for name, shape in LADDER.items():
        n = count_parameters(shape, vocab_size=32000).non_embedding
        assert abs(n / nominal_size(name) - 1) < 0.15, (name, n)
        assert n > previous, name
        previous = n


@pytest.mark.parametrize("name", list(LADDER))
def test_ladder_shapes_are_llama_like(name):
    shape = LADDER[name]
    assert shape.head_dim in (64, 128)
    assert shape.num_attention_heads % 2 == 0                     # TP=2 fits every rung
    assert shape.ffn_hidden_size == llama_ffn_size(shape.hidden_size)
    assert 8 / 3 * shape.hidden_size <= shape.ffn_hidden_size < 8 / 3 * shape.hidden_size + 256
    assert shape.ffn_hidden_size % (256 if shape.hidden_size >= 1024 else 64) == 0
    assert 20 <= shape.hidden_size / shape.num_layers <= 130      # Chinchilla/Pythia-like ratios


def test_get_shape_and_errors():
    assert get_shape("10M") is LADDER["10m"]
    with pytest.raises(ValueError, match="valid sizes: 1m, 3m"):
        get_shape("7m")
    with pytest.raises(ValueError, match="must end in one of k, m, b"):
        nominal_size("12")


def test_model_shape_errors():
    with pytest.raises(ValueError, match="hidden_size 100 is not divisible by num_attention_heads 3"):
        ModelShape(2, 100, 3, 256)
    with pytest.raises(ValueError, match="num_query_groups 3 must divide num_attention_heads 4"):
        ModelShape(2, 64, 4, 128, num_query_groups=3)
    with pytest.raises(ValueError, match="num_layers must be a positive int, got 0"):
        ModelShape(0, 64, 4, 128)


def test_llama_ffn_size():
    assert llama_ffn_size(1024) == 2816 and llama_ffn_size(4096) == 11008
    assert llama_ffn_size(768) == 2048 and llama_ffn_size(512) == 1408


@settings(max_examples=8, deadline=None)
@given(
    layers=st.integers(1, 3),
    heads=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([8, 16]),
    ffn=st.integers(1, 6).map(lambda k: 16 * k),
    gqa=st.booleans(),
    vocab=st.integers(16, 80).map(lambda v: 2 * v),
)
def test_count_parameters_equals_megatron_model(megatron_cpu, layers, heads, head_dim, ffn, gqa,
                                                vocab):
    from megatron_csl.model import build_gpt_model

    groups = heads // 2 if gqa and heads > 1 else None
    shape = ModelShape(layers, heads * head_dim, heads, ffn, num_query_groups=groups)
    model = build_gpt_model(llama_transformer_config(shape), vocab_size=vocab, seq_length=8)
    count = count_parameters(shape, vocab)
    params = dict(model.named_parameters())
    assert count.total == sum(p.numel() for p in params.values())
    non_embedding = sum(p.numel() for n, p in params.items()
                        if not n.startswith(("embedding.", "output_layer.")))
    assert count.non_embedding == non_embedding
    assert count.embedding == params["embedding.word_embeddings.weight"].numel()
    assert count.output_layer == params["output_layer.weight"].numel()


def test_llama_config_and_model_structure(megatron_cpu):
    from megatron_csl.model import build_gpt_model

    shape = ModelShape(2, 64, 4, 192)
    config = llama_transformer_config(shape, init_method_std=0.01, hidden_dropout=0.1)
    assert config.normalization == "RMSNorm" and config.gated_linear_unit
    assert config.activation_func is F.silu and not config.add_bias_linear
    assert config.hidden_dropout == 0.1 and config.attention_dropout == 0.0   # overrides win
    assert config.init_method_std == 0.01 and config.params_dtype == torch.float32
    assert config.use_cpu_initialization == (not torch.cuda.is_available())
    assert llama_transformer_config(shape, bf16=True).params_dtype == torch.bfloat16
    model = build_gpt_model(config, vocab_size=96, seq_length=16)
    assert model.position_embedding_type == "rope" and not model.share_embeddings_and_output_weights
    assert model.output_layer.weight is not model.embedding.word_embeddings.weight
    assert not any("bias" in n for n, _ in model.named_parameters())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 2 * 2 + 1
    fc1 = model.decoder.layers[0].mlp.linear_fc1
    assert fc1.weight.shape == (2 * 192, 64)                          # SwiGLU: gate and up


def test_build_argument_errors(megatron_cpu):
    from megatron_csl.model import build_gpt_model

    config = llama_transformer_config(ModelShape(2, 64, 4, 192))
    with pytest.raises(ValueError, match="vocab_size must be a positive int, got 0"):
        build_gpt_model(config, vocab_size=0, seq_length=16)
    with pytest.raises(ValueError, match="impl must be one of local, te, got 'cuda'"):
        build_gpt_model(config, vocab_size=64, seq_length=16, impl="cuda")
