"""CompressionSpec: a parsed format (sparsity, weight quantizer, activation quantizer).

Applying a spec: weights are pruned first (top-k by magnitude), then the survivors quantized with
statistics over the survivors (pruned entries stay exactly 0); with a Hadamard weight quantizer
the weight is rotated first (rotate, prune, quantize, rotate back). Activations (the inputs of the
linear layer) are pruned per token (activation sparsity) and quantized per token. See
docs/formats.md for the grammar and semantics.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Optional, Union

import torch

from . import floats
from .errors import SpecError
from .activation_sparsity import ActivationSparsity
from .fake_quant import fake_quantize, integer_operand
from .noise import NoiseInjection
from .outliers import fake_quantize_with_outliers
from .quantizers import FloatQuant, IntQuant, format_bits
from .shard import LOCAL, ShardContext
from .sparsity import Sparsity
from .vector import VectorQuant

Quantizer = Union[IntQuant, FloatQuant]
WeightFormat = Union[IntQuant, FloatQuant, VectorQuant, NoiseInjection]
# float32 represents every integer below 2^24, so sums of integer products below it are exact.
FLOAT32_EXACT_INTEGERS = 2 ** 24


@functools.total_ordering
@dataclass(frozen=True)
class CompressionSpec:
    sparsity_format: Optional[Sparsity] = None
    weight: Optional[WeightFormat] = None
    activation: Optional[Quantizer] = None
    activation_sparsity_format: Optional[ActivationSparsity] = None

    # ---- text form ---------------------------------------------------------------------------
    @functools.cached_property
    def canonical(self) -> str:
        parts = []
        if self.sparsity_format is not None:
            sp = self.sparsity_format
            parts.append(_token(f"s{sp.percent_text}", sp.options()))
        if self.activation_sparsity_format is not None:
            parts.append(self.activation_sparsity_format.canonical)
        w, a = self.weight, self.activation
        combined = _combined_token(w, a) if w is not None and a is not None else None
        if combined:
            parts.append(combined)
        else:
            if w is not None:
                if w.kind == "int":
                    head = f"w{format_bits(w.bits)}"
                elif w.kind == "float":
                    head = f"fp{int(w.element_bits)}"
                else:
                    head = w.head()
                parts.append(_token(head, w.options()))
            if a is not None:
                head = f"a{format_bits(a.bits)}" if a.kind == "int" else f"afp{int(a.element_bits)}"
                parts.append(_token(head, a.options(with_granularity=False)))
        return "+".join(parts) or "dense"

    def __str__(self) -> str:
        return self.canonical

    def __repr__(self) -> str:
        return f"CompressionSpec({self.canonical!r})"

    def __lt__(self, other):
        if not isinstance(other, CompressionSpec):
            return NotImplemented
        return self.canonical < other.canonical

    # ---- accounting --------------------------------------------------------------------------
    @property
    def is_dense(self) -> bool:
        return (self.sparsity_format is None and self.weight is None and self.activation is None
                and self.activation_sparsity_format is None)

    @property
    def w_bits(self) -> float:
        """Bits per stored weight value, block/group scales included; 16 when not quantized."""
        return self.weight.storage_bits() if self.weight is not None else 16.0

    @property
    def a_bits(self) -> float:
        return self.activation.storage_bits() if self.activation is not None else 16.0

    @property
    def sparsity(self) -> float:
        """Fraction of weights pruned, in [0, 1)."""
        return self.sparsity_format.fraction if self.sparsity_format is not None else 0.0

    @property
    def activation_sparsity(self) -> float:
        """Fraction of each token's inputs zeroed, in [0, 1)."""
        fmt = self.activation_sparsity_format
        return fmt.fraction if fmt is not None else 0.0

    @property
    def effective_w_bits(self) -> float:
        return self.w_bits * (1.0 - self.sparsity)

    @property
    def compresses_weights(self) -> bool:
        return self.weight is not None or self.sparsity_format is not None

    @property
    def weight_is_deterministic(self) -> bool:
        """False when compress_weight draws random numbers (noise injection): the same weight
        then gives a different result every call, so it must not be cached."""
        return not isinstance(self.weight, NoiseInjection)

    @property
    def compresses_activations(self) -> bool:
        return self.activation is not None or self.activation_sparsity_format is not None

    @property
    def learned(self) -> bool:
        """True when a part's step is a model parameter (lsq, pact; see learned.py): the layer
        applies it with its own parameters, compress_weight / quantize_activation cannot."""
        return any(getattr(q, "learned", "") for q in (self.weight, self.activation))

    def _refuse_learned(self, quantizer, what: str) -> None:
        if getattr(quantizer, "learned", ""):
            raise SpecError(f"{self.canonical}: the {what} step of '{quantizer.learned}' is a "
                            f"parameter of the compressed linear layer (local impl), not a "
                            f"function of the tensor; apply it through the layer "
                            f"(megatron_csl.layers.learned)")

    # ---- shapes --------------------------------------------------------------------------------
    def validate_shape(self, out_features: int, in_features_local: int) -> None:
        """SpecError if a block of this format (N:M's M, group, Hadamard, mx/nv block) does not
        divide the local input dimension."""
        for name, value in (("out_features", out_features), ("in_features_local", in_features_local)):
            if not isinstance(value, int) or value < 1:
                raise SpecError(f"{self.canonical}: {name} must be a positive integer, got {value!r}")
        parts = [p for p in (self.sparsity_format, self.weight, self.activation,
                             self.activation_sparsity_format) if p is not None]
        for part in parts:
            for option, size in part.block_sizes():
                if in_features_local % size:
                    raise SpecError(
                        f"{self.canonical}: option '{option}' needs the (local) input dimension to "
                        f"be a multiple of {size}, but it is {in_features_local}; choose a block "
                        f"size that divides {in_features_local} or another layout")

    # ---- application ---------------------------------------------------------------------------
    def compress_weight(self, w: torch.Tensor, shard: ShardContext = LOCAL) -> torch.Tensor:
        """Compressed weight [out, in_local] (same shape and dtype), gradient per estimator."""
        if not self.compresses_weights:
            return w
        self._refuse_learned(self.weight, "weight")
        if w.dim() != 2:
            raise SpecError(f"{self.canonical}: compress_weight expects a 2-D weight [out, in], "
                            f"got shape {tuple(w.shape)}")
        self.validate_shape(w.shape[0], w.shape[1])
        weight = self.weight
        if w.is_cuda and _kernel_weight_candidate(weight):
            # Triton kernels, same numerics; None where they do not cover the format
            fast = _fast_path().compress_weight(self, w, shard)
            if fast is not None:
                return fast
        x = w.float()
        if isinstance(weight, NoiseInjection):
            return weight.apply(x, shard).to(w.dtype)
        if weight is not None and weight.outliers:
            return fake_quantize_with_outliers(weight, x, shard).to(w.dtype)
        prune = None
        if self.sparsity_format is not None:
            def prune(basis):
                return self.sparsity_format.mask(basis, shard)
        out = fake_quantize(weight, x, shard.weight_group(1), shard.weight_tensor_group(),
                            prune=prune)
        return out.to(w.dtype)

    def _prune(self, x: torch.Tensor, shard: ShardContext):
        """(keep mask, sparsity gradient mask) of float32 weight x, or (None, None) when dense."""
        if self.sparsity_format is None:
            return None, None
        return self.sparsity_format.mask(x, shard)

    def quantize_activation(self, x: torch.Tensor, shard: ShardContext = LOCAL) -> torch.Tensor:
        """Quantized activation [..., in_local], per-token statistics over the last dimension."""
        if not self.compresses_activations:
            return x
        self._refuse_learned(self.activation, "activation")
        if x.dim() < 1 or x.shape[-1] == 0:
            raise SpecError(f"{self.canonical}: quantize_activation needs a last dimension, "
                            f"got shape {tuple(x.shape)}")
        for option, size in (self.activation.block_sizes() if self.activation else []):
            if x.shape[-1] % size:
                raise SpecError(
                    f"{self.canonical}: option '{option}' needs the activation's last dimension "
                    f"to be a multiple of {size}, but it is {x.shape[-1]}")
        if x.is_cuda and self.activation_sparsity_format is None:  # see compress_weight
            fast = _fast_path().quantize_activation(self, x, shard)
            if fast is not None:
                return fast
        x2 = x.reshape(-1, x.shape[-1]).float()
        group = shard.activation_group()
        prune = None
        if self.activation_sparsity_format is not None:
            def prune(basis):
                return self.activation_sparsity_format.mask(basis, group)
        out = fake_quantize(self.activation, x2, group, None, prune=prune)
        return out.reshape(x.shape).to(x.dtype)

    # ---- exact integer matmul -----------------------------------------------------------------
    def integer_codes_reason(self) -> Optional[str]:
        """None when the matmul can run on integer codes (weight_codes x activation_codes, the
        units applied afterwards), else why not: integer weights and activations whose scales
        factor out of the sum (per-row or per-tensor weight scale, per-token activation scale),
        no Hadamard, outliers, activation sparsity or learned steps. The float32 exact path and
        the int8 GEMM (kernels/int8.py) both start from this and add their own overflow bound."""
        w, a = self.weight, self.activation
        if not (isinstance(w, IntQuant) and isinstance(a, IntQuant)):
            return "needs integer weights and activations"
        if w.had or a.had:
            return "Hadamard rotation"
        if w.outliers:
            return "full-precision outliers"
        if self.activation_sparsity_format is not None:
            return "activation sparsity"
        if self.learned:  # the layer's learned steps, not integer_operand, quantize these
            return "learned steps"
        if w.granularity not in ("row", "tensor"):
            return f"weight granularity {w.granularity!r} (its scale does not factor out of the sum)"
        return None

    def integer_matmul_exact(self, in_features: int) -> bool:
        """Whether a matmul over `in_features` (the full, unsharded input dimension) can run on
        integer codes exactly in float32: integer_codes_reason() is None and every partial sum
        stays below 2^24."""
        if self.integer_codes_reason() is not None:
            return False
        return in_features * self.weight.code_bound * self.activation.code_bound \
            < FLOAT32_EXACT_INTEGERS

    def weight_codes(self, w: torch.Tensor, shard: ShardContext = LOCAL):
        """(codes [out, in_local], unit [out, 1] or [1, 1]): codes * unit == compress_weight(w).
        Only for specs with integer_matmul_exact."""
        x = w.float()
        keep, sparse_grad = self._prune(x, shard)
        codes, unit = integer_operand(self.weight, x, shard.weight_group(1),
                                      shard.weight_tensor_group(), keep, sparse_grad)
        return codes.to(w.dtype), unit.to(w.dtype)

    def activation_codes(self, x: torch.Tensor, shard: ShardContext = LOCAL):
        """(codes [..., in_local], unit [..., 1]): codes * unit == quantize_activation(x)."""
        x2 = x.reshape(-1, x.shape[-1]).float()
        codes, unit = integer_operand(self.activation, x2, shard.activation_group(), None)
        return codes.reshape(x.shape).to(x.dtype), unit.reshape(*x.shape[:-1], 1).to(x.dtype)


