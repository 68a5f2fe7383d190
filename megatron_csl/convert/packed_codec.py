"""Store one weight matrix in its compressed form, and restore it exactly.

A compressed weight ``w_hat`` ([out, in]) is described by a `Decomposition`:

* which entries are kept: all, an unstructured bitmask (1 bit per weight), or N:M indices (for each
  group of M consecutive inputs, the positions of its N kept entries, ceil(log2 M) bits each; used
  when smaller than a bitmask, e.g. 2:4);
* the kept values: either raw floats in the weight's dtype, or integer codes into a table of
  `levels` times a `scale` per row / tensor / (row, input group):
  ``v = float32(scale[r, c // group] * levels[code])``; with a Hadamard block the matrix of ``v``
  is rotated back (``block_hadamard``); finally cast to the weight's dtype. Pruned entries are 0.
  Vector-quantized weights (``vector_dim`` d > 1) have one code per d consecutive weights of a row,
  an index into a codebook of d-vectors (`levels` holds it row-major, [K * d]).

Scales are stored as float32 [R, G], or more compactly when that is exact: ``e8m0`` (a biased
power-of-two exponent per block, as OCP MX) or ``factor_x_row`` (an index into a table of block
factors, e.g. E4M3 values, times a float32 scale per row, as NVFP4).

`encode` turns a decomposition into named arrays plus a JSON-able manifest entry; `decode`
inverts it. Codes are packed to ceil(log2(len(levels))) bits (ternary: five per byte).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from megatron_csl.convert.bitpack import pack_bits, pack_trits, unpack_bits, unpack_trits
from megatron_csl.convert.errors import ConversionError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
E8M0_ZERO = 255  # the code of a zero scale (an all-zero block); OCP reserves 255 for NaN
SHARED_FIELDS = ("levels", "scale_table")  # fixed by the format: a file stores each table once


def dtype_name(dtype: torch.dtype) -> str:
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ConversionError(f"weights of dtype {dtype} cannot be packed; supported: {sorted(DTYPES)}")


@dataclass
class Decomposition:
    """The parts a compressed weight is made of (see the module docstring)."""

    shape: tuple[int, int]
    dtype: torch.dtype
    mask: Optional[torch.Tensor] = None       # bool [out, in]; None = every entry kept
    nm: Optional[tuple[int, int]] = None      # (N, M) when the mask keeps N of every M along `in`
    values: Optional[torch.Tensor] = None     # kept entries in row-major order (raw floats)
    codes: Optional[torch.Tensor] = None      # kept entries' level indices (int64), row-major
    levels: Optional[torch.Tensor] = None     # float32 [K], ascending
    scale: Optional[torch.Tensor] = None      # float32 [R, G]: R = out (per row) or 1 (per tensor),
    #                                           G input groups of in // G columns each
    hadamard: int = 0                         # block size of the rotation the codes live in (0: none)
    # Optional two-level form of `scale`: scale == float32(scale_factor * scale_row) exactly, with
    # every scale_factor a value of scale_factor_levels (e.g. E4M3 block scales times a row scale).
    scale_factor: Optional[torch.Tensor] = None
    scale_row: Optional[torch.Tensor] = None
    scale_factor_levels: Optional[torch.Tensor] = None
    vector_dim: int = 1                       # weights per code (vector quantization: 2 or 4)
    # Full-precision outliers (w<b>:out<p>): the same count per row; the codes (and `mask`, None)
    # cover the other entries. outlier_columns int64 [rows, k] ascending, outlier_values [rows, k].
    outlier_columns: Optional[torch.Tensor] = None
    outlier_values: Optional[torch.Tensor] = None

    def __post_init__(self):
        if (self.values is None) == (self.codes is None):
            raise ConversionError("a decomposition holds either raw values or codes, not both/neither")
        if self.codes is not None and (self.levels is None or self.scale is None):
            raise ConversionError("codes need levels and a scale")


def _index_bits(m: int) -> int:
    return max(1, math.ceil(math.log2(m)))


def _nm_indices(mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Positions (ascending) of the kept entries in each group of m; exactly n per group."""
    groups = mask.reshape(-1, m)
    counts = groups.sum(dim=1)
    if not torch.all(counts == n):
        bad = int((counts != n).sum())
        raise ConversionError(f"mask is not {n}:{m} ({bad} groups keep a different count)")
    # Stable argsort of "not kept" puts the kept positions first, in ascending order.
    order = torch.argsort((~groups).to(torch.int8), dim=1, stable=True)
    return order[:, :n]


def _nm_mask(indices: torch.Tensor, shape, m: int) -> torch.Tensor:
    groups = torch.zeros(indices.shape[0], m, dtype=torch.bool)
    groups.scatter_(1, indices, True)
    return groups.reshape(shape)


def _pack_codes(codes: torch.Tensor, num_levels: int) -> tuple[torch.Tensor, dict]:
    if num_levels > 256:
        raise ConversionError(f"{num_levels} levels do not fit 8-bit codes")
    codes = codes.to(torch.uint8).numpy()
    if num_levels == 3:
        return torch.from_numpy(pack_trits(codes)), {"packing": "trits", "bits_per_code": math.log2(3)}
    bits = _index_bits(num_levels)
    return torch.from_numpy(pack_bits(codes, bits)), {"packing": "bits", "bits_per_code": bits}


