"""Turn a compression argument (spec string or CompressionSpec) into a CompressionSpec."""
from __future__ import annotations


def resolve_compression(compression):
    """parse_spec for strings; a CompressionSpec passes through; anything else is a TypeError."""
    from megatron_csl.compression import CompressionSpec, parse_spec

    if isinstance(compression, str):
        return parse_spec(compression)
    if isinstance(compression, CompressionSpec):
        return compression
    raise TypeError(
        f"compression must be a spec string (e.g. 'w4a4', 's50+w4') or a CompressionSpec, "
        f"got {type(compression).__name__}: {compression!r}"
    )


def is_dense(compression) -> bool:
    """True for "dense"/"bf16" without importing the compression package for the common case."""
    if isinstance(compression, str) and compression.strip().lower() in ("dense", "bf16"):
        return True
    return resolve_compression(compression).is_dense
