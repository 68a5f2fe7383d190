"""LSQ and PACT (compression/learned.py): grammar, initial values and the papers' gradients.

TP=2 = TP=1 and the checkpoint round trip: tests/layers/test_learned_parallel.py.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.compression import SpecError, gaussian_mse_parts, parse_spec
from megatron_csl.compression import learned as lq


# ---- grammar ---------------------------------------------------------------------------------
@pytest.mark.parametrize("text,canonical", [
    ("w4:lsq", "w4:lsq"), ("w4a4:lsq", "w4a4:lsq"), ("a4:pact", "a4:pact"),
    ("w4:lsq+a4:lsq", "w4a4:lsq"), ("w4+a4:pact", "w4+a4:pact"), ("w4:zero,lsq", "w4:zero,lsq"),
    ("w1.58:lsq", "w1.58:lsq"), ("w4:lsq+a8", "w4:lsq+a8"), ("w4:row,lsq", "w4:lsq"),
])
def test_grammar_round_trip(text, canonical):
    spec = parse_spec(text)
    assert spec.canonical == canonical
    assert parse_spec(spec.canonical) == spec
    assert spec.learned


def test_learned_parts_are_where_the_spec_says():
    spec = parse_spec("w4+a4:pact")
    assert spec.weight.learned == "" and spec.activation.learned == "pact"
    spec = parse_spec("w4a4:zero,lsq")
    assert (spec.weight.learned, spec.activation.learned) == ("lsq", "lsq")
    assert spec.weight.grid == spec.activation.grid == "zero"
    assert not parse_spec("w4a4").learned


@pytest.mark.parametrize("text,words", [
    ("w4a4:pact", ["'pact' learns a clip for activations only", "w4+a4:pact"]),
    ("w4:pact", ["'pact' learns a clip for activations only"]),
    ("w4:lsq,absmax", ["cannot be combined with 'absmax'", "valid with 'lsq': sym, zero"]),
    ("w4:lsq,trust", ["cannot be combined with 'trust'"]),
    ("a4:pact,had", ["cannot be combined with 'had'"]),
    ("w4:lsq,g128", ["'g128' is not available"]),
    ("w4:lsq,tensor", ["'tensor' is not available"]),
    ("w4:lsq,pact", ["conflicting learned options 'lsq' and 'pact'"]),
    ("s50+w4:lsq", ["cannot be combined with sparsity"]),
    ("w4:out1,lsq", ["cannot be combined with 'out1'"]),
    ("as50+a4:pact", ["cannot be combined with activation sparsity ('as50')"]),
    ("fp4:lsq", ["unknown option 'lsq' for 'fp4'"]),
    ("w4:lsqq", ["unknown option 'lsqq'", "lsq, pact"]),
])
def test_bad_specs_are_named(text, words):
    with pytest.raises(SpecError) as err:
        parse_spec(text)
    for word in words:
        assert word in str(err.value)


def test_fixed_rule_paths_refuse_learned_parts():
    """The step lives in the layer: applying the spec without it must not silently use rms."""
    spec = parse_spec("w4a4:lsq")
    with pytest.raises(SpecError, match="parameter of the compressed linear"):
        spec.compress_weight(torch.randn(4, 8))
    with pytest.raises(SpecError, match="parameter of the compressed linear"):
        spec.quantize_activation(torch.randn(4, 8))
    assert not spec.integer_matmul_exact(64)
    assert parse_spec("w4a4").integer_matmul_exact(64)


def test_bits_and_capacity_are_the_grids():
    """Bits are the grid's; GMSE is the grid's at its best scale (what a learned step can reach)."""
    assert parse_spec("w4a4:lsq").w_bits == parse_spec("w4a4").w_bits == 4
    assert gaussian_mse_parts("w4a4:lsq") == gaussian_mse_parts("w4a4")
    assert gaussian_mse_parts("w4:zero,lsq") == gaussian_mse_parts("w4:zero")


# ---- initial values --------------------------------------------------------------------------
@pytest.mark.parametrize("text,qp", [("w4", 8), ("w4:zero", 7), ("w2", 2), ("w2:zero", 1),
                                     ("w1.58", 1), ("w8", 128)])
def test_positive_levels_and_init(text, qp):
    q = parse_spec(text + (",lsq" if ":" in text else ":lsq")).weight
    assert lq.positive_levels(q) == qp
    mean_abs = torch.tensor([0.3, 1.2])
    assert torch.allclose(lq.lsq_init_step(q, mean_abs), 2 * mean_abs / math.sqrt(qp))
    assert lq.lsq_gradient_scale(q, 100) == pytest.approx(1 / math.sqrt(100 * qp))


def test_pact_clip_starts_at_the_papers_value():
    assert lq.PACT_INIT_ALPHA == 10.0


# ---- gradients -------------------------------------------------------------------------------
def _lsq_reference(x, s, bits, grid, g):
    """LSQ's forward and gradients written out element by element in float64 (Esser et al.
    eq. 1-3 and sec. 2.2, on this project's grids)."""
    if grid == "sym":
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    value = torch.zeros_like(x)
    dx = torch.zeros_like(x)
    ds = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            r = x[i, j].item() / s[i].item()
            if grid == "sym":
                k = min(max(math.floor(r), lo), hi)
                level, inside = k + 0.5, lo <= r < hi + 1
            else:
                k = min(max(round(r), lo), hi)
                level, inside = float(k), lo <= r <= hi
            value[i, j] = level * s[i].item()
            dx[i, j] = 1.0 if inside else 0.0
            ds[i, j] = g * ((level - r) if inside else level)
    return value, dx, ds


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 4), cols=st.integers(1, 12), bits=st.sampled_from([2, 3, 4]),
       grid=st.sampled_from(["sym", "zero"]), seed=st.integers(0, 2**16))
