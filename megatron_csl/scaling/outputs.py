"""Atomic file writes: a temporary name in the same directory, then ``os.replace``.

An interrupted tool never leaves a half-written file that looks complete.
"""
from __future__ import annotations

import json

from megatron_csl.atomic import atomic_write_text, atomic_writer


def write_text(path, text: str) -> None:
    atomic_write_text(path, text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_figure(fig, path) -> None:
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
