"""Forked children (megatron's checkpoint writers, data workers) die with a killed trainer."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
PARENT = """
import multiprocessing, sys, time
from megatron_csl.training.child_processes import die_with_parent
if sys.argv[1] == "on":
    die_with_parent()
child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
child.start()
print(child.pid, flush=True)
time.sleep(120)
"""


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def fork_then_kill_parent(mode: str) -> int:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    return child


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_a_forked_child_dies_with_its_killed_parent():
    child = fork_then_kill_parent("on")
    deadline = time.time() + 10
    while not gone(child):
        assert time.time() < deadline, f"child {child} outlived its killed parent"
        time.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux only")
def test_without_it_the_child_would_stay_behind():
    """The control: the same fork without die_with_parent survives the parent."""
    child = fork_then_kill_parent("off")
    try:
        time.sleep(1.0)
        assert not gone(child)
    finally:
        os.kill(child, signal.SIGKILL)
