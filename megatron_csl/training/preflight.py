"""Checks made before any work starts, so a bad input fails in a second with its name instead of
after minutes of training: indexed-dataset consistency, writable outputs, free disk space.

Also ``DiskFullError``: what a save that runs out of space becomes (exit code 1, see errors.py).
"""
import errno
import os
import shutil
import struct
from pathlib import Path
from typing import Iterable

import numpy

from .errors import ConfigError, PretrainError

# megatron-core's indexed dataset (.idx): magic, version <Q, dtype code <B, sequence count <Q,
# document count <Q, then int32 lengths[S], int64 pointers[S] (byte offsets into .bin), int64
# document indices[D].
_IDX_FIXED = 9 + 8 + 1 + 8 + 8


class DataFileError(ConfigError):
    """An indexed dataset's .idx/.bin pair is damaged. Exit code 2."""


class NotWritableError(ConfigError):
    """An output folder cannot be written. Exit code 2."""


class DiskFullError(PretrainError):
    """The disk filled up (ENOSPC/EDQUOT) while writing. Exit code 1; the previous checkpoint is
    intact (saves go to a .tmp directory first), so free space and resume with --load."""

    exit_code = 1


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the chain (megatron's writer re-raises it as RuntimeError
    ``Worker failure: [Errno 28] ...``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "[Errno 28]" in str(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _size(path: str) -> int:
    return os.stat(path).st_size


def check_indexed_dataset(prefix: str, flag: str = "--data-path") -> None:
    """DataFileError unless PREFIX.idx is a whole megatron index and PREFIX.bin holds exactly the
    bytes the index points at (a truncated copy, a wrong file, an empty file are named)."""
    from megatron.core.datasets.indexed_dataset import _INDEX_HEADER, DType

    idx, bin_ = prefix + ".idx", prefix + ".bin"
    idx_size = _size(idx)
    with open(idx, "rb") as f:
        head = f.read(_IDX_FIXED)
    if len(head) < _IDX_FIXED:
        raise DataFileError(f"{flag}: {idx!r} is truncated: {idx_size} bytes, shorter than the "
                            f"{_IDX_FIXED}-byte header of a megatron index (re-run preprocessing)")
    if head[:9] != _INDEX_HEADER:
        raise DataFileError(f"{flag}: {idx!r} is not a megatron indexed-dataset index (its first "
                            f"bytes are {head[:9]!r}, expected {_INDEX_HEADER!r})")
    version, code, n_seq, n_doc = struct.unpack("<QBQQ", head[9:])
    if version != 1:
        raise DataFileError(f"{flag}: {idx!r}: index version {version}, only version 1 is read")
    try:
        itemsize = DType.size(DType.dtype_from_code(code))
    except (ValueError, KeyError):
        raise DataFileError(f"{flag}: {idx!r}: unknown token dtype code {code}") from None
    expected_idx = _IDX_FIXED + 4 * n_seq + 8 * n_seq + 8 * n_doc
    if idx_size != expected_idx:
        raise DataFileError(f"{flag}: {idx!r} is damaged: its header announces {n_seq} sequences "
                            f"and {n_doc} documents ({expected_idx} bytes), but the file has "
                            f"{idx_size} bytes (re-run preprocessing)")
    if n_seq == 0:
        raise DataFileError(f"{flag}: {idx!r} holds no sequences: the dataset is empty")
    lengths = numpy.memmap(idx, dtype=numpy.int32, mode="r", offset=_IDX_FIXED, shape=(n_seq,))
    pointers = numpy.memmap(idx, dtype=numpy.int64, mode="r", offset=_IDX_FIXED + 4 * n_seq,
                            shape=(n_seq,))
    expected_bin = int(pointers[-1]) + int(lengths[-1]) * itemsize
    del lengths, pointers
    bin_size = _size(bin_)
    if bin_size != expected_bin:
        what = "shorter" if bin_size < expected_bin else "longer"
        raise DataFileError(f"{flag}: {bin_!r} is {what} than its index says: expected "
                            f"{expected_bin} bytes, found {bin_size} ({bin_size / expected_bin:.1%});"
                            f" the copy is incomplete or the .bin/.idx pair does not match "
                            f"(re-run preprocessing or copy it again)")


def check_indexed_datasets(prefixes: Iterable[str], flag: str) -> None:
    for prefix in prefixes:
        check_indexed_dataset(prefix, flag)


def check_writable(folder, what: str) -> None:
    """NotWritableError unless ``folder`` (or, if it does not exist yet, its nearest existing
    parent, where it will be created) accepts new files."""
    path = Path(folder)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise NotWritableError(f"{what} {str(path)!r}: {str(probe)!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise NotWritableError(f"{what} {str(path)!r}: {str(probe)!r} is not writable by this "
                               f"user; fix its permissions or choose another folder")


def output_file_problem(path, what: str) -> "str | None":
    """Why a file cannot be written at ``path`` (its folder is checked), or None. For tools that
    print the message and exit 2 before doing any work."""
    folder = Path(path).parent if str(Path(path).parent) else Path(".")
    try:
        check_writable(folder, what)
    except NotWritableError as e:
        return str(e).replace(f"{what} {str(folder)!r}", f"{what} {str(path)!r}", 1)
    if Path(path).is_dir():
        return f"{what} {str(path)!r} is a folder; give a file name"
    return None


def check_free_space(folder, needed_bytes: int, what: str) -> None:
    """ConfigError when the filesystem of ``folder`` has less than ``needed_bytes`` free."""
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise ConfigError(f"{what} {str(folder)!r}: only {free / 2**20:,.0f} MiB free on its "
                          f"filesystem, but about {needed_bytes / 2**20:,.0f} MiB are needed "
                          f"(one checkpoint being written next to the previous one); free space "
                          f"or choose another folder")


def checkpoint_bytes_estimate(n_params_total: int, distributed_optimizer: bool) -> int:
    """About what one fp32 checkpoint takes: weights + Adam's two moments (+ fp32 main params
    with the distributed optimizer), 4 bytes each."""
    return n_params_total * 4 * (4 if distributed_optimizer else 3)


def check_run_outputs(plan) -> None:
    """Writable run directory, checkpoints folder and data cache; room for two checkpoints (the
    one being written and the previous complete one)."""
    run_dir = Path(plan.run_dir)
    check_writable(run_dir, "--run-dir")
    check_writable(plan.save_dir, "checkpoint folder (--save)")
    if not plan.data.mock and plan.data.cache_path:
        check_writable(plan.data.cache_path, "--data-cache-path")
    need = 2 * checkpoint_bytes_estimate(
        plan.n_params_total, bool(plan.config.parallel.use_distributed_optimizer))
    check_free_space(plan.save_dir, need, "checkpoint folder (--save)")


def check_data_files(plan) -> None:
    """Every dataset of the plan: .idx whole, .bin exactly as long as the index says."""
    if plan.data.mock:
        return
    check_indexed_datasets(plan.data.prefixes, "--data-path")
    check_indexed_datasets(plan.data.valid_prefixes, "--valid-data-path")
