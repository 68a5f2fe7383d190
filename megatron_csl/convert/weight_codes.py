"""Recover the integer codes, scales and sparsity mask behind a compressed weight.

``CompressionSpec.compress_weight`` returns only the dequantized weight. To store it packed we need
what it is made of: which entries survive pruning, the per-row/group/tensor (or per-block) scale,
and an index into the format's table of levels for every survivor. megatron_csl.compression has
no public function for that (yet), so this module asks the spec's own parts for the pieces that
are not recoverable from the output (the sparsity mask, the quantizer's step / scale, the table of
levels) and computes codes as the nearest level of ``value / scale``.

Every decomposition is checked: ``packed_codec.decode(encode(d))`` must equal
``spec.compress_weight(w)`` exactly, or `decompose` raises — a change in the compression code that
this module does not follow fails loudly instead of writing a lossy artefact.

Reconstruction semantics (what the packed manifest promises): for every kept entry
``value = float32(scale * levels[code])`` (one rounding, as the quantizers compute it), then the
block Hadamard rotation when the format has one, then the cast to the weight's dtype; pruned
entries are 0. With Hadamard and sparsity (QuEST's rotate, prune, quantize) the mask and the codes
live in the rotated basis. Vector-quantized weights store one code per d-vector of the rotated
row, an index into the format's Gaussian grid, times the row's RMS.

Outlier-preserving formats (`w4:out1`) store the codes of every other entry plus, per row, the
outliers' column indices (uint16) and values (the weight's dtype). Not packable
(ConversionError naming the format): noise injection (nothing is stored compressed: the noise
is drawn afresh every forward).
"""
from __future__ import annotations

import torch

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.packed_codec import Decomposition, decode, encode


def _int_levels(quantizer) -> torch.Tensor:
    if quantizer.ternary:
        lo, hi = -1, 1
    else:
        b = int(quantizer.bits)
        lo, hi = -(2 ** (b - 1)), 2 ** (b - 1) - 1
    levels = torch.arange(lo, hi + 1, dtype=torch.float32)
    if quantizer.grid == "sym" and not quantizer.ternary:
        levels = levels + 0.5  # sym grid: (k + 1/2) * step, no zero level
    return levels


def _grouped(x: torch.Tensor, granularity):
    from megatron_csl.compression.stats import Grouped

    return Grouped(x, granularity, None)


def _int_scale(quantizer, x: torch.Tensor, keep) -> torch.Tensor:
    """The grid step of every group as [R, G] (R = rows or 1, G = input groups)."""
    grouped = _grouped(x, quantizer.granularity)
    x_v = grouped.view(x)
    mask_v = None if keep is None else grouped.view(keep)
    step = quantizer.step(x_v, grouped, mask_v).float()
    return torch.where(step > 0, step, torch.zeros_like(step)).reshape(step.shape[0], step.shape[1])


def _float_scale(quantizer, x: torch.Tensor, keep) -> tuple[torch.Tensor, dict]:
    """(scale of every row / tensor / block as [R, G], two-level form or {}) by the formulas of
    FloatQuant.quantize."""
    from megatron_csl.compression import floats

    fmt = floats.FORMATS[quantizer.fmt]
    two_level = {}
    if quantizer.scaling in ("row", "tensor"):
        grouped = _grouped(x, quantizer.scaling)
        x_v = grouped.view(x)
        mask_v = None if keep is None else grouped.view(keep)
        kappa = floats.optimal_format_scale(quantizer.fmt)[0]
        scale = (grouped.moments(x_v, mask_v, "rms") * kappa).float()
    elif quantizer.scaling == "mx":
        grouped = _grouped(x, quantizer.MX_BLOCK)
        x_v = grouped.view(x)
        amax = grouped.amax((x_v if keep is None else x_v * grouped.view(keep)).abs()).float()
        _, exponent = torch.frexp(amax)
        scale = torch.ldexp(torch.ones_like(amax), exponent - 1 - fmt.emax)
        scale = torch.where(amax > 0, scale, torch.zeros_like(scale))
    elif quantizer.scaling == "nv":
        grouped = _grouped(x, quantizer.NV_BLOCK)
        x_v = grouped.view(x)
        mags = (x_v if keep is None else x_v * grouped.view(keep)).abs()
        block_amax = mags.amax(dim=2, keepdim=True)
        row_amax = _grouped(x, "row").amax(block_amax.amax(dim=1, keepdim=True)).float()
        row_scale = row_amax / (floats.FORMATS["e4m3"].max_value * fmt.max_value)
        safe = torch.where(row_scale > 0, row_scale, torch.ones_like(row_scale))
        ratio = torch.where(row_scale > 0, block_amax / (fmt.max_value * safe), torch.zeros_like(block_amax))
        factor = floats.round_to_format(ratio, "e4m3")
        scale = factor * row_scale
        two_level = {"scale_factor": factor.reshape(factor.shape[0], factor.shape[1]),
                     "scale_row": row_scale.reshape(-1, 1),
                     "scale_factor_levels": torch.tensor(floats.FORMATS["e4m3"].positive_values(),
                                                         dtype=torch.float32)}
    else:
        raise ConversionError(f"float scaling {quantizer.scaling!r} is not supported by the packer")
    scale = torch.where(scale > 0, scale, torch.zeros_like(scale))
    return scale.reshape(scale.shape[0], scale.shape[1]), two_level


