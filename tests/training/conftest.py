import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, like every rank the CLI tests start (OMP_NUM_THREADS=1): runs made
    in this process then compare bit for bit with runs made by subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
