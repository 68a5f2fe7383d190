"""megatron-core integration of the compression formats: compressed parallel linears and specs."""
from .spec import COMPRESSED_LINEARS, IMPLS, compressed_layer_spec, local_layer_spec


def __getattr__(name):
    # The linear classes import megatron_csl.compression; load them on first use so the dense
    # path works without it.
    if name in ("CompressedColumnParallelLinear", "CompressedRowParallelLinear"):
        from . import linear

        return getattr(linear, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "compressed_layer_spec", "local_layer_spec", "IMPLS", "COMPRESSED_LINEARS",
    "CompressedColumnParallelLinear", "CompressedRowParallelLinear",
]