def _unpack_codes(data: torch.Tensor, info: dict, count: int) -> torch.Tensor:
    if info["packing"] == "trits":
        codes = unpack_trits(data.numpy(), count)
    else:
        codes = unpack_bits(data.numpy(), int(info["bits_per_code"]), count)
    return torch.from_numpy(codes.astype(np.int64))


# ------------------------------------------------------------------------------------- scales
def _e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    exponents = codes.to(torch.int32) - 127
    value = torch.ldexp(torch.ones(codes.shape, dtype=torch.float32), exponents)
    return torch.where(codes == E8M0_ZERO, torch.zeros_like(value), value)


def _try_e8m0(scale: torch.Tensor) -> Optional[torch.Tensor]:
    """uint8 biased exponents when every scale is 0 or a power of two in 2^-127 .. 2^127."""
    mantissa, exponent = torch.frexp(scale)
    biased = exponent - 1 + 127
    ok = (scale == 0) | ((mantissa == 0.5) & (biased >= 0) & (biased < E8M0_ZERO))
    if not bool(ok.all()):
        return None
    codes = torch.where(scale == 0, torch.full_like(biased, E8M0_ZERO), biased).to(torch.uint8)
    return codes if torch.equal(_e8m0_decode(codes), scale) else None


def _factor_x_row_decode(codes, table, row) -> torch.Tensor:
    return table[codes.to(torch.int64)] * row


def _try_factor_x_row(dec: Decomposition, scale: torch.Tensor):
    if dec.scale_factor is None:
        return None
    table = dec.scale_factor_levels.to(torch.float32)
    factor = dec.scale_factor.to(torch.float32).reshape(scale.shape)
    row = dec.scale_row.to(torch.float32).reshape(scale.shape[0], 1)
    codes = torch.searchsorted(table, factor).clamp(max=table.numel() - 1)
    if len(table) > 256 or not torch.equal(table[codes], factor):
        return None
    codes = codes.to(torch.uint8)
    if not torch.equal(_factor_x_row_decode(codes, table, row), scale):
        return None
    return {"scale_codes": codes, "scale_table": table.contiguous(), "scale_row": row.contiguous()}


def _encode_scale(dec: Decomposition, scale: torch.Tensor) -> tuple[str, dict]:
    """The smallest exact storage of `scale`: e8m0, factor_x_row, else float32."""
    e8m0 = _try_e8m0(scale)
    candidates = [("float32", {"scale": scale.contiguous()})]
    if e8m0 is not None:
        candidates.append(("e8m0", {"scale_e8m0": e8m0}))
    two_level = _try_factor_x_row(dec, scale)
    if two_level is not None:
        candidates.append(("factor_x_row", two_level))
    # Tables of levels are written once per file (packed_export shares them): not counted.
    return min(candidates, key=lambda c: sum(a.numel() * a.element_size() for k, a in c[1].items()
                                             if k not in SHARED_FIELDS))


def _decode_scale(kind: str, arrays: dict) -> torch.Tensor:
    if kind == "float32":
        return arrays["scale"]
    if kind == "e8m0":
        return _e8m0_decode(arrays["scale_e8m0"])
    if kind == "factor_x_row":
        return _factor_x_row_decode(arrays["scale_codes"], arrays["scale_table"], arrays["scale_row"])
    raise ConversionError(f"unknown scale encoding {kind!r} in the manifest")


# ------------------------------------------------------------------------------------- codec
def array_bytes(arrays: dict[str, torch.Tensor]) -> int:
    return sum(a.numel() * a.element_size() for a in arrays.values())


