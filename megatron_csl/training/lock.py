"""One process per run directory: an advisory ``fcntl.flock`` on a lock file inside it.

The trainer (global rank 0) holds ``RUN_DIR/run.lock`` for its whole life; the local sweep
executor holds ``RUN_DIR/submit.lock`` from before it starts a run until that run is done (its
requeues included), so two ``launch/sweep.py submit`` started close together cannot both start it.
Two files, because a flock taken by the executor would refuse the trainer it starts.

The kernel drops a flock when its holder exits in any way (kill -9 included), so a lock left by a
dead process never blocks anyone: there is nothing stale to clean up. The file records the
holder's PID, host and start time, only to name it in the error. A holder that exits normally
empties the file; content found when taking a free lock therefore means its holder died, which
is reported as a note.

flock works on local disks and on NFSv4/Lustre mounted with ``flock``; on a filesystem without
it, ``flock`` fails with ENOLCK/EOPNOTSUPP and the lock is skipped with a warning (a run that
cannot lock is still better than no run).
"""
import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Optional

from .errors import ConfigError

RUN_LOCK = "run.lock"
SUBMIT_LOCK = "submit.lock"

# Lock file descriptors held by this process. A forked child (checkpoint writer, data worker)
# would share the lock through its copy of the descriptor and keep it alive after the holder
# released it or died, so children close their copies right after the fork.
_held_fds = set()


def _close_inherited_locks() -> None:
    for fd in list(_held_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _held_fds.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


class RunDirLockedError(ConfigError):
    """Another live process holds this run directory. Exit code 2 (ConfigError)."""


def _describe(holder: Optional[dict]) -> str:
    if not holder:
        return "an unknown process (its lock file names no holder yet)"
    what = holder.get("what") or "a process"
    return (f"{what} with PID {holder.get('pid')} on host {holder.get('host')!r} "
            f"(since {holder.get('since')})")


def read_holder(path: Path) -> Optional[dict]:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    try:
        holder = json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


class RunDirLock:
    """``with RunDirLock(run_dir, RUN_LOCK, "training"):`` or ``acquire()`` / ``release()``."""

    def __init__(self, run_dir, name: str = RUN_LOCK, what: str = "a training process"):
        self.path = Path(run_dir) / name
        self.what = what
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunDirLock":
        """Take the lock at once or raise RunDirLockedError naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirLockedError(
                f"run directory {str(self.path.parent)!r} is in use by {_describe(read_holder(self.path))}"
                f" (lock {self.path}); wait for it to finish or stop it, or choose another "
                f"--run-dir") from None
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                print(f"[pretrain] warning: {self.path}: this filesystem does not support flock "
                      f"({e.strerror}); running without a run-directory lock", file=sys.stderr,
                      flush=True)
                os.close(fd)
                return self
            os.close(fd)
            raise
        previous = read_holder(self.path)
        if previous and previous.get("pid") != os.getpid():
            print(f"[pretrain] note: the previous holder of {self.path}, {_describe(previous)}, "
                  f"exited without releasing it (killed?); its lock died with it",
                  file=sys.stderr, flush=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
              "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        self._fd = fd
        _held_fds.add(fd)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)   # an empty file: released cleanly
        except OSError:
            pass
        _held_fds.discard(self._fd)
        os.close(self._fd)            # closing drops the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
