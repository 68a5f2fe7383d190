"""Write an output directory all-or-nothing.

Everything goes to a hidden temporary directory next to the destination (same filesystem, so the
final `os.rename` is atomic); the destination appears only once every file is complete. On any
exception the temporary directory is removed and the destination is left untouched. Missing parent
directories of the destination are created (like ``mkdir -p``), and the result gets the permissions
any other tool's output gets (directories 0777 and files 0666, minus the umask), not the owner-only
ones `tempfile.mkdtemp` gives.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from megatron_csl.atomic import _current_umask
from megatron_csl.convert.errors import ConversionError


def check_output_dir(output: str | os.PathLike) -> Path:
    """Validate `output` before any work: it must not exist (or be an empty directory), and its
    nearest existing ancestor must be a writable directory (missing parents are created later)."""
    output = Path(output).absolute()
    if output.exists() and not (output.is_dir() and not any(output.iterdir())):
        raise ConversionError(f"--output {output} already exists and is not an empty directory; "
                              "choose a new path (the converter never overwrites)")
    ancestor = output.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConversionError(f"--output {output}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK):
        raise ConversionError(f"--output {output}: directory {ancestor} is not writable")
    return output


def give_default_permissions(root: Path) -> None:
    """chmod `root` and everything under it as `mkdir`/`open` would have created them: 0777 for
    directories and 0666 for files (0777 when executable), minus the umask."""
    umask = _current_umask()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            mode = 0o777
        else:
            mode = 0o777 if path.stat().st_mode & 0o100 else 0o666
        os.chmod(path, mode & ~umask)


@contextlib.contextmanager
def staged_output_dir(output: str | os.PathLike):
    """Yield a temporary directory; on success rename it to `output`, on failure delete it."""
    output = check_output_dir(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        yield tmp
        give_default_permissions(tmp)
        if output.exists():  # an empty directory (checked above); rename cannot replace it portably
            output.rmdir()
        os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
