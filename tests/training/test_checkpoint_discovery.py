"""Finding the newest complete checkpoint: partial, interrupted and damaged saves are never
picked."""
import warnings as warnings_mod
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.training.checkpoint_integrity import DamagedCheckpointError, damage
from megatron_csl.training.checkpointing import (LATEST_FILE, checkpoint_dirname,
                                                 complete_checkpoints, find_latest, read_latest,
                                                 write_latest)


def make_checkpoint(root: Path, step: int, complete=True, suffix=""):
    """A real torch.distributed.checkpoint directory (shards + .metadata) with our common.pt and,
    when complete, megatron's metadata.json written last."""
    import torch.distributed.checkpoint as dcp

    d = root / (checkpoint_dirname(step) + suffix)
    d.mkdir(parents=True)
    with warnings_mod.catch_warnings():
        warnings_mod.simplefilter("ignore")
        dcp.save({"w": torch.arange(64.0) + step}, checkpoint_id=str(d), no_dist=True)
    (d / "common.pt").write_bytes(b"x")
    if complete:
        (d / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    return d


def test_names_and_latest_file(tmp_path):
    assert checkpoint_dirname(100) == "iter_0000100"
    assert find_latest(tmp_path / "nothing") is None
    write_latest(tmp_path, 42)
    assert read_latest(tmp_path) == 42
    assert (tmp_path / LATEST_FILE).read_text() == "42\n"


def test_latest_points_at_a_complete_checkpoint(tmp_path):
    make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 20)
    write_latest(tmp_path, 10)          # e.g. the newer one belongs to a run since rolled back
    assert find_latest(tmp_path) == (10, tmp_path / "iter_0000010")


def test_interrupted_save_is_ignored(tmp_path):
    make_checkpoint(tmp_path, 10)
    write_latest(tmp_path, 10)
    make_checkpoint(tmp_path, 20, complete=False, suffix=".tmp")   # killed while writing
    make_checkpoint(tmp_path, 30, complete=False)                  # incomplete, renamed by hand
    assert find_latest(tmp_path) == (10, tmp_path / "iter_0000010")


def test_stale_or_garbled_latest_falls_back_to_newest_complete(tmp_path):
    warnings = []
    make_checkpoint(tmp_path, 5)
    make_checkpoint(tmp_path, 15)
    make_checkpoint(tmp_path, 25, complete=False)
    write_latest(tmp_path, 25)
    assert find_latest(tmp_path, warn=warnings.append) == (15, tmp_path / "iter_0000015")
    (tmp_path / LATEST_FILE).write_text("garbage")
    assert find_latest(tmp_path, warn=warnings.append) == (15, tmp_path / "iter_0000015")
    assert len(warnings) == 2 and "incomplete" in warnings[0] and "unreadable" in warnings[1]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 10**6), st.sampled_from(["ok", "partial", "tmp"])),
                max_size=8, unique_by=lambda t: t[0]),
       st.one_of(st.none(), st.integers(1, 10**6)))
def test_the_pick_is_always_a_complete_checkpoint(tmp_path_factory, entries, latest):
    root = tmp_path_factory.mktemp("ckpt")
    for step, kind in entries:
        make_checkpoint(root, step, complete=kind != "partial" and kind != "tmp",
                        suffix=".tmp" if kind == "tmp" else "")
    if latest is not None:
        write_latest(root, latest)
    picked = find_latest(root, warn=lambda m: None)
    complete = sorted(s for s, kind in entries if kind == "ok")
    if latest in complete:
        assert picked[0] == latest
    elif complete:
        assert picked[0] == complete[-1]
    else:
        assert picked is None
    assert [s for s, _ in complete_checkpoints(root)] == complete


@pytest.mark.parametrize("how", ["missing", "truncated", "metadata"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, how):
    make_checkpoint(tmp_path, 10)
    newest = make_checkpoint(tmp_path, 20)
    write_latest(tmp_path, 20)
    shard = next(newest.glob("__0_*.distcp"))
    if how == "missing":
        shard.unlink()
    elif how == "truncated":
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size // 2)
    else:
        (newest / ".metadata").write_bytes(b"garbage")
    assert damage(newest) is not None and damage(tmp_path / "iter_0000010") is None
    warnings = []
    assert find_latest(tmp_path, warn=warnings.append) == (10, tmp_path / "iter_0000010")
    assert any("iter_0000020 is damaged" in w for w in warnings)


def test_every_checkpoint_damaged_is_a_named_error(tmp_path):
    for step in (10, 20):
        next(make_checkpoint(tmp_path, step).glob("__0_*.distcp")).unlink()
    with pytest.raises(DamagedCheckpointError, match="every checkpoint under .* is damaged"):
        find_latest(tmp_path, warn=lambda m: None)
