"""Compressed tensor-parallel linear layers for megatron-core's local spec.

megatron-core's ColumnParallelLinear and RowParallelLinear hand the local weight shard and the
(already split or copied) input to `_forward_impl(input, weight, ...)` just before the matmul.
Overriding that one method lets the compression format see exactly the tensors the matmul sees
and leaves megatron's own communication, autograd function and gradient handling untouched.

The formats get a ShardContext so that statistics over a split dimension are completed across
the tensor-parallel group: the sharded result equals the slice of the unsharded one, and TP=2
trains the same model as TP=1.
"""
from __future__ import annotations

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from megatron_csl.compression.resolve import resolve_compression

from .weight_cache import CompressedWeightCache, cached_compression


def _group_or_none(tp_group):
    """The TP process group, or None when the layer is not sharded (TP=1)."""
    if tp_group is None or tp_group.size() == 1:
        return None
    return tp_group


def _check_shape(spec, layer: str, out_features: int, in_local: int, tp: int) -> None:
    from megatron_csl.compression import SpecError

    try:
        spec.validate_shape(out_features, in_local)
    except SpecError as err:
        raise SpecError(
            f"compression {spec.canonical!r} cannot run on {layer} with weight shard "
            f"[{out_features}, {in_local}] (tensor parallel size {tp}): {err}"
        ) from err


def _with_compression(text: str, spec) -> str:
    return f"{text[:-1]}, compression={spec.canonical})" if text.endswith(")") else text


def _codes_as(dtype, codes, unit):
    return codes.to(dtype), unit


class _CompressedLinear:
    """What both compressed linears share: the format, its shard context, and the hook that hands
    the compressed weight and input to megatron's own matmul. Mixed in before megatron's class."""

    def _setup_compression(self, compression, weight_shard, weight_split_dim, input_split):
        from megatron_csl.compression import ShardContext

        self.compression = resolve_compression(compression)
        tp = self.tp_group.size() if self.tp_group is not None else 1
        _check_shape(self.compression, type(self).__name__, *weight_shard, tp)
        group = _group_or_none(self.tp_group)
        sharded = group is not None
        self.shard = ShardContext(group=group,
                                  weight_split_dim=weight_split_dim if sharded else None,
                                  input_split=input_split and sharded)
        self._integer_matmul_exact = self.compression.integer_matmul_exact(self.input_size)
        from megatron_csl.kernels.int8 import int8_gemm_reason

        # int8 GEMM (w8a8, w4a4, ...): at TP=1 only, where megatron's matmul has no
        # communication to do that this path would skip.
        self._int8_gemm = (not sharded and int8_gemm_reason(self.compression,
                                                            self.input_size) is None)
        self._weight_cache = CompressedWeightCache()
        self.learned_scales = None
        if self.compression.learned:  # lsq / pact: the steps are parameters of this layer
            from .learned import LearnedScales

            self.learned_scales = LearnedScales(self.compression, weight_shard[0], self.input_size,
                                                group, weight_split_dim,
                                                input_split or self.sequence_parallel,
                                                getattr(self.weight, "partition_stride", 1))

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        sharded = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        if self.learned_scales is None or not self.learned_scales.row_split_names():
            return sharded
        # Per-row LSQ steps of a ColumnParallel weight are split with its rows (megatron's map
        # only names weight/bias; everything else it treats as replicated).
        from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint

        names = {f"learned_scales.{n}": 0 for n in self.learned_scales.row_split_names()}
        state = {n: t for n, t in self.state_dict(prefix="", keep_vars=True).items() if n in names}
        rows = make_sharded_tensors_for_checkpoint(state, prefix, names, sharded_offsets,
                                                   tp_group=self.tp_group,
                                                   dp_cp_group=metadata["dp_cp_group"])
        if getattr(self.weight, "partition_stride", 1) == 2:
            # A SwiGLU fc1 (megatron's MLP stores its weight this way too): each rank holds its
            # slice of the gate rows and of the up rows.
            from megatron.core.transformer.mlp import apply_swiglu_sharded_factory

            rows = {k: apply_swiglu_sharded_factory(v, sharded_offsets,
                                                    metadata.get("singleton_local_shards", False))
                    for k, v in rows.items()}
        sharded.update(rows)
        return sharded

    def _cached(self, weight, kind: str, compute):
        return cached_compression(self, weight, kind, compute)

    def _forward_impl(self, input, weight, *args, **kwargs):
        spec = self.compression
        if self.learned_scales is not None:
            input, weight = self.learned_scales(input, weight, self.shard)
            return super()._forward_impl(input, weight, *args, **kwargs)
        if self._runs_on_int8(input, weight, kwargs.get("bias")):
            from megatron_csl.kernels.int8 import int8_linear

            # Codes in the input's dtype (small integers: exact), units in float32, which the
            # exact integer sums are scaled by before the one rounding to the output dtype.
            codes_x, x_unit = spec.activation_codes(input.float(), self.shard)
            codes_w, w_unit = self._cached(weight, "int8", lambda w: _codes_as(
                w.dtype, *spec.weight_codes(w.float(), self.shard)))
            return int8_linear(spec, codes_x.to(input.dtype), x_unit, codes_w, w_unit)
        if self._runs_on_integer_codes(input, weight, kwargs.get("bias")):
            # codes_x @ codes_w^T is exact, whatever order the matmul (or TP's all-reduce) sums
            # in; the units multiply the result afterwards (see _apply_units).
            input, x_unit = spec.activation_codes(input, self.shard)
            weight, w_unit = self._cached(weight, "codes",
                                          lambda w: spec.weight_codes(w, self.shard))
            return self._apply_units(super()._forward_impl(input, weight, *args, **kwargs),
                                     (x_unit, w_unit.reshape(-1)))
        if spec.compresses_activations:
            input = spec.quantize_activation(input, self.shard)
        if spec.compresses_weights:
            (weight,) = self._cached(weight, "values",
                                     lambda w: (spec.compress_weight(w, self.shard),))
        return super()._forward_impl(input, weight, *args, **kwargs)

    def _runs_on_int8(self, input, weight, bias) -> bool:
        """bf16/fp16 integer x integer formats of at most 8 bits run on torch._int_mm (exact
        integer sums, the fake-quant values' product; megatron_csl/kernels/int8.py), unless
        MEGATRON_CSL_KERNELS=0."""
        if not (self._int8_gemm and bias is None and not self.sequence_parallel
                and input.dtype in (torch.bfloat16, torch.float16) and weight.dtype == input.dtype):
            return False
        from megatron_csl.kernels import kernel_mode

        return kernel_mode() != "0"

    def _runs_on_integer_codes(self, input, weight, bias) -> bool:
        """In float32/64 an integer x integer format multiplies integer codes, so that the
        layer's output does not depend on the tensor-parallel split: a quantizer downstream is a
        step function, and a last-bit difference from a split sum would flip its rounding (the
        reason TP=2 can equal TP=1 for w4a4 in float32). bf16 training keeps the fast kernels."""
        return (self._integer_matmul_exact and bias is None and not self.sequence_parallel
                and input.dtype in (torch.float32, torch.float64) and weight.dtype == input.dtype)

    def _apply_units(self, output, units):
        x_unit, w_unit = units
        return output * x_unit * w_unit

    def __repr__(self) -> str:  # megatron's repr ignores extra_repr
        return _with_compression(super().__repr__(), self.compression)


