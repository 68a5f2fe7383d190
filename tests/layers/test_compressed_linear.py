"""Compressed megatron linears and the layer spec (TP=1 here; TP=2 in test_parallel_exactness)."""
import pytest
import torch
import torch.nn.functional as F

from megatron_csl.compression import SpecError, parse_spec

FORMATS = ["w4", "w4a4", "s50", "s50:nm2/4", "s50+w4", "fp8"]


def _config():
    from megatron_csl.model import ModelShape, llama_transformer_config

    return llama_transformer_config(ModelShape(1, 64, 4, 128))


def _layer(kind, fmt, in_features=64, out_features=48):
    from megatron_csl.layers import CompressedColumnParallelLinear, CompressedRowParallelLinear

    common = dict(config=_config(), init_method=torch.nn.init.normal_, bias=False,
                  skip_bias_add=True, compression=fmt)
    if kind == "column":
        return CompressedColumnParallelLinear(in_features, out_features, gather_output=False,
                                              **common)
    return CompressedRowParallelLinear(in_features, out_features, input_is_parallel=True, **common)


@pytest.mark.parametrize("kind", ["column", "row"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_matmul_sees_compressed_weight_and_input(megatron_cpu, kind, fmt):
    """Output and gradients equal the functional reference F.linear(q(x), c(W))."""
    torch.manual_seed(0)
    layer = _layer(kind, fmt)
    spec = parse_spec(fmt)
    x = torch.randn(8, 2, 64, requires_grad=True)
    out, bias = layer(x)
    assert bias is None
    (out * torch.linspace(-1, 1, 48)).sum().backward()

    w_ref = layer.weight.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = F.linear(spec.quantize_activation(x_ref), spec.compress_weight(w_ref))
    (ref * torch.linspace(-1, 1, 48)).sum().backward()
    # Integer x integer formats (w4a4) sum integer codes exactly and scale afterwards, so they
    # differ from the float matmul by that matmul's own rounding (~1e-6 at |out| ~ 10).
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-5)
    assert torch.allclose(layer.weight.grad, w_ref.grad, rtol=1e-5, atol=1e-6)
    assert torch.allclose(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
    # and the compression did something: the plain matmul differs
    assert not torch.allclose(out, F.linear(x, layer.weight), rtol=1e-4, atol=1e-4)
    assert repr(layer).endswith(f"compression={spec.canonical})")


@pytest.mark.parametrize("kind", ["column", "row"])
@pytest.mark.parametrize("fmt", ["w4a4", "w2a2", "s50+w4a4", "w4a4:zero,absmax,tensor,trust"])
def test_integer_formats_sum_codes_exactly(megatron_cpu, kind, fmt):
    """Integer codes times units are the fake-quant values bit for bit, and the layer's output is
    the exact sum of code products scaled by the units: within 2 float32 roundings of it."""
    torch.manual_seed(1)
    layer = _layer(kind, fmt)
    spec = parse_spec(fmt)
    assert layer._integer_matmul_exact
    x = torch.randn(8, 2, 64)
    with torch.no_grad():
        out, _ = layer(x)
        x_codes, x_unit = spec.activation_codes(x)
        w_codes, w_unit = spec.weight_codes(layer.weight)
    for codes, quantizer in ((x_codes, spec.activation), (w_codes, spec.weight)):
        assert torch.equal(codes, codes.round()) and codes.abs().max() <= quantizer.code_bound
    assert torch.equal(x_codes * x_unit, spec.quantize_activation(x))
    assert torch.equal(w_codes * w_unit, spec.compress_weight(layer.weight))
    exact = (x_codes.double() @ w_codes.double().T) * x_unit.double() * w_unit.double().reshape(-1)
    err = (out.double() - exact).abs()
    assert (err <= 2.0 ** -23 * exact.abs()).all(), err.max()


def test_tp1_shard_context_is_local(megatron_cpu):
    from megatron_csl.compression import LOCAL

    assert _layer("column", "w4").shard == LOCAL
    assert _layer("row", "w4a4").shard == LOCAL


def test_nm_group_must_divide_local_input_dim(megatron_cpu):
    with pytest.raises(SpecError, match=r"cannot run on CompressedRowParallelLinear with weight "
                                        r"shard \[48, 6\] \(tensor parallel size 1\)"):
        _layer("row", "s50:nm2/4", in_features=6)
    with pytest.raises(SpecError, match="multiple of 128"):
        _layer("column", "s50:nm64/128", in_features=64)


def test_bad_compression_argument(megatron_cpu):
    with pytest.raises(TypeError, match="compression must be a spec string"):
        _layer("column", 4)
    with pytest.raises(SpecError):
        _layer("column", "w99zz")


def test_layer_spec_swaps_exactly_the_four_block_linears():
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

    from megatron_csl.layers import (
        CompressedColumnParallelLinear, CompressedRowParallelLinear, compressed_layer_spec,
    )

    local = get_gpt_layer_local_spec(normalization="RMSNorm")
    assert repr(compressed_layer_spec("dense")) == repr(local)
    assert repr(compressed_layer_spec(parse_spec("bf16"))) == repr(local)
    spec = compressed_layer_spec("s50+w4a4")
    attention, mlp = spec.submodules.self_attention.submodules, spec.submodules.mlp.submodules
    assert attention.linear_qkv.module is CompressedColumnParallelLinear
    assert attention.linear_proj.module is CompressedRowParallelLinear
    assert mlp.linear_fc1.module is CompressedColumnParallelLinear
    assert mlp.linear_fc2.module is CompressedRowParallelLinear
    assert attention.linear_qkv.params["compression"] == parse_spec("s50+w4a4")
    # The megatron spec the copy was made from is untouched.
    fresh = get_gpt_layer_local_spec(normalization="RMSNorm").submodules.self_attention.submodules
    assert fresh.linear_qkv is ColumnParallelLinear and fresh.linear_proj is RowParallelLinear
    # Everything else is megatron's local spec.
    assert spec.submodules.input_layernorm is local.submodules.input_layernorm
    assert attention.core_attention is local.submodules.self_attention.submodules.core_attention


def test_compressed_model_keeps_embedding_and_output_dense(megatron_cpu):
    from megatron.core.tensor_parallel import ColumnParallelLinear, VocabParallelEmbedding

    from megatron_csl.layers import CompressedColumnParallelLinear, CompressedRowParallelLinear
    from megatron_csl.model import build_gpt_model

    model = build_gpt_model(_config(), vocab_size=64, seq_length=16, compression="w4a4")
    assert type(model.output_layer) is ColumnParallelLinear
    assert type(model.embedding.word_embeddings) is VocabParallelEmbedding
    compressed = [m for m in model.modules()
                  if isinstance(m, (CompressedColumnParallelLinear, CompressedRowParallelLinear))]
    assert len(compressed) == 4
    tokens = torch.randint(0, 64, (2, 16))
    loss = model(tokens, torch.arange(16).expand(2, 16), None, labels=tokens)
    loss.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_te_impl_without_transformer_engine_is_a_clear_error():
    try:
        import transformer_engine  # noqa: F401
        pytest.skip("Transformer Engine is installed")
    except ImportError:
        pass
    from megatron_csl.layers import compressed_layer_spec

    with pytest.raises(ImportError, match="impl='te' needs NVIDIA Transformer Engine.*impl='local'"):
        compressed_layer_spec("w4", impl="te")
    with pytest.raises(ImportError, match="impl='te' needs NVIDIA Transformer Engine"):
        compressed_layer_spec("dense", impl="te")
