"""Checkpoints under RUN_DIR/checkpoints via megatron.core.dist_checkpointing.

Layout: ``checkpoints/iter_0000100/`` (a dist_checkpointing directory) and ``checkpoints/latest``
(a text file with the step). A save goes to ``iter_0000100.tmp`` first; only when every rank has
finished writing is it renamed to ``iter_0000100`` and ``latest`` rewritten (atomically). An
interrupted save therefore leaves a ``.tmp`` directory that discovery ignores, and ``latest``
always names a complete checkpoint. If ``latest`` is missing or names something incomplete,
discovery falls back to the newest complete ``iter_*`` directory.

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

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
TMP_SUFFIX = ".tmp"
_ITER_RE = re.compile(r"^iter_(\d{7,})$")
FORMAT_VERSION = 1


def checkpoint_dirname(step: int) -> str:
    return f"iter_{step:07d}"


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


def read_latest(root: Path) -> Optional[int]:
    try:
        text = (root / LATEST_FILE).read_text().strip()
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
    if step is not None:
        path = root / checkpoint_dirname(step)
        if path.is_dir() and is_complete(path):
            candidates.append((step, path))
        else:
            warn(f"[pretrain] {root / LATEST_FILE} names step {step}, but {path} is missing or "
                 f"incomplete; looking for the newest complete checkpoint instead")
    elif (root / LATEST_FILE).exists():
        warn(f"[pretrain] {root / LATEST_FILE} is unreadable; looking for the newest complete "
             f"checkpoint instead")
    candidates += [c for c in reversed(complete_checkpoints(root)) if c not in candidates]
    return checkpoint_integrity.first_whole(candidates, warn)


def write_latest(root: Path, step: int) -> None:
    atomic_write_text(Path(root) / LATEST_FILE, f"{step}\n")


def sharded_state_metadata(use_distributed_optimizer: bool) -> dict:
    """How model and optimizer state is laid out in the checkpoint (megatron-core >= 0.14)."""
    metadata = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
    if use_distributed_optimizer:
        # Reshardable to any TP/PP/DP; mem_efficient gathers over gloo on DP rank 0 only.
        metadata["distrib_optim_sharding_type"] = "fully_reshardable"
        metadata["distrib_optim_fully_reshardable_mem_efficient"] = True
    return metadata


def _rng_state() -> dict:
    from megatron.core import tensor_parallel

    state = {
        "random": random.getstate(),
        "numpy": numpy.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["random"])
    numpy.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _layout() -> dict:
    from megatron.core import parallel_state as ps

    return {"tp": ps.get_tensor_model_parallel_world_size(),
            "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size()}


def _rng_sharded_object(state):
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    layout = _layout()
    return ShardedObject(
        "rng_state", state, (layout["pp"], layout["tp"], layout["dp"]),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank(),
         ps.get_data_parallel_rank()), replica_id=0)


def _state_dict(model, optimizer, scheduler, metadata, training_state: Optional[dict],
                is_loading: bool, with_rng: bool):
    from megatron.core.utils import unwrap_model

    # The bare GPTModel (inside DDP / Float16Module) names the keys as Megatron-LM does.
    model_sd = unwrap_model(model).sharded_state_dict(metadata=metadata)
    state = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading,
                                                  metadata=metadata),
        "format_version": FORMAT_VERSION,
    }
    if state["optimizer"] is None:
        # fully_reshardable + mem_efficient returns the optimizer state on DP rank 0 only.
        del state["optimizer"]
    if not is_loading:
        state["scheduler"] = scheduler.state_dict()
        state["training"] = training_state
        state["layout"] = _layout()
    if with_rng:
        state["rng_state"] = _rng_sharded_object(_rng_state() if not is_loading else None)
    return state


def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler,
                    training_state: dict, use_distributed_optimizer: bool,
                    keep_last: int = 0) -> Path:
    """Write checkpoint ``step`` (all ranks call this) and point ``latest`` at it."""
    from megatron.core import dist_checkpointing

    root = Path(run_dir) / CHECKPOINTS_DIR
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
                        is_loading=False, with_rng=True)
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


def load_checkpoint(path: Path, model, optimizer, scheduler,
                    use_distributed_optimizer: bool) -> dict:
    """Restore model, optimizer, scheduler and (same layout only) RNG; returns the training state.

    All ranks call this with the same ``path``.
    """
    from megatron.core import dist_checkpointing

    path = Path(path)
    common = dist_checkpointing.load_common_state_dict(str(path))
    same_layout = common.get("layout") == _layout()
    # The request follows this run's optimizer: fully_reshardable state loads at any layout.
    metadata = sharded_state_metadata(use_distributed_optimizer)
    megatron_fixes.materialize_optimizer_state(optimizer)
    megatron_fixes.tolerate_missing_step(optimizer)
    request = _state_dict(model, optimizer, scheduler, metadata, None, is_loading=True,
                          with_rng=same_layout)
    loaded = dist_checkpointing.load(request, str(path))
    from megatron.core.utils import unwrap_model

    unwrap_model(model).load_state_dict(loaded["model"])
    optimizer.load_state_dict(loaded["optimizer"])
    _untie_adam_steps(optimizer)
    scheduler.load_state_dict(loaded["scheduler"])
    if same_layout and loaded.get("rng_state") is not None:
        _set_rng_state(loaded["rng_state"])
    elif not same_layout and dist_utils.is_rank0():
        print(f"[pretrain] checkpoint layout {common.get('layout')} differs from this run's "
              f"{_layout()}: model and optimizer resharded, RNG states start fresh",
              file=sys.stderr, flush=True)
    return loaded["training"]


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
