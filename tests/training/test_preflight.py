"""Checks before training: damaged indexed datasets, unwritable outputs, free disk space; a disk
that fills up during a save is a named error."""
import collections
import errno
import os
import shutil

import pytest

from megatron_csl.training import run_pretrain
from megatron_csl.training import checkpointing, preflight
from megatron_csl.training.preflight import DataFileError, check_indexed_dataset, is_disk_full

from .helpers import TINY_MODEL, random_documents, write_indexed_dataset

RUN = TINY_MODEL + ["--vocab-size", "256", "--train-iters", "3", "--lr", "1e-3",
                    "--lr-warmup-iters", "0", "--micro-batch-size", "2", "--global-batch-size",
                    "4", "--eval-interval", "3", "--eval-iters", "1", "--no-tensorboard"]


@pytest.fixture
def dataset(tmp_path):
    return write_indexed_dataset(tmp_path / "d_text_document", random_documents(60, 256, seed=5))


def cut(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize("fraction", [0.5, 0.95, "one byte"])
def test_a_short_bin_names_the_file_and_both_sizes(dataset, fraction):
    full = os.path.getsize(dataset + ".bin")
    size = full - 1 if fraction == "one byte" else int(full * fraction)
    cut(dataset + ".bin", size)
    with pytest.raises(DataFileError) as err:
        check_indexed_dataset(dataset)
    message = str(err.value)
    assert dataset + ".bin" in message and f"expected {full} bytes, found {size}" in message


@pytest.mark.parametrize("damage, message", [
    (lambda p: cut(p, 20), "is truncated: 20 bytes"),
    (lambda p: cut(p, 0), "is truncated: 0 bytes"),
    (lambda p: cut(p, os.path.getsize(p) - 8), "is damaged: its header announces"),
    (lambda p: open(p, "r+b").write(b"NOTANIDX!"), "is not a megatron indexed-dataset index"),
])
def test_a_damaged_idx_is_named(dataset, damage, message):
    damage(dataset + ".idx")
    with pytest.raises(DataFileError, match=message):
        check_indexed_dataset(dataset)


def test_an_intact_dataset_passes(dataset):
    check_indexed_dataset(dataset)


def test_a_95_percent_bin_fails_at_start_up_not_during_training(dataset, tmp_path, capsys):
    cut(dataset + ".bin", int(os.path.getsize(dataset + ".bin") * 0.95))
    run_dir = tmp_path / "run"
    argv = RUN + ["--data-path", dataset, "--split", "90,10,0", "--run-dir", str(run_dir)]
    assert run_pretrain(argv) == 2
    err = capsys.readouterr().err
    assert "is shorter than its index says" in err and "Traceback" not in err
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()


def test_too_little_free_space_is_refused_before_training(tmp_path, capsys, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1000))
    assert run_pretrain(RUN + ["--mock-data", "--run-dir", str(tmp_path / "run")]) == 2
    assert "MiB free on its filesystem" in capsys.readouterr().err


def test_a_disk_full_during_a_save_is_a_named_error(tmp_path, capsys, monkeypatch):
    def full(*args, **kwargs):
        # What megatron's checkpoint writer raises when a worker hits ENOSPC.
        raise RuntimeError("Worker failure: [Errno 28] No space left on device")

    monkeypatch.setattr(checkpointing, "save_checkpoint", full)
    run_dir = tmp_path / "run"
    assert run_pretrain(RUN + ["--mock-data", "--run-dir", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "filled up while saving the checkpoint" in err and "resume with --load" in err
    assert not (run_dir / "result.json").exists()


def test_disk_full_is_found_anywhere_in_the_exception_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert is_disk_full(outer)
    assert not is_disk_full(RuntimeError("something else"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))


def test_unwritable_outputs_are_named(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(preflight.NotWritableError, match="is not writable"):
            preflight.check_writable(ro / "new" / "deeper", "--run-dir")
    finally:
        ro.chmod(0o755)


def test_a_file_in_the_way_of_an_output_folder_is_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(preflight.NotWritableError, match="is not a folder"):
        preflight.check_writable(tmp_path / "file" / "sub", "--run-dir")
