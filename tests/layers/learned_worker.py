"""Run on each of two spawned ranks: learned-step formats (lsq, pact) at TP=1 (reference), TP=2
and PP=2 from the same weights and learned parameters, and a checkpoint saved at TP=2 and loaded
at TP=1.

The reference weights come from a TP=1 model of each format (so they include its learned
parameters); the LSQ steps' initial values (buffers) are set by every layout from its own first
forward, which is part of what is compared.
"""
import torch

from .exactness_worker import VOCAB, SEQ, _global_name, _run, _shape, _tp_gather

CHECKPOINT_FORMAT = "w4a4:lsq"


def _learned_state(model, group):
    """Full (TP-gathered) learned parameters and initial steps, by global name."""
    out = {}
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if "learned_scales" not in name:
            continue
        split = "linear_qkv" in name or "linear_fc1" in name   # ColumnParallel: rows split
        if split and "weight_step" in name:   # fc1 is SwiGLU: gate and up rows (stride 2)
            t.tensor_model_parallel, t.partition_dim = True, 0
            t.partition_stride = 2 if "linear_fc1" in name else 1
        out[_global_name(name, model)] = _tp_gather(t.detach(), t, group)
    return out


def _build(fmt, tp, dtype=torch.float32):
    from megatron_csl.model import build_gpt_model, llama_transformer_config

    config = llama_transformer_config(_shape(), tensor_model_parallel_size=tp, params_dtype=dtype)
    return build_gpt_model(config, vocab_size=VOCAB, seq_length=SEQ, compression=fmt)


def _save_at_tp2_load_at_tp1(rank, world_size, init_method, master, ckpt_dir):
    from megatron.core import dist_checkpointing, parallel_state

    from megatron_csl.compat import initialize_cpu_parallel
    from megatron_csl.training.checkpointing import sharded_state_metadata

    initialize_cpu_parallel(2, 1, rank=rank, world_size=world_size, init_method=init_method,
                            seed=1234)
    model = _build(CHECKPOINT_FORMAT, 2)
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    from .exactness_worker import _tp_slice

    with torch.no_grad():
        for name, p in model.named_parameters():
            full = master[_global_name(name, model)]
            if "learned_scales" in name:   # distinct values, so a misplaced row would show
                full = full + torch.arange(full.numel(), dtype=full.dtype) / 1000.0 + 0.01
            p.copy_(_tp_slice(full, p, tp_rank, 2))
        tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(3))
        model(tokens, torch.arange(SEQ).expand(2, SEQ), None)   # sets the initial steps
    saved = _learned_state(model, parallel_state.get_tensor_model_parallel_group())
    dist_checkpointing.save(model.sharded_state_dict(metadata=sharded_state_metadata(False)),
                            ckpt_dir)

    initialize_cpu_parallel(1, 1, rank=rank, world_size=world_size, init_method=init_method,
                            seed=1234)
    fresh = _build(CHECKPOINT_FORMAT, 1)
    request = fresh.sharded_state_dict(metadata=sharded_state_metadata(False))  # this layout's groups
    loaded = dist_checkpointing.load(request, ckpt_dir)
    missing, _ = fresh.load_state_dict(loaded, strict=False)
    restored = _learned_state(fresh, parallel_state.get_tensor_model_parallel_group())
    return {"saved": saved, "restored": restored,
            "missing": [k for k in missing if not k.endswith("_extra_state")]}


def learned_exactness(rank, world_size, init_method, formats, ckpt_dir):
    """formats: {"float32": [spec, ...], "float64": [...]} -> results by (layout, dtype, spec),
    plus "checkpoint": the TP=2 -> TP=1 round trip of CHECKPOINT_FORMAT."""
    from megatron_csl.compat import apply_cpu_compat, initialize_cpu_parallel

    apply_cpu_compat()
    results, masters = {}, {}
    for layout, (tp, pp) in (("reference", (1, 1)), ("tp2", (2, 1)), ("pp2", (1, 2))):
        initialize_cpu_parallel(tp, pp, rank=rank, world_size=world_size,
                                init_method=init_method, seed=1234)
        for dtype_name, fmts in formats.items():
            for fmt in fmts:
                if layout == "reference":
                    torch.manual_seed(0)
                    masters[fmt] = {n: p.detach().clone()
                                    for n, p in _build(fmt, 1).named_parameters()}
                    for n, p in masters[fmt].items():
                        if n.endswith("input_clip"):   # 10 (the paper's init) clips nothing here
                            p.fill_(0.01)
                results[(layout, dtype_name, fmt)] = _run(fmt, masters[fmt], tp, pp,
                                                          getattr(torch, dtype_name))
    results["checkpoint"] = _save_at_tp2_load_at_tp1(rank, world_size, init_method,
                                                     masters[CHECKPOINT_FORMAT], ckpt_dir)
    return results
