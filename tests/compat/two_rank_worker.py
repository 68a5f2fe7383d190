"""Code run on each of two spawned ranks by test_cpu_compat_two_ranks (module level: picklable)."""
import torch


def compat_paths(rank, world_size, init_method, ckpt_dir):
    # Apply the patches before importing megatron functions by name (`from ... import f` binds
    # the function object of that moment).
    from megatron_csl.compat import apply_cpu_compat, initialize_cpu_parallel

    apply_cpu_compat()
    import torch.distributed as dist
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelLoadStrategyWrapper,
    )
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
    from megatron.core.tensor_parallel import broadcast_data

    out = {}
    # PP=2: p2p shape exchange (variable lengths) and batched p2p with synchronize.
    initialize_cpu_parallel(1, 2, rank=rank, world_size=world_size, init_method=init_method)
    for variable in (False, True):
        comm = P2PCommunicator(
            parallel_state.get_pipeline_model_parallel_group(),
            ModelParallelConfig(pipeline_dtype=torch.float32, variable_seq_lengths=variable),
        )
        if rank == 0:
            comm.send_forward(torch.arange(6.0).view(3, 1, 2), is_last_stage=False)
        else:
            out[f"p2p_variable={variable}"] = comm.recv_forward((3, 1, 2), is_first_stage=False)

    # TP=2: broadcast_data from the TP source rank.
    initialize_cpu_parallel(2, 1, rank=rank, world_size=world_size, init_method=init_method)
    mine = {"tokens": torch.full((2, 3), rank, dtype=torch.int64)}
    out["broadcast"] = broadcast_data(["tokens"], mine, torch.int64)["tokens"]

    # DP=2: fully parallel load with both exchange algorithms (exchange_utils, init_data,
    # fully_parallel's synchronize).
    initialize_cpu_parallel(1, 1, rank=rank, world_size=world_size, init_method=init_method)
    tensors = {f"t{i}": torch.arange(8.0) * (i + 1) for i in range(4)}

    def state_dict(fill):
        return {k: ShardedTensor.from_rank_offsets(k, fill(v), replica_id=rank)
                for k, v in tensors.items()}

    dist_checkpointing.save(state_dict(lambda v: v.clone()), ckpt_dir)
    for algo in ("broadcast", "gather_rounds"):
        strategy = FullyParallelLoadStrategyWrapper(
            get_default_load_sharded_strategy(ckpt_dir), exchange_algo=algo
        )
        loaded = dist_checkpointing.load(
            state_dict(torch.zeros_like), ckpt_dir, sharded_strategy=strategy
        )
        out[f"load_{algo}"] = all(torch.equal(loaded[k], v) for k, v in tensors.items())
    dist.barrier()
    return out


def fail_on_rank_one(rank, world_size, init_method):
    """Rank 1 raises at once; rank 0 would sit for a minute (like a peer blocked in a collective)."""
    import time

    if rank == 1:
        raise ValueError("rank one failed on purpose")
    time.sleep(60)
    return "rank 0 finished"
