"""Megatron-LM's ``args`` Namespace for a checkpoint's common state, and the check of a loaded
checkpoint's ``args`` against the model this run built.

Megatron-LM's ``megatron/training/checkpointing.py`` stores its whole argparse Namespace as
``state_dict['args']`` and reads it back on load: ``load_checkpoint`` takes
``tensor_model_parallel_size``/``pipeline_model_parallel_size`` (RNG and optimizer resharding
decisions), ``no_save_rng``/``no_save_optim``, ``world_size``/``data_parallel_size``,
``consumed_train_samples``/``skipped_train_samples``/``consumed_valid_samples``, and
``check_checkpoint_args`` compares ``num_layers``, ``hidden_size``, ``num_attention_heads`` and
``add_position_embedding`` (default True); ``--use-checkpoint-args``
(``load_args_from_checkpoint``) copies the model fields (``ffn_hidden_size``,
``num_query_groups``, ``swiglu``, ``normalization``, ...).

The Namespace is generated from the typed configuration: every field of every config group
(their names are Megatron-LM's flag names), then the values the plan resolved (the model shape,
vocabulary padding, layout, schedule), then the few Megatron-LM fields that are derived from
those. No second list of values is kept here.
"""
import argparse
import dataclasses

from .errors import ConfigError


def megatron_args(plan, consumed_train_samples: int, iteration: int) -> argparse.Namespace:
    """The Namespace Megatron-LM's pretrain_gpt.py would have saved for this run."""
    cfg, shape = plan.config, plan.shape
    values = {}
    for group in dataclasses.fields(cfg):
        section = getattr(cfg, group.name)
        if dataclasses.is_dataclass(section):
            values.update(dataclasses.asdict(section))
    heads = shape.num_attention_heads
    groups = shape.num_query_groups or heads
    values.update(
        # The resolved model (a --model-size preset fills the shape the flags left out).
        num_layers=shape.num_layers, hidden_size=shape.hidden_size, num_attention_heads=heads,
        ffn_hidden_size=shape.ffn_hidden_size, num_query_groups=groups,
        group_query_attention=groups != heads, kv_channels=shape.hidden_size // heads,
        seq_length=plan.seq_length,
        max_position_embeddings=cfg.model.max_position_embeddings or plan.seq_length,
        vocab_size=plan.vocab_size, padded_vocab_size=plan.padded_vocab_size,
        # Derived as Megatron-LM's validate_args derives them.
        add_bias_linear=not cfg.model.disable_bias_linear,
        add_qkv_bias=False, squared_relu=False, apply_layernorm_1p=False,
        rotary_interleaved=False, num_experts=None, use_mcore_models=True,
        # Layout and schedule as this run resolved them.
        tensor_model_parallel_size=plan.tp, pipeline_model_parallel_size=plan.pp,
        virtual_pipeline_model_parallel_size=None, expert_model_parallel_size=1,
        context_parallel_size=1, data_parallel_size=plan.dp, world_size=plan.world_size,
        micro_batch_size=plan.micro_batch_size, global_batch_size=plan.global_batch_size,
        train_iters=plan.train_iters, lr=plan.lr, min_lr=plan.min_lr,
        lr_warmup_iters=plan.warmup_iters, lr_warmup_fraction=None,   # resolved into iters
        lr_decay_iters=plan.lr_decay_iters,
        fp16=plan.precision == "fp16", bf16=plan.precision == "bf16",
        data_parallel_random_init=False,
        # Checkpoint: torch_dist through dist_checkpointing, RNG and optimizer saved; the
        # optimizer layout is described by the content metadata, not ckpt_fully_parallel_save.
        ckpt_format="torch_dist", use_dist_ckpt=True, ckpt_fully_parallel_save=False,
        no_save_rng=False, no_save_optim=False,
        # Data position: validation restarts from the first validation sample every time here.
        consumed_train_samples=consumed_train_samples, skipped_train_samples=0,
        consumed_valid_samples=0, iteration=iteration,
        compression=plan.compression)
    # Not written: add_position_embedding and use_rotary_position_embeddings, legacy fields that
    # megatron-core's GPTModel ignores (position_embedding_type decides). check_checkpoint_args
    # compares add_position_embedding with a default of True (Megatron-LM's own default, False
    # only with --no-position-embedding), so leaving it out matches either setting.
    return argparse.Namespace(**values)


# The scheduler fields Megatron-LM counts in samples: its get_optimizer_param_scheduler
# (megatron/training/training.py) builds them as iterations x global_batch_size, and train_step
# advances num_steps by the global batch size; this project's scheduler counts iterations.
_SAMPLE_COUNTED = ("num_steps", "lr_warmup_steps", "lr_decay_steps", "wd_incr_steps")


def megatron_scheduler_state(state: dict, global_batch_size: int) -> dict:
    """This project's OptimizerParamScheduler state (iterations) in Megatron-LM's units
    (samples), for the checkpoint's ``opt_param_scheduler``."""
    return {k: v * global_batch_size if k in _SAMPLE_COUNTED else v for k, v in state.items()}


class CheckpointShapeError(ConfigError):
    """A checkpoint's model shape (its saved Megatron-LM args) is not the model this run built."""


def _model_shape(model) -> dict:
    """The shape of the model this run built, in Megatron-LM's field names."""
    from megatron.core.utils import unwrap_model

    bare = unwrap_model(model)
    config = bare.config
    return {"num_layers": config.num_layers, "hidden_size": config.hidden_size,
            "num_attention_heads": config.num_attention_heads,
            "num_query_groups": config.num_query_groups or config.num_attention_heads,
            "ffn_hidden_size": config.ffn_hidden_size,
            "kv_channels": config.kv_channels,
            "padded_vocab_size": getattr(bare, "vocab_size", None)}


def check_checkpoint_args(common: dict, model, path) -> None:
    """Compare the ``args`` a checkpoint carries (one written here or by Megatron-LM) with the
    model built from the command line, as Megatron-LM's ``check_checkpoint_args`` does, and raise
    CheckpointShapeError naming every field that differs. A checkpoint without ``args`` (written
    before they were stored) is not checked here; dist_checkpointing still refuses wrong shapes."""
    saved = common.get("args")
    if saved is None:
        return
    wanted = _model_shape(model)
    if getattr(saved, "num_query_groups", None) is None and \
            getattr(saved, "num_attention_heads", None) is not None \
            and not getattr(saved, "group_query_attention", False):
        saved = argparse.Namespace(**{**vars(saved), "num_query_groups": saved.num_attention_heads})
    differ = []
    for name, value in wanted.items():
        theirs = getattr(saved, name, None)
        if theirs is not None and value is not None and theirs != value:
            differ.append(f"{name} {theirs} in the checkpoint, {value} here")
    if differ:
        raise CheckpointShapeError(
            f"--load {path}: the checkpoint's model does not match this run's: "
            f"{'; '.join(differ)}. Give the checkpoint's shape on the command line (or load "
            f"another checkpoint)")
