"""Issue 17 formats besides vq: Hadamard + sparsity, float trust, outliers, noise, activation
sparsity: forward semantics, backward, capacity."""
import math

import pytest
import torch

from megatron_csl.compression import gaussian_mse, gaussian_mse_parts, parse_spec, predicted_epm
from megatron_csl.compression import floats
from megatron_csl.compression.gaussian import magnitude_pruning_mse
from megatron_csl.compression.hadamard import block_hadamard


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- Hadamard with sparsity (QuEST: rotate, prune, quantize the survivors) --------------------
def test_hadamard_sparsity_prunes_and_quantizes_in_the_rotated_basis():
    spec = parse_spec("s50:nm4/8+w4a4:had,trust")
    w = _randn(8, 256)
    rotated = block_hadamard(spec.compress_weight(w), 128)
    groups = rotated.reshape(8, -1, 8)
    assert torch.equal((groups.abs() > 1e-6).sum(dim=2), torch.full((8, 32), 4))
    # the kept ones are the 4 largest of each group of the rotated weight, quantized on the w4 grid
    w_rot = block_hadamard(w, 128).reshape(8, -1, 8)
    keep = torch.zeros_like(w_rot, dtype=torch.bool).scatter_(
        2, w_rot.abs().topk(4, dim=2).indices, True)
    assert torch.equal(groups.abs() > 1e-6, keep)
    w4_only = parse_spec("s50:nm4/8+w4").compress_weight(w_rot.reshape(8, 256))
    torch.testing.assert_close(rotated, w4_only, atol=1e-5, rtol=1e-5)
    # unlike s50+w4 without rotation, the weight seen by the layer is dense
    assert (spec.compress_weight(w) != 0).float().mean() > 0.9


def test_hadamard_sparsity_gradient_is_masked_in_the_rotated_basis():
    spec = parse_spec("s50+w4:had,trust")
    w_rot = _randn(4, 128)
    w_rot[:, 0] = 20.0  # clipped by the w4 grid in the rotated basis: the trust mask blocks it
    w = block_hadamard(w_rot, 128).requires_grad_(True)
    up = _randn(4, 128, seed=1)
    (spec.compress_weight(w) * up).sum().backward()
    # pruned entries: straight-through; survivors: trust mask -> in the rotated basis every
    # gradient entry is either the upstream one or 0
    g_rot, up_rot = block_hadamard(w.grad, 128), block_hadamard(up, 128)
    passed = torch.isclose(g_rot, up_rot, atol=1e-5)
    blocked = g_rot.abs() < 1e-5
    assert (passed | blocked).all() and blocked[:, 0].all() and passed.float().mean() > 0.9


# ---- trust for float formats --------------------------------------------------------------------
@pytest.mark.parametrize("text", ["fp4:trust", "fp4:mx,trust", "afp4:trust"])
def test_float_trust_zeroes_the_gradient_of_clipped_values(text):
    spec = parse_spec(text)
    x = _randn(16, 64) * 2
    x[0, 0] = 100.0
    if "mx" in text:  # the block's power-of-two scale 2^(floor(log2 amax) - 2): 7.5 / 1 > 7 clips
        x[0, :32] = x[0, :32].clamp(-1, 1)
        x[0, 0] = 7.5
    bound = floats.FORMATS["e2m1"].trust_bound()
    assert bound == 7.0  # max 6 plus half the top gap (6 - 4) / 2
    x = x.requires_grad_(True)
    out = spec.compress_weight(x) if spec.weight else spec.quantize_activation(x)
    out.sum().backward()
    assert x.grad[0, 0] == 0 and ((x.grad == 0) | (x.grad == 1)).all()
    assert (x.grad == 1).float().mean() > 0.9
    if text == "fp4:trust":  # row scale: clipped exactly where |x| > 7 * kappa * RMS
        kappa = floats.optimal_format_scale("e2m1")[0]
        rms = x.detach().pow(2).mean(dim=1, keepdim=True).sqrt()
        torch.testing.assert_close(x.grad, (x.detach().abs() <= 7.0 * kappa * rms).float())
    plain = x.detach().clone().requires_grad_(True)
    base = parse_spec(text.replace(",trust", "").replace(":trust", ""))
    (base.compress_weight(plain) if base.weight else base.quantize_activation(plain)).sum().backward()
    assert (plain.grad == 1).all()


def test_float_trust_does_not_change_values_or_gmse():
    w = _randn(8, 128)
    assert torch.equal(parse_spec("fp4a4:had,trust").compress_weight(w),
                       parse_spec("fp4a4:had").compress_weight(w))
    assert gaussian_mse("fp4:trust") == gaussian_mse("fp4")


# ---- outliers -----------------------------------------------------------------------------------
def test_outliers_stay_exact_and_the_rest_is_quantized_over_the_rest():
    spec = parse_spec("w4:out1")
    w = _randn(8, 400)
    w[:, 7] = 30.0  # a huge outlier column
    out = spec.compress_weight(w)
    exact = out == w
    assert torch.equal(exact.sum(dim=1), torch.full((8,), 4))  # floor(1% of 400) per row
    assert exact[:, 7].all()
    top = w.abs().topk(4, dim=1).indices
    assert torch.equal(torch.zeros_like(exact).scatter_(1, top, True), exact)
    # the others are w4 values with the step from the non-outliers' RMS
    rest = w.masked_fill(exact, 0.0)
    ref = parse_spec("w4").weight.quantize(w, None, None, ~exact)[0]
    torch.testing.assert_close(out[~exact], ref[~exact])
    assert (out - w).pow(2).mean() < (parse_spec("w4").compress_weight(w) - w).pow(2).mean()
    assert rest.abs().max() < 30


