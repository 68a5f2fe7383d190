import numpy as np
from hypothesis import given, settings, strategies as st
import pytest

from megatron_csl.convert.bitpack import (pack_bits, pack_trits, packed_size, unpack_bits,
                                          unpack_trits)
from megatron_csl.convert.errors import ConversionError


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_bits_round_trip_and_size(bits, data):
    codes = np.array(data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=200)), dtype=np.uint8)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == packed_size(codes.size, bits)
    assert np.array_equal(unpack_bits(packed, bits, codes.size), codes)


def test_pack_bits_layout_is_lsb_first():
    # 3-bit codes 1, 2 -> bits 100 010 -> byte 0b00010001
    assert pack_bits([1, 2], 3).tolist() == [0b00010001]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2), max_size=200))
def test_pack_trits_round_trip_five_per_byte(codes):
    packed = pack_trits(codes)
    assert packed.size == -(-len(codes) // 5)
    assert unpack_trits(packed, len(codes)).tolist() == codes


def test_out_of_range_codes_are_rejected():
    with pytest.raises(ConversionError, match="out of range"):
        pack_bits([4], 2)
    with pytest.raises(ConversionError, match="out of range"):
        pack_trits([3])
    with pytest.raises(ConversionError, match="bit width 9"):
        pack_bits([1], 9)
    with pytest.raises(ConversionError, match="expected 1"):
        unpack_bits(np.zeros(2, np.uint8), 4, 2)
