"""Small float formats: codebooks, rounding, per-row / mx / nv scaling."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.compression import parse_spec
from megatron_csl.compression.floats import FORMATS, optimal_format_scale, round_to_format


def close(a, b):
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=torch.float32), rtol=1e-6, atol=1e-7)


def test_codebooks():
    assert FORMATS["e2m1"].positive_values().tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    expected_max = {"e4m3": 448, "e5m2": 57344, "e3m2": 28, "e2m3": 7.5, "e2m1": 6}
    expected_count = {"e4m3": 127, "e5m2": 124, "e3m2": 32, "e2m3": 32, "e2m1": 8}
    for name, fmt in FORMATS.items():
        assert fmt.max_value == expected_max[name]
        assert len(fmt.positive_values()) == expected_count[name]
    assert FORMATS["e4m3"].positive_values()[1] == 2.0**-9  # smallest subnormal
    assert [FORMATS[n].emax for n in ("e4m3", "e5m2", "e3m2", "e2m3", "e2m1")] == [8, 15, 4, 2, 2]


def test_fp4_rounding_ties_to_even_and_saturates():
    y = torch.tensor([2.5, 5.0, 0.25, 0.75, 1.25, -2.6, 100.0, -7.0, 0.3, -0.0])
    close(round_to_format(y, "e2m1"), [2, 4, 0, 1, 1, -3, 6, -6, 0.5, 0])


@pytest.mark.parametrize("name,dtype", [("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2)])
def test_fp8_rounding_matches_torch_casts(name, dtype):
    gen = torch.Generator().manual_seed(0)
    top = FORMATS[name].max_value
    y = torch.cat([torch.randn(20000, generator=gen) * s for s in (1e-3, 1.0, 30.0, top / 4)])
    pos = torch.tensor(FORMATS[name].positive_values(), dtype=torch.float32)
    ties = (pos[1:] + pos[:-1]) / 2  # exact midpoints: round half to even
    y = torch.cat([y, ties, -ties]).clamp(-top, top)
    assert torch.equal(round_to_format(y, name), y.to(dtype).float())


def test_fp4_row_scale_is_gaussian_optimal():
    kappa = optimal_format_scale("e2m1")[0]
    x = torch.tensor([[1.0, -2.0, 0.3, 0.5]])
    s = kappa * math.sqrt((1 + 4 + 0.09 + 0.25) / 4)  # 0.5628: x / s = 1.78, -3.55, 0.53, 0.89
    close(parse_spec("fp4").compress_weight(x), torch.tensor([[2.0, -4.0, 0.5, 1.0]]) * s)


def test_fp4_tensor_scale():
    kappa = optimal_format_scale("e2m1")[0]
    x = torch.tensor([[1.0, -2.0], [0.3, 0.5]])
    s = kappa * math.sqrt((1 + 4 + 0.09 + 0.25) / 4)
    close(parse_spec("fp4:tensor").compress_weight(x), torch.tensor([[2.0, -4.0], [0.5, 1.0]]) * s)


def test_mx_power_of_two_block_scale():
    x = torch.zeros(1, 64)
    # block 1: amax 5 -> 2^(floor(log2 5) - emax 2) = 1: plain FP4 rounding.
    x[0, :4] = torch.tensor([5.0, 0.3, -2.6, 1.25])
    # block 2: amax 0.7 -> scale 2^(-1 - 2) = 1/8: 0.7 * 8 = 5.6 -> 6 -> 0.75.
    x[0, 32:34] = torch.tensor([0.7, -0.1])
    expected = torch.zeros(1, 64)
    expected[0, :4] = torch.tensor([4.0, 0.5, -3.0, 1.0])
    expected[0, 32:34] = torch.tensor([0.75, -0.125])
    close(parse_spec("fp4:mx").compress_weight(x), expected)


def test_nv_e4m3_block_scale_relative_to_row_scale():
    x = torch.zeros(1, 32)
    x[0, :3] = torch.tensor([6.0, 2.5, -1.2])  # block amax 6 = row amax: ratio 448 -> scale 1
    x[0, 16:19] = torch.tensor([3.0, 1.1, -0.4])  # block amax 3: ratio 224 -> scale 0.5
    expected = torch.zeros(1, 32)
    expected[0, :3] = torch.tensor([6.0, 2.0, -1.0])
    expected[0, 16:19] = torch.tensor([3.0, 1.0, -0.5])
    close(parse_spec("fp4:nv").compress_weight(x), expected)


def test_nv_block_scale_is_rounded_to_e4m3():
    x = torch.zeros(1, 32)
    x[0, 0] = 6.0
    x[0, 16] = 6.0 * 0.3  # ratio 448 * 0.3 = 134.4 -> E4M3 128 -> scale 128/448; 1.8 / scale = 6.3
    scale = 128 / 448
    y = parse_spec("fp4:nv").compress_weight(x)
    close(y[0, 16], 6.0 * scale)  # 6.3 saturates to 6


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=64, max_size=64),
       st.sampled_from(["fp4:mx", "fp8:mx", "fp6:mx", "fp6:e3m2,mx"]))
def test_mx_is_idempotent(values, spec):
    # The block amax after rounding stays in the same binade [2^emax, max], so the shared
    # exponent and every value are unchanged by a second pass.
    x = torch.tensor([values])
    once = parse_spec(spec).compress_weight(x)
    assert torch.equal(parse_spec(spec).compress_weight(once), once)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-50, 50, allow_nan=False, width=32), min_size=32, max_size=32),
       st.sampled_from(["fp4", "fp8", "fp8:e5m2", "fp6:e3m2", "fp6"]))
def test_row_scaled_values_are_codebook_entries_times_scale(values, spec):
    x = torch.tensor([values])
    q = parse_spec(spec)
    y = q.compress_weight(x)
    name = q.weight.fmt
    s = float(optimal_format_scale(name)[0] * x.double().pow(2).mean().sqrt())
    if s == 0:
        assert torch.all(y == 0)
        return
    codes = y.double() / s
    pos = torch.tensor(FORMATS[name].positive_values(), dtype=torch.float64)
    distance = (codes.abs().reshape(-1, 1) - pos.reshape(1, -1)).abs().min(dim=1).values
    assert torch.all(distance <= 1e-5 * pos[-1])
    assert y.abs().max() <= s * FORMATS[name].max_value * (1 + 1e-6)


def test_float_ste_gradient():
    x = torch.randn(2, 64, requires_grad=True)
    up = torch.randn(2, 64)
    (parse_spec("fp4:nv").compress_weight(x) * up).sum().backward()
    torch.testing.assert_close(x.grad, up)
    a = torch.randn(3, 64, requires_grad=True)
    parse_spec("fp8a8:mx").quantize_activation(a).sum().backward()
    assert torch.all(a.grad == 1)
