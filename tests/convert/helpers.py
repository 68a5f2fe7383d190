"""Shared helpers: a run.json document, and a megatron model built in this process."""
from pathlib import Path

import torch

TINY = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128)


def run_doc(compression="dense", *, vocab_size=300, padded_vocab_size=384, seq_length=32, tp=1, pp=1,
            tokenizer_model=None, **shape):
    model = {**TINY, **shape, "seq_length": seq_length, "vocab_size": vocab_size,
             "padded_vocab_size": padded_vocab_size, "model_size": None}
    return {"name": "tiny", "model": model, "compression": compression,
            "parallel": {"tp": tp, "pp": pp, "dp": 1, "world_size": tp * pp},
            "precision": "fp32", "data": {"tokenizer_model": tokenizer_model},
            "args": {"init_method_std": 0.02, "use_distributed_optimizer": False}}


def loaded_model(compression="dense", seed=0, **kwargs):
    """A LoadedModel with random weights (norm weights perturbed so they matter)."""
    from megatron_csl.convert.loading import LoadedModel, build_model, init_single_process
    from megatron_csl.convert.run_info import CheckpointLocation, run_info_from_dict

    run = run_info_from_dict(run_doc(compression, **kwargs), Path("/nonexistent-run"))
    init_single_process(seed)
    torch.manual_seed(seed)
    model = build_model(run)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.add_(0.3 * torch.randn_like(p))
    location = CheckpointLocation(run, Path("/nonexistent-run/checkpoints/iter_0000007"), 7)
    return LoadedModel(model=model.eval(), location=location, common={"format_version": 1})


def megatron_logits(model, tokens):
    positions = torch.arange(tokens.shape[1]).expand_as(tokens)
    with torch.no_grad():
        return model(tokens, positions, None)


def relative_error(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()
