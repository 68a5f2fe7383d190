"""On CUDA: the int8 GEMM path (torch._int_mm) gives the exact integer sums and the fake-quant
result of w8a8-like formats at training shapes, including shapes CUDA's kernel needs padded."""
import pytest
import torch
import torch.nn.functional as F

from megatron_csl.compression import parse_spec
from megatron_csl.kernels.int8 import int8_linear, int_codes_matmul

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("m, k, n", [(16384, 1024, 2816), (8, 13, 5), (100, 2816, 1024)])
@pytest.mark.parametrize("sym", [(True, True), (False, True), (False, False)])
def test_int_codes_matmul_exact_on_cuda(m, k, n, sym):
    g = torch.Generator(device="cuda").manual_seed(0)
    kx = torch.randint(-128, 128, (m, k), device="cuda", generator=g).float()
    kw = torch.randint(-128, 128, (n, k), device="cuda", generator=g).float()
    cx = 2 * kx + 1 if sym[0] else kx
    cw = 2 * kw + 1 if sym[1] else kw
    got = int_codes_matmul(cx, cw, *sym).double()
    want = (cx.double() @ cw.double().t())
    # float32 output: exact integers rounded once to float32
    assert torch.equal(got, want.float().double())


@pytest.mark.parametrize("text", ["w8a8", "w4a4", "w4a8:zero", "w1.58a8"])
def test_int8_linear_matches_fake_quant_on_cuda(text):
    spec = parse_spec(text)
    g = torch.Generator(device="cuda").manual_seed(1)
    w = (torch.randn(2816, 1024, device="cuda", generator=g) * 0.02).bfloat16()
    x = torch.randn(4, 2048, 1024, device="cuda", generator=g).bfloat16()
    cx, ux = spec.activation_codes(x.float())
    cw, uw = spec.weight_codes(w.float())
    out = int8_linear(spec, cx.bfloat16(), ux, cw.bfloat16(), uw)
    ref = F.linear(spec.quantize_activation(x).float(), spec.compress_weight(w).float())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= 2e-2 * ref.abs().max()
