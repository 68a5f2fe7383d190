"""Write files under a temporary name and rename them into place.

An interrupted tool must never leave a half-written file that looks complete, so every output of
the package (data tools, run directories, fits and plots) goes through these helpers: the
temporary name lives in the same directory (so the final ``os.replace`` is an atomic rename on one
filesystem) and starts with a dot and ends in ``.tmp`` (so it is obviously not a result).
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Iterator, IO


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def temporary_path_for(path: str) -> str:
    """A fresh, unused temporary name next to ``path`` (the file is created empty).

    mkstemp creates files readable by the owner only; they get the permissions a plain ``open``
    would give (0666 minus the umask), so that renamed results are readable as usual.
    """
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    return tmp


@contextmanager
def atomic_writer(path, mode: str = "wb") -> Iterator[IO]:
    """A file object whose content appears at ``path`` only when the block ends without error."""
    tmp = temporary_path_for(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_if_exists(tmp)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str) -> Any:
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def remove_if_exists(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
