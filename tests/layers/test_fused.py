"""The dense-speed options of megatron_csl.layers.fused (issue 15, item 1).

On a CPU: torch.compile of the norms and SwiGLU gives eager's losses (dense and w4, with the
compressed-weight cache and two micro-batches); the liger option's module selection, checked with
FAKE liger classes (liger-kernel's Triton kernels do not run in Triton's interpreter: they fail
with "'float' object has no attribute 'to'"), so only the wiring is tested there; the errors.
On a GPU (marked gpu): the real liger kernels against the unfused model.
"""
import dataclasses

import pytest
import torch

from megatron_csl.layers import fused
from megatron_csl.kernels.bench import step as bench

CPU_CFG = bench.StepBenchConfig.cpu_smoke(num_layers=2, hidden_size=64, num_attention_heads=4,
                                          ffn_hidden_size=128, seq_length=16, vocab_size=128,
                                          micro_batches=2)


def _losses(compression, cfg, steps=3):
    """Per-micro-batch losses of `steps` optimizer steps, and the model (same seed each call)."""
    torch.manual_seed(0)
    step, (model, _) = bench.build_training_step(compression, cfg, torch.device(cfg.device))
    losses = [float(d["lm loss"]) for _ in range(steps) for d in step()]
    return losses, model


@pytest.mark.parametrize("compression", ["dense", "w4"])
def test_compiled_norms_and_swiglu_give_eager_losses(megatron_cpu, monkeypatch, compression):
    monkeypatch.setenv("MEGATRON_CSL_WEIGHT_CACHE", "1")
    eager, eager_model = _losses(compression, CPU_CFG)
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    compiled, model = _losses(compression,
                              dataclasses.replace(CPU_CFG, compile_backend="aot_eager"))
    # dynamo built one graph for rms_norm (shared by the 5 norms) and one for SwiGLU, no breaks
    assert counters["stats"]["unique_graphs"] == 2
    assert not counters["graph_break"], dict(counters["graph_break"])
    gpt = model.module
    layer = gpt.decoder.layers[0]
    # the option really took effect: compiled norms, the SwiGLU MLP with a compiled activation
    assert isinstance(layer.mlp, fused.SwiGLUMLP)
    assert layer.mlp.swiglu is not fused.torch_swiglu
    assert "forward" in vars(layer.input_layernorm)          # routed through compiled_rms_norm
    assert "forward" in vars(gpt.decoder.final_layernorm)
    assert not isinstance(eager_model.module.decoder.layers[0].mlp, fused.SwiGLUMLP)
    assert len(eager) == len(compiled) == 6 and eager[0] != eager[-1]
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    # the same parameter names: checkpoints move between the options
    assert list(gpt.state_dict()) == list(eager_model.module.state_dict())


# ---------------------------------------------------------------- liger wiring (fakes on CPU)
class FakeLigerRMSNorm(torch.nn.RMSNorm):
    """FAKE for the selection logic only: torch's RMSNorm under a liger-like signature."""

    def __init__(self, hidden_size, eps=1e-6, casting_mode="llama", in_place=True):
        super().__init__(hidden_size, eps=eps)
        self.in_place = in_place


class FakeLigerSiLUMul:
    """FAKE for the selection logic only."""
    calls = 0

    @classmethod
    def apply(cls, a, b):
        cls.calls += 1
        return torch.nn.functional.silu(a) * b


class FakeLigerCrossEntropy:
    """FAKE for the selection logic only: liger's argument order, torch's cross-entropy."""
    calls = 0

    @classmethod
    def apply(cls, logits, target, weight, ignore_index, lse_square_scale, label_smoothing,
              reduction):
        cls.calls += 1
        loss = torch.nn.functional.cross_entropy(logits.float(), target,
                                                 ignore_index=ignore_index, reduction=reduction)
        return loss, None, None, None


@pytest.fixture
def fake_liger(monkeypatch):
    monkeypatch.setattr(fused, "_liger",
                        lambda: (FakeLigerRMSNorm, FakeLigerSiLUMul, FakeLigerCrossEntropy))
    monkeypatch.setattr(fused, "check_fused_kernels", lambda name: name)
    FakeLigerSiLUMul.calls = FakeLigerCrossEntropy.calls = 0