def _kernel_weight_candidate(weight) -> bool:
    """Whether the kernels may cover this weight format (they decline the rest themselves)."""
    return weight is None or isinstance(weight, (IntQuant, FloatQuant)) and not weight.outliers


def _fast_path():
    """megatron_csl.kernels, imported on the first CUDA tensor (never on CPU-only runs)."""
    from megatron_csl import kernels

    return kernels


def _token(head: str, options: list[str]) -> str:
    return head + (":" + ",".join(options) if options else "")


def _combined_token(w: Quantizer, a: Quantizer) -> str | None:
    """The single `w<b>a<c>` / `fp<b>a<c>` token for w and a, or None if options differ."""
    if w.kind == "int" and a.kind == "int":
        # The combined token's grid option applies to every non-ternary part.
        grids = {q.grid for q in (w, a) if not q.ternary} or {"sym"}
        if len(grids) > 1 or a.granularity != "row" or w.outliers or (
                a.scale, a.had, a.estimator, a.learned) != (w.scale, w.had, w.estimator, w.learned):
            return None
        shared = dataclasses.replace(w, bits=2, grid=grids.pop())
        return _token(f"w{format_bits(w.bits)}a{format_bits(a.bits)}", shared.options())
    if w.kind == "float" and a.kind == "float":
        scaling = w.scaling if w.scaling in ("mx", "nv") else "row"
        if a.scaling != scaling or a.had != w.had or a.estimator != w.estimator:
            return None
        if w.element_bits == a.element_bits and w.fmt != a.fmt:
            return None
        formats = []
        for q in (w, a):
            if q.fmt != floats.FORMATS_BY_BITS[int(q.element_bits)][0] and q.fmt not in formats:
                formats.append(q.fmt)
        return _token(f"fp{int(w.element_bits)}a{int(a.element_bits)}",
                      formats + w.options(with_format=False))
    return None
