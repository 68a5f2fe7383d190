"""Checks that a model shape, a parallel layout and a compression format fit together.

Used by `build_gpt_model` and by `launch/pretrain.py` before anything is built, so an impossible
layout fails at once with the values involved and what would be valid (megatron itself fails
later with a bare `AssertionError: 12 is not divisible by 8`).
"""
from __future__ import annotations

from typing import Optional

from .shapes import ModelShape, _divisors


class LayoutError(ValueError):
    """A parallel layout that cannot hold the model (names the values and the valid choices)."""


def _check_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise LayoutError(f"{name} must be a positive int, got {value!r}")
    return value


def local_linear_shapes(shape: ModelShape, tp: int) -> dict[str, tuple[int, int]]:
    """(out_features, in_features_local) of each compressed linear's weight shard at TP=tp.

    Column-parallel layers (QKV, fc1) split output rows; row-parallel ones (proj, fc2) split the
    input dimension, which is where N:M groups, quantization groups and Hadamard blocks live.
    """
    h, hd = shape.hidden_size, shape.head_dim
    q = shape.num_attention_heads * hd
    kv = shape.kv_heads * hd
    return {
        "linear_qkv": ((q + 2 * kv) // tp, h),
        "linear_proj": (h, q // tp),
        "linear_fc1": (2 * shape.ffn_hidden_size // tp, h),
        "linear_fc2": (h, shape.ffn_hidden_size // tp),
    }


def validate_parallel_layout(
    shape: ModelShape,
    tp: int,
    pp: int,
    world_size: Optional[int] = None,
    *,
    compression=None,
    vocab_size: Optional[int] = None,
) -> None:
    """Raise LayoutError when `shape` cannot run at tensor parallel `tp` x pipeline parallel `pp`
    on `world_size` ranks (None: tp*pp), with `compression` (spec string or CompressionSpec),
    or when `vocab_size` (if given) does not split over `tp`."""
    tp = _check_int("tensor_model_parallel_size", tp)
    pp = _check_int("pipeline_model_parallel_size", pp)
    world_size = tp * pp if world_size is None else _check_int("world_size", world_size)

    if world_size % (tp * pp):
        raise LayoutError(
            f"world size {world_size} is not divisible by TP*PP = {tp}*{pp} = {tp * pp}; "
            f"TP*PP must divide the world size (valid TP*PP: {_divisors(world_size)}), or use a "
            f"world size that is a multiple of {tp * pp}"
        )
    heads = shape.num_attention_heads
    if heads % tp:
        raise LayoutError(
            f"num_attention_heads {heads} is not divisible by tensor parallel size {tp}; "
            f"valid TP sizes for this model: {_divisors(heads)}"
        )
    if shape.kv_heads % tp:
        raise LayoutError(
            f"num_query_groups {shape.kv_heads} is not divisible by tensor parallel size {tp}; "
            f"valid TP sizes for this model: {_divisors(shape.kv_heads)}"
        )
    if shape.ffn_hidden_size % tp:
        raise LayoutError(
            f"ffn_hidden_size {shape.ffn_hidden_size} is not divisible by tensor parallel size "
            f"{tp}; valid TP sizes: {[d for d in _divisors(heads) if shape.ffn_hidden_size % d == 0]}"
        )
    if shape.num_layers % pp:
        raise LayoutError(
            f"num_layers {shape.num_layers} is not divisible by pipeline parallel size {pp}; "
            f"valid PP sizes for this model: {_divisors(shape.num_layers)}"
        )
    if vocab_size is not None and vocab_size % tp:
        raise LayoutError(
            f"vocab_size {vocab_size} is not divisible by tensor parallel size {tp}; pad it, "
            f"e.g. to {padded_vocab_size(vocab_size, tp)} (padded_vocab_size)"
        )
    if compression is not None:
        _validate_compression(shape, tp, compression)


def _validate_compression(shape: ModelShape, tp: int, compression) -> None:
    from megatron_csl.compression.resolve import is_dense, resolve_compression

    if is_dense(compression):
        return
    from megatron_csl.compression import SpecError

    spec = resolve_compression(compression)
    for name, (out_features, in_local) in local_linear_shapes(shape, tp).items():
        try:
            spec.validate_shape(out_features, in_local)
        except SpecError as err:
            valid = [d for d in _divisors(shape.num_attention_heads) if _fits(spec, shape, d)]
            raise LayoutError(
                f"compression {spec.canonical!r} does not fit {name} at TP={tp} (weight shard "
                f"[{out_features}, {in_local}], local input dim {in_local}): {err}; TP sizes "
                f"that fit this model and format: {valid or 'none'}"
            ) from err


def _fits(spec, shape: ModelShape, tp: int) -> bool:
    from megatron_csl.compression import SpecError

    if shape.ffn_hidden_size % tp or shape.kv_heads % tp:
        return False
    try:
        for out_features, in_local in local_linear_shapes(shape, tp).values():
            spec.validate_shape(out_features, in_local)
    except SpecError:
        return False
    return True


def padded_vocab_size(vocab_size: int, tp: int = 1, divisible_by: int = 128) -> int:
    """Megatron-LM's vocabulary padding: the next multiple of divisible_by * tp."""
    _check_int("vocab_size", vocab_size)
    multiple = _check_int("divisible_by", divisible_by) * _check_int("tp", tp)
    return -(-vocab_size // multiple) * multiple
