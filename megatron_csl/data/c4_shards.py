"""Reading C4-format shards: gzip (or plain) JSON Lines with a ``text`` field per line.

C4 (allenai/c4) ships ``en/c4-train.NNNNN-of-01024.json.gz``: gzip-compressed JSON Lines whose
objects have ``text``, ``timestamp`` and ``url``. This module finds shards from glob patterns,
reads them line by line in batches (with the compressed byte position, for progress bars), and
decodes the text field, classifying every line that is not a usable document.

Lines are split on ``\\n`` only (binary iteration), so a line number here is the same line number
``zcat shard | sed -n Np`` shows.
"""
from __future__ import annotations

import glob
import gzip
import itertools
import json
import os
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

try:  # ISA-L's inflate reads C4 shards about 3x faster than zlib (same file format)
    from isal import igzip as _gzip
    from isal.igzip_lib import IsalError as _InflateError   # its error for corrupt deflate data
except ImportError:  # pragma: no cover - exercised only where isal is missing
    _gzip = gzip
    _InflateError = zlib.error

try:  # orjson decodes C4 lines about 3x faster than the standard library
    import orjson

    _loads = orjson.loads
    _STRICT_UNICODE = True  # orjson rejects lone surrogates itself
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    _loads = json.loads
    _STRICT_UNICODE = False

#: File name endings accepted as shards. ``.json`` is JSON Lines too (C4's own naming).
SUPPORTED_SUFFIXES = (".json.gz", ".jsonl.gz", ".jsonl", ".json")

# gzip/zlib/ISA-L raise these for truncated or corrupt streams; OSError covers BadGzipFile.
_READ_ERRORS = (EOFError, OSError, zlib.error, _InflateError)


class ShardReadError(RuntimeError):
    """A shard could not be read (missing, truncated gzip, corrupt data). Names the shard."""


class MalformedLineError(ValueError):
    """A line is not a usable document and ``strict`` mode was requested."""


@dataclass
class Malformed:
    """One line that is not a usable document: 1-based line number and why."""

    line: int
    reason: str


@dataclass
class DecodedBatch:
    texts: List[str]
    malformed: List[Malformed] = field(default_factory=list)
    blank_lines: int = 0


