"""Top-k mask kernels (per row, per tensor, N:M) keep exactly the reference's set.

Without repeated magnitudes the kept set is unique and the kernels must equal the reference
as it is. With repeated magnitudes the kernels keep the lowest-index ties (CUDA's torch.topk
rule); on a CPU the reference is then run with that rule (CPU's torch.topk breaks ties
differently), on a GPU it is compared unchanged.
"""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import DEVICE
from .helpers import assert_same, lowest_index_topk_mask, ties_to_lowest_index

pytestmark = pytest.mark.usefixtures("triton_kernels")

SPARSITY = ["s10", "s50", "s87.5", "s1", "s50:tensor", "s90:tensor", "s50:nm2/4", "s50:nm4/8",
            "s50:nm64/128", "s33.33:nm2/3", "s75:nm1/4"]


def _gaussian(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(DEVICE, dtype)


def _ties(shape, seed=0, levels=4):
    """Few distinct magnitudes, random signs, a zero row: ties everywhere, also at +-0."""
    g = torch.Generator().manual_seed(seed)
    mags = torch.randint(0, levels, shape, generator=g).float()
    signs = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    x = mags * signs
    x[0] = 0.0
    return x.to(DEVICE)


@pytest.mark.parametrize("text", SPARSITY)
def test_mask_without_ties_equals_reference(text):
    assert_same(text, _gaussian((10, 384), seed=1))


@pytest.mark.parametrize("text", SPARSITY)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mask_with_ties_keeps_lowest_index(text, dtype, monkeypatch):
    ties_to_lowest_index(monkeypatch)
    assert_same(text, _ties((10, 384), seed=2).to(dtype))
    # bf16 weights (what training compresses) repeat magnitudes all the time
    assert_same(text, _gaussian((10, 384), seed=3, dtype=torch.bfloat16))


@pytest.mark.parametrize("values", [False, True])
def test_tensor_topk_spans_blocks(values):
    """Ties ranked across blocks of the whole-tensor passes (3+ blocks of TENSOR_BLOCK)."""
    from megatron_csl.kernels import ops

    n = 3 * ops.TENSOR_BLOCK + 123
    x = _ties((n,), seed=5, levels=3)
    for keep_count in (1, n // 3, n // 2 + 7, n - 1, n):
        keep, out = ops.tensor_topk(x, keep_count, values=values)
        expected = lowest_index_topk_mask(x.abs().cpu(), keep_count, 0)
        assert torch.equal(keep.cpu(), expected), keep_count
        assert int(keep.sum()) == keep_count
        if values:
            assert torch.equal(out, x * keep)


def test_segment_topk_keeps_exact_count_in_zero_rows():
    from megatron_csl.kernels import ops

    x = torch.zeros(4, 40, device=DEVICE)
    keep, _ = ops.segment_topk(x, 40, 17)
    assert torch.equal(keep.sum(dim=1).cpu(), torch.full((4,), 17))
    assert keep[:, :17].all() and not keep[:, 17:].any()


def test_bad_keep_count():
    from megatron_csl.kernels import ops

    with pytest.raises(ValueError, match="keep_count must be in 1..8"):
        ops.segment_topk(torch.ones(2, 8, device=DEVICE), 8, 0)
    with pytest.raises(ValueError, match="keep_count must be in 1..16"):
        ops.tensor_topk(torch.ones(2, 8, device=DEVICE), 17)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 12), cols=st.integers(1, 300), seed=st.integers(0, 2 ** 16),
       levels=st.sampled_from([2, 5, 1000]), frac=st.floats(0.0, 1.0))
def test_random_segments_match_stable_sort(rows, cols, seed, levels, frac):
    """Any row length (masked tails, non-power-of-two), any k, few or many distinct values."""
    from megatron_csl.kernels import ops

    x = _ties((rows, cols), seed=seed, levels=levels) * 1e-3
    keep_count = max(1, min(cols, round(frac * cols)))
    keep, _ = ops.segment_topk(x, cols, keep_count)
    expected = lowest_index_topk_mask(x.abs().cpu(), keep_count, 1)
    assert torch.equal(keep.cpu(), expected)