def test_outlier_gradient_and_capacity():
    w = _randn(4, 300).requires_grad_(True)
    parse_spec("w3:out1,trust").compress_weight(w).sum().backward()
    exact = parse_spec("w3:out1").compress_weight(w.detach()) == w.detach()
    assert (w.grad[exact] == 1).all()
    assert gaussian_mse("w4:out1") < gaussian_mse("w4")
    assert parse_spec("w4:out1").w_bits == pytest.approx(4 * 0.99 + 0.01 * 32)


# ---- noise injection ----------------------------------------------------------------------------
def test_noise_has_the_gmse_of_its_format_per_row():
    spec = parse_spec("noise:w4")
    w = _randn(64, 4096) * torch.linspace(0.1, 2.0, 64)[:, None]
    torch.manual_seed(0)
    noise = spec.compress_weight(w) - w
    row_ms = w.pow(2).mean(dim=1)
    ratio = noise.pow(2).mean(dim=1) / row_ms
    assert ratio.mean().item() == pytest.approx(gaussian_mse("w4"), rel=0.02)
    assert noise.mean().abs() < 1e-3
    # fresh noise each call, reproducible from the default generator's state
    torch.manual_seed(0)
    again = spec.compress_weight(w) - w
    assert torch.equal(again, noise) and not torch.equal(spec.compress_weight(w) - w, noise)


def test_noise_backward_is_straight_through_and_capacity_is_its_format():
    w = _randn(4, 32).requires_grad_(True)
    up = _randn(4, 32, seed=1)
    (parse_spec("noise:w2").compress_weight(w) * up).sum().backward()
    assert torch.equal(w.grad, up)
    for target in ("w4", "w2:zero", "fp4", "vq2:2"):
        assert gaussian_mse(f"noise:{target}") == gaussian_mse(target)
        assert predicted_epm(f"noise:{target}") == predicted_epm(target)
    assert parse_spec("noise:w4").w_bits == 16.0  # it stores nothing compressed
    assert not parse_spec("noise:w4").weight_is_deterministic  # layers must not cache it
    assert all(parse_spec(t).weight_is_deterministic for t in ("w4", "vq2:2", "as50", "dense"))


# ---- activation sparsity ------------------------------------------------------------------------
def test_activation_sparsity_keeps_the_largest_per_token():
    spec = parse_spec("as50+w4")
    x = _randn(2, 5, 64).requires_grad_(True)
    out = spec.quantize_activation(x)
    kept = out != 0
    assert torch.equal(kept.sum(dim=-1), torch.full((2, 5), 32))
    top = x.detach().abs().topk(32, dim=-1).indices
    assert torch.equal(torch.zeros_like(kept).scatter_(-1, top, True), kept)
    assert torch.equal(out[kept], x.detach()[kept])  # no activation quantizer: survivors exact
    out.sum().backward()
    assert torch.equal(x.grad, kept.float())  # pruned inputs get no gradient
    # weights are compressed by the weight format as usual
    w = _randn(8, 64)
    assert torch.equal(spec.compress_weight(w), parse_spec("w4").compress_weight(w))


def test_activation_sparsity_then_quantization_over_the_survivors():
    spec = parse_spec("as50+a4")
    x = _randn(6, 128)
    out = spec.quantize_activation(x)
    keep = parse_spec("as50").quantize_activation(x) != 0
    assert torch.equal(out != 0, keep)
    ref = parse_spec("a4").activation.quantize(x, None, None, keep)[0] * keep
    torch.testing.assert_close(out, ref)


def test_activation_sparsity_capacity():
    assert gaussian_mse_parts("as50") == (None, magnitude_pruning_mse(0.5))
    w, a = gaussian_mse_parts("as50+w4a4")
    assert w == gaussian_mse("w4") and magnitude_pruning_mse(0.5) < a < 1
    assert predicted_epm("as50+w4") == pytest.approx(predicted_epm("w4") * predicted_epm("as50"))
    assert math.isclose(predicted_epm("as25"), predicted_epm("s25"))


# ---- tools/capacity.py ---------------------------------------------------------------------------
def test_capacity_tool_reports_the_new_formats(capsys):
    import json

    from megatron_csl.scaling.capacity_cli import main

    specs = ["noise:w4", "w4:out1", "as50+w4", "fp4:trust", "s50:nm4/8+w4a4:had,trust"]
    assert main([*specs, "--json"]) == 0
    rows = {r["spec"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["noise:w4"]["gmse_w"] == gaussian_mse("w4") and rows["noise:w4"]["w_bits"] == 16
    assert rows["w4:out1"]["w_bits"] == pytest.approx(4.28)
    assert rows["w4:out1"]["gmse_w"] < gaussian_mse("w4")
    assert rows["as50+w4"]["gmse_a"] == pytest.approx(magnitude_pruning_mse(0.5))
    assert rows["fp4:trust"]["predicted_epm"] == predicted_epm("fp4")
    assert rows["s50:nm4/8+w4a4:had,trust"]["sparsity"] == 0.5
    for row in rows.values():
        assert row["predicted_epm"] == pytest.approx(predicted_epm(row["spec"]))
