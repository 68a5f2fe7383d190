"""Checkpoints in Megatron-LM's layout via megatron.core.dist_checkpointing (torch_dist).

Layout of the checkpoint directory (``--save``, default ``RUN_DIR/checkpoints``):
``iter_0000100/`` (a dist_checkpointing directory) and ``latest_checkpointed_iteration.txt`` (the
step), as Megatron-LM writes them. A save goes to ``iter_0000100.tmp`` first; only when every
rank has finished writing is it renamed to ``iter_0000100`` and the tracker rewritten
(atomically). An interrupted save therefore leaves a ``.tmp`` directory that discovery ignores,
and the tracker always names a complete checkpoint. If the tracker is missing or names something
incomplete, discovery falls back to the newest complete ``iter_*`` directory. Directories written
before the Megatron-LM layout (tracker ``latest``) are still found.

The common state carries Megatron-LM's keys too (``args``, ``iteration``,
``checkpoint_version``, ``opt_param_scheduler``, ``num_floating_point_operations_so_far``), and
the RNG states are stored as Megatron-LM's ``get_rng_state`` stores them (format_version 2), so
Megatron-LM's ``load_checkpoint`` reads the checkpoint. Format 1 checkpoints (RNG in this
project's own layout, no ``args``) still load.

A checkpoint holds the model, the optimizer (the distributed optimizer in the ``fully_reshardable``
format, so it loads at any TP/PP/DP), the LR scheduler, each rank's RNG states, and the data
position (consumed samples) and logging accumulators, so a resumed run continues exactly.
"""
import os
import random
import re
import shutil
import sys
from pathlib import Path
from typing import Optional, Tuple

import numpy
import torch

from . import checkpoint_integrity
from . import distributed as dist_utils
from . import megatron_fixes
from megatron_csl.atomic import atomic_write_text
from megatron_csl.runfiles import (CHECKPOINT_FORMAT_VERSIONS, CHECKPOINTS_DIR,  # noqa: F401
                                   ITER_RE, LATEST_FILE, LATEST_FILES, checkpoint_dirname)

TMP_SUFFIX = ".tmp"
_ITER_RE = ITER_RE
FORMAT_VERSION = CHECKPOINT_FORMAT_VERSIONS[-1]   # 2: Megatron-LM's RNG layout and args
MEGATRON_CHECKPOINT_VERSION = 3.0   # Megatron-LM's checkpoint_version of torch_dist checkpoints


def is_complete(path: Path) -> bool:
    """A finished dist_checkpointing directory: metadata.json is written last by megatron, and
    common.pt holds our training state."""
    return (path / "metadata.json").is_file() and (path / "common.pt").is_file()


def complete_checkpoints(root: Path) -> list:
    """(step, path) of every complete ``iter_*`` directory, oldest first."""
    found = []
    if root.is_dir():
        for entry in root.iterdir():
            m = _ITER_RE.match(entry.name)
            if m and entry.is_dir() and is_complete(entry):
                found.append((int(m.group(1)), entry))
    return sorted(found)


def tracker_file(root: Path) -> Path:
    """The tracker file of a checkpoint directory: Megatron-LM's, or the older ``latest``."""
    root = Path(root)
    for name in LATEST_FILES:
        if (root / name).exists():
            return root / name
    return root / LATEST_FILE


def read_latest(root: Path) -> Optional[int]:
    try:
        text = tracker_file(root).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() else None


def find_latest(root: Path, warn=print) -> Optional[Tuple[int, Path]]:
    """The newest whole checkpoint: the one ``latest`` names, else the newest complete one; a
    damaged candidate (checkpoint_integrity: a missing or truncated shard) is skipped with a
    warning. DamagedCheckpointError when checkpoints exist but every one is damaged."""
    root = Path(root)
    candidates = []
    step = read_latest(root)
    tracker = tracker_file(root)
    if step is not None:
        path = root / checkpoint_dirname(step)
        if path.is_dir() and is_complete(path):
            candidates.append((step, path))
        else:
            warn(f"[pretrain] {tracker} names step {step}, but {path} is missing or "
                 f"incomplete; looking for the newest complete checkpoint instead")
    elif tracker.exists():
        warn(f"[pretrain] {tracker} is unreadable; looking for the newest complete "
             f"checkpoint instead")
    candidates += [c for c in reversed(complete_checkpoints(root)) if c not in candidates]
    return checkpoint_integrity.first_whole(candidates, warn)


