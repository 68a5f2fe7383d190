"""Run on each of two spawned ranks: the same TP=2 model with megatron's DotProductAttention
and with SDPAttention (weights cut from one master, use_cpu_initialization): loss and every
local gradient must agree."""
import torch

from .test_attention import SHAPE_GQA, loss_and_grads, relative_error


def tp2_sdpa_matches_megatron(rank, world_size, init_method):
    from megatron_csl.compat import initialize_cpu_parallel
    from megatron_csl.model import build_gpt_model, llama_transformer_config

    initialize_cpu_parallel(2, 1, rank=rank, world_size=world_size, init_method=init_method,
                            seed=11)
    config = llama_transformer_config(SHAPE_GQA, tensor_model_parallel_size=2)
    results = {}
    for attention in ("megatron", "sdpa"):
        torch.manual_seed(3)
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(3)
        model = build_gpt_model(config, vocab_size=128, seq_length=32, attention=attention)
        results[attention] = loss_and_grads(model)
    (loss_m, grads_m), (loss_s, grads_s) = results["megatron"], results["sdpa"]
    assert grads_m.keys() == grads_s.keys()
    return {"loss": relative_error(loss_s, loss_m),
            "grad": max(relative_error(grads_s[k], grads_m[k]) for k in grads_m)}
