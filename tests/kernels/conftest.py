"""Kernel tests run on a GPU (compiled) or on the CPU through Triton's interpreter.

Without CUDA, TRITON_INTERPRET=1 is set only while megatron_csl.kernels.triton_kernels is
imported: its @triton.jit functions then become interpreted ones. Triton itself is imported
before that, normally, as megatron-core does anyway: the kernels use only Triton builtins, so
they interpret fine next to a normally imported triton, and triton's own lazy imports (which
expect its functions to match the mode) keep working. The variable does not leak into the rest
of the test session or its subprocesses.
"""
import importlib.util
import os
import sys

import pytest
import torch

HAVE_TRITON = importlib.util.find_spec("triton") is not None
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_triton_kernels():
    """Import the kernels for DEVICE (interpreted on a CPU); skip when triton is missing."""
    if not HAVE_TRITON:
        pytest.skip("triton is not installed (pip install triton)")
    name = "megatron_csl.kernels.triton_kernels"
    if DEVICE.type == "cpu" and name not in sys.modules:
        import triton.language  # noqa: F401  (normal mode; see the module docstring)

        previous = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            importlib.import_module(name)
        finally:
            if previous is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = previous
    return importlib.import_module(name)


@pytest.fixture(scope="session")
def triton_kernels():
    return load_triton_kernels()


@pytest.fixture(scope="module")
def megatron_cpu():
    """A 1-rank gloo group with megatron parallel_state (TP=1, PP=1) and the CPU compat."""
    from megatron_csl.compat import initialize_cpu_parallel, shutdown_cpu_parallel

    torch.set_num_threads(1)
    created = initialize_cpu_parallel(1, 1, seed=1234)
    yield
    shutdown_cpu_parallel(destroy_process_group=created)