def write_latest(root: Path, step: int) -> None:
    atomic_write_text(Path(root) / LATEST_FILE, f"{step}\n")
    legacy = Path(root) / LATEST_FILES[1]
    if legacy.exists():     # a run directory from before the Megatron-LM layout: keep one truth
        legacy.unlink()


def sharded_state_metadata(use_distributed_optimizer: bool) -> dict:
    """How model and optimizer state is laid out in the checkpoint (megatron-core >= 0.14)."""
    metadata = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
    if use_distributed_optimizer:
        # Reshardable to any TP/PP/DP; mem_efficient gathers over gloo on DP rank 0 only.
        metadata["distrib_optim_sharding_type"] = "fully_reshardable"
        metadata["distrib_optim_fully_reshardable_mem_efficient"] = True
    return metadata


# Megatron-LM's key names of one rank's RNG states (megatron/training/checkpointing.py,
# get_rng_state); the format 1 names are this project's older ones.
_RNG_KEYS = {"random": "random_rng_state", "numpy": "np_rng_state", "torch": "torch_rng_state",
             "cuda": "cuda_rng_state", "tracker": "rng_tracker_states"}
_RNG_KEYS_V1 = {name: name for name in _RNG_KEYS}


def _rng_state() -> dict:
    """This rank's RNG states under Megatron-LM's names. ``cuda_rng_state`` only where CUDA is
    (Megatron-LM's loader needs it: a checkpoint written on a CPU loads there with
    --no-load-rng)."""
    from megatron.core import tensor_parallel

    state = {
        _RNG_KEYS["random"]: random.getstate(),
        _RNG_KEYS["numpy"]: numpy.random.get_state(),
        _RNG_KEYS["torch"]: torch.get_rng_state(),
        _RNG_KEYS["tracker"]: tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state[_RNG_KEYS["cuda"]] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict, keys: dict = _RNG_KEYS) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state[keys["random"]])
    numpy.random.set_state(state[keys["numpy"]])
    torch.set_rng_state(state[keys["torch"]])
    if keys["cuda"] in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state[keys["cuda"]])
    tensor_parallel.get_cuda_rng_tracker().set_states(state[keys["tracker"]])


