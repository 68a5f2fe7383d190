"""Compressed weights computed once per optimizer step, reused by every micro-batch and by
evaluation.

A compressed linear used to recompute its compressed weight (top-k, scales, rounding, masks) in
every forward, i.e. once per micro-batch, although the weight changes only at the optimizer
step. `CompressedWeightCache.get(weight, kind, compute)` computes it once and hands out the same
tensors until the weight changes:

- The forward value is computed once, with autograd, on a detached alias of the weight (a
  separate leaf), and its graph is kept (it saves only what the format's backward needs: the
  trust/keep mask, nothing for straight-through formats).
- Each use goes through `_ReuseCompressed`, whose backward runs that kept graph on the incoming
  gradient (retain_graph) and returns the result as the weight's gradient. The backward of the
  format is therefore exactly the uncached one, applied per micro-batch, and the gradients
  accumulated over micro-batches are bit-identical to those without the cache.

When the weight changes:
- every torch optimizer's step (a global post-step hook, installed with the first cache) clears
  every cache: megatron's optimizers wrap torch ones (Adam, TE/apex FusedAdam), and their
  copies into the model's parameters (`param.data.copy_`, the distributed optimizer's
  all-gather) do not bump the parameter's version;
- any in-place change of the weight tensor itself bumps `weight._version`, which is part of the
  key (so do `load_state_dict` and `with torch.no_grad(): w.copy_(...)`);
- anything else that writes through `.data` must call `clear_compressed_weight_caches()`.

Only leaf weights (parameters) are cached; a weight computed in the forward is compressed
directly. `MEGATRON_CSL_WEIGHT_CACHE=0` (or `use_weight_cache(False)`) turns caching off.

Memory: each compressed linear keeps its compressed weight (the weight's dtype) and the format's
backward state (a uint8 mask on the kernels' path, a float32 mask on the reference's trust/RBBM
path, nothing for straight-through) from its first forward until the next optimizer step, where
without the cache they live from each micro-batch's forward to its backward.
"""
from __future__ import annotations

import contextlib
import os
import weakref
from dataclasses import dataclass
from typing import Callable, Optional

import torch

ENV_VAR = "MEGATRON_CSL_WEIGHT_CACHE"
_override: list = [None]
_CACHES: "weakref.WeakSet[CompressedWeightCache]" = weakref.WeakSet()
_hook: list = [None]


def weight_cache_enabled() -> bool:
    if _override[0] is not None:
        return _override[0]
    value = os.environ.get(ENV_VAR, "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{ENV_VAR} must be 0 or 1, got {value!r}")
    return value == "1"


@contextlib.contextmanager
def use_weight_cache(enabled: bool):
    """Temporarily turn the compressed-weight cache on or off (for comparisons and tests)."""
    previous, _override[0] = _override[0], bool(enabled)
    try:
        yield
    finally:
        _override[0] = previous


def clear_compressed_weight_caches() -> None:
    """Forget every cached compressed weight (called after each optimizer step)."""
    for cache in list(_CACHES):
        cache.clear()


def _install_optimizer_hook() -> None:
    if _hook[0] is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _hook[0] = register_optimizer_step_post_hook(
            lambda optimizer, args, kwargs: clear_compressed_weight_caches())


@dataclass
class _Entry:
    key: tuple
    values: tuple                          # detached outputs of compute, handed out
    leaf: Optional[torch.Tensor] = None    # the detached alias the graph starts from
    graph_out: Optional[torch.Tensor] = None  # compute's first output, with its graph


class _ReuseCompressed(torch.autograd.Function):
    """Forward: the cached compressed weight. Backward: the format's own backward (its kept
    graph) applied to this use's gradient."""

    @staticmethod
    def forward(ctx, weight, entry: _Entry):
        ctx.entry = entry
        return entry.values[0].detach()  # a new tensor object: each use gets its own grad_fn

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        entry = ctx.entry
        (grad_weight,) = torch.autograd.grad(entry.graph_out, entry.leaf, grad,
                                             retain_graph=True)
        return grad_weight, None


class CompressedWeightCache:
    """One compressed linear's cached compressed weight(s), one entry per `kind`."""

    def __init__(self):
        self._entries: dict = {}
        _CACHES.add(self)
        _install_optimizer_hook()

    def clear(self) -> None:
        self._entries.clear()

    def get(self, weight: torch.Tensor, kind: str,
            compute: Callable[[torch.Tensor], tuple]) -> tuple:
        """compute(weight) (a tuple whose first tensor carries the gradient), from the cache
        while `weight` is unchanged."""
        if not weight_cache_enabled() or not weight.is_leaf:
            return compute(weight)
        needs_grad = torch.is_grad_enabled() and weight.requires_grad
        key = (id(weight), weight.data_ptr(), weight._version, weight.dtype, weight.device,
               tuple(weight.shape))
        entry = self._entries.get(kind)
        if entry is None or entry.key != key or (needs_grad and entry.leaf is None):
            entry = self._compute(weight, key, compute, needs_grad)
            self._entries[kind] = entry
        if not needs_grad or entry.leaf is None:
            return entry.values
        return (_ReuseCompressed.apply(weight, entry), *entry.values[1:])

    @staticmethod
    def _compute(weight, key, compute, needs_grad: bool) -> _Entry:
        if not needs_grad:
            with torch.no_grad():
                outputs = compute(weight)
            return _Entry(key, tuple(t.detach() for t in outputs))
        leaf = weight.detach().requires_grad_(True)
        with torch.enable_grad():
            outputs = compute(leaf)
        values = tuple(t.detach() for t in outputs)
        if not outputs[0].requires_grad:  # nothing to differentiate (cannot happen for formats)
            return _Entry(key, values)
        return _Entry(key, values, leaf, outputs[0])


# A linear's own parameters (TE's fused LayerNorm+Linear adds the norm's); any other parameter
# (e.g. a learned scale) turns the cache off for that module.
_OWN_PARAMETERS = frozenset({"weight", "bias", "layer_norm_weight", "layer_norm_bias"})


def _weight_is_deterministic(spec) -> bool:
    """False for formats whose compressed weight is random: noise injection (`noise:w4`) draws
    fresh noise every forward, which a cache would freeze for a whole step."""
    if not getattr(spec, "weight_is_deterministic", True):
        return False
    return getattr(getattr(spec, "weight", None), "kind", None) != "noise"


def cached_compression(module, weight: torch.Tensor, kind: str,
                       compute: Callable[[torch.Tensor], tuple]) -> tuple:
    """compute(weight) from `module._weight_cache` (a CompressedWeightCache), once per optimizer
    step, with separate entries for training and evaluation (in case a format behaves
    differently). Computed every time instead for a module with parameters of its own beyond
    weight and bias (e.g. learned scales: their gradients would not flow through the kept graph)
    and for a format that sets `weight_is_deterministic = False` (e.g. noise drawn per forward).
    """
    cacheable = module.__dict__.get("_weight_cacheable")
    if cacheable is None:  # decided once per module: its format and parameters do not change
        cacheable = (_weight_is_deterministic(module.compression)
                     and all(name in _OWN_PARAMETERS for name, _ in module.named_parameters()))
        module.__dict__["_weight_cacheable"] = cacheable
    if not cacheable:
        return compute(weight)
    mode = "train" if module.training else "eval"
    return module._weight_cache.get(weight, f"{kind}:{mode}", compute)
