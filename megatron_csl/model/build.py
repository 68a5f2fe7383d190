"""Build the Llama GPTModel (megatron-core) with compressed linears."""
from __future__ import annotations

from typing import Optional

import torch

from .config import shape_from_config
from .validation import validate_parallel_layout


def _world_size() -> Optional[int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return None


def _stage_flags(pre_process, post_process):
    """Default pre/post-process to this rank's pipeline stage (True, True without PP)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        if pre_process is None:
            pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
        if post_process is None:
            post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    return (True if pre_process is None else pre_process,
            True if post_process is None else post_process)


def build_gpt_model(
    config,
    *,
    vocab_size: int,
    seq_length: int,
    compression="dense",
    impl: str = "local",
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    rotary_base: int = 10000,
    attention: str = "megatron",
    fused_kernels: str = "none",
    compile_backend: Optional[str] = None,
):
    """A megatron-core GPTModel: untied embeddings, RoPE, the layer spec of `compression`/`impl`.

    `attention`: core attention, "megatron" (the spec's own; dense + local is then exactly
    megatron-core's local-spec GPTModel) or "sdpa" (flash attention through
    torch.nn.functional.scaled_dot_product_attention, see megatron_csl.layers.attention).

    Speed options (megatron_csl.layers.fused; off by default): `fused_kernels="liger"`
    (liger-kernel's RMSNorm, SwiGLU and cross-entropy; local layers, CUDA) and
    `compile_backend` (e.g. "inductor": torch.compile of the RMSNorms and the SwiGLU activation).

    `config` is a TransformerConfig (see `llama_transformer_config`). Needs megatron's
    parallel_state initialised (a 1-rank gloo group is enough on a CPU). pre_process/post_process
    None: this rank's pipeline stage decides (first stage embeds, last stage has the output
    layer). The layout and compression are checked first (`validate_parallel_layout`).
    """
    from megatron.core.models.gpt import GPTModel

    from megatron_csl.layers import compressed_layer_spec

    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if not isinstance(seq_length, int) or seq_length <= 0:
        raise ValueError(f"seq_length must be a positive int, got {seq_length!r}")
    validate_parallel_layout(
        shape_from_config(config),
        config.tensor_model_parallel_size,
        config.pipeline_model_parallel_size,
        _world_size(),
        compression=compression,
        vocab_size=vocab_size,
    )
    from megatron_csl.layers.fused import (check_fused_kernels, compile_norms,
                                           fused_layer_spec, use_liger_loss)

    check_fused_kernels(fused_kernels)
    if fused_kernels != "none" and impl != "local":
        raise ValueError(f"fused_kernels={fused_kernels!r} works on the local layers; "
                         f"impl={impl!r} (Transformer Engine) has its own fused norms")
    pre_process, post_process = _stage_flags(pre_process, post_process)
    spec = fused_layer_spec(compressed_layer_spec(compression, impl, attention), fused_kernels,
                            compile_backend)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=vocab_size,
        max_sequence_length=seq_length,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=rotary_base,
    )
    if compile_backend is not None:
        compile_norms(model, compile_backend)
    if fused_kernels == "liger" and post_process:
        use_liger_loss(model)
    return model
