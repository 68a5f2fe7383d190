"""Pack small unsigned integer codes densely into bytes (numpy does the bit work).

* `pack_bits` / `unpack_bits`: b-bit codes (1 <= b <= 8), little-endian bit order, the last byte
  zero-padded. n codes take ceil(n * b / 8) bytes.
* `pack_trits` / `unpack_trits`: ternary codes {0, 1, 2}, five per byte (3**5 = 243 <= 256), i.e.
  1.6 bits per code, the cost a "1.58-bit" format actually pays.
"""
from __future__ import annotations

import numpy as np

from megatron_csl.convert.errors import ConversionError

TRITS_PER_BYTE = 5
_TRIT_WEIGHTS = 3 ** np.arange(TRITS_PER_BYTE, dtype=np.uint16)


def _as_codes(codes, limit: int) -> np.ndarray:
    codes = np.ascontiguousarray(np.asarray(codes).reshape(-1))
    if codes.size and (codes.min() < 0 or codes.max() >= limit):
        raise ConversionError(f"codes out of range [0, {limit}): min {codes.min()}, max {codes.max()}")
    return codes.astype(np.uint8)


def packed_size(count: int, bits: int) -> int:
    """Bytes `pack_bits` uses for `count` codes of `bits` bits."""
    return (count * bits + 7) // 8


def pack_bits(codes, bits: int) -> np.ndarray:
    """uint8 array of `codes` (each in [0, 2**bits)) packed at `bits` bits per code."""
    if not 1 <= bits <= 8:
        raise ConversionError(f"bit width {bits} not in 1..8")
    codes = _as_codes(codes, 1 << bits)
    # One row of 8 bits per code (LSB first); keep the low `bits` columns; pack the stream.
    bit_rows = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(bit_rows.reshape(-1), bitorder="little")


def unpack_bits(data, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: `count` uint8 codes."""
    if not 1 <= bits <= 8:
        raise ConversionError(f"bit width {bits} not in 1..8")
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if data.size != packed_size(count, bits):
        raise ConversionError(f"packed data has {data.size} bytes, expected {packed_size(count, bits)} "
                              f"for {count} codes of {bits} bits")
    stream = np.unpackbits(data, count=count * bits, bitorder="little").reshape(count, bits)
    padded = np.zeros((count, 8), dtype=np.uint8)
    padded[:, :bits] = stream
    return np.packbits(padded, axis=1, bitorder="little").reshape(count)


def pack_trits(codes) -> np.ndarray:
    """uint8 array of ternary `codes` (each in {0, 1, 2}), five per byte."""
    codes = _as_codes(codes, 3)
    groups = -(-codes.size // TRITS_PER_BYTE)
    padded = np.zeros(groups * TRITS_PER_BYTE, dtype=np.uint16)
    padded[: codes.size] = codes
    return (padded.reshape(groups, TRITS_PER_BYTE) @ _TRIT_WEIGHTS).astype(np.uint8)


def unpack_trits(data, count: int) -> np.ndarray:
    """Inverse of `pack_trits`: `count` codes in {0, 1, 2}."""
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    if data.size != -(-count // TRITS_PER_BYTE):
        raise ConversionError(f"packed ternary data has {data.size} bytes, expected "
                              f"{-(-count // TRITS_PER_BYTE)} for {count} codes")
    digits = (data[:, None].astype(np.uint16) // _TRIT_WEIGHTS) % 3
    return digits.reshape(-1)[:count].astype(np.uint8)
