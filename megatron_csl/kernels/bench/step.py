"""Training-step benchmark: step time, tokens/s and MFU per compression format.

The model is built the way training builds it (megatron_csl.model.build_gpt_model -> megatron's
Float16Module for bf16 -> megatron DistributedDataParallel -> get_megatron_optimizer (Adam) ->
megatron's forward_backward_func with one micro-batch -> optimizer.step()), on one process.
Every figure is a median over timed steps after warm-up; MFU is against the bf16 (CPU: fp32)
matmul rate measured in the same run (see flops.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import statistics
import tempfile
from typing import Callable, Optional, Sequence

import torch

from .flops import mfu, step_flops
from .timing import matmul_rate, time_calls

# The formats, in the order of its table.
DEFAULT_FORMATS = ("dense", "w4", "w4a4", "w2a2", "s50", "s50:tensor", "s50:nm2/4",
                   "s50:nm64/128", "s50+w4", "fp8")


@dataclasses.dataclass(frozen=True)
class StepBenchConfig:
    num_layers: int = 24
    hidden_size: int = 1024
    num_attention_heads: int = 16
    ffn_hidden_size: int = 2816
    seq_length: int = 2048
    micro_batch_size: int = 8
    micro_batches: int = 1               # per optimizer step (gradient accumulation)
    vocab_size: int = 32000
    bf16: bool = True
    attention: str = "sdpa"
    impl: str = "local"                  # "te": Transformer Engine's layers (--transformer-impl)
    fp8_format: Optional[str] = None     # TE FP8 GEMMs (hybrid / e4m3), impl "te" only
    fp8_recipe: str = "delayed"
    # Dense-speed options of the project's model (megatron_csl.layers.fused): torch.compile of
    # the norms and SwiGLU with this backend, and liger-kernel's fused kernels.
    compile_backend: Optional[str] = None
    fused_kernels: str = "none"
    # None: MEGATRON_CSL_KERNELS decides (1, 0 or check); False: reference only (--no-kernels).
    kernels: Optional[bool] = None
    warmup: int = 3
    steps: int = 10
    matmul_n: int = 8192
    device: str = "cuda"

    @classmethod
    def cpu_smoke(cls, **overrides) -> "StepBenchConfig":
        """Tiny shapes that run in seconds on a CPU (fp32: megatron's bf16 optimizer needs CUDA)."""
        # hidden and FFN multiples of 128 so that every default format (nm64/128) fits.
        base = dict(num_layers=2, hidden_size=128, num_attention_heads=4, ffn_hidden_size=384,
                    seq_length=64, micro_batch_size=2, vocab_size=256, bf16=False, warmup=1,
                    steps=2, matmul_n=256, device="cpu")
        base.update(overrides)
        return cls(**base)

    @property
    def shape(self):
        from megatron_csl.model import ModelShape

        return ModelShape(self.num_layers, self.hidden_size, self.num_attention_heads,
                          self.ffn_hidden_size)

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch_size * self.micro_batches * self.seq_length


@dataclasses.dataclass
class StepResult:
    compression: str
    attention: str
    step_s: Optional[float] = None       # median seconds per training step
    tokens_per_s: Optional[float] = None
    mfu: Optional[float] = None
    ratio: Optional[float] = None        # step time / dense step time (same attention)
    peak_memory_gb: Optional[float] = None
    kernels: str = ""                    # which parts ran on Triton kernels
    error: Optional[str] = None          # e.g. "out of memory"


def resolve_device(device) -> torch.device:
    """`device` with an index: torch.cuda.set_device refuses a CUDA device without one, so plain
    "cuda" becomes the current CUDA device ("cuda:0" unless CUDA_VISIBLE_DEVICES / set_device
    said otherwise)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def kernel_mode_context(kernels_flag: Optional[bool]):
    """The kernel mode for a benchmark run: the environment's (MEGATRON_CSL_KERNELS, e.g.
    `check`) unless the benchmark was told to turn the kernels off."""
    from megatron_csl import kernels

    if kernels_flag is False:
        return kernels.use_kernels(False)
    return contextlib.nullcontext()


def init_single_process(device: torch.device, seed: int = 1234) -> None:
    """A world of one: process group (NCCL on a GPU, gloo on a CPU) and megatron parallel state."""
    import torch.distributed as dist

    if device.type == "cpu":
        from megatron_csl.compat import apply_cpu_compat, initialize_cpu_parallel

        apply_cpu_compat(force=True)  # also on a GPU machine asked for a CPU run
        initialize_cpu_parallel(1, 1, seed=seed)
        return
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    torch.cuda.set_device(resolve_device(device))
    if not dist.is_initialized():
        fd, path = tempfile.mkstemp(prefix="mcsl_bench_pg_")
        os.close(fd)
        os.unlink(path)
        dist.init_process_group("nccl", init_method=f"file://{path}", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def _loss_func(output_tensor):
    loss = output_tensor.float().mean()
    return loss, {"lm loss": loss.detach().clone()}


def build_training_step(compression: str, cfg: StepBenchConfig, device: torch.device):
    """(step() running one optimizer step, objects to free afterwards)."""
    from megatron.core.distributed import (DistributedDataParallel,
                                           DistributedDataParallelConfig, finalize_model_grads)
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_csl.model import build_gpt_model, llama_transformer_config

    from megatron_csl.layers.fp8 import fp8_config_overrides

    config = llama_transformer_config(cfg.shape, bf16=cfg.bf16,
                                      use_cpu_initialization=device.type == "cpu",
                                      **fp8_config_overrides(cfg.fp8_format, cfg.fp8_recipe,
                                                             cfg.impl))
    model = build_gpt_model(config, vocab_size=cfg.vocab_size, seq_length=cfg.seq_length,
                            compression=compression, attention=cfg.attention, impl=cfg.impl,
                            fused_kernels=cfg.fused_kernels,
                            compile_backend=cfg.compile_backend)
    model.to(device)
    if cfg.bf16:
        from megatron.core.transformer.module import Float16Module

        model = Float16Module(config, model)
    model = DistributedDataParallel(
        config=config, module=model,
        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                                 overlap_grad_reduce=False,
                                                 use_distributed_optimizer=False))
    optimizer = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=1e-4, weight_decay=0.1, clip_grad=1.0,
                        bf16=cfg.bf16,
                        params_dtype=torch.bfloat16 if cfg.bf16 else torch.float32),
        [model])
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = model.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    gen = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (cfg.micro_batch_size, cfg.seq_length + 1),
                           generator=gen).to(device)
    inputs, labels = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    positions = torch.arange(cfg.seq_length, device=device).expand_as(inputs)
    forward_backward = get_forward_backward_func()

    def forward_step(data_iterator, model_chunk):
        next(data_iterator)
        output = model_chunk(inputs, positions, None, labels=labels)
        return output, _loss_func

    def step():
        """One optimizer step; returns megatron's per-micro-batch {"lm loss": tensor}."""
        model.zero_grad_buffer()
        optimizer.zero_grad()
        losses = forward_backward(
            forward_step_func=forward_step, data_iterator=iter([None] * cfg.micro_batches),
            model=[model], num_microbatches=cfg.micro_batches, seq_length=cfg.seq_length,
            micro_batch_size=cfg.micro_batch_size, forward_only=False)
        optimizer.step()
        return losses

    return step, (model, optimizer)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def bench_format(compression: str, cfg: StepBenchConfig, device: torch.device,
                 rate: float) -> StepResult:
    from megatron_csl.compression import parse_spec

    spec = parse_spec(compression)
    label = spec.canonical
    label += dense_option_label(cfg)
    if cfg.fp8_format is not None:
        label += f" {FP8_LABEL}{cfg.fp8_format}/{cfg.fp8_recipe}"
    result = StepResult(compression=label, attention=cfg.attention,
                        kernels=_kernel_summary(spec, cfg, device))
    with kernel_mode_context(cfg.kernels):
        return _measure(result, lambda: build_training_step(compression, cfg, device), cfg,
                        device, rate)


