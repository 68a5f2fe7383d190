"""Write an output directory all-or-nothing.

Everything goes to a hidden temporary directory next to the destination (same filesystem, so the
final `os.rename` is atomic); the destination appears only once every file is complete. On any
exception the temporary directory is removed and the destination is left untouched.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from megatron_csl.convert.errors import ConversionError


def check_output_dir(output: str | os.PathLike) -> Path:
    """Validate `output` before any work: it must not exist (or be an empty directory) and its
    parent must be a writable directory."""
    output = Path(output).absolute()
    if output.exists() and not (output.is_dir() and not any(output.iterdir())):
        raise ConversionError(f"--output {output} already exists and is not an empty directory; "
                              "choose a new path (the converter never overwrites)")
    parent = output.parent
    if not parent.is_dir():
        raise ConversionError(f"--output {output}: parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConversionError(f"--output {output}: parent directory {parent} is not writable")
    return output


@contextlib.contextmanager
def staged_output_dir(output: str | os.PathLike):
    """Yield a temporary directory; on success rename it to `output`, on failure delete it."""
    output = check_output_dir(output)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        yield tmp
        if output.exists():  # an empty directory (checked above); rename cannot replace it portably
            output.rmdir()
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
