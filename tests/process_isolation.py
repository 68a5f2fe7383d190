"""A module-scoped autouse fixture for test packages that build megatron models in-process:
import it into the package's conftest.py."""
import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _single_thread_and_clean_process_group():
    """One thread per process (the suite runs on 2 cores); leave no megatron parallel state or
    process group behind for other test modules (the helpers create them on first use)."""
    import torch.distributed as dist

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    had_group = dist.is_available() and dist.is_initialized()
    yield
    torch.set_num_threads(threads)
    try:
        from megatron.core import parallel_state
    except ImportError:
        return
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if not had_group and dist.is_initialized():
        dist.destroy_process_group()