def bench_plain(mode: str, cfg: StepBenchConfig, device: torch.device, rate: float,
                compile_backend: str = "inductor") -> StepResult:
    """The plain PyTorch Llama of the same shape (SDPA attention), eager or torch.compile'd."""
    from .plain import build_plain_step

    result = StepResult(compression=f"plain {mode}", attention="sdpa", kernels="-")
    if mode == "compiled":  # the first call compiles: never time it
        cfg = dataclasses.replace(cfg, warmup=max(cfg.warmup, 1))
    return _measure(result, lambda: build_plain_step(cfg, device, mode, compile_backend), cfg,
                    device, rate)


def _measure(result: StepResult, build: Callable, cfg: StepBenchConfig, device: torch.device,
             rate: float) -> StepResult:
    """Fill result with the median step time of build()'s step (or the reason it failed)."""
    from megatron_csl.layers.fused import FusedKernelsUnavailable

    step = objects = None
    try:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step, objects = build()
        times = time_calls(step, device, warmup=cfg.warmup, iters=cfg.steps)
        result.step_s = statistics.median(times)
        result.tokens_per_s = cfg.tokens_per_step / result.step_s
        flops = step_flops(cfg.shape, cfg.vocab_size, cfg.seq_length, cfg.tokens_per_step)
        result.mfu = mfu(flops, result.step_s, rate)
        if device.type == "cuda":
            result.peak_memory_gb = torch.cuda.max_memory_allocated(device) / 2 ** 30
    except FusedKernelsUnavailable as err:  # e.g. --dense-options liger without liger-kernel
        result.error = f"unavailable: {err}"
    except ValueError as err:  # a format that does not fit the shape (LayoutError, SpecError)
        result.error = f"does not fit: {err}"
    except Exception as err:  # one format failing (OOM) must not lose the others' figures
        if not _is_oom(err):
            raise
        result.error = "out of memory"
    finally:
        del step, objects
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def _kernel_summary(spec, cfg: StepBenchConfig, device: torch.device) -> str:
    from megatron_csl import kernels

    if spec.is_dense:
        return "-"
    if cfg.kernels is False or kernels.kernel_mode() == "0":
        return f"reference ({kernels.ENV_VAR} off)"
    if device.type != "cuda":
        return "reference (CPU)"
    if not kernels.triton_available():
        return "reference (no triton)"
    # The widest linear of the block: fc2's input is the FFN dimension.
    return kernels.describe(spec, (cfg.hidden_size, cfg.ffn_hidden_size))


