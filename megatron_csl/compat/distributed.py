"""Start megatron-core's parallel state on CPU processes (gloo), and run a function on N ranks.

Used by tests and small CPU tools; real runs start through torchrun/srun in launch/pretrain.py.
"""
from __future__ import annotations

import os
import tempfile
import time
import traceback
from typing import Any, Callable, Optional

import torch


def initialize_cpu_parallel(
    tp: int = 1,
    pp: int = 1,
    *,
    rank: int = 0,
    world_size: int = 1,
    init_method: Optional[str] = None,
    seed: Optional[int] = None,
) -> bool:
    """gloo process group + megatron parallel_state (TP x PP) + CPU compat + seeds.

    Reuses an already initialised process group of the same world size (e.g. inside pytest).
    `init_method` None: a fresh file:// rendezvous (world size 1 only). Returns True when it
    created the process group (so the caller knows to `shutdown_cpu_parallel(True)`).
    """
    import torch.distributed as dist

    from .cpu import apply_cpu_compat

    apply_cpu_compat()
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    created = not dist.is_initialized()
    if created:
        if init_method is None:
            if world_size != 1:
                raise ValueError(f"init_method is needed for world_size {world_size} > 1")
            fd, path = tempfile.mkstemp(prefix="mcsl_pg_")
            os.close(fd)
            os.unlink(path)
            init_method = f"file://{path}"
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    elif dist.get_world_size() != world_size:
        raise RuntimeError(
            f"a process group of world size {dist.get_world_size()} is already initialised; "
            f"cannot start one of world size {world_size}"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp
    )
    if seed is not None:
        torch.manual_seed(seed)
        model_parallel_cuda_manual_seed(seed)
    return created


def shutdown_cpu_parallel(destroy_process_group: bool = True) -> None:
    """Undo `initialize_cpu_parallel`: megatron's parallel state, then the process group."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if destroy_process_group and dist.is_initialized():
        dist.destroy_process_group()


def _rank_main(rank, world_size, init_method, fn, args, result_dir, num_threads):
    torch.set_num_threads(num_threads)
    path = os.path.join(result_dir, f"rank{rank}.pt")
    try:
        result = fn(rank, world_size, init_method, *args)
        torch.save({"ok": True, "result": result}, path + ".tmp")
    except BaseException:  # report every failure, KeyboardInterrupt included
        torch.save({"ok": False, "error": traceback.format_exc()}, path + ".tmp")
    os.replace(path + ".tmp", path)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _failed(path: str) -> bool:
    if not os.path.exists(path):
        return False
    return not torch.load(path, weights_only=False)["ok"]


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    *args,
    timeout_s: float = 120.0,
    num_threads: int = 1,
) -> list:
    """Run `fn(rank, world_size, init_method, *args)` on `world_size` spawned processes and
    return the per-rank results. `fn` must be importable (module level). A rank that raises makes
    this raise with its traceback; a hang past `timeout_s` kills all ranks and raises."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mcsl_ranks_") as tmp:
        init_method = f"file://{os.path.join(tmp, 'rendezvous')}"
        procs = [
            ctx.Process(target=_rank_main,
                        args=(r, world_size, init_method, fn, args, tmp, num_threads))
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        try:
            # Poll so that one failed rank ends the run at once instead of leaving its peers
            # blocked in a collective until the deadline.
            while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
                if any(not p.is_alive() and p.exitcode != 0 for p in procs) or any(
                    _failed(os.path.join(tmp, f"rank{r}.pt")) for r in range(world_size)
                ):
                    break
                time.sleep(0.1)
            failed_early = any(_failed(os.path.join(tmp, f"rank{r}.pt")) for r in range(world_size))
            hung = [] if failed_early else [r for r, p in enumerate(procs) if p.is_alive()]
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        outcomes = []
        for r in range(world_size):
            path = os.path.join(tmp, f"rank{r}.pt")
            outcomes.append(torch.load(path, weights_only=False) if os.path.exists(path) else None)
        errors = [f"rank {r}:\n{o['error']}" for r, o in enumerate(outcomes) if o and not o["ok"]]
        if errors:
            raise RuntimeError("a rank failed:\n" + "\n".join(errors))
        if hung:
            raise TimeoutError(f"ranks {hung} still running after {timeout_s:.0f} s; killed")
        missing = [r for r, o in enumerate(outcomes) if o is None]
        if missing:
            codes = {r: procs[r].exitcode for r in missing}
            raise RuntimeError(f"ranks {missing} exited without a result (exit codes {codes})")
        return [o["result"] for o in outcomes]
