"""Packing a compressed weight restores spec.compress_weight(w) exactly, at the expected size."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from megatron_csl.compression import parse_spec
from megatron_csl.convert import weight_codes
from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.packed_codec import array_bytes, decode, encode
from megatron_csl.convert.weight_codes import decompose

REQUIRED = ([f"w{b}" for b in range(1, 9)] + [f"w{b}:zero" for b in range(2, 9)]
            + ["w1.58", "s50", "s50:nm2/4", "s50+w4", "fp8", "fp4"])
EXTRA = ["w4:g32", "w4:tensor", "w3:absmax", "fp4:mx", "fp4:nv", "fp8:e5m2", "w4:had", "fp6",
         "s50:tensor+w2", "s75:nm32/128", "s50:nm2/4+w1.58", "s50+fp4",
         # issue 17: vector codes, Hadamard + sparsity (mask in the rotated basis), float trust
         "vq2:2", "vq4:2", "vq2:3,had64", "vq2:4", "s50:nm4/8+w4:had,trust", "s50+fp4:had",
         "fp4:trust", "w4:out1", "w2:zero,g32,out2,trust", "w1.58:out1"]
ROWS, COLS = 24, 128


def _weight(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(ROWS, COLS, generator=g) * 0.02
    w[5] = 0.0  # an all-zero row: zero scale
    return w.to(dtype)


def _round_trip(spec_text, w):
    spec = parse_spec(spec_text)
    dec, w_hat = decompose(spec, w)
    entry, arrays = encode(dec)
    restored = decode(entry, arrays)
    assert restored.dtype == w.dtype
    assert torch.equal(restored, spec.compress_weight(w))
    return spec, entry, arrays


@pytest.mark.parametrize("spec_text", REQUIRED + EXTRA)
def test_exact_round_trip_fp32(spec_text):
    _round_trip(spec_text, _weight(torch.float32))


def _expected_bits(spec, dtype) -> float:
    """Bits per weight the packed form should take (codes + mask/indices + per-row fp32 scales)."""
    keep = 1.0 - spec.sparsity
    mask_bits = 0.0
    if spec.sparsity_format is not None:
        pattern = spec.sparsity_format.pattern
        if isinstance(pattern, tuple) and pattern[0] * math.ceil(math.log2(pattern[1])) <= pattern[1]:
            mask_bits = pattern[0] * math.ceil(math.log2(pattern[1])) / pattern[1]
        else:
            mask_bits = 1.0
    if spec.weight is None:
        return mask_bits + keep * torch.finfo(dtype).bits
    w = spec.weight
    code_bits = 8 / 5 if getattr(w, "ternary", False) else math.ceil(w.element_bits)
    return mask_bits + keep * code_bits + 32 / COLS  # one float32 scale per row


@pytest.mark.parametrize("spec_text", REQUIRED)
def test_bf16_round_trip_and_packed_size_is_the_bit_width(spec_text):
    spec, entry, arrays = _round_trip(spec_text, _weight(torch.bfloat16))
    shared = sum(arrays[k].numel() * arrays[k].element_size() for k in ("levels",) if k in arrays)
    bits = 8 * (array_bytes(arrays) - shared) / (ROWS * COLS)
    assert bits == pytest.approx(_expected_bits(spec, torch.bfloat16), abs=0.02)
    if spec.weight is not None:
        assert entry["quant"]["bits_per_code"] == (math.log2(3) if spec_text == "w1.58"
                                                   else math.ceil(spec.weight.element_bits))


def test_nm_2_4_stores_indices_and_mx_nv_store_compact_scales():
    _, entry, _ = _round_trip("s50:nm2/4", _weight(torch.float32))
    assert entry["sparsity"] == {"kind": "nm", "n": 2, "m": 4, "index_bits": 2}
    _, entry, _ = _round_trip("s75:nm32/128", _weight(torch.float32))
    assert entry["sparsity"]["kind"] == "bitmask"  # 32 x 7 bits > 128 bits
    _, entry, arrays = _round_trip("fp4:mx", _weight(torch.float32))
    assert entry["quant"]["scale_encoding"] == "e8m0" and arrays["scale_e8m0"].dtype == torch.uint8
    _, entry, _ = _round_trip("fp4:nv", _weight(torch.float32))
    assert entry["quant"]["scale_encoding"] == "factor_x_row"


@settings(max_examples=10, deadline=None)
@given(spec_text=st.sampled_from(REQUIRED), rows=st.integers(1, 6), groups=st.integers(1, 3),
       scale=st.floats(1e-4, 10.0), seed=st.integers(0, 10_000))
def test_round_trip_any_shape_and_scale(spec_text, rows, groups, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, 32 * groups, generator=g) * scale
    _round_trip(spec_text, w)


def test_a_wrong_scale_is_caught(monkeypatch):
    real = weight_codes._int_scale
    monkeypatch.setattr(weight_codes, "_int_scale", lambda q, x, keep: real(q, x, keep) * 1.001)
    with pytest.raises(ConversionError, match="does not restore the compressed weight"):
        decompose(parse_spec("w4"), _weight(torch.float32))


@pytest.mark.parametrize("spec_text,bits", [("vq2:2", 2), ("vq2:3", 3), ("vq4:2", 2), ("vq4:1", 1)])
def test_vector_codes_take_their_bits_and_index_the_grid(spec_text, bits):
    spec, entry, arrays = _round_trip(spec_text, _weight(torch.bfloat16))
    d = spec.weight.dim
    assert entry["quant"]["vector_dim"] == d and entry["quant"]["num_levels"] == 2 ** (d * bits)
    assert entry["quant"]["bits_per_code"] == d * bits
    torch.testing.assert_close(arrays["levels"].reshape(-1, d), spec.weight.grid())
    per_weight = 8 * (array_bytes(arrays) - arrays["levels"].numel() * 4) / (ROWS * COLS)
    assert per_weight == pytest.approx(bits + 32 / COLS, abs=0.02)  # codes + fp32 row scales


def test_hadamard_sparsity_stores_the_rotated_mask():
    spec, entry, _ = _round_trip("s50:nm2/4+w4:had", _weight(torch.float32))
    assert entry["hadamard"] == 128 and entry["sparsity"]["kind"] == "nm"
    assert entry["kept"] == ROWS * COLS // 2


def test_outliers_are_stored_as_columns_and_values():
    w = _weight(torch.bfloat16)
    spec, entry, arrays = _round_trip("w4:out2", w)
    per_row = 2 * COLS // 100  # floor(2% of 128) = 2
    assert entry["outliers"] == {"per_row": per_row}
    assert arrays["outlier_columns"].dtype == torch.uint16
    assert arrays["outlier_values"].shape == (ROWS, per_row)
    assert entry["kept"] == ROWS * (COLS - per_row)
    top = w.float().abs().topk(per_row, dim=1).indices.sort(dim=1).values
    assert torch.equal(arrays["outlier_columns"].to(torch.int64)[[0, 7]], top[[0, 7]])
    # bits: 4-bit codes for the rest, 16 + 16 bits per outlier, fp32 row scales
    per_weight = 8 * (array_bytes(arrays) - arrays["levels"].numel() * 4) / (ROWS * COLS)
    expected = 4 * (COLS - per_row) / COLS + 32 * per_row / COLS + 32 / COLS
    assert per_weight == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize("spec_text,fragment", [("noise:w4", "noise injection")])
def test_unpackable_formats_are_refused_by_name(spec_text, fragment):
    with pytest.raises(ConversionError, match=fragment) as err:
        decompose(parse_spec(spec_text), _weight(torch.float32))
    assert spec_text in str(err.value)