FP8_LABEL = "te-fp8:"
# --dense-options: extra rows of the project's dense model with the speed options.
DENSE_OPTIONS = ("compile", "liger", "compile+liger")


def parse_dense_option(option: str, compile_backend: str = "inductor") -> dict:
    """StepBenchConfig fields for one --dense-options item ("compile", "liger", "compile+liger")."""
    parts = option.split("+")
    if option not in DENSE_OPTIONS:
        raise ValueError(f"dense option must be one of {', '.join(DENSE_OPTIONS)}, "
                         f"got {option!r}")
    return {"compile_backend": compile_backend if "compile" in parts else None,
            "fused_kernels": "liger" if "liger" in parts else "none"}


def dense_option_label(cfg: StepBenchConfig) -> str:
    """' +compile', ' +liger', ' +compile+liger' or ''."""
    parts = (["compile"] if cfg.compile_backend else []) + (
        ["liger"] if cfg.fused_kernels == "liger" else [])
    return " +" + "+".join(parts) if parts else ""


def is_project_dense(label: str) -> bool:
    """The project's dense row or one of its speed-option rows (not a TE FP8 row)."""
    return label == "dense" or label.startswith("dense +")


def run_step_bench(formats: Sequence[str], attentions: Sequence[str], cfg: StepBenchConfig,
                   progress: Callable[[str], None] = print, plain: Sequence[str] = (),
                   compile_backend: str = "inductor", fp8_rows: Sequence[tuple] = (),
                   dense_options: Sequence[str] = (),
                   on_result: Optional[Callable[[list, float], None]] = None):
    """Results for the plain PyTorch model in each mode of `plain` ('eager', 'compiled'), then
    every (attention, format) with dense followed by dense with each speed option of
    `dense_options` (see DENSE_OPTIONS; compiled with `compile_backend`), then dense with TE's FP8 for each
    (format, recipe) of `fp8_rows`, and the measured matmul rate (FLOP/s). on_result(results so far, rate) runs
    after each row (so that a run cut short by a time limit keeps what it measured)."""
    device = resolve_device(cfg.device)
    init_single_process(device)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    progress(f"measuring the {str(dtype).replace('torch.', '')} matmul rate "
             f"({cfg.matmul_n}^3) ...")
    rate = matmul_rate(device, dtype, cfg.matmul_n)
    results = []

    def done(result: StepResult) -> None:
        results.append(result)
        progress(f"  {result.compression}: " + (result.error or f"{result.step_s * 1e3:.1f} ms"))
        if on_result is not None:
            on_result(results, rate)

    for mode in plain:
        progress(f"[plain PyTorch] {mode} ...")
        done(bench_plain(mode, cfg, device, rate, compile_backend))
    for attention in attentions:
        run_cfg = dataclasses.replace(cfg, attention=attention)
        dense_s = None
        # the speed-option rows right after dense (a run cut short by a time limit keeps them)
        option_runs = [("dense", dataclasses.replace(run_cfg, **parse_dense_option(
            o, compile_backend))) for o in dense_options]
        at = formats.index("dense") + 1 if "dense" in formats else 0
        runs = [(fmt, run_cfg) for fmt in formats[:at]] + option_runs + [
            (fmt, run_cfg) for fmt in formats[at:]] + [
            ("dense", dataclasses.replace(run_cfg, fp8_format=f, fp8_recipe=r))
            for f, r in fp8_rows]
        for fmt, fmt_cfg in runs:
            progress(f"[{attention}] {fmt} {fmt_cfg.fp8_format or ''} ...")
            result = bench_format(fmt, fmt_cfg, device, rate)
            if result.compression == "dense" and result.step_s is not None:
                dense_s = result.step_s
            if dense_s is not None and result.step_s is not None:
                result.ratio = result.step_s / dense_s
            done(result)
    return results, rate