def _layout() -> dict:
    from megatron.core import parallel_state as ps

    return {"tp": ps.get_tensor_model_parallel_world_size(),
            "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size()}


def _rng_sharded_object(states, format_version: int = FORMAT_VERSION):
    """The ``rng_state`` entry. Format 2 is Megatron-LM's (get_rng_state with
    --data-parallel-random-init): one object per (PP, TP) rank holding the list of every DP
    rank's states, written by DP rank 0 (replica_id = DP rank). Every DP rank's own states are
    kept, so resume stays exact; Megatron-LM without --data-parallel-random-init takes entry 0
    (its DP ranks share one state). Format 1: one object per (PP, TP, DP) rank."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    layout = _layout()
    pp_rank, tp_rank = ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()
    dp_rank = ps.get_data_parallel_rank()
    if format_version < 2:
        return ShardedObject("rng_state", states, (layout["pp"], layout["tp"], layout["dp"]),
                             (pp_rank, tp_rank, dp_rank), replica_id=0)
    return ShardedObject("rng_state", states, (layout["pp"], layout["tp"]), (pp_rank, tp_rank),
                         replica_id=dp_rank)


def _all_dp_rng_states() -> list:
    """Every DP rank's RNG states, in DP rank order (Megatron-LM's all_gather_object)."""
    from megatron.core import parallel_state as ps

    state = _rng_state()
    if ps.get_data_parallel_world_size() == 1:
        return [state]
    states = [None] * ps.get_data_parallel_world_size()
    torch.distributed.all_gather_object(states, state, group=ps.get_data_parallel_group())
    return states


def _pick_rng_state(loaded, format_version: int) -> Optional[dict]:
    from megatron.core import parallel_state as ps

    if loaded is None or format_version < 2:
        return loaded
    dp_rank = ps.get_data_parallel_rank()
    return loaded[dp_rank] if len(loaded) > dp_rank else loaded[0]


def _state_dict(model, optimizer, scheduler, metadata, training_state: Optional[dict],
                is_loading: bool, with_rng: bool, args=None, format_version: int = FORMAT_VERSION):
    from megatron.core.utils import unwrap_model

    # The bare GPTModel (inside DDP / Float16Module) names the keys as Megatron-LM does.
    model_sd = unwrap_model(model).sharded_state_dict(metadata=metadata)
    state = {
        "model": model_sd,
        # optimizer None: --no-load-optim. Not even asked for its sharded state dict, which
        # creates Adam's moment tensors without a `step` (torch Adam then fails at its next step).
        "optimizer": None if optimizer is None else optimizer.sharded_state_dict(
            model_sd, is_loading=is_loading, metadata=metadata),
        "format_version": FORMAT_VERSION,
    }
    if state["optimizer"] is None:
        # fully_reshardable + mem_efficient returns the optimizer state on DP rank 0 only.
        del state["optimizer"]
    if not is_loading:
        state["scheduler"] = scheduler.state_dict()
        state["training"] = training_state
        state["layout"] = _layout()
        # Megatron-LM's own common keys (its loader and tools read these).
        state["iteration"] = training_state["step"]
        state["checkpoint_version"] = MEGATRON_CHECKPOINT_VERSION
        state["opt_param_scheduler"] = state["scheduler"]
        state["num_floating_point_operations_so_far"] = 0    # not counted here
        if args is not None:
            from .megatron_args import megatron_scheduler_state

            state["args"] = args
            state["opt_param_scheduler"] = megatron_scheduler_state(state["scheduler"],
                                                                    args.global_batch_size)
    if with_rng:
        state["rng_state"] = _rng_sharded_object(
            _all_dp_rng_states() if not is_loading else None, format_version)
    return state


def save_checkpoint(root: Path, step: int, model, optimizer, scheduler,
                    training_state: dict, use_distributed_optimizer: bool,
                    keep_last: int = 0, args=None) -> Path:
    """Write checkpoint ``step`` into the checkpoint directory ``root`` (all ranks call this)
    and point the tracker file at it. ``args``: Megatron-LM's Namespace for the common state
    (megatron_args.megatron_args)."""
    from megatron.core import dist_checkpointing

    root = Path(root)
    final = root / checkpoint_dirname(step)
    tmp = root / (checkpoint_dirname(step) + TMP_SUFFIX)
    if dist_utils.is_rank0():
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # the remains of an interrupted save of this step
        tmp.mkdir()
    dist_utils.barrier()
    metadata = sharded_state_metadata(use_distributed_optimizer)
    state = _state_dict(model, optimizer, scheduler, metadata, training_state,
                        is_loading=False, with_rng=True, args=args)
    megatron_fixes.in_process_save_results()
    dist_checkpointing.save(state, str(tmp), content_metadata=metadata)
    dist_utils.barrier()
    if dist_utils.is_rank0():
        if final.exists():
            # Same step saved before (a resumed run that stops again at once): replace it.
            old = root / (checkpoint_dirname(step) + ".old")
            if old.exists():
                shutil.rmtree(old)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        write_latest(root, step)
        if keep_last > 0:
            for old_step, path in complete_checkpoints(root)[:-keep_last]:
                if old_step != step:
                    shutil.rmtree(path, ignore_errors=True)
    dist_utils.barrier()
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, use_distributed_optimizer: bool,
                    load_optim: bool = True, load_rng: bool = True) -> dict:
    """Restore model, optimizer (unless ``load_optim`` is False: --no-load-optim), scheduler and
    (same layout only, unless --no-load-rng) RNG; returns the training state.

    All ranks call this with the same ``path``.
    """
    from megatron.core import dist_checkpointing

    from .megatron_args import check_checkpoint_args

    path = Path(path)
    common = dist_checkpointing.load_common_state_dict(str(path))
    check_checkpoint_args(common, model, path)
    format_version = common.get("format_version", 1)
    same_layout = common.get("layout") == _layout()
    with_rng = same_layout and load_rng
    # The request follows this run's optimizer: fully_reshardable state loads at any layout.
    metadata = sharded_state_metadata(use_distributed_optimizer)
    if load_optim:
        megatron_fixes.materialize_optimizer_state(optimizer)
        megatron_fixes.tolerate_missing_step(optimizer)
    request = _state_dict(model, optimizer if load_optim else None, scheduler, metadata, None,
                          is_loading=True, with_rng=with_rng, format_version=format_version)
    loaded = dist_checkpointing.load(request, str(path))
    from megatron.core.utils import unwrap_model

    unwrap_model(model).load_state_dict(loaded["model"])
    if load_optim:
        optimizer.load_state_dict(loaded["optimizer"])
        _untie_adam_steps(optimizer)
    scheduler.load_state_dict(loaded["scheduler"])
    rng = _pick_rng_state(loaded.get("rng_state"), format_version) if with_rng else None
    if rng is not None:
        _set_rng_state(rng, _RNG_KEYS if format_version >= 2 else _RNG_KEYS_V1)
    elif not same_layout and dist_utils.is_rank0():
        print(f"[pretrain] checkpoint layout {common.get('layout')} differs from this run's "
              f"{_layout()}: model and optimizer resharded, RNG states start fresh",
              file=sys.stderr, flush=True)
    return loaded["training"]


def load_model_weights(path: Path, model) -> dict:
    """Load only the model weights of a checkpoint (--finetune): one written here or by
    Megatron-LM's pretrain_gpt.py (torch_dist). Returns the checkpoint's common state.

    Parameters this model has and the checkpoint lacks (e.g. the learned scales of a compressed
    format started from a dense checkpoint) keep their initial values; a checkpoint tensor of
    another shape is an error naming it.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.utils import unwrap_model

    from .megatron_args import check_checkpoint_args

    path = Path(path)
    common = dist_checkpointing.load_common_state_dict(str(path))
    check_checkpoint_args(common, model, path)
    bare = unwrap_model(model)
    request = bare.sharded_state_dict(metadata=sharded_state_metadata(False))
    saved = set(dist_checkpointing.load_tensors_metadata(str(path)))
    present = {}
    for key, value in request.items():
        sharded_key = getattr(value, "key", None)
        if sharded_key is None or sharded_key in saved:
            present[key] = value
    loaded = dist_checkpointing.load(present, str(path))
    missing = bare.load_state_dict(loaded, strict=False)
    absent = [k for k in missing.missing_keys if not k.endswith("._extra_state")]
    if absent and dist_utils.is_rank0():
        print(f"[pretrain] --finetune: {len(absent)} parameter(s) not in {path} keep their "
              f"initial values (e.g. {absent[0]})", file=sys.stderr, flush=True)
    return common


def _inner_optimizers(optimizer):
    chained = getattr(optimizer, "chained_optimizers", None)
    return list(chained) if chained else [optimizer]


def _untie_adam_steps(optimizer) -> None:
    """After loading, megatron's optimizer state may share one ``step`` tensor between all
    parameters; torch Adam then increments it once per parameter per step, so each parameter
    gets its own copy (measured: without this, resumed losses drift)."""
    for opt in (getattr(o, "optimizer", o) for o in _inner_optimizers(optimizer)):
        for state in opt.state.values():
            step = state.get("step") if isinstance(state, dict) else None
            if torch.is_tensor(step):
                state["step"] = step.clone()
