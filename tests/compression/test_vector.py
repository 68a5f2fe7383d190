"""Vector quantization vq<d>:<bits>: grid, nearest-point projection, trust backward, capacity."""
import numpy as np
import pytest
import torch

from megatron_csl.compression import SpecError, gaussian_mse, parse_spec, predicted_epm
from megatron_csl.compression import vector
from megatron_csl.compression.gaussian import scalar_quantizer_mse
from megatron_csl.compression.hadamard import block_hadamard

# Lloyd-Max (optimal non-uniform scalar) Gaussian MSE and the rate-distortion bound 2^(-2b).
LLOYD_MAX = {2: 0.1175, 3: 0.03454, 4: 0.009497}


def _lloyd_max_mse(bits: int) -> float:
    """Scalar Lloyd-Max on N(0,1), computed here (exact interval MSE, centroid iteration)."""
    from scipy.stats import norm

    levels = np.linspace(-2, 2, 2 ** bits)
    for _ in range(2000):
        edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
        mass = norm.cdf(edges[1:]) - norm.cdf(edges[:-1])
        levels = (norm.pdf(edges[:-1]) - norm.pdf(edges[1:])) / mass
    return scalar_quantizer_mse(levels)


def test_lloyd_max_constants_of_the_issue():
    for bits, value in LLOYD_MAX.items():
        assert _lloyd_max_mse(bits) == pytest.approx(value, rel=2e-3)


@pytest.mark.parametrize("dim,bits", [(2, 2), (2, 3), (2, 4), (4, 2)])
def test_gmse_between_rate_distortion_bound_and_scalar_lloyd_max(dim, bits):
    g = gaussian_mse(f"vq{dim}:{bits}")
    assert 2.0 ** (-2 * bits) < g < LLOYD_MAX[bits]
    # so it also beats the uniform scalar grid of the same bits (w<b>), and predicts more capacity
    assert g < gaussian_mse(f"w{bits}") and predicted_epm(f"vq{dim}:{bits}") > predicted_epm(f"w{bits}")


def test_more_dimensions_beat_fewer_at_equal_bits():
    assert gaussian_mse("vq4:2") < gaussian_mse("vq2:2")
    assert gaussian_mse("vq4:1") < gaussian_mse("vq2:1")


def test_shipped_grids_have_their_shape_and_are_the_fit():
    for d in vector.DIMENSIONS:
        for b in vector.supported_bits(d):
            grid = vector.gaussian_grid(d, b)
            assert grid.shape == (2 ** (d * b), d) and np.isfinite(grid).all()
            assert len(np.unique(grid.round(9), axis=0)) == 2 ** (d * b)
    with np.load(vector.GRID_FILE) as table:  # the package ships every supported grid
        assert sorted(table.files) == sorted(f"vq{d}_{b}" for d in vector.DIMENSIONS
                                             for b in vector.supported_bits(d))
    # the table is what fit_grid produces (the small grids are cheap to refit)
    for d, b in [(2, 1), (2, 2), (4, 1)]:
        np.testing.assert_allclose(vector.fit_grid(d, b), vector.gaussian_grid(d, b), atol=1e-9)


def _rotated(spec, w):
    return block_hadamard(spec.compress_weight(w), spec.weight.had)


@pytest.mark.parametrize("text", ["vq2:2", "vq4:1", "vq2:3,had64"])
def test_values_are_the_nearest_grid_points_times_row_rms(text):
    spec = parse_spec(text)
    q = spec.weight
    w = torch.randn(6, 256, generator=torch.Generator().manual_seed(3)) * 0.02
    w_rot = block_hadamard(w, q.had)
    rms = w_rot.pow(2).mean(dim=1, keepdim=True).sqrt()
    y = (w_rot / rms).reshape(-1, q.dim)
    grid = q.grid()
    nearest = grid[torch.cdist(y.double(), grid.double()).argmin(dim=1)]
    expected = (nearest.float().reshape(6, -1, q.dim) * rms[:, :, None]).reshape(6, 256)
    torch.testing.assert_close(_rotated(spec, w), expected, rtol=1e-5, atol=1e-7)


def test_trust_backward_zeroes_vectors_outside_the_grid_sphere():
    spec = parse_spec("vq2:2")
    q = spec.weight
    w = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    w_rot = block_hadamard(w, 128)
    w_rot[:, :2] = 50.0  # one far-out 2-vector per row (in the rotated basis)
    w = block_hadamard(w_rot, 128).requires_grad_(True)
    up = torch.randn(4, 128, generator=torch.Generator().manual_seed(1))
    (spec.compress_weight(w) * up).sum().backward()
    grad_rot = block_hadamard(w.grad, 128)
    up_rot = block_hadamard(up, 128)
    rms = w_rot.pow(2).mean(dim=1, keepdim=True).sqrt()
    radius = float(q.grid().norm(dim=1).max())
    inside = ((w_rot / rms).reshape(4, 64, 2).norm(dim=2) <= radius).repeat_interleave(2, dim=1)
    assert not inside[:, :2].any() and inside.float().mean() > 0.8
    torch.testing.assert_close(grad_rot, up_rot * inside, atol=1e-5, rtol=1e-5)
    # ste passes everything
    w2 = w.detach().clone().requires_grad_(True)
    (parse_spec("vq2:2,ste").compress_weight(w2) * up).sum().backward()
    torch.testing.assert_close(w2.grad, up)


def test_all_zero_rows_stay_zero_and_shapes_are_checked():
    spec = parse_spec("vq2:2")
    w = torch.randn(3, 128)
    w[1] = 0
    assert torch.equal(spec.compress_weight(w)[1], torch.zeros(128))
    with pytest.raises(SpecError, match="multiple of 128"):
        spec.compress_weight(torch.randn(3, 96))


def test_nearest_points_does_not_depend_on_batching():
    grid = parse_spec("vq2:4").weight.grid()
    y = torch.randn(70000, 2, generator=torch.Generator().manual_seed(5))
    whole = vector.nearest_points(y, grid)
    parts = torch.cat([vector.nearest_points(y[i:i + 999], grid) for i in range(0, 70000, 999)])
    assert torch.equal(whole, parts)
    brute = torch.cdist(y.double(), grid.double()).argmin(dim=1)
    assert (whole == brute).float().mean() > 0.9999


def test_capacity_tool_reports_vq(capsys):
    import json

    from megatron_csl.scaling.capacity_cli import main

    assert main(["vq2:2", "w2", "--json"]) == 0
    vq, w2 = json.loads(capsys.readouterr().out)
    assert vq["canonical"] == "vq2:2" and vq["w_bits"] == 2 == w2["w_bits"]
    assert vq["gmse_w"] == gaussian_mse("vq2:2") < w2["gmse_w"]
    assert vq["predicted_epm"] > w2["predicted_epm"]
