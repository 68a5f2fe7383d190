"""Model, megatron DDP, optimizer and LR schedule for a run plan.

megatron-core all the way: ``build_gpt_model`` (megatron_csl.model) wrapped in megatron's
``Float16Module`` (bf16) and ``DistributedDataParallel``; ``get_megatron_optimizer`` (AdamW,
optionally the distributed optimizer) with gradient clipping; ``OptimizerParamScheduler`` for a
linear warm-up from 0 then cosine (or linear/constant) decay to --min-lr over
--lr-decay-iters, stepped once per
iteration.
"""
import dataclasses

import torch

from .errors import ConfigError


@dataclasses.dataclass
class TrainingObjects:
    model: torch.nn.Module          # the DDP-wrapped model chunk
    optimizer: object               # MegatronOptimizer
    scheduler: object               # OptimizerParamScheduler
    config: object                  # TransformerConfig


def build_model(plan):
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    from megatron_csl.model import build_gpt_model, llama_transformer_config

    m, par = plan.config.model, plan.config.parallel
    half = plan.precision in ("bf16", "fp16")
    overrides = dict(hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout,
                     sequence_parallel=False)   # resolve_plan refuses it with TP>1
    if plan.precision == "fp16":
        overrides.update(bf16=False, fp16=True, params_dtype=torch.float16,
                         pipeline_dtype=torch.float16)
    fp8 = plan.config.precision
    if fp8.fp8_format is not None:     # GPU + Transformer Engine (resolve_plan checked both)
        from megatron_csl.layers.fp8 import fp8_config_overrides

        overrides.update(fp8_config_overrides(fp8.fp8_format, fp8.fp8_recipe, m.impl))
    if par.recompute is not None:
        overrides["recompute_granularity"] = par.recompute
        if par.recompute == "full":
            overrides["recompute_method"] = par.recompute_method or "uniform"
            overrides["recompute_num_layers"] = par.recompute_num_layers or 1
    config = llama_transformer_config(
        plan.shape, tensor_model_parallel_size=plan.tp, pipeline_model_parallel_size=plan.pp,
        bf16=plan.precision == "bf16", init_method_std=m.init_method_std,
        use_cpu_initialization=m.use_cpu_initialization, **overrides)
    model = build_gpt_model(config, vocab_size=plan.padded_vocab_size, seq_length=plan.seq_length,
                            compression=plan.compression, impl=m.impl, attention=m.attention,
                            rotary_base=m.rotary_base, fused_kernels=m.fused_kernels,
                            compile_backend="inductor" if m.torch_compile else None)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    if half:
        from megatron.core.transformer.module import Float16Module

        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=bool(par.use_distributed_optimizer))
    model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    return model, config


def build_optimizer(plan, model):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    o = plan.config.optimizer
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    opt_config = OptimizerConfig(
        optimizer="adam", lr=plan.lr, min_lr=plan.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad, bf16=plan.precision == "bf16", fp16=plan.precision == "fp16",
        params_dtype=dtypes[plan.precision],
        use_distributed_optimizer=bool(plan.config.parallel.use_distributed_optimizer))
    return get_megatron_optimizer(opt_config, [model])


def build_scheduler(plan, optimizer):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    wd = plan.config.optimizer.weight_decay
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=plan.lr, min_lr=plan.min_lr,
        lr_warmup_steps=plan.warmup_iters, lr_decay_steps=plan.lr_decay_iters,
        lr_decay_style=plan.config.optimizer.lr_decay_style, start_wd=wd, end_wd=wd,
        wd_incr_steps=plan.train_iters, wd_incr_style="constant",
        # A resumed run must use the schedule it was started with; a mismatch is an error
        # (raised by load_state_dict, reported by the loop) rather than a silent override.
        use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=False)


def build_training_objects(plan) -> TrainingObjects:
    from megatron.core.distributed import finalize_model_grads

    model, config = build_model(plan)
    optimizer = build_optimizer(plan, model)
    scheduler = build_scheduler(plan, optimizer)
    # What megatron's schedules call around forward/backward: loss scaling (bf16), no grad sync
    # between micro-batches, and the data-parallel gradient all-reduce at the end.
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = model.no_sync
    config.finalize_model_grads_func = finalize_model_grads
    return TrainingObjects(model=model, optimizer=optimizer, scheduler=scheduler, config=config)


def current_lr(optimizer) -> float:
    from megatron.core.optimizer_param_scheduler import get_canonical_lr_for_logging

    lr = get_canonical_lr_for_logging(optimizer.param_groups)
    if lr is None:
        lr = optimizer.param_groups[0]["lr"]
    return float(lr)


def check_schedule_matches(scheduler, saved: dict) -> None:
    """ConfigError when a resumed run's schedule differs from the checkpoint's."""
    fields = {"max_lr": "--lr", "min_lr": "--min-lr", "lr_warmup_steps": "warm-up iterations",
              "lr_decay_steps": "--lr-decay-iters (default: the training iterations)", "lr_decay_style": "--lr-decay-style"}
    diffs = [f"{flag}: checkpoint {saved.get(key)!r}, now {getattr(scheduler, key)!r}"
             for key, flag in fields.items()
             if key in saved and saved[key] != getattr(scheduler, key)]
    if diffs:
        raise ConfigError("the checkpoint was trained with a different schedule; resume with the "
                          "original flags (" + "; ".join(diffs) + ")")
