"""Model, megatron DDP, optimizer and LR schedule for a run plan.

megatron-core all the way: ``build_gpt_model`` (megatron_csl.model) wrapped in megatron's
``Float16Module`` (bf16) and ``DistributedDataParallel``; ``get_megatron_optimizer`` (AdamW,
optionally the distributed optimizer) with gradient clipping; ``OptimizerParamScheduler`` for a
linear warm-up from 0 then cosine (or linear/constant) decay to --min-lr, stepped once per
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

    args = plan.args
    config = llama_transformer_config(
        plan.shape, tensor_model_parallel_size=plan.tp, pipeline_model_parallel_size=plan.pp,
        bf16=bool(args.bf16), init_method_std=args.init_method_std,
        use_cpu_initialization=args.use_cpu_initialization)
    model = build_gpt_model(config, vocab_size=plan.padded_vocab_size, seq_length=plan.seq_length,
                            compression=plan.compression, impl=args.transformer_impl,
                            attention=args.attention)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    if args.bf16:
        from megatron.core.transformer.module import Float16Module

        model = Float16Module(config, model)
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=bool(args.use_distributed_optimizer))
    model = DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)
    return model, config


def build_optimizer(plan, model):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    args = plan.args
    opt_config = OptimizerConfig(
        optimizer="adam", lr=plan.lr, min_lr=plan.min_lr, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        clip_grad=args.clip_grad, bf16=bool(args.bf16),
        params_dtype=torch.bfloat16 if args.bf16 else torch.float32,
        use_distributed_optimizer=bool(args.use_distributed_optimizer))
    return get_megatron_optimizer(opt_config, [model])


def build_scheduler(plan, optimizer):
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    wd = plan.args.weight_decay
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=plan.lr, min_lr=plan.min_lr,
        lr_warmup_steps=plan.warmup_iters, lr_decay_steps=plan.train_iters,
        lr_decay_style=plan.args.lr_decay_style, start_wd=wd, end_wd=wd,
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
              "lr_decay_steps": "training iterations", "lr_decay_style": "--lr-decay-style"}
    diffs = [f"{flag}: checkpoint {saved.get(key)!r}, now {getattr(scheduler, key)!r}"
             for key, flag in fields.items()
             if key in saved and saved[key] != getattr(scheduler, key)]
    if diffs:
        raise ConfigError("the checkpoint was trained with a different schedule; resume with the "
                          "original flags (" + "; ".join(diffs) + ")")
