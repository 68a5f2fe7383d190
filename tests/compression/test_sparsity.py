"""Magnitude top-k sparsity: exact kept counts (ties included), N:M, RBBM, composition."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from megatron_csl.compression import LOCAL, SpecError, parse_spec
from megatron_csl.compression.gaussian import alpha_star


def close(a, b):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=torch.float32), rtol=1e-6, atol=1e-7)


def grad_of(spec, w, upstream=None):
    w = torch.as_tensor(w, dtype=torch.float32).clone().requires_grad_(True)
    up = torch.ones_like(w) if upstream is None else upstream
    (parse_spec(spec).compress_weight(w) * up).sum().backward()
    return w.grad


def test_row_topk_exact():
    w = torch.tensor([[0.1, -0.2, 0.5, -1.0, 2.0, 0.05, 0.3, -0.7],
                      [1.0, 2.0, 3.0, 4.0, -5.0, 6.0, -7.0, 8.0]])
    close(parse_spec("s50").compress_weight(w),
          [[0, 0, 0.5, -1.0, 2.0, 0, 0, -0.7], [0, 0, 0, 0, -5, 6, -7, 8]])
    close(parse_spec("s75").compress_weight(w), [[0, 0, 0, -1, 2, 0, 0, 0], [0, 0, 0, 0, 0, 0, -7, 8]])


def test_tensor_topk_exact():
    w = torch.tensor([[0.1, -0.2, 0.5, -1.0], [1.5, 6.0, -7.0, 8.0]])
    close(parse_spec("s50:tensor").compress_weight(w), [[0, 0, 0, 0], [1.5, 6, -7, 8]])


def test_nm_exact():
    w = torch.tensor([[0.1, -0.2, 0.5, -1.0, 2.0, 0.05, 0.3, -0.7]])
    close(parse_spec("s50:nm2/4").compress_weight(w), [[0, 0, 0.5, -1.0, 2.0, 0, 0, -0.7]])
    close(parse_spec("s75:nm1/4").compress_weight(w), [[0, 0, 0, -1.0, 2.0, 0, 0, 0]])


def test_kept_count_rounds_pruning_down():
    # 7 entries at 50%: floor(3.5) = 3 pruned, 4 kept.
    out = parse_spec("s50").compress_weight(torch.arange(1.0, 8.0).reshape(1, 7))
    assert int((out != 0).sum()) == 4


def test_nm_shape_errors_at_compress_time():
    spec = parse_spec("s33.33:nm2/3")
    with pytest.raises(SpecError, match="nm2/3.*multiple of 3"):
        spec.compress_weight(torch.randn(2, 8))
    with pytest.raises(SpecError, match="nm2/3.*multiple of 3"):
        spec.validate_shape(2, 8)
    assert (spec.compress_weight(torch.randn(2, 9)) != 0).sum() == 12


def test_ste_gradient_reaches_pruned_weights():
    torch.manual_seed(0)
    w, up = torch.randn(4, 16), torch.randn(4, 16)
    for spec in ("s50", "s75:tensor", "s50:nm2/4", "s50+w4", "s50:nm2/4+w4a8"):
        torch.testing.assert_close(grad_of(spec, w, up), up)


def test_rbbm_band_blocks_exactly_the_band():
    w = torch.tensor([[0.1, -0.2, 0.5, -1.0, 2.0, 0.05, 0.3, -0.7]])
    # kept: 2.0, -1.0, -0.7, 0.5 -> T_k = 0.5.  RMS = sqrt(5.8825 / 8) = 0.8575,
    # T_p = 0.8575 * Phi^-1(0.6) = 0.2172: gradient only where |w| < 0.2172 or |w| > 0.5.
    t_p = math.sqrt(5.8825 / 8) * norm.ppf(0.6)
    assert 0.2 < t_p < 0.3
    close(grad_of("s50:rbbm10", w), [[1, 1, 0, 1, 1, 1, 0, 1]])
    # T_p above T_k: rbbm40 -> T_p = 0.8575 * Phi^-1(0.9) = 1.099 > T_k = 0.5: band [0.5, 1.099].
    close(grad_of("s50:rbbm40", w), [[1, 1, 0, 0, 1, 1, 1, 0]])


def test_rbbm_tensor_and_nm():
    w = torch.tensor([[0.1, -0.2, 0.5, -1.0], [2.0, 0.05, 0.3, -0.7]])
    # tensor: kept 2.0, -1.0, -0.7, 0.5 -> same T_k, T_p as above (same values).
    close(grad_of("s50:tensor,rbbm10", w), [[1, 1, 0, 1], [1, 1, 0, 1]])
    # nm2/4: groups [0.1,-0.2,0.5,-1] (T_k 0.5) and [2,0.05,0.3,-0.7] (T_k 0.7); T_p per row.
    tp0 = math.sqrt((0.01 + 0.04 + 0.25 + 1) / 4) * norm.ppf(0.6)  # 0.1444
    tp1 = math.sqrt((4 + 0.0025 + 0.09 + 0.49) / 4) * norm.ppf(0.6)  # 0.2711
    assert 0.1 < tp0 < 0.2 and 0.05 < tp1 < 0.3
    close(grad_of("s50:nm2/4,rbbm10", w), [[1, 0, 0, 1], [1, 1, 0, 0]])


def test_composition_prunes_then_quantizes_survivors():
    w = torch.tensor([[0.1, -0.2, 0.5, -1.0, 2.0, 0.05, 0.3, -0.7]])
    out = parse_spec("s50+w2").compress_weight(w)
    keep = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 1]], dtype=torch.bool)
    assert torch.all(out[~keep] == 0)  # exactly zero although the sym grid has no zero level
    survivors_rms = math.sqrt((0.25 + 1 + 4 + 0.49) / 4)
    step = 2 * alpha_star(2) * survivors_rms / 3  # statistics over the survivors only
    codes = torch.tensor([0.5, -0.5, 1.5, -0.5])  # 0.5/step = 0.25, -1/step = -0.50, 2/step = 1.0
    close(out[keep], codes * step)
    # Quantize-then-prune (whole-row RMS, zero-free grid) would differ:
    other = parse_spec("w2").compress_weight(w) * keep
    assert not torch.allclose(other, out)
    # The parser puts sparsity first whatever the written order.
    assert parse_spec("w2+s50") == parse_spec("s50+w2")


def test_composition_trust_mask_only_on_survivors():
    w = torch.tensor([[2.0, -2.0, 0.4, 1.6, 0.01, -0.02, 0.03, 0.0]])
    # s50 keeps 2, -2, 1.6, 0.4; w2:zero,absmax on survivors: step 1, values [1,-2,0,1]:
    # trust passes -2 and 0.4 only; pruned entries keep the straight-through gradient.
    close(grad_of("s50+w2:zero,absmax,trust", w), [[0, 1, 1, 0, 1, 1, 1, 1]])


# ---- properties with many ties -------------------------------------------------------------------
tie_matrices = st.tuples(st.integers(1, 5), st.integers(1, 6)).flatmap(
    lambda shape: st.lists(st.integers(-3, 3), min_size=shape[0] * shape[1] * 4,
                           max_size=shape[0] * shape[1] * 4).map(
        lambda v: torch.tensor(v, dtype=torch.float32).reshape(shape[0], shape[1] * 4)))


def _keep_mask(spec, w):
    """The boolean keep mask the format uses (zeros in w make it unreadable from the output)."""
    return parse_spec(spec).sparsity_format.mask(w, LOCAL)[0]


@settings(max_examples=80, deadline=None)
@given(tie_matrices, st.sampled_from([10, 25, 50, 62.5, 75, 90]))
def test_row_keeps_exactly_k_largest(w, pct):
    keep = _keep_mask(f"s{pct}", w)
    n = w.shape[1]
    k = n - math.floor(pct * n / 100)
    assert torch.all(keep.sum(1) == k)
    mags = w.abs()
    for r in range(w.shape[0]):
        if 0 < k < n:
            assert mags[r][keep[r]].min() >= mags[r][~keep[r]].max()
    out = parse_spec(f"s{pct}").compress_weight(w)
    assert torch.equal(out, w * keep)


@settings(max_examples=80, deadline=None)
@given(tie_matrices, st.sampled_from([10, 50, 75]))
def test_tensor_keeps_exactly_k_largest(w, pct):
    keep = _keep_mask(f"s{pct}:tensor", w)
    k = w.numel() - math.floor(pct * w.numel() / 100)
    assert int(keep.sum()) == k
    if 0 < k < w.numel():
        assert w.abs()[keep].min() >= w.abs()[~keep].max()


@settings(max_examples=80, deadline=None)
@given(tie_matrices, st.sampled_from([(2, 4), (1, 4), (3, 4), (1, 2)]))
def test_nm_keeps_exactly_n_per_group(w, nm):
    n, m = nm
    pct = 100 * (m - n) / m
    keep = _keep_mask(f"s{pct:g}:nm{n}/{m}", w)
    groups = keep.reshape(w.shape[0], -1, m)
    assert torch.all(groups.sum(-1) == n)
    mags = w.abs().reshape(w.shape[0], -1, m)
    kept_min = torch.where(groups, mags, torch.inf).amin(-1)
    pruned_max = torch.where(~groups, mags, -torch.inf).amax(-1)
    assert torch.all(kept_min >= pruned_max)


@settings(max_examples=40, deadline=None)
@given(tie_matrices, st.sampled_from(["s50", "s75:tensor", "s50:nm2/4", "s50+w4:absmax"]))
def test_pruning_is_idempotent(w, spec):
    once = parse_spec(spec).compress_weight(w)
    torch.testing.assert_close(parse_spec(spec).compress_weight(once), once, rtol=1e-5, atol=1e-6)