def test_lsq_gradients_match_the_paper(rows, cols, bits, grid, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(rows, cols, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    s = (torch.rand(rows, 1, generator=gen, dtype=torch.float64) * 0.5 + 0.1).requires_grad_(True)
    q = parse_spec(f"w{bits}:{grid},lsq").weight
    g = lq.lsq_gradient_scale(q, cols)
    upstream = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    out = lq.lsq_quantize(q, x, s, g)
    (out * upstream).sum().backward()
    value, dx, ds = _lsq_reference(x.detach(), s.detach().reshape(-1), bits, grid, g)
    assert torch.allclose(out.detach(), value, rtol=0, atol=1e-12)
    assert torch.allclose(x.grad, upstream * dx, rtol=0, atol=1e-12)
    assert torch.allclose(s.grad.reshape(-1), (upstream * ds).sum(dim=1), rtol=1e-10, atol=1e-12)


def test_lsq_step_gradient_matches_finite_differences_where_clipped():
    """Outside the range the value is s * (end level), linear in s: a central difference of the
    forward must equal the analytic gradient / g exactly there (inside, LSQ adds the rounding
    residual -x/s that a finite difference of a step function cannot see)."""
    q = parse_spec("w4:lsq").weight
    x = torch.tensor([[-30.0, -9.0, 12.0, 40.0]], dtype=torch.float64)   # all beyond 8 steps
    s = torch.tensor([[0.5]], dtype=torch.float64, requires_grad=True)
    lq.lsq_quantize(q, x, s, 1.0).sum().backward()
    h = 1e-6
    with torch.no_grad():
        fd = (lq.lsq_quantize(q, x, s + h, 1.0).sum() - lq.lsq_quantize(q, x, s - h, 1.0).sum()) / (2 * h)
    assert s.grad.item() == pytest.approx(fd.item(), rel=1e-9)
    assert s.grad.item() == pytest.approx(-7.5 - 7.5 + 7.5 + 7.5)


def test_lsq_gradient_scale_scales_only_the_step():
    q = parse_spec("w4:lsq").weight
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    grads = []
    for g in (1.0, 0.25):
        s = torch.full((3, 1), 0.3, dtype=torch.float64, requires_grad=True)
        x.grad = None
        out = lq.lsq_quantize(q, x, s, g)
        out.sum().backward()
        grads.append((out.detach(), x.grad.clone(), s.grad.clone()))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert torch.allclose(grads[1][2], grads[0][2] * 0.25)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 40), bits=st.sampled_from([2, 4, 8]), grid=st.sampled_from(["sym", "zero"]),
       alpha=st.floats(0.2, 3.0), seed=st.integers(0, 2**16))
def test_pact_forward_and_gradients(n, bits, grid, alpha, seed):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(2, n, generator=gen, dtype=torch.float64) * 2).requires_grad_(True)
    a = torch.tensor([alpha], dtype=torch.float64, requires_grad=True)
    q = parse_spec(f"a{bits}:{grid},pact").activation
    upstream = torch.randn(2, n, generator=gen, dtype=torch.float64)
    out = lq.pact_quantize(q, x, a)
    (out * upstream).sum().backward()
    xd = x.detach()
    # forward: the clipped input on the grid whose outermost levels are +-alpha
    assert out.detach().abs().max() <= alpha * (1 + 1e-12)
    step = lq.pact_step(q, torch.tensor(alpha, dtype=torch.float64)).item()
    assert (out.detach() - xd.clamp(-alpha, alpha)).abs().max() <= step * (1 + 1e-9)
    clipped = xd.abs() >= alpha
    # PACT's gradients: straight through inside the clip, sign(x) to alpha outside it
    assert torch.equal(x.grad, torch.where(clipped, torch.zeros_like(xd), upstream))
    assert a.grad.item() == pytest.approx((upstream * torch.sign(xd) * clipped).sum().item(),
                                          abs=1e-12)


