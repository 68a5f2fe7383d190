"""Core attention through PyTorch's scaled_dot_product_attention (flash / memory-efficient).

megatron-core's local `DotProductAttention` materialises the scores and probabilities
[b, heads, s, s] (1 GB per layer at micro-batch 8, seq 2048, 16 heads in bf16), which is what
makes the local spec slow and runs it out of memory. `SDPAttention` is a drop-in replacement for
it in a layer spec (`compressed_layer_spec(..., attention="sdpa")`): same constructor and
forward contract, same layout ([s, b, heads, head_dim] in, [s, b, heads * head_dim] out), same
result up to float rounding, but no [b, h, s, s] tensor when the mask is the causal one.

Masks, as megatron's local attention reads them (True = masked out):
  - attn_mask_type causal and attention_mask None (what GPTModel passes in training):
    `is_causal=True`, nothing materialised.
  - an explicit boolean mask equal to the standard causal mask: also `is_causal=True` (detected
    once per mask tensor).
  - any other mask: passed to SDPA as a boolean mask (materialised [.., s, s] bools; correct but
    not the fast path). megatron fills masked scores with -10000 instead of -inf, so a row whose
    every key is masked differs (megatron: uniform weights; here: zeros).
  - one query position (sq == 1): no mask, like megatron.
Not supported (ValueError naming the setting): context parallelism, sliding-window attention,
non-vanilla softmax, packed sequences, attention bias.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import is_layer_window_attention


class SDPAttention(MegatronModule):
    """megatron core attention on `torch.nn.functional.scaled_dot_product_attention`.

    Heads per tensor-parallel partition and query groups are read from the tensors it is given,
    so TP and GQA need nothing from the config. Dropout uses megatron's model-parallel RNG
    (`get_cuda_rng_tracker().fork()`), like `DotProductAttention`; the draws differ from
    megatron's, the distribution does not.
    """

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType,
                 attention_type: str, attention_dropout: Optional[float] = None,
                 softmax_scale: Optional[float] = None, cp_comm_type: Optional[str] = None,
                 pg_collection=None):
        super().__init__(config=config)
        unsupported = []
        if config.context_parallel_size != 1:
            unsupported.append(f"context_parallel_size={config.context_parallel_size} (needs 1)")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            unsupported.append(f"softmax_type={config.softmax_type!r} (needs 'vanilla')")
        if is_layer_window_attention(config.window_size, config.window_attn_skip_freq,
                                     layer_number):
            unsupported.append(f"window_size={config.window_size} (sliding window)")
        if unsupported:
            raise ValueError("SDPAttention (attention='sdpa') does not support "
                             + "; ".join(unsupported) + "; use attention='megatron'")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.attention_type = attention_type
        # megatron divides the scale by layer_number under apply_query_key_layer_scaling and
        # multiplies the scores back inside its softmax: the net scale is this one.
        self.softmax_scale = (1.0 / math.sqrt(config.kv_channels) if softmax_scale is None
                              else softmax_scale)
        self.dropout_p = float(config.attention_dropout if attention_dropout is None
                               else attention_dropout)
        self._causal_cache = None  # (last explicit mask, its version, is it the causal one)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None:
            raise ValueError("SDPAttention does not support packed sequences "
                             "(packed_seq_params); use the TE spec")
        if attention_bias is not None:
            raise ValueError("SDPAttention does not support attention_bias")
        mask_type = self.attn_mask_type if attn_mask_type is None else attn_mask_type
        sq, b, heads, head_dim = query.shape
        sk, groups = key.shape[0], key.shape[2]
        is_causal, sdpa_mask = self._sdpa_mask(attention_mask, mask_type, sq, sk)
        # [s, b, h, d] -> [b, h, s, d] as views: the flash kernel takes strided inputs.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout_p = self.dropout_p if self.training else 0.0
        kwargs = dict(attn_mask=sdpa_mask, dropout_p=dropout_p, is_causal=is_causal,
                      scale=self.softmax_scale, enable_gqa=groups != heads)
        if dropout_p > 0.0 and not self.config.sequence_parallel:
            with tensor_parallel.get_cuda_rng_tracker().fork():
                context = F.scaled_dot_product_attention(q, k, v, **kwargs)
        else:
            context = F.scaled_dot_product_attention(q, k, v, **kwargs)
        # [b, h, s, d] -> [s, b, h * d]
        return context.permute(2, 0, 1, 3).reshape(sq, b, heads * head_dim)

    def _sdpa_mask(self, attention_mask, mask_type, sq: int, sk: int):
        """(is_causal, boolean SDPA mask or None) for megatron's (mask, mask type)."""
        if sq == 1:
            return False, None  # megatron applies no mask to a single query either
        if attention_mask is None:
            if mask_type == AttnMaskType.causal:
                if sq != sk:
                    raise ValueError(f"causal attention needs as many queries as keys, got "
                                     f"sq={sq}, sk={sk}")
                return True, None
            return False, None
        if attention_mask.dtype != torch.bool:
            raise ValueError(f"attention_mask must be boolean (True = masked out, megatron's "
                             f"convention), got dtype {attention_mask.dtype}")
        if sq == sk and self._is_standard_causal(attention_mask, sq):
            return True, None
        return False, ~attention_mask  # SDPA's boolean masks mark the positions that attend

    def _is_standard_causal(self, mask, s: int) -> bool:
        # Cached for the last mask object (kept alive here, so its identity cannot be reused by a
        # new tensor) and its in-place version counter: one comparison per mask, not per layer.
        cache = self._causal_cache
        if cache is not None and cache[0] is mask and cache[1] == mask._version:
            return cache[2]
        causal = False
        if mask.dim() >= 2 and tuple(mask.shape[-2:]) == (s, s):
            upper = torch.ones(s, s, dtype=torch.bool, device=mask.device).triu_(1)
            causal = bool(torch.equal(mask, upper.expand(mask.shape)))
        self._causal_cache = (mask, mask._version, causal)
        return causal
