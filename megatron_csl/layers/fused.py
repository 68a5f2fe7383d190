"""Opt-in speed options for the dense parts of the GPT model: fused kernels and torch.compile.

Issue 15's dense-speed levers, kept out of the default path (the default model stays exactly
megatron-core's):

* ``fused_kernels="liger"``: liger-kernel's Triton kernels (a maintained library, CUDA only) for
  RMSNorm, the SwiGLU activation (silu(gate) * up) and the cross-entropy loss (at TP = 1; with
  TP > 1 megatron's vocab-parallel loss stays). RoPE stays megatron's: liger's RoPE takes
  HuggingFace's [b, h, s, d] layout and cos/sin tables, megatron's [s, b, h, d] and angles.
* ``compile_backend="inductor"`` (or any torch.compile backend): torch.compile of the parts of
  each transformer layer that compile without graph breaks: the RMSNorms and the SwiGLU
  activation. The linears stay eager: megatron's tensor-parallel linears break dynamo's graph
  (a ``warnings.warn`` on every call without a tp_group) and the compressed formats break it
  dozens of times per MLP (data-dependent shapes, numpy, the weight cache), so compiling the
  whole layer would add graphs without fusing anything more.

Parameters keep megatron's names (``weight`` of each norm; ``nn.Module.compile`` compiles in
place without an ``_orig_mod`` prefix), so checkpoints are interchangeable between the options.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
from typing import Callable, Optional

import torch
from megatron.core.transformer.mlp import MLP
from megatron.core.transformer.spec_utils import ModuleSpec

FUSED_KERNELS = ("none", "liger")


class FusedKernelsUnavailable(RuntimeError):
    """The fused kernels asked for cannot run here (no package, no CUDA)."""


def check_fused_kernels(fused_kernels: str) -> str:
    """`fused_kernels` if valid and usable here, else a ValueError (not a name) or
    FusedKernelsUnavailable (not installed, no CUDA) saying why."""
    if fused_kernels not in FUSED_KERNELS:
        raise ValueError(f"fused_kernels must be one of {', '.join(FUSED_KERNELS)}, "
                         f"got {fused_kernels!r}")
    if fused_kernels == "liger":
        if importlib.util.find_spec("liger_kernel") is None:
            raise FusedKernelsUnavailable(
                "fused_kernels='liger' needs liger-kernel (pip install liger-kernel==0.8.5, or "
                "the project's [gpu] extra)")
        if not torch.cuda.is_available():
            raise FusedKernelsUnavailable(
                "fused_kernels='liger' needs a CUDA GPU: liger-kernel's Triton kernels do not "
                "run on a CPU (nor in Triton's interpreter)")
    return fused_kernels


# ---------------------------------------------------------------------------- liger modules
def _liger():
    """liger-kernel's autograd Functions (imported only when the option is used)."""
    from liger_kernel.ops.cross_entropy import LigerCrossEntropyFunction
    from liger_kernel.ops.swiglu import LigerSiLUMulFunction
    from liger_kernel.transformers.rms_norm import LigerRMSNorm

    return LigerRMSNorm, LigerSiLUMulFunction, LigerCrossEntropyFunction


class LigerRMSNormSpec:
    """A norm for megatron's ModuleSpec (called as megatron's WrappedTorchNorm is:
    ``(config, hidden_size, eps)``) that builds liger-kernel's RMSNorm (parameter ``weight``, as
    torch.nn.RMSNorm's)."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, **unused):
        if config.normalization != "RMSNorm":
            raise ValueError(f"fused_kernels='liger' replaces RMSNorm, got normalization="
                             f"{config.normalization!r}")
        liger_rms_norm = _liger()[0]
        # in_place=False: liger would otherwise overwrite the incoming gradient in backward.
        return liger_rms_norm(hidden_size, eps=eps, casting_mode="llama", in_place=False)


def torch_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """megatron's gated activation for Llama (activation_func=silu, gated_linear_unit)."""
    return torch.nn.functional.silu(gate) * up


@functools.lru_cache(maxsize=None)
def compiled_swiglu(backend: str):
    return torch.compile(torch_swiglu, backend=backend)


def liger_swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _liger()[1].apply(gate, up)


