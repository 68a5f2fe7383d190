"""Where a process sits: torchrun variables, srun (Slurm) variables, or a world of one."""
import pytest

from megatron_csl.training.distributed import rank_info
from megatron_csl.training.errors import ConfigError


def test_torchrun_variables_win():
    info = rank_info({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "node1",
                      "MASTER_PORT": "29500", "SLURM_PROCID": "0", "SLURM_NTASKS": "8"})
    assert (info.rank, info.world_size, info.local_rank, info.source) == (3, 4, 1, "torchrun")
    assert (info.master_addr, info.master_port) == ("node1", 29500)


def test_srun_variables_without_torchrun():
    info = rank_info({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                      "MASTER_ADDR": "node0", "MASTER_PORT": "20001"})
    assert (info.rank, info.world_size, info.local_rank, info.source) == (5, 8, 1, "slurm")


def test_a_plain_process_is_a_world_of_one_on_a_free_port():
    info = rank_info({})
    assert (info.rank, info.world_size, info.source, info.master_addr) == (0, 1, "single",
                                                                           "127.0.0.1")
    assert 0 < info.master_port < 65536
    # One Slurm task needs no rendezvous address either.
    assert rank_info({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).world_size == 1


@pytest.mark.parametrize("env, message", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR/MASTER_PORT are not set"),
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}, "outside the world"),
    ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x' is not an integer"),
])
def test_inconsistent_environments_are_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        rank_info(env)
