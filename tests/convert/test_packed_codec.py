"""The packed storage of one weight: decode(encode(x)) restores the weight bit for bit."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.packed_codec import Decomposition, array_bytes, decode, encode


def _nm_mask(rows, cols, n, m, gen):
    scores = torch.rand(rows * cols // m, m, generator=gen)
    idx = scores.topk(n, dim=1).indices
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)
    return mask.reshape(rows, cols)


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), groups=st.integers(1, 6), m=st.sampled_from([4, 8, 16]),
       sparsity=st.sampled_from(["none", "bitmask", "nm"]), num_levels=st.sampled_from([0, 2, 3, 4, 15, 16, 256]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 2**16))
def test_round_trip_is_exact(rows, groups, m, sparsity, num_levels, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    cols = groups * m
    mask = None
    nm = None
    if sparsity == "bitmask":
        mask = torch.rand(rows, cols, generator=gen) < 0.5
    elif sparsity == "nm":
        nm = (m // 2, m)
        mask = _nm_mask(rows, cols, *nm, gen)
    kept = rows * cols if mask is None else int(mask.sum())
    if num_levels == 0:  # raw values
        values = torch.randn(kept, generator=gen).to(dtype)
        dec = Decomposition((rows, cols), dtype, mask=mask, nm=nm, values=values)
        expected_kept = values
    else:
        levels = torch.randn(num_levels, generator=gen)
        scale = torch.rand(rows, groups, generator=gen) + 0.1
        codes = torch.randint(0, num_levels, (kept,), generator=gen)
        dec = Decomposition((rows, cols), dtype, mask=mask, nm=nm, codes=codes, levels=levels, scale=scale)
        full_scale = scale.repeat_interleave(m, dim=1)
        kept_scale = full_scale.reshape(-1) if mask is None else full_scale[mask]
        expected_kept = (kept_scale * levels[codes]).to(dtype)
    expected = torch.zeros(rows, cols, dtype=dtype)
    if mask is None:
        expected = expected_kept.reshape(rows, cols)
    else:
        expected[mask] = expected_kept
    entry, arrays = encode(dec)
    restored = decode(entry, arrays)
    assert restored.dtype == dtype and torch.equal(restored, expected)
    if num_levels:
        bits = math.log2(3) if num_levels == 3 else max(1, math.ceil(math.log2(num_levels)))
        per_byte = 5 if num_levels == 3 else 8 / bits
        assert arrays["codes"].numel() == math.ceil(kept / per_byte)
    if sparsity == "nm":  # m/2 indices of log2(m) bits per m weights
        assert "nm_indices" in arrays or "mask" in arrays
        if m == 4:
            assert arrays["nm_indices"].numel() == math.ceil(rows * cols / 4 * 2 * 2 / 8)


def test_nm_needs_exact_counts():
    mask = torch.tensor([[True, True, True, False]])
    dec = Decomposition((1, 4), torch.float32, mask=mask, nm=(2, 4), values=torch.ones(3))
    with pytest.raises(ConversionError, match="not 2:4"):
        encode(dec)


def test_decomposition_needs_one_kind_of_values():
    with pytest.raises(ConversionError, match="either raw values or codes"):
        Decomposition((1, 4), torch.float32)
