"""A stand-in for the `torch` module inside megatron-core modules that hard-code CUDA.

megatron-core 0.16.1 writes `torch.zeros(..., device="cuda")`,
`device=torch.cuda.current_device()` and `torch.cuda.synchronize()` in code that is otherwise
device-agnostic. Replacing the module-level name `torch` in those modules with `CpuTorch`
redirects exactly those calls to the CPU while every other attribute is the real torch, so
megatron's own code runs unchanged.

Two tensor *methods* cannot be reached through a module's globals: `tensor.cuda()` and
`tensor.type() == "torch.cuda.FloatTensor"`. `tensor_cuda_is_identity()` and
`cpu_tensor_types_read_as_cuda()` patch them on `torch.Tensor` only for the duration of the
megatron function that needs it (see `cpu.py`).
"""
from __future__ import annotations

import contextlib
import functools
import threading
import types

import torch

_CPU = torch.device("cpu")

# Factory functions whose `device=` megatron sets to CUDA in the patched modules.
_FACTORIES = (
    "tensor", "as_tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn",
    "randint", "zeros_like", "ones_like", "empty_like", "full_like",
)


def is_cuda_device(device) -> bool:
    """True for "cuda", "cuda:1", torch.device("cuda") and a bare CUDA ordinal (int)."""
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True
    if isinstance(device, str):
        return device.split(":")[0] == "cuda"
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


def _on_cpu(factory):
    @functools.wraps(factory)
    def wrapper(*args, **kwargs):
        if is_cuda_device(kwargs.get("device")):
            kwargs["device"] = _CPU
        # Pinned memory needs an accelerator.
        kwargs.pop("pin_memory", None)
        return factory(*args, **kwargs)

    return wrapper


def _noop(*args, **kwargs):
    return None


class _CpuCuda(types.ModuleType):
    """`torch.cuda` as megatron uses it, with the CPU standing in for the current device.

    The CPU generator is the "device" generator: `get_rng_state`/`set_rng_state`/`manual_seed`
    act on it, which is what megatron's RNG bookkeeping (tracker, activation recompute) expects.
    Anything not listed is the real `torch.cuda` (so `is_available()` still says False).
    """

    def __init__(self):
        super().__init__("megatron_csl.compat.cpu_torch.cuda")
        self.current_device = lambda: _CPU
        self.synchronize = _noop
        self.empty_cache = _noop
        self.get_rng_state = lambda device="cuda": torch.get_rng_state()
        self.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
        self.manual_seed = lambda seed: torch.manual_seed(seed)

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class CpuTorch(types.ModuleType):
    """`torch`, except that CUDA device arguments of factories mean the CPU and `torch.cuda`
    is `_CpuCuda`."""

    def __init__(self):
        super().__init__("megatron_csl.compat.cpu_torch")
        for name in _FACTORIES:
            setattr(self, name, _on_cpu(getattr(torch, name)))
        self.cuda = _CpuCuda()
        self.__cpu_compat__ = True

    def __getattr__(self, name):
        return getattr(torch, name)


CPU_TORCH = CpuTorch()

# Tensor-method patches are process-global while active; a lock keeps two threads from
# restoring each other's originals out of order, a counter allows nesting.
_lock = threading.RLock()


def _tensor_cuda_on_cpu(self, device=None, non_blocking=False, memory_format=torch.preserve_format):
    return self


@contextlib.contextmanager
def tensor_cuda_is_identity():
    """Inside the block `tensor.cuda()` returns the (CPU) tensor itself."""
    with _lock:
        original = torch.Tensor.cuda
        torch.Tensor.cuda = _tensor_cuda_on_cpu
        try:
            yield
        finally:
            torch.Tensor.cuda = original


_ORIGINAL_TYPE = torch.Tensor.type


def _type_as_cuda(self, dtype=None, non_blocking=False, **kwargs):
    if dtype is None and not kwargs and self.device.type == "cpu":
        name = _ORIGINAL_TYPE(self)  # e.g. "torch.FloatTensor"
        return name.replace("torch.", "torch.cuda.", 1)
    return _ORIGINAL_TYPE(self, dtype, non_blocking, **kwargs)


@contextlib.contextmanager
def cpu_tensor_types_read_as_cuda():
    """Inside the block `tensor.type()` of a CPU tensor reads "torch.cuda.FloatTensor" etc., so
    megatron's dtype dispatch on type strings picks the same branch it picks on a GPU."""
    with _lock:
        original = torch.Tensor.type
        torch.Tensor.type = _type_as_cuda
        try:
            yield
        finally:
            torch.Tensor.type = original
