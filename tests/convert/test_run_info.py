"""--load resolution and the errors for things that are not a complete megatron-csl checkpoint."""
import json

import pytest

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.run_info import locate_checkpoint, read_run_info

from .helpers import run_doc


def _shards(ckpt):
    """Real torch.distributed.checkpoint shards and .metadata (their sizes are checked)."""
    import warnings

    import torch
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"w": torch.arange(16.0)}, checkpoint_id=str(ckpt), no_dist=True)


def _run_dir(tmp_path, *, latest="7", iters=("iter_0000007",), complete=True, backend="torch_dist"):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(run_doc("w4")))
    for name in iters:
        ckpt = run / "checkpoints" / name
        ckpt.mkdir()
        if complete:
            _shards(ckpt)
            (ckpt / "common.pt").write_bytes(b"x")
            (ckpt / "metadata.json").write_text(json.dumps(
                {"sharded_backend": backend, "sharded_backend_version": 1}))
    if latest is not None:
        (run / "checkpoints" / "latest").write_text(latest + "\n")
    return run


def test_run_dir_checkpoints_dir_and_iter_dir_resolve_alike(tmp_path):
    run = _run_dir(tmp_path)
    for path in (run, run / "checkpoints", run / "checkpoints" / "iter_0000007"):
        loc = locate_checkpoint(path)
        assert loc.iteration == 7 and loc.checkpoint_dir.name == "iter_0000007"
        assert loc.run.compression == "w4" and loc.run.padded_vocab_size == 384


@pytest.mark.parametrize("setup, message", [
    (lambda p: p / "nope", "does not exist"),
    (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is a file"),
    (lambda p: p, "not a megatron-csl run directory"),
])
def test_not_a_run(tmp_path, setup, message):
    with pytest.raises(ConversionError, match=message):
        locate_checkpoint(setup(tmp_path))


@pytest.mark.parametrize("files, kind", [
    (("config.json", "model.safetensors"), "Hugging Face model directory"),
    (("manifest.json", "packed.safetensors"), "packed export"),
    (("model_optim_rng.pt",), "legacy Megatron-LM torch checkpoint"),
])
def test_other_formats_are_named(tmp_path, files, kind):
    for f in files:
        (tmp_path / f).write_text("{}")
    with pytest.raises(ConversionError, match=kind):
        locate_checkpoint(tmp_path)


def test_missing_and_partial_checkpoints(tmp_path):
    run = _run_dir(tmp_path / "a", latest=None)
    with pytest.raises(ConversionError, match="no checkpoints/latest.*iter_0000007 - pass it"):
        locate_checkpoint(run)
    run = _run_dir(tmp_path / "b", latest=None, complete=False)
    with pytest.raises(ConversionError, match="no complete checkpoint.*iter_0000007"):
        locate_checkpoint(run)
    run = _run_dir(tmp_path / "c", latest="9")
    with pytest.raises(ConversionError, match="names iteration 9"):
        locate_checkpoint(run)
    run = _run_dir(tmp_path / "d", complete=False)
    with pytest.raises(ConversionError, match=r"incomplete \(missing metadata.json, common.pt, .metadata\)"):
        locate_checkpoint(run)
    run = _run_dir(tmp_path / "e", backend="zarr")
    with pytest.raises(ConversionError, match="sharded backend 'zarr'"):
        locate_checkpoint(run)
    run = _run_dir(tmp_path / "f")
    (run / "checkpoints").rename(run / "elsewhere")
    with pytest.raises(ConversionError, match="no checkpoints/ directory"):
        locate_checkpoint(run)


def test_damaged_and_interrupted_checkpoints_are_not_called_plain_torch(tmp_path):
    run = _run_dir(tmp_path / "a")
    ckpt = run / "checkpoints" / "iter_0000007"
    (ckpt / "metadata.json").unlink()
    for path in (run, ckpt):
        with pytest.raises(ConversionError, match=r"incomplete \(missing metadata.json\)"):
            locate_checkpoint(path)
    run = _run_dir(tmp_path / "b")
    tmp = run / "checkpoints" / "iter_0000008.tmp"
    (run / "checkpoints" / "iter_0000007").rename(tmp)
    with pytest.raises(ConversionError, match=r"is an interrupted save \(a .tmp directory\)"):
        locate_checkpoint(tmp)
    run = _run_dir(tmp_path / "c")
    shard = next((run / "checkpoints" / "iter_0000007").glob("__0_*.distcp"))
    with open(shard, "r+b") as f:
        f.truncate(10)
    with pytest.raises(ConversionError, match=r"is damaged \(shard __0_.*truncated"):
        locate_checkpoint(run)


def test_run_json_problems_are_named(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ConversionError, match="not valid JSON"):
        read_run_info(tmp_path)
    doc = run_doc()
    del doc["model"]["hidden_size"]
    (tmp_path / "run.json").write_text(json.dumps(doc))
    with pytest.raises(ConversionError, match="no 'model.hidden_size'"):
        read_run_info(tmp_path)
