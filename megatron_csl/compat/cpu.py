"""Run megatron-core 0.16.1 on a machine without CUDA (tests, CI, laptops).

`apply_cpu_compat()` installs a small set of targeted patches, each listed in `PATCHES` with the
megatron code it fixes, so that a version bump shows exactly which one stopped applying. The
patches never copy megatron source: they (1) swap the module-level name `torch` in the modules
that hard-code CUDA for `CpuTorch`, (2) run the tensor-parallel RNG tracker on the CPU generator,
(3) wrap the few functions that call `tensor.cuda()` or compare `tensor.type()` with CUDA type
strings so those tensor methods behave as on a GPU for the duration of the call, and (4) map a
CUDA device to the CPU in `ShardedTensor.init_data`.

Nothing is patched when CUDA is available. Applying twice is a no-op.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from typing import Callable

import torch

from .cpu_torch import CPU_TORCH, cpu_tensor_types_read_as_cuda, is_cuda_device, tensor_cuda_is_identity

_MARK = "__megatron_csl_cpu_compat__"


@dataclasses.dataclass(frozen=True)
class Patch:
    name: str
    why: str
    apply: Callable[[], None]
    is_applied: Callable[[], bool]


def _module(name):
    return importlib.import_module(name)


# ---------------------------------------------------------------- 1. module-level torch proxy
# Module -> what in it hard-codes CUDA (0.16.1 line references for the next version bump).
TORCH_PROXY_MODULES = {
    "megatron.core.pipeline_parallel.schedules":
        'total_num_tokens = torch.zeros(..., device="cuda") in every forward_backward_* (PP=1 too)',
    "megatron.core.pipeline_parallel.p2p_communication":
        "shape tensors on torch.cuda.current_device(); torch.cuda.synchronize() after batched p2p",
    "megatron.core.optimizer.optimizer":
        "found_inf/_scale_one/_dummy_overflow_buf on device='cuda'",
    "megatron.core.optimizer.clip_grads":
        "grad-norm and clip buffers on device='cuda'",
    "megatron.core.optimizer.distrib_optimizer":
        "gather buffers on torch.cuda.current_device()",
    "megatron.core.distributed.param_and_grad_buffer":
        'warm-up tensor device="cuda", buffers on torch.cuda.current_device()',
    "megatron.core.tensor_parallel.data":
        "broadcast_data size tensor on device='cuda'",
    "megatron.core.utils":
        'local_multi_tensor_l2_norm result on device="cuda"; GlobalMemoryBuffer on current_device()',
    "megatron.core.dist_checkpointing.exchange_utils":
        'exchange buffers torch.empty(..., device="cuda")',
    "megatron.core.dist_checkpointing.strategies.state_dict_saver":
        "plan-reuse and failure flags all-reduced on device='cuda'",
    "megatron.core.dist_checkpointing.strategies.fully_parallel":
        "torch.cuda.synchronize() around fully parallel load",
    "megatron.core.dist_checkpointing.strategies.filesystem_async":
        "torch.cuda.synchronize() in preload_tensors(non_blocking=True) (async save)",
    "megatron.core.models.common.embeddings.rotary_pos_embedding":
        "inv_freq moved to torch.cuda.current_device() on every forward",
    "megatron.core.transformer.utils":
        'get_default_causal_mask builds the mask with device="cuda"',
}


def _proxy_torch(module_name):
    def apply():
        _module(module_name).torch = CPU_TORCH

    def is_applied():
        return _module(module_name).torch is CPU_TORCH

    return apply, is_applied


# ---------------------------------------------------------------- 2. RNG tracker
def _apply_rng():
    from megatron.core.tensor_parallel import random as mcore_random

    from .rng import CpuRNGStatesTracker, get_device_rng_state, set_device_rng_state

    mcore_random.torch = CPU_TORCH
    mcore_random._get_cuda_rng_state = get_device_rng_state
    mcore_random._set_cuda_rng_state = set_device_rng_state
    mcore_random.CudaRNGStatesTracker = CpuRNGStatesTracker
    tracker = mcore_random._CUDA_RNG_STATE_TRACKER
    # A tracker created before the patch holds CUDA semantics; drop it unless it is in use.
    if tracker is not None and not isinstance(tracker, CpuRNGStatesTracker) and not tracker.states_:
        mcore_random.initialize_rng_tracker(force_reset=True)


def _rng_applied():
    from megatron.core.tensor_parallel import random as mcore_random

    return getattr(mcore_random.CudaRNGStatesTracker, "__name__", "") == "CpuRNGStatesTracker"


# ---------------------------------------------------------------- 3. tensor-method contexts
def _replace_everywhere(original, replacement):
    """Rebind every megatron module attribute that names `original` (e.g. functions re-exported
    by a package `__init__` or imported with `from .x import f`)."""
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith("megatron."):
            continue
        for attr, value in list(vars(mod).items()):
            if value is original:
                setattr(mod, attr, replacement)


def _wrapped(fn, context):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with context():
            return fn(*args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def _wrap_function(module_name, attr, context):
    def apply():
        original = getattr(_module(module_name), attr)
        if getattr(original, _MARK, False):
            return
        _replace_everywhere(original, _wrapped(original, context))

    def is_applied():
        return getattr(getattr(_module(module_name), attr), _MARK, False)

    return apply, is_applied


def _wrap_classmethod(module_name, cls_name, attr, context):
    def apply():
        cls = getattr(_module(module_name), cls_name)
        original = cls.__dict__[attr]
        if getattr(original.__func__, _MARK, False):
            return
        setattr(cls, attr, classmethod(_wrapped(original.__func__, context)))

    def is_applied():
        cls = getattr(_module(module_name), cls_name)
        return getattr(cls.__dict__[attr].__func__, _MARK, False)

    return apply, is_applied


# ---------------------------------------------------------------- 4. ShardedTensor.init_data
def _apply_init_data():
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    original = ShardedTensor.init_data
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def init_data(self, device, init_fn=torch.empty):
        return original(self, "cpu" if is_cuda_device(device) else device, init_fn)

    setattr(init_data, _MARK, True)
    ShardedTensor.init_data = init_data


def _init_data_applied():
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    return getattr(ShardedTensor.init_data, _MARK, False)


def _build_patches():
    patches = []
    for module_name, why in TORCH_PROXY_MODULES.items():
        apply, is_applied = _proxy_torch(module_name)
        patches.append(Patch(f"torch-proxy:{module_name}", why, apply, is_applied))
    patches.append(Patch(
        "rng-tracker",
        "model_parallel_cuda_manual_seed and get_cuda_rng_tracker().fork() use CUDA generator "
        "state; attention forks the tracker on every forward",
        _apply_rng, _rng_applied,
    ))
    for module_name, attr, why in (
        ("megatron.core.tensor_parallel.data", "broadcast_data", "data[key].cuda()"),
        ("megatron.core.dist_checkpointing.exchange_utils", "exchange_loaded_tensors_gather_rounds",
         "all_loaded_tensors[shard_id].cuda()"),
        ("megatron.core.dist_checkpointing.exchange_utils", "exchange_loaded_tensors_broadcast",
         "all_loaded_tensors[shard_id].cuda()"),
        ("megatron.core.utils", "check_param_hashes_across_dp_replicas",
         "torch.stack(local_param_hashes).cuda()"),
    ):
        apply, is_applied = _wrap_function(module_name, attr, tensor_cuda_is_identity)
        patches.append(Patch(f"tensor-cuda:{attr}", why, apply, is_applied))
    apply, is_applied = _wrap_function(
        "megatron.core.optimizer.clip_grads", "clip_grad_by_total_norm_fp32",
        cpu_tensor_types_read_as_cuda)
    patches.append(Patch(
        "cuda-type:clip_grad_by_total_norm_fp32",
        "assert param.grad.type() == 'torch.cuda.FloatTensor'", apply, is_applied))
    apply, is_applied = _wrap_classmethod(
        "megatron.core.optimizer.distrib_optimizer", "DistributedOptimizer",
        "_build_model_and_main_param_groups", cpu_tensor_types_read_as_cuda)
    patches.append(Patch(
        "cuda-type:DistributedOptimizer._build_model_and_main_param_groups",
        "model_param.type() == 'torch.cuda.FloatTensor' else TypeError", apply, is_applied))
    patches.append(Patch(
        "sharded-tensor-init-data",
        'exchange_utils calls ShardedTensor.init_data("cuda") (default init_fn is the real torch.empty)',
        _apply_init_data, _init_data_applied,
    ))
    return patches


PATCHES: list[Patch] = []


def cuda_is_absent() -> bool:
    return not torch.cuda.is_available()


def apply_cpu_compat(force: bool = False) -> list[str]:
    """Patch megatron-core for the CPU when CUDA is absent (or `force=True`); idempotent.

    Returns the names of the patches that are in place (empty when CUDA is available).
    Call it before building models, optimizers or schedules, and before
    `model_parallel_cuda_manual_seed`.
    """
    if not (force or cuda_is_absent()):
        return []
    if not PATCHES:
        PATCHES.extend(_build_patches())
    for patch in PATCHES:
        if not patch.is_applied():
            patch.apply()
    return [p.name for p in PATCHES if p.is_applied()]


def cpu_compat_applied() -> bool:
    return bool(PATCHES) and all(p.is_applied() for p in PATCHES)
