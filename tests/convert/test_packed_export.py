"""Packed export of a whole model: exact unpacking, manifest, sizes against bf16."""
import json

import pytest
import torch

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.hf_export import compressed_state
from megatron_csl.convert.packed_export import (MANIFEST, TENSORS_FILE, export_packed, format_size_report,
                                                read_manifest, read_packed)

from .helpers import loaded_model


@pytest.mark.parametrize("compression", ["w4", "s50+w4", "w1.58", "dense", "vq2:2,had64", "w4:out2"])
def test_unpacking_restores_the_compressed_model(tmp_path, compression):
    loaded = loaded_model(compression)
    manifest = export_packed(loaded, tmp_path, progress=False)
    expected = compressed_state(loaded.state_dict(), loaded.dims(), compression, progress=False)
    restored = read_packed(tmp_path)
    assert set(restored) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(restored[name], tensor), name
    on_disk = json.loads((tmp_path / MANIFEST).read_text())
    assert on_disk["compression"] == compression and on_disk["source"]["iteration"] == 7
    kinds = {e["kind"] for e in on_disk["tensors"].values()}
    assert kinds == ({"dense"} if compression == "dense" else {"dense", "compressed"})
    size = manifest["size"]
    assert size["file_bytes"] >= size["total"]["bytes"]
    if compression != "dense":
        lin = size["compressed_linears"]
        assert lin["tensors"] == 8
        # Codes at their bit width: far below 16 bits per weight (rows of 64-128 inputs carry a
        # 32-bit scale, hence the slack).
        assert lin["bits_per_weight"] < {"w4": 4.6, "s50+w4": 3.6, "w1.58": 2.2, "vq2:2,had64": 2.6,
                                         "w4:out2": 5.2}[compression]
        assert lin["ratio_vs_bf16"] > 3
        assert "bits/weight" in format_size_report(manifest)


def test_level_tables_are_stored_once(tmp_path):
    manifest = export_packed(loaded_model("w4"), tmp_path, progress=False)
    keys = {e["arrays"]["levels"] for e in manifest["tensors"].values() if e["kind"] == "compressed"}
    assert keys == {"shared/levels.0"}


def test_manifest_version_is_checked(tmp_path):
    export_packed(loaded_model("w4"), tmp_path, progress=False)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    manifest["format_version"] = 99
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ConversionError, match="format_version 99"):
        read_manifest(tmp_path)
    (tmp_path / TENSORS_FILE).unlink()
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(ConversionError, match="not a packed export"):
        read_packed(tmp_path)
