"""GPTQ (megatron_csl/ptq/gptq.py) against RTN on layer-wise reconstruction error."""
import pytest
import torch

from megatron_csl.compression import parse_spec
from megatron_csl.ptq.gptq import GPTQError, check_gptq_quantizer, gptq_quantize, layer_output_error


def _problem(seed, rows=32, cols=128, n=512):
    """A weight and the Hessian 2 X^T X / n of correlated inputs (as a layer's inputs are)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols ** 0.5 + torch.eye(cols)
    X = torch.randn(n, cols, generator=g) @ mix
    return W, 2 * X.T @ X / n


@pytest.mark.parametrize("fmt", ["w4", "w3", "w2", "w4:zero", "w4:g32", "w4:tensor", "w4:absmax",
                                 "w1.58"])
@pytest.mark.parametrize("seed", [0, 1])
def test_gptq_beats_rtn_on_layer_output_error(fmt, seed):
    W, H = _problem(seed)
    spec = parse_spec(fmt)
    rtn = layer_output_error(W, spec.compress_weight(W), H)
    gptq = layer_output_error(W, gptq_quantize(W, H, spec.weight), H)
    assert gptq < 0.85 * rtn, (gptq, rtn)


@pytest.mark.parametrize("fmt", ["w4", "w3:zero", "w2"])
def test_gptq_lands_on_the_formats_grid(fmt):
    """Same step as RTN (from the weight, per row), so every value is an integer code of RTN's
    unit within the format's code range."""
    W, H = _problem(3)
    spec = parse_spec(fmt)
    Q = gptq_quantize(W, H, spec.weight)
    _, unit = spec.weight_codes(W)
    codes = Q.double() / unit.double()
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.round().abs().max() <= spec.weight.code_bound
    assert not torch.equal(Q, spec.compress_weight(W))   # it did move some roundings


def test_uncorrelated_inputs_make_gptq_rtn():
    """With H = c I there is no other column to absorb an error: GPTQ is round-to-nearest."""
    W, _ = _problem(0)
    spec = parse_spec("w4")
    Q = gptq_quantize(W, 3.0 * torch.eye(W.shape[1]), spec.weight)
    assert torch.equal(Q, spec.compress_weight(W))


def test_lazy_batches_do_not_change_the_result():
    W, H = _problem(5)
    q = parse_spec("w3").weight
    assert torch.allclose(gptq_quantize(W, H, q, block_size=128), gptq_quantize(W, H, q, block_size=16),
                          atol=1e-5)


def test_dead_inputs_get_zero_weight():
    W, H = _problem(6)
    H[:, 5] = 0
    H[5, :] = 0
    Q = gptq_quantize(W, H, parse_spec("w4:zero").weight)
    assert torch.all(Q[:, 5] == 0)


@pytest.mark.parametrize("fmt,why", [("fp4", "float formats"), ("w4:had", "'had'"),
                                     ("s50+w4", "sparsity"), ("w4a4", "activation quantization"),
                                     ("w4:lsq", "'lsq'"), ("s50", "sparsity")])
def test_unsupported_formats_are_named(fmt, why):
    with pytest.raises(GPTQError, match="use --method rtn") as err:
        check_gptq_quantizer(parse_spec(fmt))
    assert why in str(err.value) and repr(parse_spec(fmt).canonical) in str(err.value)


def test_hessian_must_fit_the_weight():
    W, H = _problem(0)
    with pytest.raises(GPTQError, match="Hessian is"):
        gptq_quantize(W, H[:64, :64], parse_spec("w4").weight)
