import pytest
import torch


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
