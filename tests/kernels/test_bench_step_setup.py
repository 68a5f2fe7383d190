"""bench_step's device selection, kernel mode and plain PyTorch reference, checked on a CPU
(the GPU bugs of issue 15)."""
import dataclasses

import pytest
import torch

from megatron_csl import kernels
from megatron_csl.kernels.bench import step as bench


def test_plain_cuda_device_gets_the_current_index(monkeypatch):
    """torch.cuda.set_device(torch.device("cuda")) raises; the benchmark must pass an index."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert bench.resolve_device("cuda") == torch.device("cuda", 3)
    assert bench.resolve_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert bench.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert bench.resolve_device("cpu") == torch.device("cpu")


def test_init_single_process_sets_an_indexed_device(monkeypatch):
    seen = []

    def set_device(device):
        # What torch does with a CUDA device without index (the bug seen on the H200).
        if isinstance(device, torch.device) and device.index is None:
            raise ValueError("Expected a cuda device with a specified index or an integer")
        seen.append(device)

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    from megatron.core import parallel_state

    monkeypatch.setattr(parallel_state, "model_parallel_is_initialized", stop)
    with pytest.raises(Stop):
        bench.init_single_process(torch.device("cuda"))
    assert seen == [torch.device("cuda", 0)]


@pytest.mark.parametrize("env, flag, expected", [
    ("check", None, "check"), ("0", None, "0"), ("1", None, "1"), (None, None, "1"),
    ("check", False, "0"), ("1", False, "0"),
])
def test_bench_format_respects_the_kernel_environment(monkeypatch, env, flag, expected):
    """MEGATRON_CSL_KERNELS=check must reach the benchmark's steps (bench_format used to force
    use_kernels(True)); --no-kernels (kernels=False) turns them off."""
    if env is None:
        monkeypatch.delenv(kernels.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(kernels.ENV_VAR, env)
    modes = []

    def fake_build(compression, cfg, device):
        modes.append(kernels.kernel_mode())
        return (lambda: None), ()

    monkeypatch.setattr(bench, "build_training_step", fake_build)
    cfg = bench.StepBenchConfig.cpu_smoke(kernels=flag, steps=1, warmup=0)
    result = bench.bench_format("w4", cfg, torch.device("cpu"), rate=1e9)
    assert modes == [expected] and result.error is None and result.step_s is not None


def test_kernel_summary_names_the_off_switch(monkeypatch):
    from megatron_csl.compression import parse_spec

    monkeypatch.setenv(kernels.ENV_VAR, "0")
    cfg = bench.StepBenchConfig.cpu_smoke(device="cuda")
    assert bench._kernel_summary(parse_spec("w4"), cfg, torch.device("cuda")) == \
        f"reference ({kernels.ENV_VAR} off)"


def test_plain_llama_has_the_project_models_parameters(megatron_cpu):
    """The plain PyTorch reference is the same model: same parameter count per shape as the
    project's megatron GPTModel, and it trains (its loss falls over a few AdamW steps)."""
    from megatron_csl.kernels.bench.plain import (PlainLlama, build_plain_step,
                                                  plain_parameter_count)
    from megatron_csl.model import build_gpt_model, llama_transformer_config

    cfg = bench.StepBenchConfig.cpu_smoke(num_layers=2, hidden_size=64, num_attention_heads=4,
                                          ffn_hidden_size=160, seq_length=16, vocab_size=96)
    project = build_gpt_model(llama_transformer_config(cfg.shape, use_cpu_initialization=True),
                              vocab_size=cfg.vocab_size, seq_length=cfg.seq_length)
    plain = PlainLlama(cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads,
                       cfg.ffn_hidden_size, cfg.vocab_size, cfg.seq_length)
    count = sum(p.numel() for p in plain.parameters())
    assert count == sum(p.numel() for p in project.parameters()) == plain_parameter_count(cfg)
    step, _ = build_plain_step(dataclasses.replace(cfg, micro_batches=2), torch.device("cpu"),
                               "eager")
    losses = [sum(float(x) for x in step()) for _ in range(6)]
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="plain mode must be one of eager, compiled, got 'jit'"):
        build_plain_step(cfg, torch.device("cpu"), "jit")