class CompressedColumnParallelLinear(_CompressedLinear, ColumnParallelLinear):
    """ColumnParallelLinear whose matmul runs on `compression`'s weight and input.

    The weight shard holds whole output rows (split dim 0); the input is the full activation.
    """

    def __init__(self, input_size, output_size, *, compression, **kwargs):
        super().__init__(input_size, output_size, **kwargs)
        self._setup_compression(compression, (self.output_size_per_partition, self.input_size),
                                weight_split_dim=0, input_split=False)


class CompressedRowParallelLinear(_CompressedLinear, RowParallelLinear):
    """RowParallelLinear whose matmul runs on `compression`'s weight and input.

    The weight shard holds a slice of every row's inputs (split dim 1) and the input is split
    over its last dimension, so per-row and per-token statistics are reduced over the TP group.
    """

    def __init__(self, input_size, output_size, *, compression, **kwargs):
        super().__init__(input_size, output_size, **kwargs)
        self._setup_compression(compression, (self.output_size, self.input_size_per_partition),
                                weight_split_dim=1, input_split=True)
        self._pending_units = None

    def _runs_on_integer_codes(self, input, weight, bias) -> bool:
        # The units multiply the all-reduced sum, which forward adds the bias to.
        return (super()._runs_on_integer_codes(input, weight, bias)
                and (self.bias is None or self.skip_bias_add) and not self.explicit_expert_comm)

    def _apply_units(self, output, units):
        # The partial sums of integer codes all-reduce exactly; scale after the reduction.
        self._pending_units = units
        return output

    def forward(self, input_):
        self._pending_units = None
        output, output_bias = super().forward(input_)
        if self._pending_units is not None:
            output = super()._apply_units(output, self._pending_units)
            self._pending_units = None
        return output, output_bias
