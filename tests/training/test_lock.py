"""One process per run directory: the flock-based run-directory lock."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_csl.training import run_pretrain
from megatron_csl.training.lock import RUN_LOCK, RunDirLock, RunDirLockedError, read_holder

from .helpers import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from megatron_csl.training.lock import RunDirLock; "
        "lock = RunDirLock(sys.argv[1], sys.argv[2]).acquire(); print('held', flush=True); "
        "time.sleep(60)")


def hold_lock(run_dir, name=RUN_LOCK):
    """Another process holding the lock; returns it once the lock is taken."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), name], cwd=REPO,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_refuses_a_second_process_naming_the_holder(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunDirLockedError) as err:
            RunDirLock(tmp_path).acquire()
        message = str(err.value)
        assert f"PID {holder.pid}" in message and socket.gethostname() in message
        assert RunDirLockedError.exit_code == 2
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_process_is_free_and_reported(tmp_path, capsys):
    holder = hold_lock(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert read_holder(tmp_path / RUN_LOCK)["pid"] == holder.pid   # the stale record stays...
    with RunDirLock(tmp_path) as lock:                           # ...but does not block
        assert lock.held and read_holder(tmp_path / RUN_LOCK)["pid"] == os.getpid()
        assert f"PID {holder.pid}" in capsys.readouterr().err
    assert read_holder(tmp_path / RUN_LOCK) is None              # a clean release empties it
    with RunDirLock(tmp_path):
        assert "previous holder" not in capsys.readouterr().err


def test_pretrain_on_a_locked_run_dir_exits_2_naming_the_holder(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = hold_lock(run_dir)
    try:
        argv = TINY_MODEL + ["--vocab-size", "256", "--train-iters", "2", "--lr", "1e-3",
                             "--mock-data", "--no-tensorboard", "--run-dir", str(run_dir)]
        assert run_pretrain(argv) == 2
        err = capsys.readouterr().err
        assert "is in use by" in err and f"PID {holder.pid}" in err
        assert not (run_dir / "run.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone the same command runs, and releases the lock when it returns.
    assert run_pretrain(argv) == 0
    assert json.loads((run_dir / "result.json").read_text())["status"] == "finished"
    RunDirLock(run_dir).acquire().release()


def test_a_read_only_run_dir_is_a_named_error(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores permissions")
    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    try:
        argv = TINY_MODEL + ["--vocab-size", "256", "--train-iters", "2", "--lr", "1e-3",
                             "--mock-data", "--no-tensorboard", "--run-dir", str(run_dir)]
        assert run_pretrain(argv) == 2
        assert "is not writable" in capsys.readouterr().err
    finally:
        run_dir.chmod(0o755)


def test_a_forked_child_does_not_keep_the_lock(tmp_path):
    """A checkpoint writer forked while the lock is held must not hold it after the holder."""
    lock = RunDirLock(tmp_path).acquire()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                      # the child: outlives the holder's release
        os.close(read)
        os.write(write, b"x")
        time.sleep(3)
        os._exit(0)
    try:
        os.close(write)
        assert os.read(read, 1) == b"x"
        lock.release()
        RunDirLock(tmp_path).acquire().release()   # free although the child still lives
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
