"""Store one weight matrix in its compressed form, and restore it exactly.

A compressed weight ``w_hat`` ([out, in]) is described by a `Decomposition`:

* which entries are kept: all, an unstructured bitmask (1 bit per weight), or N:M indices (for each
  group of M consecutive inputs, the positions of its N kept entries, ceil(log2 M) bits each);
* the kept values: either raw floats in the weight's dtype, or integer codes into a table of
  `levels` times a `scale` per row (or per row and input group):
  ``w_hat[r, c] = scale[r, c // group_size] * levels[code]`` computed in float32, cast to the dtype.

`encode` turns a decomposition into named byte/float arrays plus a JSON-able manifest entry;
`decode` inverts it. Codes are packed to ceil(log2(len(levels))) bits (ternary: five per byte).
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
    levels: Optional[torch.Tensor] = None     # float32 [K]
    scale: Optional[torch.Tensor] = None      # float32 [out, G], G input groups of in // G

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
    # Stable argsort puts kept positions (True sorts after False, so negate) first, in order.
    order = torch.argsort((~groups).to(torch.int8), dim=1, stable=True)
    return order[:, :n]


def _nm_mask(indices: torch.Tensor, shape, m: int) -> torch.Tensor:
    groups = torch.zeros(indices.shape[0], m, dtype=torch.bool)
    groups.scatter_(1, indices, True)
    return groups.reshape(shape)


def _pack_codes(codes: torch.Tensor, num_levels: int) -> tuple[np.ndarray, dict]:
    codes = codes.to(torch.uint8).numpy() if num_levels <= 256 else None
    if codes is None:
        raise ConversionError(f"{num_levels} levels do not fit 8-bit codes")
    if num_levels == 3:
        return pack_trits(codes), {"packing": "trits", "bits_per_code": math.log2(3)}
    bits = _index_bits(num_levels)
    return pack_bits(codes, bits), {"packing": "bits", "bits_per_code": bits}


def _unpack_codes(data: torch.Tensor, entry: dict, count: int) -> torch.Tensor:
    data = data.numpy()
    if entry["packing"] == "trits":
        codes = unpack_trits(data, count)
    else:
        codes = unpack_bits(data, int(entry["bits_per_code"]), count)
    return torch.from_numpy(codes.astype(np.int64))


def encode(dec: Decomposition) -> tuple[dict, dict[str, torch.Tensor]]:
    """(manifest entry, {field: tensor}) for `dec`; byte arrays are uint8 tensors."""
    out_features, in_features = dec.shape
    entry: dict = {"shape": [out_features, in_features], "dtype": dtype_name(dec.dtype)}
    arrays: dict[str, torch.Tensor] = {}
    kept = out_features * in_features
    if dec.mask is None:
        entry["sparsity"] = None
    elif dec.nm is not None and dec.nm[0] * _index_bits(dec.nm[1]) <= dec.nm[1]:
        # N:M indices are smaller than (or as small as) a bitmask: 2:4 -> 2 x 2 bits per 4 weights.
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
        entry["sparsity"] = {"kind": "bitmask", "kept": kept}
        if dec.nm is not None:
            entry["sparsity"]["nm"] = list(dec.nm)
    if dec.values is not None:
        if dec.values.numel() != kept:
            raise ConversionError(f"{dec.values.numel()} values for {kept} kept entries")
        arrays["values"] = dec.values.to(dec.dtype).contiguous()
        entry["values"] = "raw"
    else:
        if dec.codes.numel() != kept:
            raise ConversionError(f"{dec.codes.numel()} codes for {kept} kept entries")
        scale = dec.scale.to(torch.float32).reshape(out_features, -1).contiguous()
        if in_features % scale.shape[1]:
            raise ConversionError(f"{scale.shape[1]} scale groups do not divide {in_features} inputs")
        packed, info = _pack_codes(dec.codes, dec.levels.numel())
        arrays["codes"] = torch.from_numpy(packed)
        arrays["scale"] = scale
        arrays["levels"] = dec.levels.to(torch.float32).contiguous()
        entry["values"] = "codes"
        entry["quant"] = {**info, "num_levels": dec.levels.numel(), "scale_groups": scale.shape[1]}
    entry["kept"] = kept
    entry["bytes"] = sum(a.numel() * a.element_size() for a in arrays.values())
    return entry, arrays


def decode(entry: dict, arrays: dict[str, torch.Tensor]) -> torch.Tensor:
    """The weight `encode` described, bit for bit."""
    out_features, in_features = entry["shape"]
    dtype = DTYPES[entry["dtype"]]
    count = out_features * in_features
    sparsity = entry["sparsity"]
    if sparsity is None:
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

    if entry["values"] == "raw":
        kept_values = arrays["values"]
    else:
        codes = _unpack_codes(arrays["codes"], entry["quant"], entry["kept"])
        scale = arrays["scale"]
        group = in_features // scale.shape[1]
        # The scale of every weight, then only those of kept entries (row-major, like the codes).
        full_scale = scale.repeat_interleave(group, dim=1)
        kept_scale = full_scale.reshape(-1) if mask is None else full_scale[mask]
        kept_values = (kept_scale * arrays["levels"][codes]).to(dtype)
    if mask is None:
        return kept_values.reshape(out_features, in_features).to(dtype)
    weight = torch.zeros(out_features, in_features, dtype=dtype)
    weight[mask] = kept_values.to(dtype)
    return weight
