"""On a CUDA device the reference formats give the CPU results (skipped without CUDA)."""
import pytest
import torch

from megatron_csl.compression import parse_spec

pytestmark = pytest.mark.gpu

SPECS = ["w4", "w2:zero,absmax,tensor", "w4:g64,trust", "w4a4:had", "s50", "s50:tensor",
         "s50:nm2/4,rbbm10", "s50+w4", "fp4", "fp4:nv", "fp8:mx", "fp8a8"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("text", SPECS)
def test_cuda_matches_cpu(text):
    spec = parse_spec(text)
    gen = torch.Generator().manual_seed(0)
    w, up = torch.randn(64, 256, generator=gen), torch.randn(64, 256, generator=gen)
    x = torch.randn(4, 8, 256, generator=gen)
    results = {}
    for device in ("cpu", "cuda"):
        # A fresh leaf per device: w.to("cpu") is w itself, so requires_grad_ on it would make
        # the CUDA copy a non-leaf (its .grad stays None).
        wd = w.detach().clone().to(device).requires_grad_(True)
        out = spec.compress_weight(wd)
        (out * up.to(device)).sum().backward()
        results[device] = (out.detach().cpu(), wd.grad.cpu(), spec.quantize_activation(x.to(device)).cpu())
    for cpu, gpu in zip(results["cpu"], results["cuda"]):
        # Matmul-based Hadamard and reductions may round differently; decisions rarely flip.
        mismatch = (~torch.isclose(cpu, gpu, rtol=1e-5, atol=1e-6)).float().mean()
        assert mismatch < 1e-3, (text, float(mismatch))