class SwiGLUMLP(MLP):
    """megatron's MLP whose activation silu(gate) * up runs through `swiglu` (liger's fused
    kernel, or a torch.compile'd function). Any setting this fast path does not cover (biases
    fused into the activation, per-token scales, clamping, another activation) raises at build
    time rather than silently changing the numerics."""

    # megatron's TransformerLayer passes tp_group only to MLP itself (it logs "Unknown MLP type"
    # for a subclass); MLP then takes the default tensor-parallel group, the one used here.
    def __init__(self, config, submodules, *args, swiglu: Callable = torch_swiglu, **kwargs):
        if not (config.gated_linear_unit and config.activation_func is torch.nn.functional.silu
                and getattr(config, "activation_func_clamp_value", None) is None
                and not getattr(config, "glu_linear_offset", 0.0)):
            raise ValueError("SwiGLUMLP needs gated_linear_unit=True, activation_func=silu, no "
                             "clamp and no glu_linear_offset (the Llama MLP)")
        super().__init__(config, submodules, *args, **kwargs)
        self.swiglu = swiglu

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if per_token_scale is not None:
            raise ValueError("SwiGLUMLP does not take per_token_scale (MoE experts)")
        hidden, bias = self.linear_fc1(hidden_states)
        if bias is not None:
            hidden = hidden + bias
        gate, up = torch.chunk(hidden, 2, dim=-1)
        return self.linear_fc2(self.swiglu(gate, up))


def liger_language_model_loss(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """megatron's compute_language_model_loss (labels [b, s], logits [s, b, v] -> loss [b, s])
    through liger's fused cross-entropy (whole vocabulary on this rank: TP = 1). In float32,
    as megatron's loss: liger keeps per-token losses in the logits' dtype (bf16 would round
    each to 3 digits)."""
    s, b, v = logits.shape
    target = labels.transpose(0, 1).reshape(-1)
    logits = logits.reshape(s * b, v).float()
    loss = _liger()[2].apply(logits, target, None, -100, 0.0, 0.0, "none")[0]
    return loss.view(s, b).transpose(0, 1).contiguous()


# ---------------------------------------------------------------------------- spec and model
def fused_layer_spec(spec: ModuleSpec, fused_kernels: str = "none",
                     compile_backend: Optional[str] = None) -> ModuleSpec:
    """`spec` (a local transformer-layer spec) with liger's RMSNorm and/or the SwiGLUMLP.
    Unchanged (the same object) when neither option is on."""
    if fused_kernels == "none" and compile_backend is None:
        return spec
    spec = copy.deepcopy(spec)
    layer = spec.submodules
    if fused_kernels == "liger":
        layer.input_layernorm = LigerRMSNormSpec
        layer.pre_mlp_layernorm = LigerRMSNormSpec
        swiglu = liger_swiglu
    else:
        swiglu = compiled_swiglu(compile_backend)
    layer.mlp = ModuleSpec(module=SwiGLUMLP, params={**(layer.mlp.params or {}),
                                                     "swiglu": swiglu},
                           submodules=layer.mlp.submodules)
    return spec


def _rms_norm(x, normalized_shape, weight, eps):
    return torch.nn.functional.rms_norm(x, normalized_shape, weight, eps)


@functools.lru_cache(maxsize=None)
def compiled_rms_norm(backend: str):
    """One compiled rms_norm per backend, shared by every norm: its weight is an input, so all
    layers reuse one graph (compiling each module's forward would guard on the module and
    recompile per layer until dynamo's cache limit sends the rest back to eager)."""
    return torch.compile(_rms_norm, backend=backend)


def compile_norms(model: torch.nn.Module, backend: str) -> int:
    """Route every torch RMSNorm of `model` (not liger's, already fused) through the compiled
    rms_norm; returns how many. (nn.Module.compile does not take effect here: dynamo skips
    the nn.Module call path.)"""
    norm = compiled_rms_norm(backend)
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.RMSNorm:
            # reads the attributes at each call: Float16Module / load_state_dict may change them
            module.forward = lambda x, m=module: norm(x, m.normalized_shape, m.weight, m.eps)
            count += 1
    return count


def use_liger_loss(model) -> None:
    """Route `model`'s (a GPTModel's) loss through liger's fused cross-entropy at TP = 1."""
    if model.config.tensor_model_parallel_size == 1:
        model.compute_language_model_loss = liger_language_model_loss