def encode(dec: Decomposition) -> tuple[dict, dict[str, torch.Tensor]]:
    """(manifest entry, {field: tensor}) for `dec`; packed bits are uint8 tensors."""
    out_features, in_features = dec.shape
    entry: dict = {"shape": [out_features, in_features], "dtype": dtype_name(dec.dtype)}
    arrays: dict[str, torch.Tensor] = {}
    kept = out_features * in_features
    if dec.outlier_columns is not None:
        if dec.mask is not None or in_features > 2**16:
            raise ConversionError("outliers need an unpruned weight of at most 65536 inputs")
        columns = dec.outlier_columns.reshape(out_features, -1)
        arrays["outlier_columns"] = columns.to(torch.int32).to(torch.uint16).contiguous()
        arrays["outlier_values"] = dec.outlier_values.to(dec.dtype).reshape(columns.shape).contiguous()
        entry["outliers"] = {"per_row": columns.shape[1]}
        kept -= columns.numel()
    if dec.mask is None:
        entry["sparsity"] = None
    elif dec.nm is not None and dec.nm[0] * _index_bits(dec.nm[1]) <= dec.nm[1]:
        # N:M indices are no larger than a bitmask: 2:4 -> 2 x 2 bits per 4 weights.
        n, m = dec.nm
        if in_features % m:
            raise ConversionError(f"N:M group size {m} does not divide the input dimension {in_features}")
        indices = _nm_indices(dec.mask, n, m)
        arrays["nm_indices"] = torch.from_numpy(pack_bits(indices.reshape(-1).numpy(), _index_bits(m)))
        entry["sparsity"] = {"kind": "nm", "n": n, "m": m, "index_bits": _index_bits(m)}
        kept = indices.numel()
    else:
        arrays["mask"] = torch.from_numpy(np.packbits(dec.mask.reshape(-1).numpy(), bitorder="little"))
        kept = int(dec.mask.sum())
        entry["sparsity"] = {"kind": "bitmask"}
        if dec.nm is not None:
            entry["sparsity"]["nm"] = list(dec.nm)
    if dec.values is not None:
        if dec.values.numel() != kept:
            raise ConversionError(f"{dec.values.numel()} values for {kept} kept entries")
        arrays["values"] = dec.values.to(dec.dtype).reshape(-1).contiguous()
        entry["values"] = "raw"
    else:
        d = dec.vector_dim
        if dec.codes.numel() * d != kept:
            raise ConversionError(f"{dec.codes.numel()} codes of {d} weights for {kept} kept entries")
        if d > 1 and (dec.mask is not None or dec.levels.numel() % d):
            raise ConversionError(f"vector codes (dimension {d}) need an unpruned weight and a "
                                  f"codebook of whole {d}-vectors")
        scale = dec.scale.to(torch.float32)
        if scale.dim() != 2 or scale.shape[0] not in (1, out_features) or in_features % scale.shape[1]:
            raise ConversionError(f"scale of shape {tuple(scale.shape)} does not fit a weight "
                                  f"[{out_features}, {in_features}]")
        arrays["codes"], info = _pack_codes(dec.codes, dec.levels.numel() // d)
        arrays["levels"] = dec.levels.to(torch.float32).contiguous()
        if d > 1:
            info["vector_dim"] = d
        scale_kind, scale_arrays = _encode_scale(dec, scale)
        arrays.update(scale_arrays)
        entry["values"] = "codes"
        entry["quant"] = {**info, "num_levels": dec.levels.numel() // d,
                          "scale_shape": list(scale.shape),
                          "scale_encoding": scale_kind}
    entry["hadamard"] = dec.hadamard
    entry["kept"] = kept
    return entry, arrays


def decode(entry: dict, arrays: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight `encode` described, value for value."""
    out_features, in_features = entry["shape"]
    dtype = DTYPES[entry["dtype"]]
    count = out_features * in_features
    sparsity = entry["sparsity"]
    outliers = entry.get("outliers")
    if outliers is not None:  # the codes cover every entry but each row's outliers
        columns = arrays["outlier_columns"].to(torch.int64)
        mask = torch.ones(out_features, in_features, dtype=torch.bool)
        mask.scatter_(1, columns, False)
    elif sparsity is None:
        mask = None
    elif sparsity["kind"] == "nm":
        n, m = sparsity["n"], sparsity["m"]
        groups = count // m
        indices = unpack_bits(arrays["nm_indices"].numpy(), sparsity["index_bits"], groups * n)
        mask = _nm_mask(torch.from_numpy(indices.astype(np.int64)).reshape(groups, n),
                        (out_features, in_features), m)
    elif sparsity["kind"] == "bitmask":
        bits = np.unpackbits(arrays["mask"].numpy(), count=count, bitorder="little")
        mask = torch.from_numpy(bits.astype(bool)).reshape(out_features, in_features)
    else:
        raise ConversionError(f"unknown sparsity kind {sparsity['kind']!r} in the manifest")

    hadamard = entry.get("hadamard", 0)
    if entry["values"] == "raw":
        kept_values = arrays["values"]
    else:
        info = entry["quant"]
        d = int(info.get("vector_dim", 1))
        codes = _unpack_codes(arrays["codes"], info, entry["kept"] // d)
        scale = _decode_scale(info["scale_encoding"], arrays).reshape(info["scale_shape"])
        group = in_features // scale.shape[1]
        # The scale of every weight, then only those of kept entries (row-major, like the codes).
        full_scale = scale.expand(out_features, -1).repeat_interleave(group, dim=1)
        kept_scale = full_scale.reshape(-1) if mask is None else full_scale[mask]
        levels = arrays["levels"].reshape(-1, d)[codes].reshape(-1)  # d-vectors laid end to end
        kept_values = kept_scale * levels  # float32, one rounding
        if not hadamard:
            kept_values = kept_values.to(dtype)
    if mask is None:
        weight = kept_values.reshape(out_features, in_features)
    else:
        weight = torch.zeros(out_features, in_features, dtype=kept_values.dtype)
        weight[mask] = kept_values
    if hadamard:
        from megatron_csl.compression.hadamard import block_hadamard

        weight = block_hadamard(weight, hadamard)
    weight = weight.to(dtype)
    if outliers is not None:
        weight.scatter_(1, columns, arrays["outlier_values"].to(dtype))
    return weight
