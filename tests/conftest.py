"""Suite-wide test settings."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# Property tests draw the same examples on every run (CI included), so a failure reproduces and a
# green run stays green; `HYPOTHESIS_PROFILE=explore pytest ...` searches fresh examples locally.
settings.register_profile("ci", derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# megatron-core on a CPU, for tests/compat, tests/layers and tests/model.
@pytest.fixture(scope="module")
def megatron_cpu():
    """A 1-rank gloo group with megatron parallel_state (TP=1, PP=1) and the CPU compat."""
    from megatron_csl.compat import initialize_cpu_parallel, shutdown_cpu_parallel

    torch.set_num_threads(1)
    created = initialize_cpu_parallel(1, 1, seed=1234)
    yield
    shutdown_cpu_parallel(destroy_process_group=created)


@pytest.fixture
def tiny_gpt(megatron_cpu):
    from megatron_csl.model import ModelShape, build_gpt_model, llama_transformer_config

    torch.manual_seed(0)
    config = llama_transformer_config(ModelShape(2, 32, 2, 64))
    return config, build_gpt_model(config, vocab_size=64, seq_length=16)
