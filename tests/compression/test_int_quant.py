"""Integer grids: exact outputs on hand-computed tensors, gradients, properties."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.compression import SpecError, parse_spec
from megatron_csl.compression.gaussian import alpha_star, ternary_star, zero_grid_step_star


def compress(spec, w, **kw):
    return parse_spec(spec).compress_weight(torch.as_tensor(w, dtype=torch.float32), **kw)


def close(a, b):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=torch.float32), rtol=1e-6, atol=1e-7)


# ---- exact outputs -----------------------------------------------------------------------------
def test_sym_absmax_row():
    # absmax 1 -> s = 1, step 2/3, levels +-1/3, +-1; boundaries at multiples of the step.
    close(compress("w2:absmax", [[1.0, -0.5, 0.25, -1.0], [0.2, 0.0, -0.1, 0.1]]),
          [[1, -1 / 3, 1 / 3, -1], [0.2, 0.2 / 3, -0.2 / 3, 0.2 / 3]])


def test_sym_rms_row_uses_alpha_star():
    x = torch.tensor([[1.0, -1.0, 0.5, 3.0]])
    rms = math.sqrt((1 + 1 + 0.25 + 9) / 4)
    step = 2 * alpha_star(2) * rms / 3  # 1.6699: x / step = 0.60, -0.60, 0.30, 1.80
    close(compress("w2", x), torch.tensor([[0.5, -0.5, 0.5, 1.5]]) * step)


def test_one_bit_is_sign_times_alpha_rms_and_zero_maps_up():
    rms = math.sqrt((9 + 16) / 4)
    s = alpha_star(1) * rms  # alpha*_1 = sqrt(2/pi)
    assert alpha_star(1) == pytest.approx(math.sqrt(2 / math.pi), rel=1e-9)
    close(compress("w1", [[3.0, -4.0, 0.0, 0.0]]), [[s, -s, s, s]])


def test_zero_grid_absmax_and_clipping_of_positive_max():
    # absmax 2 -> step 2 / 2^(2-1) = 1, codes -2..1: 2 clips to 1, 0.4 -> 0, 1.6 -> 2 -> clip 1.
    close(compress("w2:zero,absmax", [[2.0, -2.0, 0.4, 1.6]]), [[1, -2, 0, 1]])
    # round half to even: 0.5 -> 0, 1.5 -> 2 (step 1 from absmax 4 at 3 bits).
    close(compress("w3:zero,absmax", [[4.0, 0.5, 1.5, -2.5]]), [[3, 0, 2, -2]])


def test_zero_grid_rms_uses_beta_star():
    x = torch.tensor([[2.0, -1.0, 0.0, 0.5]])
    step = zero_grid_step_star(2) * math.sqrt((4 + 1 + 0 + 0.25) / 4)  # 1.2012
    close(compress("w2:zero", x), torch.tensor([[1.0, -1.0, 0.0, 0.0]]) * step)


def test_ternary():
    close(compress("w1.58:absmax", [[2.0, -0.9, 1.1, 0.0]]), [[2, 0, 2, 0]])
    x = torch.tensor([[1.0, -1.0, 0.2, 0.0]])
    s = ternary_star() * math.sqrt(2.04 / 4)  # 0.874: 1 -> s, 0.2 -> 0
    close(compress("w1.58", x), torch.tensor([[1.0, -1.0, 0.0, 0.0]]) * s)


def test_absmean_is_rms_rule_with_gaussian_calibrated_mean():
    x = torch.tensor([[1.0, -3.0, 0.5, 0.5]])
    s = alpha_star(2) * math.sqrt(math.pi / 2) * (5.0 / 4)  # 2.340, step 1.560
    step = 2 * s / 3
    close(compress("w2:absmean", x), torch.tensor([[0.5, -1.5, 0.5, 0.5]]) * step)


def test_tensor_granularity_shares_one_statistic():
    # Tensor absmax 4: step 4 / 2 = 2 for every row; row 2 alone would have had step 0.5.
    close(compress("w2:zero,absmax,tensor", [[4.0, -4.0, 1.0, 3.0], [1.0, -1.0, 0.0, 0.2]]),
          [[2, -4, 0, 2], [0, 0, 0, 0]])


def test_groups_along_input_dim():
    # g2: groups [4, 1] (absmax 4 -> step 2) and [-2, 0.5] (absmax 2 -> step 1).
    close(compress("w2:zero,absmax,g2", [[4.0, 1.0, -2.0, 0.5]]), [[2, 0, -2, 0]])


def test_activation_per_token():
    x = torch.tensor([[[2.0, -2.0, 0.4, 1.6]], [[8.0, 0.0, -8.0, 3.0]]])  # [2, 1, 4]
    y = parse_spec("a2:zero,absmax").quantize_activation(x)
    assert y.shape == x.shape
    close(y, [[[1, -2, 0, 1]], [[4, 0, -8, 4]]])
    assert parse_spec("w2:zero,absmax").quantize_activation(x) is x  # weights-only: untouched


def test_all_zero_row_stays_zero():
    close(compress("w4", torch.zeros(2, 8)), torch.zeros(2, 8))
    close(compress("w2:zero,absmax", torch.zeros(1, 4)), torch.zeros(1, 4))


def test_hadamard_quantizes_in_rotated_basis_and_returns_original_basis():
    torch.manual_seed(0)
    w, x = torch.randn(3, 32), torch.randn(5, 32)
    h = torch.tensor(scipy.linalg.hadamard(16) / 4.0, dtype=torch.float32)
    blockdiag = torch.block_diag(h, h)
    spec = parse_spec("w4a4:had16")
    expect_w = parse_spec("w4").compress_weight(w @ blockdiag) @ blockdiag.T
    close(spec.compress_weight(w), expect_w)
    wq, xq = spec.compress_weight(w), spec.quantize_activation(x)
    # (x_hat)(w_hat)^T equals Q(xH) Q(wH)^T: the layer needs no change.
    rotated = parse_spec("w4a4").quantize_activation(x @ blockdiag) @ \
        parse_spec("w4").compress_weight(w @ blockdiag).T
    torch.testing.assert_close(xq @ wq.T, rotated, rtol=1e-5, atol=1e-5)


def test_dtype_and_shape_preserved_bf16():
    w = torch.randn(4, 64, dtype=torch.bfloat16, requires_grad=True)
    out = parse_spec("w4").compress_weight(w)
    assert out.dtype == torch.bfloat16 and out.shape == w.shape
    out.float().sum().backward()
    assert w.grad.dtype == torch.bfloat16 and torch.all(w.grad == 1)


def test_compress_time_shape_errors():
    with pytest.raises(SpecError, match="g48"):
        compress("w4:g48", torch.randn(2, 64))
    with pytest.raises(SpecError, match="2-D"):
        compress("w4", torch.randn(2, 3, 4))
    with pytest.raises(SpecError, match="had"):
        parse_spec("a4:had").quantize_activation(torch.randn(2, 64))


# ---- gradients ---------------------------------------------------------------------------------
def _grad(spec, w, upstream):
    w = torch.as_tensor(w, dtype=torch.float32).clone().requires_grad_(True)
    (parse_spec(spec).compress_weight(w) * upstream).sum().backward()
    return w.grad


@pytest.mark.parametrize("spec", ["w4", "w2:zero,absmax,tensor", "w1.58", "w3:absmean,g4",
                                  "w4:had16"])
def test_ste_passes_gradient_unchanged(spec):
    torch.manual_seed(1)
    w, up = torch.randn(3, 16), torch.randn(3, 16)
    torch.testing.assert_close(_grad(spec, w, up), up, rtol=1e-6, atol=1e-6)


def test_trust_masks_entries_further_than_half_a_step():
    # values [1, -2, 0, 1], step 1: errors [1, 0, 0.4, 0.6] -> only the middle two pass.
    up = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    close(_grad("w2:zero,absmax,trust", [[2.0, -2.0, 0.4, 1.6]], up), [[0, 2, 3, 0]])
    # sym rms: T = alpha*_b / (2^b - 1) RMS is exactly half a step.
    x = torch.tensor([[0.1, -0.2, 0.3, 5.0, -0.4, 0.2, 0.0, 0.1]])
    rms = x.pow(2).mean().sqrt()
    expected = ((parse_spec("w2").compress_weight(x) - x).abs()
                <= alpha_star(2) / 3 * rms).float()
    assert expected.sum() == 7  # the outlier 5.0 is clipped far beyond half a step
    close(_grad("w2:trust", x, torch.ones_like(x)), expected)


def test_one_bit_trust_is_a_clip_mask():
    x = torch.tensor([[1.0, -1.2, 1.3, -2.0]])
    rms = float(x.pow(2).mean().sqrt())  # 1.4346: 1.25 rms = 1.793, 1.30 rms = 1.865
    close(_grad("w1:trust", x, torch.ones_like(x)), [[1, 1, 1, 0]])
    assert 1.25 * rms < 1.8 < 1.30 * rms
    y = torch.tensor([[1.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 3.0]])
    rms_y = float(y.pow(2).mean().sqrt())
    mask = (y.abs() <= 1.25 * rms_y).float()
    close(_grad("w1:trust", y, torch.ones_like(y)), mask)


def test_trust_with_hadamard_masks_in_rotated_basis():
    torch.manual_seed(2)
    h = torch.tensor(scipy.linalg.hadamard(16) / 4.0, dtype=torch.float32)
    wr, up = torch.randn(2, 16), torch.randn(2, 16)
    wr[:, 3] = 8.0  # an outlier in the rotated basis: clipped, so its gradient is masked
    w = wr @ h
    wr = w @ h
    mask = ((parse_spec("w2").compress_weight(wr) - wr).abs()
            <= alpha_star(2) / 3 * wr.pow(2).mean(1, keepdim=True).sqrt() * (1 + 1e-6)).float()
    assert 0 < mask.sum() < mask.numel()
    torch.testing.assert_close(_grad("w2:had16,trust", w, up), ((up @ h) * mask) @ h,
                               rtol=1e-5, atol=1e-6)


def test_activation_gradient():
    x = torch.tensor([[2.0, -2.0, 0.4, 1.6]], requires_grad=True)
    parse_spec("a2:zero,absmax,trust").quantize_activation(x).sum().backward()
    close(x.grad, [[0, 1, 1, 0]])


# ---- properties --------------------------------------------------------------------------------
matrices = st.integers(1, 4).flatmap(lambda rows: st.integers(1, 4).flatmap(
    lambda groups: st.lists(st.floats(-100, 100, allow_nan=False, width=32),
                            min_size=rows * groups * 4, max_size=rows * groups * 4).map(
        lambda v: torch.tensor(v, dtype=torch.float32).reshape(rows, groups * 4))))


@settings(max_examples=60, deadline=None)
@given(matrices, st.sampled_from([1, 2, 3, 4, 8]), st.sampled_from(["rms", "absmax", "absmean"]),
       st.sampled_from(["row", "tensor", "g4"]))
def test_sym_values_lie_on_their_grid(w, bits, scale, gran):
    out = compress(f"w{bits}:{scale},{gran}", w)
    rows = w.reshape(1, -1) if gran == "tensor" else w.reshape(-1, 4) if gran == "g4" else w
    q = out.reshape(rows.shape)
    for r in range(rows.shape[0]):
        values = q[r].unique()
        assert len(values) <= 2**bits
        if scale == "absmax" and rows[r].abs().max() > 0:
            step = 2 * rows[r].abs().max() / (2**bits - 1)
            codes = q[r] / step - 0.5
            torch.testing.assert_close(codes, codes.round(), atol=1e-3, rtol=0)
            # compare the nearest integer codes: q/step carries float rounding (7.0000005)
            codes = codes.round()
            assert codes.min() >= -(2 ** (bits - 1)) and codes.max() <= 2 ** (bits - 1) - 1
            assert q[r].abs().max() <= rows[r].abs().max() * (1 + 1e-6)


@settings(max_examples=60, deadline=None)
@given(matrices, st.sampled_from(["w2:absmax", "w4:absmax,tensor", "w3:absmax,g4",
                                  "w1.58:absmax", "w1:absmax", "w8:absmax,tensor"]))
def test_absmax_sym_and_ternary_are_idempotent(w, spec):
    # absmax maps the largest magnitude to itself (sym: the outermost level +-s; ternary: +-s),
    # so the second pass sees the same scale and every level is a fixed point.
    once = compress(spec, w)
    torch.testing.assert_close(compress(spec, once), once, rtol=1e-5, atol=1e-6)


def test_not_idempotent_rms_and_zero_grid_absmax():
    # rms: the RMS of the quantized row differs from the original, so the step changes.
    x = torch.tensor([[0.1, 0.2, 0.3, 5.0]])
    once = compress("w2", x)
    assert not torch.allclose(compress("w2", once), once)
    # zero grid + absmax: a positive maximum clips to (2^(b-1)-1) step, shrinking the next absmax.
    once = compress("w2:zero,absmax", [[2.0, 1.0, 0.0, 0.5]])
    close(once, [[1, 1, 0, 0]])
    close(compress("w2:zero,absmax", once), [[0.5, 0.5, 0, 0]])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=8, max_size=8),
       st.sampled_from([2, 3, 4]))
def test_zero_grid_values_are_integer_multiples_of_step(values, bits):
    w = torch.tensor([values])
    out = compress(f"w{bits}:zero,absmax", w)
    amax = w.abs().max()
    step = amax / 2 ** (bits - 1)
    if step == 0:
        # all zero, or a subnormal maximum whose step underflows: the row quantizes to exact 0
        assert torch.all(out == 0)
        return
    codes = out / step
    torch.testing.assert_close(codes, codes.round(), atol=1e-4, rtol=0)
    assert codes.min() >= -(2 ** (bits - 1)) - 1e-4 and codes.max() <= 2 ** (bits - 1) - 1 + 1e-4


# ---- integer codes (the exact int x int matmul of megatron_csl/layers/linear.py) ---------------
@settings(max_examples=60, deadline=None)
@given(matrices, st.sampled_from(["w4a4", "w2a2", "w1.58a8", "w3a3:zero,absmax,tensor",
                                  "w4a4:absmean,trust", "s50+w4a4", "s50:nm2/4+w2a4:trust",
                                  "w1a1", "w8a8:zero"]))
def test_codes_times_unit_is_the_compressed_value_with_its_gradient(w, spec_text):
    spec = parse_spec(spec_text)
    w = torch.as_tensor(w, dtype=torch.float32)
    for codes_of, compress_of, bound in (
            (spec.weight_codes, spec.compress_weight, spec.weight.code_bound),
            (spec.activation_codes, spec.quantize_activation, spec.activation.code_bound)):
        x = w.clone().requires_grad_(True)
        codes, unit = codes_of(x)
        assert torch.equal(codes, codes.round()) and codes.abs().max() <= bound
        x_ref = w.clone().requires_grad_(True)
        reference = compress_of(x_ref)
        assert torch.equal(codes.detach() * unit, reference.detach())
        # The codes carry the estimator's gradient divided by the unit, except in an all-zero
        # row (unit 0: its output is 0 whatever the codes, so no gradient passes; documented).
        g = torch.randn_like(w)
        (codes * unit).backward(g)
        reference.backward(g)
        live = (unit > 0).expand_as(w) if unit.numel() > 1 else torch.full_like(w, bool(unit > 0), dtype=torch.bool)
        torch.testing.assert_close(x.grad[live], x_ref.grad[live], rtol=1e-5, atol=1e-6)
        assert not codes.detach()[~live].any()
