"""Run on each of two spawned ranks: loss and full gradients of a tiny compressed Llama at
TP=1/PP=1 (reference), TP=2 and PP=2, for a list of compression formats.

Every layout starts from the same weights: a full model is built once from a seed and its
parameters are copied (sliced by megatron's partition attributes) into the parallel model.
Gradients are gathered back to full tensors with global layer names for comparison.
The float64 runs cast the whole model. A format suffixed FLOAT_MATMUL runs with the integer-code
matmul switched off (the plain fake-quant path), to show what that path is for.
"""
import torch

VOCAB, SEQ, MICRO_BATCH, MICROBATCHES = 128, 32, 2, 2
FLOAT_MATMUL = "/float-matmul"


def _shape():
    from megatron_csl.model import ModelShape

    return ModelShape(num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=192)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (MICRO_BATCH, SEQ + 1), generator=g) for _ in range(MICROBATCHES)]


def _global_name(name, model):
    """decoder.layers.<local>.x -> decoder.layers.<global>.x (pipeline stages number locally)."""
    parts = name.split(".")
    if parts[:2] == ["decoder", "layers"]:
        layer = model.decoder.layers[int(parts[2])]
        parts[2] = str(layer.layer_number - 1)
    return ".".join(parts)


def _tp_slice(full, param, rank, size):
    if not getattr(param, "tensor_model_parallel", False) or size == 1:
        return full
    dim, stride = param.partition_dim, param.partition_stride
    chunks = torch.split(full, full.shape[dim] // (size * stride), dim=dim)
    return torch.cat(chunks[rank::size], dim=dim)


def _tp_gather(local, param, group):
    size = torch.distributed.get_world_size(group)
    if not getattr(param, "tensor_model_parallel", False) or size == 1:
        return local.clone()
    shards = [torch.empty_like(local) for _ in range(size)]
    torch.distributed.all_gather(shards, local.contiguous(), group=group)
    dim, stride = param.partition_dim, param.partition_stride
    pieces = [torch.chunk(s, stride, dim=dim) for s in shards]
    # Master chunk j went to rank j % size as that rank's (j // size)-th piece.
    return torch.cat([pieces[j % size][j // size] for j in range(size * stride)], dim=dim)


def _run(compression, master, tp, pp, dtype):
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_csl.model import build_gpt_model, llama_transformer_config

    float_matmul = compression.endswith(FLOAT_MATMUL)
    compression = compression.removesuffix(FLOAT_MATMUL)

    config = llama_transformer_config(_shape(), tensor_model_parallel_size=tp,
                                      pipeline_model_parallel_size=pp, params_dtype=dtype,
                                      pipeline_dtype=dtype)
    model = build_gpt_model(config, vocab_size=VOCAB, seq_length=SEQ, compression=compression)
    model.to(dtype)   # torch norms are built in fp32 whatever params_dtype says
    if float_matmul:
        for module in model.modules():
            if hasattr(module, "_integer_matmul_exact"):
                module._integer_matmul_exact = False
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(_tp_slice(master[_global_name(name, model)], p, tp_rank, tp).to(dtype))

    data = iter(_batches())

    def forward_step(data_iterator, module):
        batch = next(data_iterator)
        tokens, labels = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
        position_ids = torch.arange(SEQ).expand(MICRO_BATCH, SEQ)
        out = module(tokens, position_ids, None, labels=labels)

        def loss_func(per_token):
            loss = per_token.mean()
            return loss, {"lm loss": loss.detach()}

        return out, loss_func

    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=data, model=[model],
        num_microbatches=MICROBATCHES, seq_length=SEQ, micro_batch_size=MICRO_BATCH,
        forward_only=False,
    )
    loss = (torch.stack([x["lm loss"] for x in losses]).mean().item()
            if parallel_state.is_pipeline_last_stage() else None)
    group = parallel_state.get_tensor_model_parallel_group()
    grads = {_global_name(n, model): _tp_gather(p.grad, p, group)
             for n, p in model.named_parameters()}
    kinds = sorted({type(m).__name__ for m in model.modules() if "Linear" in type(m).__name__})
    return {"loss": loss, "grads": grads, "linear_types": kinds}


def exactness(rank, world_size, init_method, formats):
    """formats: {"float32": [spec, ...], "float64": [...]} -> {(layout, dtype, spec): result}."""
    from megatron_csl.compat import apply_cpu_compat, initialize_cpu_parallel

    apply_cpu_compat()
    from megatron_csl.model import build_gpt_model, llama_transformer_config

    results = {}
    for layout, (tp, pp) in (("reference", (1, 1)), ("tp2", (2, 1)), ("pp2", (1, 2))):
        initialize_cpu_parallel(tp, pp, rank=rank, world_size=world_size,
                                init_method=init_method, seed=1234)
        if layout == "reference":
            torch.manual_seed(0)
            full = build_gpt_model(llama_transformer_config(_shape()), vocab_size=VOCAB,
                                   seq_length=SEQ)
            master = {n: p.detach().clone() for n, p in full.named_parameters()}
        for dtype_name, fmts in formats.items():
            dtype = getattr(torch, dtype_name)
            for fmt in fmts:
                results[(layout, dtype_name, fmt)] = _run(fmt, master, tp, pp, dtype)
    return results