@dataclass
class LineBatch:
    first_line: int  # 0-based index of lines[0] in the shard
    lines: List[bytes]
    compressed_position: int  # bytes of the shard file consumed so far (for progress)
    compressed_start: int = 0  # bytes consumed before line ``start`` of the range was reached


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Shard paths for glob patterns, in the order given (each pattern's matches sorted).

    Raises ValueError naming a pattern that matches nothing or a file with an unsupported name.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise ValueError("no --input given; pass a glob such as 'c4/en/c4-train.*.json.gz'")
    seen = set()
    paths: List[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        matches = [m for m in matches if not os.path.isdir(m)]
        if not matches:
            raise ValueError(f"input {pattern!r} matches no files")
        for path in matches:
            if not path.endswith(SUPPORTED_SUFFIXES):
                raise ValueError(
                    f"input file {path!r} has an unsupported name; shards must end in "
                    f"{', '.join(SUPPORTED_SUFFIXES)}"
                )
            key = os.path.abspath(path)
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths


def is_gzip_path(path: str) -> bool:
    return path.endswith(".gz")


def open_shard(path: str) -> BinaryIO:
    """Open a shard for binary line iteration (gzip-decompressing ``.gz`` files)."""
    try:
        if is_gzip_path(path):
            return _gzip.open(path, "rb")
        return open(path, "rb")
    except OSError as e:
        raise ShardReadError(f"cannot open shard {path}: {e}") from e


def _compressed_position(f) -> int:
    # GzipFile.fileobj is the underlying compressed file; for plain files the raw position
    # runs ahead of the line iterator by at most one buffer, which is fine for a progress bar.
    raw = getattr(f, "fileobj", None) or getattr(f, "raw", None) or f
    return raw.tell()


def _read_error(path: str, after_line: int, error: BaseException) -> ShardReadError:
    kind = "gzip stream is truncated or corrupt" if is_gzip_path(path) else "read failed"
    return ShardReadError(f"shard {path}: {kind} after line {after_line} ({error})")


def iter_line_batches(
    path: str,
    start: int = 0,
    stop: Optional[int] = None,
    batch_lines: int = 1024,
    batch_bytes: int = 8 << 20,
    by: str = "line",
) -> Iterator[LineBatch]:
    """The lines of a shard in ``[start, stop)``, in batches of at most ``batch_lines`` lines or
    ``batch_bytes`` bytes.

    ``by="line"``: ``start``/``stop`` are line indices. ``by="byte"``: they are offsets in the
    uncompressed text and the range holds the lines that *begin* at an offset in it; consecutive
    byte ranges therefore split a shard into parts without knowing its line count, and any
    boundaries give every line to exactly one part.

    A truncated or corrupt gzip raises ShardReadError naming the shard once the damaged part is
    read (damage beyond ``stop`` is never read, so it is not seen).
    """
    if by not in ("line", "byte"):
        raise ValueError(f"by must be 'line' or 'byte', got {by!r}")
    with open_shard(path) as f:
        index = 0  # line index of the next line
        position = 0  # uncompressed offset of the next line (tracked in byte mode)
        lines: List[bytes] = []
        try:
            if start and by == "line":
                # islice skips lines in C without building them into a batch
                index = sum(1 for _ in itertools.islice(f, start))
                if index < start:
                    return
            elif start:
                # read up to the byte before the range, then finish the line that holds it:
                # that line began before the range, the next one begins inside it
                remaining = start - 1
                while remaining > 0:
                    chunk = f.read(min(remaining, 1 << 20))
                    if not chunk:
                        return
                    index += chunk.count(b"\n")
                    remaining -= len(chunk)
                tail = f.readline()
                if not tail.endswith(b"\n"):
                    return  # the shard ends inside (or right before) the range
                index += 1
                position = start - 1 + len(tail)
            origin = _compressed_position(f) if start else 0
            while True:
                limit = batch_lines
                if by == "line" and stop is not None:
                    limit = min(batch_lines, stop - index)
                    if limit <= 0:
                        return
                lines = []
                size = 0
                for line in f:
                    if by == "byte" and stop is not None and position + size >= stop:
                        break  # this line begins in the next range
                    lines.append(line)
                    size += len(line)
                    if len(lines) >= limit or size >= batch_bytes:
                        break
                if not lines:
                    return
                batch = LineBatch(index, lines, _compressed_position(f), origin)
                index += len(lines)
                position += size
                lines = []
                yield batch
                if by == "byte" and stop is not None and position >= stop:
                    return
        except _READ_ERRORS as e:
            # lines read completely before the damage: those of earlier batches and this one
            raise _read_error(path, index + len(lines), e) from e


def uncompressed_size(path: str) -> int:
    """The shard's text size without reading it: the file size, or for gzip the size its trailer
    records (ISIZE, modulo 2**32, of the last member). Used only to place part boundaries, so a
    wrong value (a multi-member gzip, text over 4 GiB) costs balance, never correctness."""
    size = os.path.getsize(path)
    if not is_gzip_path(path) or size < 18:
        return size
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    return max(isize, size)  # text never compresses to more than its own size


def count_lines(path: str, limit: Optional[int] = None) -> int:
    """Number of lines in a shard (a last line without ``\\n`` counts), at most ``limit``.

    Reads in 1 MiB chunks; a truncated gzip raises ShardReadError.
    """
    count = 0
    last = b"\n"
    with open_shard(path) as f:
        try:
            while limit is None or count < limit:
                chunk = f.read(1 << 20)
                if not chunk:
                    break
                count += chunk.count(b"\n")
                last = chunk[-1:]
        except _READ_ERRORS as e:
            raise _read_error(path, count, e) from e
    if last != b"\n":
        count += 1
    return count if limit is None else min(count, limit)


def decode_line(line: bytes, key: str = "text") -> Tuple[Optional[str], Optional[str]]:
    """``(text, None)`` for a usable line, ``(None, reason)`` otherwise, ``(None, None)`` if blank."""
    if not line.strip():
        return None, None
    try:
        obj = _loads(line)
    except ValueError as e:  # includes orjson.JSONDecodeError and UnicodeDecodeError
        return None, f"invalid JSON ({_short(e)})"
    if not isinstance(obj, dict):
        return None, f"not a JSON object (got {type(obj).__name__})"
    if key not in obj:
        return None, f"missing key {key!r} (keys: {', '.join(sorted(obj)) or 'none'})"
    text = obj[key]
    if not isinstance(text, str):
        return None, f"{key!r} is not a string (got {type(text).__name__})"
    if not _STRICT_UNICODE:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None, f"{key!r} holds a lone surrogate (not valid Unicode)"
    return text, None


def decode_batch(batch: LineBatch, key: str = "text") -> DecodedBatch:
    """Decode a batch of lines; malformed lines are listed with 1-based line numbers."""
    out = DecodedBatch(texts=[])
    append = out.texts.append
    for offset, line in enumerate(batch.lines):
        text, reason = decode_line(line, key)
        if text is not None:
            append(text)
        elif reason is None:
            out.blank_lines += 1
        else:
            out.malformed.append(Malformed(batch.first_line + offset + 1, reason))
    return out


def _short(error: BaseException, limit: int = 120) -> str:
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    return message if len(message) <= limit else message[: limit - 3] + "..."