# Issue 15's targets, by shape (hidden size): the project's dense speed against plain PyTorch
# (plain step time / dense step time) and the compression overhead per format.
DENSE_SPEED_TARGETS = {"plain eager": 1.0, "plain compiled": 0.9}
OVERHEAD_TARGETS = {1024: 0.05, 2048: 0.03}
OVERHEAD_FORMATS = ("w4", "w4a4", "s50", "s50:nm2/4", "s50+w4")
FP8_SPEEDUP_TARGET = {2048: 1.2}  # TE FP8 step vs the project's bf16 step, at 1.23B


def _has_targets(cfg: StepBenchConfig) -> bool:
    """The issue's targets hold for its shapes in bf16 on a GPU, not for smoke runs."""
    return (cfg.device.startswith("cuda") and cfg.bf16 and cfg.num_layers == 24
            and cfg.hidden_size in OVERHEAD_TARGETS)


def ratio_lines(results, cfg: StepBenchConfig) -> list:
    """Every ratio: project dense vs each plain row, each format vs project dense; with the
    issue's target where this run has one (its shapes, bf16, on a GPU)."""
    plain = {r.compression: r for r in results if r.compression.startswith("plain ")
             and r.step_s is not None}
    lines = []
    for attention in dict.fromkeys(r.attention for r in results
                                   if not r.compression.startswith("plain ")):
        rows = [r for r in results if r.attention == attention
                and not r.compression.startswith("plain ") and r.step_s is not None]
        dense = next((r for r in rows if r.compression == "dense"), None)
        if dense is None:
            continue
        for variant in (r for r in rows if is_project_dense(r.compression)):
            for name, ref in plain.items():
                speed = ref.step_s / variant.step_s
                target = DENSE_SPEED_TARGETS.get(name) if _has_targets(cfg) else None
                line = (f"project {variant.compression} [{attention}] vs {name}: "
                        f"{speed:.2f}x speed "
                        f"({variant.step_s * 1e3:.1f} vs {ref.step_s * 1e3:.1f} ms)")
                if target is not None:
                    line += _verdict(speed >= target, f">= {target}x")
                lines.append(line)
        limit = OVERHEAD_TARGETS.get(cfg.hidden_size) if _has_targets(cfg) else None
        for r in rows:
            if r.compression == "dense":
                continue
            overhead = r.step_s / dense.step_s - 1.0
            line = f"{r.compression} [{attention}] vs project dense: {overhead:+.1%} step time"
            if limit is not None and r.compression in OVERHEAD_FORMATS:
                line += _verdict(overhead <= limit, f"<= {limit:+.0%}")
            speedup = FP8_SPEEDUP_TARGET.get(cfg.hidden_size) if _has_targets(cfg) else None
            if FP8_LABEL in r.compression:
                line += f", {dense.step_s / r.step_s:.2f}x speed"
                if speedup is not None:
                    line += _verdict(dense.step_s / r.step_s >= speedup, f">= {speedup}x")
            lines.append(line)
    return lines


