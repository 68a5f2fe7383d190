"""Process groups from torchrun or srun environment variables, seeds, and small collectives.

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Under ``srun`` (without
torchrun) the Slurm variables SLURM_PROCID, SLURM_NTASKS and SLURM_LOCALID stand in for them; the
launcher must export MASTER_ADDR/MASTER_PORT for more than one task (the sbatch templates do).
A plain ``python launch/pretrain.py`` is a world of one on a free local port.
"""
import dataclasses
import os
import random
import socket
from datetime import timedelta
from typing import List, Optional, Sequence

import numpy
import torch

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str   # "torchrun", "slurm" or "single"


def _int_env(env, name) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise ConfigError(f"environment variable {name}={env[name]!r} is not an integer") from None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_info(env=None) -> RankInfo:
    """Where this process sits, from torchrun's variables, else Slurm's, else a world of one."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE")
        local = _int_env(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        source = "torchrun"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = _int_env(env, "SLURM_PROCID"), _int_env(env, "SLURM_NTASKS")
        local = _int_env(env, "SLURM_LOCALID") if "SLURM_LOCALID" in env else 0
        source = "slurm"
    else:
        rank, world, local, source = 0, 1, 0, "single"
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside the world of {world} processes ({source})")
    addr = env.get("MASTER_ADDR")
    port = env.get("MASTER_PORT")
    if world > 1 and (addr is None or port is None):
        raise ConfigError(f"{world} processes ({source}) but MASTER_ADDR/MASTER_PORT are not set; "
                          f"export them (the address and a free port of rank 0's host)")
    return RankInfo(rank=rank, world_size=world, local_rank=local,
                    master_addr=addr or "127.0.0.1",
                    master_port=int(port) if port is not None else free_port(), source=source)


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_EXPORTED_ENV: List[str] = []  # variables init_process_group set, removed again by shutdown()


def init_process_group(info: RankInfo, timeout_s: float = 600.0) -> None:
    """torch.distributed over NCCL (GPU) or gloo (CPU), rank/world from ``info``."""
    if torch.distributed.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        backend = "nccl"
    else:
        backend = "gloo"
    # Some libraries read the rendezvous from the environment; export it for this run only, so an
    # in-process run (tests, notebooks) does not leave its port to the next run (shutdown()).
    for key, value in (("MASTER_ADDR", info.master_addr), ("MASTER_PORT", str(info.master_port))):
        if key not in os.environ:
            _EXPORTED_ENV.append(key)
            os.environ[key] = value
    torch.distributed.init_process_group(
        backend=backend, rank=info.rank, world_size=info.world_size,
        init_method=f"tcp://{info.master_addr}:{info.master_port}",
        timeout=timedelta(seconds=timeout_s))


def init_model_parallel(tp: int, pp: int) -> None:
    from megatron.core import parallel_state

    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp,
                                                 pipeline_model_parallel_size=pp)


def set_seeds(seed: int) -> None:
    """Python, NumPy and torch seeds, and megatron's tensor-parallel RNG tracker.

    The same seed on every rank: data-parallel replicas start from identical weights, and
    megatron's tracker derives the tensor-parallel streams from it.
    """
    from megatron.core import tensor_parallel

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def shutdown() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    while _EXPORTED_ENV:
        os.environ.pop(_EXPORTED_ENV.pop(), None)


def all_reduce_max(values: Sequence[float], group=None) -> List[float]:
    """Element-wise maximum over ranks (used to agree on stop flags and checks)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device())
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=group)
    return t.tolist()


def all_reduce_sum(values: Sequence[float], group=None) -> List[float]:
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device())
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(t, group=group)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    if not torch.distributed.is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def is_rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
