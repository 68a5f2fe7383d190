"""Rewrite a run's checkpoint for another tensor/pipeline-parallel layout.

The output is a new run directory that ``launch/pretrain.py --load`` resumes at the target layout:

    OUTPUT/run.json                      the source run's, with the target layout
    OUTPUT/pretrain_args.yaml            every flag of the source run, target layout, --load
    OUTPUT/metrics.jsonl                 the source's rows up to the checkpoint's step
    OUTPUT/checkpoints/iter_XXXXXXX/     model, optimizer, scheduler and training state
    OUTPUT/checkpoints/latest_checkpointed_iteration.txt

How: TP x PP processes (gloo, CPU) build the run's model, optimizer and LR schedule at the target
layout with megatron_csl.training's own builders, load the source checkpoint into them (megatron's
dist_checkpointing reshards on load) and save with the trainer's `save_checkpoint`. The target
layout is validated first with the trainer's planner (`resolve_plan`), so an impossible layout
fails before anything runs. Megatron pads the vocabulary to a multiple of
``make_vocab_size_divisible_by x TP``; when the target TP would change the padded size, the
divisor is adjusted so the embedding keeps its shape (and the model its loss), and the YAML says so.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.run_info import CheckpointLocation, RunInfo

PRETRAIN_ARGS_FILE = "pretrain_args.yaml"
DEFAULT_TIMEOUT_S = 3600.0


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def target_config(run: RunInfo, tp: int, pp: int, run_dir: Path):
    """The source run's configuration with the target layout, ready for `resolve_plan`."""
    from megatron_csl.model import padded_vocab_size
    from megatron_csl.runfiles import CHECKPOINTS_DIR

    if not run.args:
        raise ConversionError(f"{run.run_dir / 'run.json'} has no configuration ('config' or "
                              "'args'); it cannot be resumed at another layout")
    source = run.config
    # The batch is a property of the run, not of the layout: pin what the source resolved.
    values = dict(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                  run_dir=str(run_dir), save=str(Path(run_dir) / CHECKPOINTS_DIR), load=None,
                  resume=True, name=run.raw.get("name") or source.checkpoint.name,
                  global_batch_size=run.raw.get("global_batch_size",
                                                source.budget.global_batch_size))
    divisor = source.model.make_vocab_size_divisible_by
    if padded_vocab_size(run.vocab_size, tp, divisor) != run.padded_vocab_size:
        # Another divisor that pads to the same size at this TP; prefer the source's multiple
        # (divisor x source TP) spread over the target TP, else the smallest that fits.
        fits = [d for d in _divisors(run.padded_vocab_size // tp) if run.padded_vocab_size % tp == 0
                and padded_vocab_size(run.vocab_size, tp, d) == run.padded_vocab_size]
        if not fits:
            shape = run.model_shape()
            valid = [k for k in _divisors(shape.kv_heads) if run.padded_vocab_size % k == 0
                     and shape.ffn_hidden_size % k == 0]
            raise ConversionError(
                f"target TP={tp}: the padded vocabulary of {run.padded_vocab_size} rows (vocab "
                f"{run.vocab_size}) does not split over {tp} ranks, and a different padding would change "
                f"the model; TP sizes that keep it: {valid}")
        spread, rem = divmod(divisor * run.tp, tp)
        values["make_vocab_size_divisible_by"] = spread if rem == 0 and spread in fits else fits[0]
    return source.replace(**values)


def plan_for_layout(run: RunInfo, tp: int, pp: int, run_dir: Path):
    """The trainer's RunPlan at the target layout (world size TP x PP); ConversionError when the
    layout cannot hold the model."""
    from megatron_csl.training.errors import ConfigError
    from megatron_csl.training.plan import resolve_plan

    for name, value in (("--target-tp", tp), ("--target-pp", pp)):
        if not isinstance(value, int) or value < 1:
            raise ConversionError(f"{name} must be a positive integer, got {value!r}")
    config = target_config(run, tp, pp, run_dir)
    try:
        plan = resolve_plan(config, tp * pp)
    except ConfigError as err:
        raise ConversionError(f"target layout TP={tp} PP={pp} is impossible: {err}") from None
    if plan.padded_vocab_size != run.padded_vocab_size:  # target_config should have prevented this
        raise ConversionError(f"target layout pads the vocabulary to {plan.padded_vocab_size} rows, "
                              f"the checkpoint has {run.padded_vocab_size}")
    return plan


def _convert_rank(rank: int, world_size: int, init_method: str, plan, location: CheckpointLocation,
                  staging: str):
    """One rank of the target layout: build, load (resharding), save."""
    import warnings

    warnings.filterwarnings("ignore", message=".*(Transformer Engine and Apex|Apex) (are|is) not installed.*")
    from megatron_csl.compat import initialize_cpu_parallel
    from megatron_csl.training import checkpointing as ckpt
    from megatron_csl.training.model_setup import build_training_objects
    from megatron_csl.training.megatron_args import megatron_args

    initialize_cpu_parallel(plan.tp, plan.pp, rank=rank, world_size=world_size,
                            init_method=init_method, seed=plan.config.optimizer.seed)
    objs = build_training_objects(plan)
    use_distopt = bool(plan.config.parallel.use_distributed_optimizer)
    state = ckpt.load_checkpoint(Path(location.checkpoint_dir), objs.model, objs.optimizer,
                                 objs.scheduler, use_distopt)
    if state.get("step") != location.iteration:
        raise ConversionError(f"checkpoint {location.checkpoint_dir} holds step {state.get('step')}, "
                              f"its name says {location.iteration}")
    ckpt.save_checkpoint(Path(staging) / ckpt.CHECKPOINTS_DIR, location.iteration, objs.model, objs.optimizer,
                         objs.scheduler, state, use_distopt,
                         args=megatron_args(plan, state["consumed_samples"], state["step"]))
    return {"rank": rank, "step": state["step"]}


def pretrain_yaml(plan, final_run_dir: Path) -> str:
    """A --config file for launch/pretrain.py: every flag of the run that differs from the
    default, the target layout, and --load of the converted checkpoints."""
    from megatron_csl.training.config import PretrainConfig

    default = PretrainConfig().flat()
    flags = {}
    for name, value in plan.config.flat().items():
        if name in ("resume", "load", "save", "run_dir") or value is None or value == default[name]:
            continue
        flags[name.replace("_", "-")] = list(value) if isinstance(value, tuple) else value
    flags["run-dir"] = str(final_run_dir)
    flags["save"] = str(Path(final_run_dir) / "checkpoints")
    flags["load"] = str(Path(final_run_dir) / "checkpoints")
    return yaml.safe_dump(flags, sort_keys=False)


def export_megatron(location: CheckpointLocation, staging: Path, final_output: Path, *,
                    tp: int, pp: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Write the converted run directory into `staging` (renamed to `final_output` by the caller)."""
    from megatron_csl.compat import run_ranks
    from megatron_csl.training.checkpointing import CHECKPOINTS_DIR, read_latest
    from megatron_csl.training.errors import PretrainError
    from megatron_csl.training.plan import run_json
    from megatron_csl.training.rundir import METRICS_JSONL, RUN_JSON, atomic_write_json, read_metrics

    run = location.run
    plan = plan_for_layout(run, tp, pp, final_output)
    if plan.config.precision.name != "fp32":
        raise ConversionError(f"the run trained in {plan.config.precision.name}; megatron-core's mixed-precision optimizer does not run on "
                              "a CPU, so --to megatron cannot rebuild its state here (fp32 runs only)")
    # The ranks run on the CPU over gloo; hide GPUs so megatron does not move tensors to CUDA.
    saved_env = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    try:
        results = run_ranks(_convert_rank, tp * pp, plan, location, str(staging),
                            timeout_s=timeout_s, num_threads=1)
    except RuntimeError as err:
        text = str(err)
        if "ConversionError" in text or "ConfigError" in text or isinstance(err, PretrainError):
            raise ConversionError(f"converting {location.checkpoint_dir} failed:\n{text}") from None
        raise
    finally:
        if saved_env is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved_env
    staging = Path(staging)
    if read_latest(staging / CHECKPOINTS_DIR) != location.iteration:
        raise ConversionError(f"the converted checkpoint in {staging} is incomplete")
    doc = run_json(plan, run.raw.get("restarts", 0))
    doc["converted_from"] = {"run_dir": str(run.run_dir), "checkpoint": str(location.checkpoint_dir),
                             "tp": run.tp, "pp": run.pp}
    atomic_write_json(staging / RUN_JSON, doc)
    rows = [r for r in read_metrics(run.run_dir / METRICS_JSONL)
            if isinstance(r.get("step"), int) and r["step"] <= location.iteration]
    (staging / METRICS_JSONL).write_text("".join(json.dumps(r) + "\n" for r in rows))
    (staging / PRETRAIN_ARGS_FILE).write_text(pretrain_yaml(plan, final_output))
    source_divisor = run.args.get("make_vocab_size_divisible_by")
    divisor = plan.config.model.make_vocab_size_divisible_by
    return {"step": location.iteration, "tp": tp, "pp": pp, "ranks": len(results),
            "make_vocab_size_divisible_by": divisor,
            "divisor_changed": divisor != source_divisor,
            "resume": f"torchrun --nproc-per-node {tp * pp} launch/pretrain.py --config "
                      f"{final_output / PRETRAIN_ARGS_FILE}"}