def _verdict(met: bool, target: str) -> str:
    return f"; target {target}: {'met' if met else 'NOT met'}"


def format_step_table(results, cfg: StepBenchConfig, rate: float) -> str:
    from tabulate import tabulate

    dtype = "bf16" if cfg.bf16 else "fp32"
    head = (f"model ({cfg.impl} layers): {cfg.num_layers} layers, hidden {cfg.hidden_size}, {cfg.num_attention_heads}"
            f" heads, FFN {cfg.ffn_hidden_size}, vocab {cfg.vocab_size}; seq {cfg.seq_length}, "
            f"micro-batch {cfg.micro_batch_size} x {cfg.micro_batches}, {dtype}, device {cfg.device}; "
            f"{dtype} matmul {format_rate(rate)} measured ({cfg.matmul_n}^3); "
            f"median of {cfg.steps} steps after {cfg.warmup} warm-up")
    rows = []
    for r in results:
        if r.error:
            rows.append([r.attention, r.compression, r.error, "", "", "", "", r.kernels])
            continue
        rows.append([r.attention, r.compression, f"{r.step_s * 1e3:.1f}",
                     f"{r.tokens_per_s:,.0f}", f"{100 * r.mfu:.1f}%",
                     "" if r.ratio is None else f"{r.ratio:.2f}x",
                     "" if r.peak_memory_gb is None else f"{r.peak_memory_gb:.1f}", r.kernels])
    table = tabulate(rows, headers=["attention", "format", "step ms", "tokens/s", "MFU",
                                    "vs dense", "peak GB", "kernels"])
    ratios = ratio_lines(results, cfg)
    return head + "\n" + table + ("\n\nratios:\n  " + "\n  ".join(ratios) if ratios else "")


def format_rate(flops_per_s: float) -> str:
    if flops_per_s >= 1e12:
        return f"{flops_per_s / 1e12:.1f} TFLOP/s"
    return f"{flops_per_s / 1e9:.1f} GFLOP/s"


def results_as_dicts(results, cfg: StepBenchConfig, rate: float) -> dict:
    return {"config": dataclasses.asdict(cfg), "matmul_flops_per_s": rate,
            "results": [dataclasses.asdict(r) for r in results],
            "ratios": ratio_lines(results, cfg)}
