"""Compressed linears on NVIDIA Transformer Engine (impl="te"), imported lazily.

TE's Linear/LayerNormLinear fetch their weights through `_get_weight_tensors()` right before the
GEMM (TE 2.x); overriding it hands the compressed weight to TE's own GEMM path, as the local
classes do through `_forward_impl`. Activations are quantized before TE's forward. Because a
fused LayerNorm+Linear normalises *inside* the module, activation-quantized formats use a
separate TENorm + TEColumnParallelLinear for QKV and fc1; weight-only formats keep the fusion.

Not run in CI (no GPU, no TE there): tests skip without TE and CUDA.
"""
from __future__ import annotations

import copy
import functools

from megatron_csl.compression.resolve import is_dense, resolve_compression


def require_transformer_engine():
    """Import Transformer Engine or raise an ImportError that says what to do."""
    try:
        import transformer_engine  # noqa: F401
        import transformer_engine.pytorch as te_pytorch
    except ImportError as err:
        raise ImportError(
            "impl='te' needs NVIDIA Transformer Engine (import transformer_engine failed: "
            f"{err}). Use impl='local', or install it (pip install 'megatron_csl[te]' on a CUDA "
            "machine, or use an NVIDIA PyTorch container)"
        ) from err
    from megatron.core.extensions import transformer_engine as mcore_te

    if not mcore_te.HAVE_TE:
        raise ImportError("megatron.core.extensions.transformer_engine could not load "
                          "Transformer Engine; impl='te' is unavailable, use impl='local'")
    if not hasattr(te_pytorch.Linear, "_get_weight_tensors"):
        version = getattr(transformer_engine, "__version__", "unknown")
        raise ImportError(
            f"Transformer Engine {version} has no Linear._get_weight_tensors (added in TE 2.x); "
            "compressed TE layers need it. Upgrade TE or use impl='local'"
        )
    return mcore_te


class _CompressedTE:
    """Mixin for TE linears: compressed weights via `_get_weight_tensors`, quantized inputs."""

    weight_split_dim = None     # 0: column parallel, 1: row parallel
    input_split = False
    quantizes_input = True      # False for fused LayerNorm+Linear (the input is pre-norm)

    def _init_compression(self, compression):
        from megatron_csl.compression import ShardContext

        from .linear import _check_shape, _group_or_none

        self.compression = resolve_compression(compression)
        if self.compression.compresses_activations and not self.quantizes_input:
            raise ValueError(
                f"{type(self).__name__} fuses the norm into the linear and cannot quantize its "
                f"input; {self.compression.canonical!r} needs TENorm + a compressed "
                "TEColumnParallelLinear (compressed_layer_spec(..., impl='te') does this)"
            )
        group = _group_or_none(getattr(self, "tp_group", None))
        tp = group.size() if group is not None else 1
        out_local, in_local = self.weight.shape
        _check_shape(self.compression, type(self).__name__, out_local, in_local, tp)
        self.shard = ShardContext(
            group=group,
            weight_split_dim=self.weight_split_dim if group is not None else None,
            input_split=self.input_split and group is not None,
        )
        from .weight_cache import CompressedWeightCache

        self._weight_cache = CompressedWeightCache()

    def _get_weight_tensors(self):
        weights = super()._get_weight_tensors()
        if not self.compression.compresses_weights:
            return weights
        # Once per optimizer step (weight_cache.py), one cache slot per weight tensor.
        from .weight_cache import cached_compression

        return [cached_compression(self, w, f"values{i}",
                                   lambda t: (self.compression.compress_weight(t, self.shard),))[0]
                for i, w in enumerate(weights)]

    def forward(self, x):
        if self.quantizes_input and self.compression.compresses_activations:
            x = self.compression.quantize_activation(x, self.shard)
        return super().forward(x)


@functools.lru_cache(maxsize=None)
def te_classes():
    """(CompressedTELayerNormColumnParallelLinear, CompressedTEColumnParallelLinear,
    CompressedTERowParallelLinear), created on first use because their bases need TE."""
    mcore_te = require_transformer_engine()

    class CompressedTELayerNormColumnParallelLinear(
        _CompressedTE, mcore_te.TELayerNormColumnParallelLinear
    ):
        weight_split_dim, input_split, quantizes_input = 0, False, False

        def __init__(self, *args, compression, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_compression(compression)

    class CompressedTEColumnParallelLinear(_CompressedTE, mcore_te.TEColumnParallelLinear):
        weight_split_dim, input_split = 0, False

        def __init__(self, *args, compression, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_compression(compression)

    class CompressedTERowParallelLinear(_CompressedTE, mcore_te.TERowParallelLinear):
        weight_split_dim, input_split = 1, True

        def __init__(self, *args, compression, **kwargs):
            super().__init__(*args, **kwargs)
            self._init_compression(compression)

    return (CompressedTELayerNormColumnParallelLinear, CompressedTEColumnParallelLinear,
            CompressedTERowParallelLinear)


def te_compressed_layer_spec(compression):
    """megatron-core's TE GPT layer spec with the four block linears compressed."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
    from megatron.core.transformer.spec_utils import ModuleSpec

    mcore_te = require_transformer_engine()
    spec = get_gpt_layer_with_transformer_engine_spec()
    if is_dense(compression):
        return spec
    fmt = resolve_compression(compression)
    ln_column, column, row = te_classes()
    spec = copy.deepcopy(spec)
    layer = spec.submodules
    attention = layer.self_attention.submodules
    mlp = layer.mlp.submodules
    params = {"compression": fmt}
    if fmt.compresses_activations:
        layer.input_layernorm = mcore_te.TENorm
        layer.pre_mlp_layernorm = mcore_te.TENorm
        attention.linear_qkv = ModuleSpec(module=column, params=params)
        mlp.linear_fc1 = ModuleSpec(module=column, params=params)
    else:
        attention.linear_qkv = ModuleSpec(module=ln_column, params=params)
        mlp.linear_fc1 = ModuleSpec(module=ln_column, params=params)
    attention.linear_proj = ModuleSpec(module=row, params=params)
    mlp.linear_fc2 = ModuleSpec(module=row, params=params)
    return spec
