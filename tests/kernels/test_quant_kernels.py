"""Integer fake-quant kernels equal the reference bit for bit: values (hence codes and steps),
trust masks and gradients, for every grid, scale, granularity and estimator they cover."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import DEVICE
from .helpers import assert_same, ties_to_lowest_index

pytestmark = pytest.mark.usefixtures("triton_kernels")

WEIGHT_FORMATS = [
    "w1", "w1:trust", "w2", "w2:zero", "w2:zero,absmax", "w3:absmean", "w4", "w4:trust",
    "w4:absmax,trust", "w4:zero,absmean,trust", "w8", "w8:zero,trust", "w1.58",
    "w1.58:absmax,trust", "w1.58:absmean", "w4:g16", "w3:g32,zero,trust", "w4:tensor",
    "w2:tensor,absmax,zero,trust", "w1:tensor,trust",
]
SPARSE_QUANT = ["s50+w4", "s25+w4:trust", "s75+w2:zero,absmax,trust", "s50:tensor+w4:tensor,trust",
                "s50:nm2/4+w3:absmean", "s50:nm2/4+w1.58:trust", "s50+w4:g32,trust",
                "s50+w1:trust"]
ACTIVATION_FORMATS = ["a4", "a8:absmax", "a2:trust", "a1.58", "a3:zero,absmean,trust", "w4a4"]


def _gaussian(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(DEVICE, dtype)


def _awkward(shape, seed=1):
    """Values on a dyadic grid (exact ties at rounding boundaries for absmax scales), an all-zero
    row (step 0 -> exact zeros), a row of one repeated value and a row with an outlier."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-8, 9, shape, generator=g).float() / 8
    x[0] = 0.0
    x[1] = 0.375
    x[2, 3] = 40.0
    return x.to(DEVICE)


@pytest.mark.parametrize("text", WEIGHT_FORMATS)
@pytest.mark.parametrize("data", ["gaussian", "awkward"])
def test_weight_fake_quant_equals_reference(text, data):
    x = _gaussian((13, 96)) if data == "gaussian" else _awkward((13, 96))
    assert_same(text, x)


@pytest.mark.parametrize("text", ["w4", "w2:zero,absmax,trust", "w4:g32,trust", "w3:tensor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights(text, dtype):
    assert_same(text, _gaussian((9, 64), seed=3, dtype=dtype))


@pytest.mark.parametrize("text", SPARSE_QUANT)
def test_pruned_then_quantized_equals_reference(text, monkeypatch):
    """Statistics over the survivors only, pruned entries 0, gradient: trust mask | ~keep."""
    assert_same(text, _gaussian((11, 64), seed=2))
    ties_to_lowest_index(monkeypatch)  # the dyadic data repeats magnitudes
    assert_same(text, _awkward((11, 64), seed=4))


@pytest.mark.parametrize("text", ACTIVATION_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_fake_quant_equals_reference(text, dtype):
    x = _gaussian((3, 5, 96), seed=6, dtype=dtype)
    x[0, 0] = 0.0  # a token of zeros
    assert_same(text, x, kind="activation")


def test_returned_steps_are_the_reference_steps():
    """The per-row step the kernel used is the reference's IntQuant.step (float32, bitwise)."""
    from megatron_csl.compression import parse_spec
    from megatron_csl.compression.stats import Grouped
    from megatron_csl.kernels import ops

    x = _gaussian((7, 80), seed=9)
    for text in ("w4", "w2:zero,absmean", "w1.58:absmax"):
        q = parse_spec(text).weight
        _, _, step, _ = ops.int_fake_quant(x, q, 80, return_stats=True)
        grouped = Grouped(x, "row")
        expected = q.step(grouped.view(x), grouped, None).reshape(-1)
        assert torch.equal(step, expected), text


def test_segment_longer_than_registers_is_refused():
    from megatron_csl.compression import parse_spec
    from megatron_csl.kernels import ops

    with pytest.raises(ValueError, match="exceeds the kernels' MAX_SEGMENT"):
        ops.int_fake_quant(torch.zeros(ops.MAX_SEGMENT + 1, device=DEVICE),
                           parse_spec("w4").weight, ops.MAX_SEGMENT + 1)


_bits = st.sampled_from(["1", "2", "3", "4", "5", "6", "7", "8", "1.58"])
_grid = st.sampled_from(["", "zero"])
_scale = st.sampled_from(["", "absmax", "absmean"])
_gran = st.sampled_from(["", "tensor", "g16", "g32"])
_est = st.sampled_from(["", "trust"])


@settings(max_examples=25, deadline=None)
@given(bits=_bits, grid=_grid, scale=_scale, gran=_gran, est=_est,
       rows=st.integers(1, 9), groups=st.integers(1, 6), seed=st.integers(0, 2 ** 16),
       spread=st.sampled_from([1e-3, 1.0, 1e3]))
def test_random_integer_formats(bits, grid, scale, gran, est, rows, groups, seed, spread):
    if grid == "zero" and bits in ("1", "1.58"):
        grid = ""  # zero grid needs b >= 2; ternary has its own grid
    options = ",".join(o for o in (grid, scale, gran, est) if o)
    text = f"w{bits}" + (f":{options}" if options else "")
    x = _gaussian((rows, 32 * groups), seed=seed) * spread
    assert_same(text, x)
