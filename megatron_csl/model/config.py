"""The Llama TransformerConfig: RMSNorm, SwiGLU, no biases, no dropout (RoPE is set on the model)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .shapes import ModelShape


def llama_transformer_config(
    shape: ModelShape,
    *,
    tensor_model_parallel_size: int = 1,
    pipeline_model_parallel_size: int = 1,
    bf16: bool = False,
    init_method_std: float = 0.02,
    use_cpu_initialization: Optional[bool] = None,
    **overrides,
):
    """megatron-core TransformerConfig for a Llama decoder of `shape`.

    use_cpu_initialization None: True when CUDA is absent (megatron's GPU init path allocates on
    CUDA) and False otherwise. With True every TP shard is cut from one master weight drawn on the
    CPU, so TP=2 starts from the same model as TP=1. Fusions that need apex or TE are off;
    `overrides` go straight to TransformerConfig (e.g. hidden_dropout=0.1, num_query_groups).
    """
    from megatron.core.transformer import TransformerConfig

    if use_cpu_initialization is None:
        use_cpu_initialization = not torch.cuda.is_available()
    dtype = torch.bfloat16 if bf16 else torch.float32
    kwargs = dict(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        ffn_hidden_size=shape.ffn_hidden_size,
        kv_channels=shape.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=1e-5,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,   # needs apex's scaled_masked_softmax_cuda
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,  # a compressed weight has no .main_grad
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        sequence_parallel=False,
        bf16=bf16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        init_method_std=init_method_std,
        use_cpu_initialization=use_cpu_initialization,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def shape_from_config(config) -> ModelShape:
    """The ModelShape a TransformerConfig describes."""
    return ModelShape(
        num_layers=config.num_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        ffn_hidden_size=config.ffn_hidden_size,
        num_query_groups=(
            None if config.num_query_groups in (None, config.num_attention_heads)
            else config.num_query_groups
        ),
    )
