"""Transformer Engine variants (impl="te"). Need TE and a GPU: skipped elsewhere (CI, CPU)."""
import pytest
import torch

te = pytest.importorskip("transformer_engine", reason="Transformer Engine is not installed")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="TE layers need CUDA")


@pytest.fixture(scope="module")
def megatron_gpu():
    from megatron_csl.compat import initialize_cpu_parallel

    initialize_cpu_parallel(1, 1, seed=0)   # gloo world of one; TE runs on the current GPU
    yield


@pytest.mark.parametrize("fmt", ["w4", "w4a4", "s50+w4"])
def test_te_linears_match_functional_reference(megatron_gpu, fmt):
    import torch.nn.functional as F

    from megatron_csl.compression import parse_spec
    from megatron_csl.layers.te import te_classes
    from megatron_csl.model import ModelShape, llama_transformer_config

    _, column, row = te_classes()
    config = llama_transformer_config(ModelShape(1, 128, 2, 256), use_cpu_initialization=False)
    spec = parse_spec(fmt)
    x = torch.randn(8, 2, 128, device="cuda")
    for layer in (
        column(128, 64, config=config, init_method=torch.nn.init.normal_, gather_output=False,
               bias=False, skip_bias_add=True, is_expert=False, compression=fmt),
        row(128, 64, config=config, init_method=torch.nn.init.normal_, bias=False,
            input_is_parallel=True, skip_bias_add=True, is_expert=False, compression=fmt),
    ):
        out, _ = layer(x)
        ref = F.linear(spec.quantize_activation(x), spec.compress_weight(layer.weight))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fmt", ["dense", "w4", "w4a4"])
def test_te_model_trains(megatron_gpu, fmt):
    from megatron_csl.model import ModelShape, build_gpt_model, llama_transformer_config

    config = llama_transformer_config(ModelShape(2, 128, 2, 256), use_cpu_initialization=False)
    model = build_gpt_model(config, vocab_size=128, seq_length=32, compression=fmt, impl="te").cuda()
    tokens = torch.randint(0, 128, (2, 32), device="cuda")
    loss = model(tokens, torch.arange(32, device="cuda").expand(2, 32), None, labels=tokens)
    loss.mean().backward()
    assert torch.isfinite(loss).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
