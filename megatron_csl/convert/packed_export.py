"""The packed export: compressed linears stored at their real bit width, plus a JSON manifest.

Directory layout::

    packed.safetensors   every array, keyed "<tensor name>/<field>" (shared tables "shared/...")
    manifest.json        format, version, compression, source run, one entry per tensor, sizes

A compressed linear's entry describes its storage (`packed_codec`): sparsity (bitmask / N:M
indices), values (raw floats, or codes packed to ``bits_per_code`` bits with levels and scales),
the Hadamard block if any. Everything else (embeddings, norms, output layer, and the linears of a
dense model) is stored as-is ("dense"). `read_packed` restores the megatron state dict; for
compressed linears it equals ``spec.compress_weight(master)`` exactly (checked while packing).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.hf_llama import compressed_linear_names
from megatron_csl.convert.packed_codec import SHARED_FIELDS, array_bytes, decode, dtype_name, encode
from megatron_csl.convert.weight_codes import decompose

FORMAT = "megatron-csl-packed"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS_FILE = "packed.safetensors"
RECONSTRUCTION = (
    "kept entries: value = float32(scale[r, c // (in / scale_shape[1])] * levels[code]) "
    "(scale rows broadcast when scale_shape[0] == 1); codes little-endian bit-packed at "
    "bits_per_code bits (ternary: 5 codes per byte, base 3, first code least significant); "
    "scale_encoding float32 | e8m0 (2^(code-127), code 255 = 0) | factor_x_row "
    "(scale_table[scale_codes] * scale_row); with hadamard > 0 the float32 matrix is multiplied "
    "by blockdiag(H) (orthonormal Sylvester Hadamard of that size) along the input dimension; "
    "then cast to dtype. Sparsity: bitmask = one bit per weight (row-major, little-endian), "
    "nm = for each group of m consecutive inputs the n kept positions (index_bits each, "
    "ascending); pruned entries are 0; kept values/codes are in row-major order.")


def _key(name: str, field: str) -> str:
    return f"{name}/{field}"


class _SharedTables:
    """Content-addressed store so that e.g. the 16 levels of w4 are written once per file."""

    def __init__(self):
        self.by_digest: dict[str, str] = {}
        self.arrays: dict[str, torch.Tensor] = {}

    def key_for(self, field: str, array: torch.Tensor) -> str:
        digest = hashlib.sha256(array.numpy().tobytes() + str(array.dtype).encode()).hexdigest()[:16]
        if digest not in self.by_digest:
            key = f"shared/{field}.{len(self.by_digest)}"
            self.by_digest[digest] = key
            self.arrays[key] = array
        return self.by_digest[digest]


def _size_summary(entries: dict, shared_bytes: int) -> dict:
    def total(kind, field):
        return sum(e[field] for e in entries.values() if e["kind"] == kind)

    lin_bytes, lin_bf16 = total("compressed", "bytes"), total("compressed", "bf16_bytes")
    dense_bytes, dense_bf16 = total("dense", "bytes"), total("dense", "bf16_bytes")
    lin_numel = sum(e["numel"] for e in entries.values() if e["kind"] == "compressed")
    packed = lin_bytes + dense_bytes + shared_bytes
    bf16 = lin_bf16 + dense_bf16
    return {
        "compressed_linears": {"tensors": sum(e["kind"] == "compressed" for e in entries.values()),
                               "weights": lin_numel, "bytes": lin_bytes, "bf16_bytes": lin_bf16,
                               "bits_per_weight": 8 * lin_bytes / lin_numel if lin_numel else None,
                               "ratio_vs_bf16": lin_bf16 / lin_bytes if lin_bytes else None},
        "dense_tensors": {"bytes": dense_bytes, "bf16_bytes": dense_bf16},
        "shared_tables_bytes": shared_bytes,
        "total": {"bytes": packed, "bf16_bytes": bf16, "ratio_vs_bf16": bf16 / packed if packed else None},
    }


def pack_state(state: dict[str, torch.Tensor], compressed_names: list[str], compression: str,
               *, progress: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(manifest tensors + sizes, arrays) for a full megatron state dict."""
    from megatron_csl.compression import parse_spec

    spec = parse_spec(compression)
    compress = set(compressed_names) if spec.compresses_weights else set()
    missing = sorted(compress - set(state))
    if missing:
        raise ConversionError(f"state dict lacks the compressed linears {missing[:3]}")
    shared = _SharedTables()
    arrays: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    for name in tqdm(list(state), desc=f"pack {spec.canonical}", disable=not progress, leave=False):
        tensor = state[name].detach().cpu()
        if name in compress:
            dec, _ = decompose(spec, tensor)
            entry, fields = encode(dec)
            entry = {"kind": "compressed", **entry, "arrays": {}}
            own = 0
            for field, array in fields.items():
                if field in SHARED_FIELDS:
                    entry["arrays"][field] = shared.key_for(field, array)
                else:
                    entry["arrays"][field] = _key(name, field)
                    arrays[_key(name, field)] = array
                    own += array.numel() * array.element_size()
            entry["bytes"] = own
        else:
            dtype_name(tensor.dtype)  # refuses dtypes the format does not describe
            entry = {"kind": "dense", "shape": list(tensor.shape), "dtype": dtype_name(tensor.dtype),
                     "arrays": {"values": _key(name, "values")}, "bytes": tensor.numel() * tensor.element_size()}
            arrays[_key(name, "values")] = tensor.contiguous()
        entry["numel"] = tensor.numel()
        entry["bf16_bytes"] = 2 * tensor.numel()
        entries[name] = entry
    arrays.update(shared.arrays)
    return {"tensors": entries, "size": _size_summary(entries, array_bytes(shared.arrays))}, arrays


