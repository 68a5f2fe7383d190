"""megatron-core's tensor-parallel RNG tracker on the CPU generator.

On a GPU the tracker keeps named CUDA generator states ("model-parallel-rng", ...) and `fork()`
swaps one in for a block (attention enters `fork()` on every forward, even with dropout 0).
Without CUDA the CPU default generator plays the device generator: `fork()` swaps its state.
"""
from __future__ import annotations

import contextlib

import torch
from megatron.core.tensor_parallel import random as mcore_random


def get_device_rng_state(device="cuda", clone=False, graph_safe=False):
    """CPU replacement for `megatron.core.tensor_parallel.random._get_cuda_rng_state`."""
    return torch.get_rng_state()


def set_device_rng_state(new_state, device=-1, graph_safe=False):
    """CPU replacement for `megatron.core.tensor_parallel.random._set_cuda_rng_state`."""
    torch.set_rng_state(new_state)


class CpuRNGStatesTracker(mcore_random.CudaRNGStatesTracker):
    """`CudaRNGStatesTracker` whose named states are CPU generator states.

    `add` is inherited (it runs on the CPU through the patched module `torch`); `fork` is the
    parent's without its "CPU RNG state changed within GPU RNG context" warning, which on the CPU
    would fire whenever dropout draws inside the fork, because here that *is* the CPU generator.
    """

    @contextlib.contextmanager
    def fork(self, name=mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME):
        if name not in self.states_:
            raise Exception(f"cuda rng state {name} is not added")
        orig_state = torch.get_rng_state()
        orig_state_name = self._current_state_name
        if orig_state_name != "default-rng":
            self.states_[orig_state_name] = orig_state
        torch.set_rng_state(self.states_[name])
        self._current_state_name = name
        try:
            yield
        finally:
            if self._current_state_name != name:
                raise Exception(
                    f"current state name {self._current_state_name} is not the same as the "
                    f"desired state name {name}."
                )
            self.states_[name] = torch.get_rng_state()
            if orig_state_name != "default-rng":
                orig_state = self.states_[orig_state_name]
            torch.set_rng_state(orig_state)
            self._current_state_name = orig_state_name
