"""No host synchronization in the compression path, checked on a CPU.

On a GPU, every tensor built from Python numbers (torch.tensor(..., device="cuda")) is a
host-to-device copy that waits, and .item()/.tolist()/bool(t) wait for the device. After warm-up
(constants are made once per device), one compressed forward + backward must do none of these
from megatron_csl's code, on the kernels' path (Triton's interpreter here) and on the
reference's. tests/kernels/test_gpu_sync.py checks the same on CUDA with
torch.cuda.set_sync_debug_mode("error").
"""
import sys

import pytest
import torch

from megatron_csl import kernels
from megatron_csl.compression import parse_spec

# Kernel-covered formats (weights and activations) and reference-only ones (floats, Hadamard,
# RBBM).
KERNEL_FORMATS = ["w4", "w4:trust", "w2:zero,absmax", "w4:g64", "w4:tensor", "w1.58:absmean",
                  "s50", "s50:tensor", "s50:nm2/4", "s50+w4", "w4a4", "w8a8", "a4:trust"]
REFERENCE_FORMATS = KERNEL_FORMATS + ["fp8", "fp4:nv", "fp8:mx", "fp8a8", "w4a4:had",
                                      "s50:nm2/4,rbbm10"]
CREATORS = ("tensor", "as_tensor", "scalar_tensor")
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")


class Counter:
    """Counts calls of the creators and syncs made directly from megatron_csl's code."""

    def __init__(self, monkeypatch):
        self.calls = []
        for name in CREATORS:
            monkeypatch.setattr(torch, name, self._wrap(f"torch.{name}", getattr(torch, name)))
        for name in SYNCS:
            monkeypatch.setattr(torch.Tensor, name,
                                self._wrap(f"Tensor.{name}", getattr(torch.Tensor, name)))

    def _wrap(self, label, fn):
        def counted(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron_csl."):
                self.calls.append(f"{label} from {caller}")
            return fn(*args, **kwargs)
        return counted


def _forward_backward(spec, w, x, fast: bool):
    w = w.detach().clone().requires_grad_(True)
    x = x.detach().clone().requires_grad_(True)
    if fast:
        out_w = kernels.compress_weight(spec, w, require_cuda=False) if spec.compresses_weights \
            else None
        out_x = (kernels.quantize_activation(spec, x, require_cuda=False)
                 if spec.compresses_activations else None)
        assert out_w is not None or out_x is not None, f"no kernel ran for {spec}"
    else:
        with kernels.use_kernels(False):
            out_w, out_x = spec.compress_weight(w), spec.quantize_activation(x)
    loss = sum(t.float().sum() for t in (out_w, out_x) if t is not None)
    loss.backward()


@pytest.mark.parametrize("text", KERNEL_FORMATS)
def test_kernel_path_builds_no_tensors_from_python_numbers(text, triton_kernels, monkeypatch):
    spec = parse_spec(text)
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(8, 128, generator=gen), torch.randn(2, 3, 128, generator=gen)
    _forward_backward(spec, w, x, fast=True)  # warm-up: constants made once per device
    counter = Counter(monkeypatch)
    _forward_backward(spec, w, x, fast=True)
    assert counter.calls == []


@pytest.mark.parametrize("text", REFERENCE_FORMATS)
def test_reference_path_builds_no_tensors_from_python_numbers(text, monkeypatch):
    spec = parse_spec(text)
    gen = torch.Generator().manual_seed(0)
    w, x = torch.randn(8, 128, generator=gen), torch.randn(2, 3, 128, generator=gen)
    _forward_backward(spec, w, x, fast=False)
    counter = Counter(monkeypatch)
    _forward_backward(spec, w, x, fast=False)
    assert counter.calls == []


def test_the_counter_sees_a_per_call_constant(monkeypatch):
    """The check itself: a per-call torch.tensor in megatron_csl's code is counted."""
    from megatron_csl.kernels import ops

    counter = Counter(monkeypatch)
    ops._constant_tensors.__wrapped__(parse_spec("w4").weight, torch.device("cpu"))
    assert counter.calls == ["torch.tensor from megatron_csl.kernels.ops"] * 2