def export_packed(loaded, output_dir: Path, *, progress: bool = True) -> dict:
    """Write the packed export of `loaded` (a `loading.LoadedModel`) into `output_dir` (an
    existing, empty staging directory). Returns the manifest."""
    from safetensors.torch import save_file

    run = loaded.run
    packed, arrays = pack_state(loaded.state_dict(), compressed_linear_names(loaded.dims()),
                                run.compression, progress=progress)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "compression": run.compression,
        "source": {"run": run.raw.get("name"), "run_dir": str(run.run_dir),
                   "iteration": loaded.location.iteration},
        "model": run.raw.get("model"),
        "reconstruction": RECONSTRUCTION,
        **packed,
    }
    output_dir = Path(output_dir)
    save_file(arrays, str(output_dir / TENSORS_FILE), metadata={"format": FORMAT})
    manifest["size"]["file_bytes"] = os.path.getsize(output_dir / TENSORS_FILE)
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path} not found: not a packed export") from None
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path} is not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise ConversionError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ConversionError(f"{path}: format_version {manifest.get('format_version')!r}; this code "
                              f"reads version {FORMAT_VERSION}")
    return manifest


def read_packed(directory: Path, names: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
    """Unpack a packed export into a megatron state dict (compressed linears dequantized)."""
    from safetensors.torch import load_file

    manifest = read_manifest(directory)
    arrays = load_file(str(Path(directory) / TENSORS_FILE))
    out = {}
    for name, entry in manifest["tensors"].items():
        if names is not None and name not in names:
            continue
        fields = {field: arrays[key] for field, key in entry["arrays"].items()}
        out[name] = fields["values"] if entry["kind"] == "dense" else decode(entry, fields)
    return out


def format_size_report(manifest: dict) -> str:
    """Human-readable size lines for the CLI."""
    size = manifest["size"]
    lin, tot = size["compressed_linears"], size["total"]
    lines = [f"compression {manifest['compression']}"]
    if lin["tensors"]:
        lines.append(f"compressed linears: {lin['weights']:,} weights in {lin['bytes']:,} bytes "
                     f"({lin['bits_per_weight']:.3f} bits/weight) vs {lin['bf16_bytes']:,} bytes in bf16 "
                     f"({lin['ratio_vs_bf16']:.2f}x smaller)")
    else:
        lines.append("no compressed linears (dense model): every tensor stored as-is")
    lines.append(f"other tensors (embeddings, norms, output layer) as stored: "
                 f"{size['dense_tensors']['bytes']:,} bytes (bf16: {size['dense_tensors']['bf16_bytes']:,})")
    lines.append(f"whole model: {tot['bytes']:,} bytes vs {tot['bf16_bytes']:,} in bf16 "
                 f"({tot['ratio_vs_bf16']:.2f}x); {TENSORS_FILE} on disk: {size['file_bytes']:,} bytes")
    return "\n".join(lines)