def test_pact_clip_gradient_is_the_clips_finite_difference():
    """d clip(x, -a, a) / da = sign(x) beyond the clip: PACT's gradient is that of the clip."""
    q = parse_spec("a8:pact").activation
    x = torch.tensor([[-3.0, -0.2, 0.1, 2.5]], dtype=torch.float64)
    a = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    lq.pact_quantize(q, x, a).sum().backward()
    h = 1e-6
    fd = ((x.clamp(-1 - h, 1 + h) - x.clamp(-1 + h, 1 - h)) / (2 * h)).sum().item()
    assert a.grad.item() == pytest.approx(fd) == 0.0   # -1 + 1


# ---- the layer (TP=1) ------------------------------------------------------------------------
def _layer(kind, fmt, in_features=64, out_features=48):
    from megatron_csl.layers import CompressedColumnParallelLinear, CompressedRowParallelLinear
    from megatron_csl.model import ModelShape, llama_transformer_config

    common = dict(config=llama_transformer_config(ModelShape(1, 64, 4, 128)),
                  init_method=torch.nn.init.normal_, bias=False, skip_bias_add=True,
                  compression=fmt)
    if kind == "column":
        return CompressedColumnParallelLinear(in_features, out_features, gather_output=False,
                                              **common)
    return CompressedRowParallelLinear(in_features, out_features, input_is_parallel=True, **common)


@pytest.mark.parametrize("kind", ["column", "row"])
def test_layer_initialises_steps_from_weights_and_first_batch(megatron_cpu, kind):
    torch.manual_seed(0)
    layer = _layer(kind, "w4a4:lsq")
    scales = layer.learned_scales
    assert torch.isnan(scales.weight_step_init).all() and torch.isnan(scales.input_step_init).all()
    assert torch.equal(scales.weight_step_offset, torch.zeros(48))
    x = torch.randn(8, 2, 64) * 3
    layer(x)
    qp = 8
    expected_w = 2 * layer.weight.detach().abs().mean(dim=1) / math.sqrt(qp)
    assert torch.allclose(scales.weight_step_init, expected_w, rtol=1e-6)
    assert torch.allclose(scales.input_step_init, 2 * x.abs().mean() / math.sqrt(qp), rtol=1e-6)
    # later batches do not re-initialise
    first = scales.input_step_init.clone()
    layer(x * 5)
    assert torch.equal(scales.input_step_init, first)


@pytest.mark.parametrize("kind", ["column", "row"])
def test_layer_output_and_gradients_are_lsq_and_pact(megatron_cpu, kind):
    """The layer's matmul sees lsq_quantize / pact_quantize of its weight and input, and the
    learned parameters get their gradients (g uses the full input dimension)."""
    import torch.nn.functional as F

    fixed_activation = {"w4:lsq+a8": "a8", "as50+w4:lsq": "as50"}
    for fmt in ("w4a4:lsq", "w4:lsq+a4:pact", "w4:lsq+a8", "as50+w4:lsq"):
        torch.manual_seed(0)
        layer = _layer(kind, fmt)
        x = torch.randn(8, 2, 64, requires_grad=True)
        out, _ = layer(x)
        weights = torch.linspace(-1, 1, 48)
        (out * weights).sum().backward()
        spec = parse_spec(fmt)
        sc = layer.learned_scales
        w_step = (sc.weight_step_init + sc.weight_step_offset.detach()).unsqueeze(1).requires_grad_(True)
        w_ref = layer.weight.detach().clone().requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        g = 1 / math.sqrt(64 * 8)
        wq = lq.lsq_quantize(spec.weight, w_ref, w_step, g)
        if fmt in fixed_activation:   # a fixed-rule activation part beside a learned weight
            a = None
            xq = parse_spec(fixed_activation[fmt]).quantize_activation(x_ref)
            assert not torch.equal(xq, x_ref)
        elif spec.activation.learned == "pact":
            a = sc.input_clip.detach().clone().requires_grad_(True)
            xq = lq.pact_quantize(spec.activation, x_ref, a)
        else:
            a = (sc.input_step_init + sc.input_step_offset.detach()).requires_grad_(True)
            xq = lq.lsq_quantize(spec.activation, x_ref, a, g)
        (F.linear(xq, wq) * weights).sum().backward()
        assert torch.allclose(out, F.linear(xq, wq), rtol=1e-6, atol=1e-5)
        assert torch.allclose(sc.weight_step_offset.grad, w_step.grad.reshape(-1), rtol=1e-5, atol=1e-8)
        if a is not None:
            param = sc.input_clip if spec.activation.learned == "pact" else sc.input_step_offset
            assert torch.allclose(param.grad, a.grad, rtol=1e-5, atol=1e-8)
        assert torch.allclose(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
        assert sc.weight_step_offset.grad.abs().sum() > 0
