"""SDPAttention equals megatron's DotProductAttention (fp32) in the layer and in the model
(on the CPU, or on the GPU when there is one)."""
import pytest
import torch

from megatron_csl.model import ModelShape

from .conftest import DEVICE

SHAPE = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128)
SHAPE_GQA = ModelShape(num_layers=2, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128,
                       num_query_groups=2)
TOL = 1e-5


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def loss_and_grads(model, batch=2, seq=32, vocab=128, device=torch.device("cpu")):
    tokens = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    positions = torch.arange(seq, device=device).expand(batch, seq)
    loss = model(tokens, positions, None, labels=tokens).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _modules(shape, **overrides):
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_csl.layers.attention import SDPAttention
    from megatron_csl.model import llama_transformer_config

    config = llama_transformer_config(shape, use_cpu_initialization=DEVICE.type == "cpu",
                                      **overrides)
    kwargs = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal,
                  attention_type="self")
    return DotProductAttention(**kwargs), SDPAttention(**kwargs)


def _qkv(s=16, b=3, heads=4, groups=4, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, b, n, d, generator=g).to(DEVICE).requires_grad_(True)
                 for n in (heads, groups, groups))


def _compare(megatron, sdpa, mask, *, groups=4, s=16, mask_type=None):
    outs, grads = [], []
    for module in (megatron, sdpa):
        q, k, v = _qkv(s=s, groups=groups)
        kwargs = {} if mask_type is None else {"attn_mask_type": mask_type}
        out = module(q, k, v, mask, **kwargs)
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
        (out * up).sum().backward()
        outs.append(out.detach())
        grads.append((q.grad, k.grad, v.grad))
    assert outs[0].shape == outs[1].shape == (s, 3, 4 * 16)
    torch.testing.assert_close(outs[1], outs[0], rtol=TOL, atol=1e-6)
    for g_sdpa, g_megatron in zip(grads[1], grads[0]):
        # (atol: with one key the q/k gradients are exactly 0 in megatron, ~1e-8 in SDPA)
        torch.testing.assert_close(g_sdpa, g_megatron, rtol=TOL, atol=1e-6)


def test_causal_without_mask(megatron_cpu):
    _compare(*_modules(SHAPE), None)


def test_gqa(megatron_cpu):
    _compare(*_modules(SHAPE_GQA), None, groups=2)


def test_explicit_causal_mask_takes_the_fast_path(megatron_cpu, monkeypatch):
    megatron, sdpa = _modules(SHAPE)
    causal = torch.ones(16, 16, dtype=torch.bool, device=DEVICE).triu(1)[None, None]
    _compare(megatron, sdpa, causal)
    assert sdpa._sdpa_mask(causal, sdpa.attn_mask_type, 16, 16) == (True, None)
    # the comparison with the causal mask runs once per mask object
    calls = []
    monkeypatch.setattr(torch, "equal", lambda *a: calls.append(1) or True)
    sdpa._sdpa_mask(causal, sdpa.attn_mask_type, 16, 16)
    assert not calls


def test_padding_mask_is_passed_to_sdpa(megatron_cpu):
    from megatron.core.transformer.enums import AttnMaskType

    megatron, sdpa = _modules(SHAPE)
    g = torch.Generator().manual_seed(4)
    mask = (torch.rand(3, 1, 16, 16, generator=g) < 0.3).to(DEVICE)
    mask[..., 0] = False  # every query sees at least one key (megatron and SDPA differ otherwise)
    is_causal, sdpa_mask = sdpa._sdpa_mask(mask, AttnMaskType.padding, 16, 16)
    assert not is_causal and torch.equal(sdpa_mask, ~mask)
    _compare(megatron, sdpa, mask, mask_type=AttnMaskType.padding)


def test_single_query_needs_no_mask(megatron_cpu):
    _compare(*_modules(SHAPE), None, s=1)


def test_unsupported_settings(megatron_cpu):
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_csl.layers.attention import SDPAttention
    from megatron_csl.model import llama_transformer_config

    config = llama_transformer_config(SHAPE, window_size=(8, 0))
    with pytest.raises(ValueError, match=r"window_size=\(8, 0\) \(sliding window\); use "
                                         r"attention='megatron'"):
        SDPAttention(config, 1, AttnMaskType.causal, "self")
    _, sdpa = _modules(SHAPE)
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="attention_mask must be boolean"):
        sdpa(q, k, v, torch.zeros(1, 1, 16, 16, device=DEVICE))
    with pytest.raises(ValueError, match="packed sequences"):
        sdpa(q, k, v, None, packed_seq_params=object())
    with pytest.raises(ValueError, match="sq=16, sk=8"):
        sdpa(q, k[:8], v[:8], None)


@pytest.mark.parametrize("shape, compression", [(SHAPE, "dense"), (SHAPE_GQA, "dense"),
                                                (SHAPE, "w4")])
def test_model_loss_and_gradients_match(megatron_cpu, shape, compression):
    from megatron_csl.model import build_gpt_model, llama_transformer_config

    config = llama_transformer_config(shape, use_cpu_initialization=DEVICE.type == "cpu")
    results = {}
    for attention in ("megatron", "sdpa"):
        torch.manual_seed(7)
        if DEVICE.type == "cuda":
            from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

            model_parallel_cuda_manual_seed(7)
        model = build_gpt_model(config, vocab_size=128, seq_length=32, compression=compression,
                                attention=attention).to(DEVICE)
        results[attention] = (model, *loss_and_grads(model, device=DEVICE))
    (m_model, m_loss, m_grads), (s_model, s_loss, s_grads) = results["megatron"], results["sdpa"]
    for (n1, p1), (n2, p2) in zip(m_model.named_parameters(), s_model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)  # same checkpoint layout, same weights
    assert relative_error(s_loss, m_loss) < TOL
    assert m_grads.keys() == s_grads.keys()
    worst = max(relative_error(s_grads[k], m_grads[k]) for k in m_grads)
    assert worst < TOL, worst


def test_spec_options(megatron_cpu):
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    from megatron_csl.layers import compressed_layer_spec
    from megatron_csl.layers.attention import SDPAttention

    default = compressed_layer_spec("w4")
    assert repr(compressed_layer_spec("dense", attention="megatron")) == repr(
        get_gpt_layer_local_spec(normalization="RMSNorm"))
    sdpa = compressed_layer_spec("w4", attention="sdpa")
    assert sdpa.submodules.self_attention.submodules.core_attention is SDPAttention
    assert default.submodules.self_attention.submodules.core_attention is not SDPAttention
    assert repr(sdpa.submodules.mlp) == repr(default.submodules.mlp)
    with pytest.raises(ValueError, match="attention must be one of megatron, sdpa, got 'flash'"):
        compressed_layer_spec("dense", attention="flash")


@pytest.mark.skipif(torch.cuda.is_available(), reason="gloo/CPU test (GPU machines: test_gpu.py)")
def test_tensor_parallel_two_ranks():
    from megatron_csl.compat import run_ranks

    from .attention_worker import tp2_sdpa_matches_megatron

    for result in run_ranks(tp2_sdpa_matches_megatron, 2, timeout_s=180):
        assert result["loss"] < TOL and result["grad"] < TOL, result
