"""Atomic file writes: a temporary name in the same directory, then ``os.replace``.

An interrupted tool never leaves a half-written file that looks complete.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _atomic(path, write, mode="w"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    _atomic(path, lambda f: f.write(text))


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_figure(fig, path) -> None:
    _atomic(path, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