def _tiny(**kwargs):
    from megatron_csl.model import ModelShape, build_gpt_model, llama_transformer_config

    torch.manual_seed(0)
    config = llama_transformer_config(ModelShape(2, 32, 2, 64), use_cpu_initialization=True)
    return build_gpt_model(config, vocab_size=64, seq_length=16, **kwargs)


def _loss(model, tokens):
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    return model(tokens[:, :-1], positions[:, :-1], None, labels=tokens[:, 1:])


def test_liger_option_selects_liger_modules(megatron_cpu, fake_liger):
    plain = _tiny()
    liger = _tiny(fused_kernels="liger")
    layer = liger.decoder.layers[0]
    assert type(layer.input_layernorm) is FakeLigerRMSNorm
    assert type(layer.pre_mlp_layernorm) is FakeLigerRMSNorm
    assert layer.input_layernorm.in_place is False
    assert isinstance(layer.mlp, fused.SwiGLUMLP) and layer.mlp.swiglu is fused.liger_swiglu
    assert liger.compute_language_model_loss is fused.liger_language_model_loss
    assert type(plain.decoder.layers[0].input_layernorm) is torch.nn.RMSNorm
    # same parameter names: the unfused model's weights load as they are
    liger.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(1))
    expected, got = _loss(plain, tokens), _loss(liger, tokens)
    assert FakeLigerSiLUMul.calls == 2 and FakeLigerCrossEntropy.calls == 1
    assert got.shape == expected.shape == (2, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_liger_errors(megatron_cpu, monkeypatch):
    with pytest.raises(ValueError, match="fused_kernels must be one of none, liger, got 'apex'"):
        fused.check_fused_kernels("apex")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(fused.FusedKernelsUnavailable, match="needs .*CUDA|needs liger-kernel"):
        _tiny(fused_kernels="liger")
    monkeypatch.setattr(fused, "check_fused_kernels", lambda name: name)
    with pytest.raises(ValueError, match="impl='te'"):
        _tiny(fused_kernels="liger", impl="te")


def test_dense_option_labels_and_ratios():
    assert bench.parse_dense_option("compile+liger", "aot_eager") == {
        "compile_backend": "aot_eager", "fused_kernels": "liger"}
    with pytest.raises(ValueError, match="dense option must be one of compile, liger, "
                                         "compile\\+liger, got 'fast'"):
        bench.parse_dense_option("fast")
    cfg = dataclasses.replace(CPU_CFG, compile_backend="inductor", fused_kernels="liger")
    assert bench.dense_option_label(cfg) == " +compile+liger"
    results = [bench.StepResult("plain eager", "sdpa", step_s=0.2),
               bench.StepResult("dense", "sdpa", step_s=0.25),
               bench.StepResult("dense +liger", "sdpa", step_s=0.16)]
    lines = bench.ratio_lines(results, CPU_CFG)
    assert "project dense +liger [sdpa] vs plain eager: 1.25x speed (160.0 vs 200.0 ms)" in lines
    assert "project dense [sdpa] vs plain eager: 0.80x speed (250.0 vs 200.0 ms)" in lines


# ---------------------------------------------------------------- the real kernels (GPU)
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="liger-kernel needs CUDA")
def test_liger_kernels_match_the_unfused_model_on_cuda():
    pytest.importorskip("liger_kernel")
    from megatron_csl.model import ModelShape, build_gpt_model, llama_transformer_config

    bench.init_single_process(bench.resolve_device("cuda"))
    config = llama_transformer_config(ModelShape(2, 256, 4, 512))
    torch.manual_seed(0)
    plain = build_gpt_model(config, vocab_size=512, seq_length=64).cuda()
    liger = build_gpt_model(config, vocab_size=512, seq_length=64, fused_kernels="liger").cuda()
    assert type(liger.decoder.layers[0].input_layernorm).__name__ == "LigerRMSNorm"
    liger.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 512, (4, 65), device="cuda")
    losses = []
    for model in (plain, liger):
        loss = _loss(model, tokens).mean()
        loss.backward()
        losses.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    torch.testing.assert_close(losses[1][0], losses[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in losses[0][1].items():
        torch.testing.assert_close(losses[1][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)