def _float_levels(quantizer) -> torch.Tensor:
    from megatron_csl.compression import floats

    return torch.tensor(floats.FORMATS[quantizer.fmt].levels(), dtype=torch.float32)


def _nearest_codes(ratio: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the level nearest each ratio (levels sorted ascending)."""
    mids = (levels[1:] + levels[:-1]) / 2
    return torch.bucketize(ratio, mids)


def _expand_scale(scale: torch.Tensor, shape) -> torch.Tensor:
    rows, cols = shape
    return scale.expand(rows, scale.shape[1]).repeat_interleave(cols // scale.shape[1], dim=1)


def decompose(spec, weight: torch.Tensor) -> tuple[Decomposition, torch.Tensor]:
    """(decomposition, compressed weight) of a 2-D master `weight` under `spec` (unsharded).

    Raises ConversionError when the decomposition does not restore ``spec.compress_weight(weight)``.
    """
    if weight.dim() != 2:
        raise ConversionError(f"expected a 2-D weight, got shape {tuple(weight.shape)}")
    with torch.no_grad():
        w_hat = spec.compress_weight(weight.detach())
        x = weight.detach().float()
        shape = tuple(weight.shape)
        keep = nm = None
        quantizer = spec.weight
        _check_packable(spec)
        had = getattr(quantizer, "had", 0)
        if spec.sparsity_format is not None:
            from megatron_csl.compression.hadamard import block_hadamard

            # rotate, prune, quantize: with Hadamard the mask is taken in the rotated basis
            keep, _ = spec.sparsity_format.mask(block_hadamard(x, had) if had else x, _local())
            if isinstance(spec.sparsity_format.pattern, tuple):
                nm = tuple(spec.sparsity_format.pattern)
        if quantizer is not None and quantizer.outliers:
            dec = _with_outliers(quantizer, x, shape, weight.dtype)
        elif quantizer is None:
            dec = Decomposition(shape, weight.dtype, mask=keep, nm=nm,
                                values=w_hat[keep] if keep is not None else w_hat.reshape(-1))
        else:
            dec = _quantized(quantizer, x, keep, nm, shape, weight.dtype)
        entry, arrays = encode(dec)
        restored = decode(entry, arrays)
        if not torch.equal(restored, w_hat):
            bad = int((restored != w_hat).sum())
            raise ConversionError(
                f"packing {spec.canonical} does not restore the compressed weight ({bad} of "
                f"{w_hat.numel()} values differ): megatron_csl.compression changed how it computes "
                "scales or levels; update megatron_csl/convert/weight_codes.py")
    return dec, w_hat


def _with_outliers(quantizer, x, shape, dtype) -> Decomposition:
    """Codes of the non-outliers (statistics over them, as outliers.py) + the outliers."""
    from megatron_csl.compression.outliers import outlier_mask

    outliers = outlier_mask(x, quantizer.outliers, _local())
    rest = _quantized(quantizer, x, ~outliers, None, shape, dtype)
    per_row = int(outliers[0].sum()) if shape[0] else 0
    columns = torch.sort(outliers.to(torch.int8).argsort(dim=1, descending=True, stable=True)
                         [:, :per_row], dim=1).values
    rest.mask = None
    rest.outlier_columns = columns
    rest.outlier_values = torch.gather(x, 1, columns)
    return rest


def _check_packable(spec) -> None:
    weight = spec.weight
    if weight is None:
        return
    if weight.kind == "noise":
        raise ConversionError(f"{spec.canonical}: noise injection stores nothing compressed (the "
                              "noise is drawn afresh every forward); export the dense weights")


def _local():
    from megatron_csl.compression import LOCAL

    return LOCAL


def _quantized(quantizer, x, keep, nm, shape, dtype) -> Decomposition:
    from megatron_csl.compression.hadamard import block_hadamard

    had = getattr(quantizer, "had", 0)
    if had:
        # fake_quantize rotates, (prunes,) quantizes the rotated weight and rotates back; codes,
        # scales and the mask (computed by decompose in the rotated basis) live there.
        x = block_hadamard(x, had)
    if quantizer.kind == "vector":
        codes, scale = quantizer.quantize_codes(x, None)
        return Decomposition(shape, dtype, codes=codes.reshape(-1),
                             levels=quantizer.grid().reshape(-1), scale=scale, hadamard=had,
                             vector_dim=quantizer.dim)
    two_level = {}
    if quantizer.kind == "int":
        levels, scale = _int_levels(quantizer), _int_scale(quantizer, x, keep)
    else:
        levels = _float_levels(quantizer)
        scale, two_level = _float_scale(quantizer, x, keep)
    value, _ = quantizer.quantize(x, None, None, keep)
    full_scale = _expand_scale(scale, shape)
    safe = torch.where(full_scale > 0, full_scale, torch.ones_like(full_scale))
    codes = _nearest_codes(value / safe, levels)
    # An all-zero group has scale 0: any code reproduces 0; take the level nearest 0.
    codes = torch.where(full_scale > 0, codes, _nearest_codes(torch.zeros(()), levels))
    if keep is not None:
        codes = codes[keep]
    else:
        codes = codes.reshape(-1)
    return Decomposition(shape, dtype, mask=keep, nm=nm, codes=codes, levels=levels, scale=scale,
                         hadamard=had, **two_level)
