"""Processes the trainer forks die with it.

megatron's checkpoint writer forks one process per write bucket (each holding a copy of the
training process's memory, hundreds of MB); the data loader forks workers. If the trainer is
killed with SIGKILL mid-save, a forked child that is asleep on a queue would otherwise stay alive
for minutes, holding memory and the run directory's lock. ``die_with_parent`` registers a fork
hook that asks Linux (prctl PR_SET_PDEATHSIG) to SIGKILL every child forked from now on when its
parent dies. Processes started with exec (subprocess) are not affected. A no-op off Linux.
"""
import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
_installed = False


def _set_pdeathsig(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The parent may have died between fork and prctl: then no signal will come.
    if os.getppid() != parent_pid:
        os._exit(1)


def die_with_parent() -> None:
    """From now on, every process this process forks is killed when it dies (idempotent)."""
    global _installed
    if _installed or not sys.platform.startswith("linux"):
        return
    parent = {"pid": os.getpid()}

    def before():
        parent["pid"] = os.getpid()

    os.register_at_fork(before=before, after_in_child=lambda: _set_pdeathsig(parent["pid"]))
    _installed = True
