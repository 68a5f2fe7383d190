"""The learned quantizer parameters of one compressed linear (LSQ steps, PACT clip) under TP.

Parameters (all float32 unless the model is cast; names as they appear in checkpoints):
    weight_step_offset [out_local]  LSQ weight step per output row = weight_step_init + offset
    input_step_offset  [1]          LSQ activation step per tensor = input_step_init + offset
    input_clip         [1]          PACT clip alpha, initialised to 10
LSQ initialises a step from data (2 mean|x| / sqrt(Qp): the layer's weights, or the first batch
of activations), so the initial value is a buffer set at the first forward (NaN until then) and
the parameter is a learned offset from it starting at 0: the step and its gradient are LSQ's
exactly, and optimizers that copy parameters into a float32 master when they are built (bf16,
distributed optimizer) never overwrite a value set after they were built.

Tensor parallelism: a ColumnParallel weight's per-row steps are split with its rows
(tensor_model_parallel, partition_dim 0, the weight's stride; sharded along axis 0 in the
checkpoint, SwiGLU-interleaved for fc1 as megatron stores the weight). Every other learned tensor
is replicated over the TP group. Where a rank sees only part of what a replicated step quantizes
(a RowParallel weight row's inputs, a RowParallel input's features, a sequence-parallel input's
tokens) its gradient is partial, so it goes through megatron's
copy_to_tensor_model_parallel_region (identity forward, all-reduce backward).
Initial values are reduced in float64 over the TP group (split rows / split inputs) and averaged
over the data-parallel group, so every rank and every layout starts from the same step.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from megatron_csl.compression import learned as lq


def _data_parallel_group():
    try:
        from megatron.core import parallel_state

        if parallel_state.model_parallel_is_initialized():
            group = parallel_state.get_data_parallel_group()
            return group if dist.get_world_size(group) > 1 else None
    except (ImportError, AssertionError, RuntimeError):
        pass
    return None


def _all_reduce(t: torch.Tensor, group) -> torch.Tensor:
    if group is not None:
        dist.all_reduce(t, group=group)
    return t


class LearnedScales(torch.nn.Module):
    """Applies a learned-step spec's weight and activation quantizers with this layer's
    parameters. tp_group: the layer's TP group when it is sharded (None at TP=1)."""

    def __init__(self, spec, out_local: int, in_features: int, tp_group,
                 weight_split_dim: int, input_partial: bool, row_stride: int = 1):
        super().__init__()
        self.spec = spec
        self.in_features = in_features      # the full (unsharded) input dimension
        self.tp_group = tp_group
        self.weight_split_dim = weight_split_dim
        self.input_partial = input_partial and tp_group is not None
        self._ready = False
        w, a = spec.weight, spec.activation
        self.weight_quantizer = w if getattr(w, "learned", "") == "lsq" else None
        self.input_quantizer = a if getattr(a, "learned", "") else None
        if self.weight_quantizer is not None:
            self.weight_step_offset = torch.nn.Parameter(torch.zeros(out_local))
            self.register_buffer("weight_step_init", torch.full((out_local,), float("nan")))
            if weight_split_dim == 0:   # split with the ColumnParallel weight's rows
                from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes

                # stride 2: a SwiGLU fc1 holds its slice of the gate rows, then of the up rows
                set_tensor_model_parallel_attributes(self.weight_step_offset, True, 0, row_stride)
        if self.input_quantizer is not None and self.input_quantizer.learned == "lsq":
            self.input_step_offset = torch.nn.Parameter(torch.zeros(1))
            self.register_buffer("input_step_init", torch.full((1,), float("nan")))
        elif self.input_quantizer is not None:
            self.input_clip = torch.nn.Parameter(torch.full((1,), lq.PACT_INIT_ALPHA))

    # ---- checkpoint layout -------------------------------------------------------------------
    def row_split_names(self) -> list[str]:
        """State-dict names (relative to this module) split along axis 0 with the weight rows."""
        if self.weight_quantizer is None or self.weight_split_dim != 0:
            return []
        return ["weight_step_offset", "weight_step_init"]

    # ---- application -------------------------------------------------------------------------
    def _replicated(self, t: torch.Tensor) -> torch.Tensor:
        """t with its gradient all-reduced over the TP group (a replicated parameter)."""
        if self.tp_group is None:
            return t
        from megatron.core.tensor_parallel import copy_to_tensor_model_parallel_region

        return copy_to_tensor_model_parallel_region(t, group=self.tp_group)

    @torch.no_grad()
    def _initialise(self, input, weight) -> None:
        """LSQ's s0 = 2 mean|x| / sqrt(Qp) for every step not yet set (NaN)."""
        if self.weight_quantizer is not None and torch.isnan(self.weight_step_init).any():
            row_sum = weight.detach().double().abs().sum(dim=1)
            _all_reduce(row_sum, self.tp_group if self.weight_split_dim == 1 else None)
            mean = row_sum / self.in_features
            self.weight_step_init.copy_(lq.lsq_init_step(self.weight_quantizer, mean))
        if self.input_quantizer is not None and self.input_quantizer.learned == "lsq" \
                and torch.isnan(self.input_step_init).any():
            x = input.detach().double()
            totals = torch.stack([x.abs().sum(), torch.tensor(float(x.numel()), dtype=x.dtype,
                                                              device=x.device)])
            _all_reduce(totals, self.tp_group if self.input_partial else None)
            _all_reduce(totals, _data_parallel_group())
            mean = (totals[0] / totals[1]).reshape(1)
            self.input_step_init.copy_(lq.lsq_init_step(self.input_quantizer, mean))
        self._ready = True

    def quantize_input(self, input: torch.Tensor) -> torch.Tensor:
        q = self.input_quantizer
        # Each rank sees part of the activation (RowParallel: features; sequence parallel:
        # tokens) and so holds part of the step's gradient; a ColumnParallel input is whole and
        # megatron's linear already all-reduces its gradient, so there it is complete.
        share = self._replicated if self.input_partial else (lambda t: t)
        if q.learned == "pact":
            return lq.pact_quantize(q, input, share(self.input_clip))
        step = self.input_step_init.detach() + share(self.input_step_offset)
        return lq.lsq_quantize(q, input, step, lq.lsq_gradient_scale(q, self.in_features))

    def quantize_weight(self, weight: torch.Tensor) -> torch.Tensor:
        q = self.weight_quantizer
        offset = self.weight_step_offset
        if self.weight_split_dim == 1:   # RowParallel: rows are whole on every rank
            offset = self._replicated(offset)
        step = (self.weight_step_init.detach() + offset).unsqueeze(1)
        return lq.lsq_quantize(q, weight, step, lq.lsq_gradient_scale(q, self.in_features))

    def forward(self, input: torch.Tensor, weight: torch.Tensor, shard):
        """(input, weight) as the matmul should see them; a part of the spec with a fixed scale
        rule (w4+a4:pact's w4) is applied as usual, with the layer's ShardContext `shard`."""
        if not self._ready:
            self._initialise(input, weight)
        spec = self.spec
        if self.input_quantizer is not None:
            input = self.quantize_input(input)
        elif spec.compresses_activations:   # the spec's activation part alone (a8, as50, ...)
            input = dataclasses.replace(spec, weight=None, sparsity_format=None) \
                .quantize_activation(input, shard)
        if self.weight_quantizer is not None:
            weight = self.quantize_weight(weight)
        elif spec.compresses_weights:       # the spec's weight part alone (w4, vq2:2, ...)
            weight = dataclasses.replace(spec, activation=None, activation_sparsity_format=None) \
                .compress_weight(weight, shard)
        return input, weight
