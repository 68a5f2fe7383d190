"""On CUDA: one compressed forward + backward of every format runs without a host
synchronization (torch.cuda.set_sync_debug_mode("error") raises on any), on the kernels' path and
on the reference's. The CPU counterpart is tests/kernels/test_no_host_sync.py."""
import pytest
import torch

from megatron_csl import kernels
from megatron_csl.compression import parse_spec

from .test_no_host_sync import REFERENCE_FORMATS

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _step(spec, w, x, up_w, up_x):
    w = w.detach().clone().requires_grad_(True)
    x = x.detach().clone().requires_grad_(True)
    out_w, out_x = spec.compress_weight(w), spec.quantize_activation(x)
    loss = (out_w.float() * up_w).sum() + (out_x.float() * up_x).sum()
    loss.backward()
    return w.grad, x.grad


@pytest.mark.parametrize("mode", ["1", "0"])
@pytest.mark.parametrize("text", REFERENCE_FORMATS)
def test_compression_path_never_synchronizes(text, mode, dtype=torch.bfloat16):
    spec = parse_spec(text)
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.randn(1024, 2816, device="cuda", generator=g).to(dtype)
    x = torch.randn(2, 512, 2816, device="cuda", generator=g).to(dtype)
    up_w, up_x = torch.randn_like(w, dtype=torch.float32), torch.randn_like(x, dtype=torch.float32)
    with kernels.use_kernels(mode):
        _step(spec, w, x, up_w, up_x)  # warm-up: Triton compiles, constants made once
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            grads = _step(spec, w, x, up_w, up_x)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("text", ["w4", "w4a4", "w8a8", "s50+w4", "s50:nm2/4", "fp8"])
def test_compressed_layer_never_synchronizes(megatron_cpu, text):
    """The whole compressed linear (megatron's matmul, the weight cache, the int8 GEMM of
    w8a8/w4a4 in bf16) over two micro-batches, after a warm-up step."""
    from megatron_csl.layers import CompressedColumnParallelLinear
    from megatron_csl.model import ModelShape, llama_transformer_config

    config = llama_transformer_config(ModelShape(1, 1024, 8, 2816), bf16=True,
                                      use_cpu_initialization=True)
    layer = CompressedColumnParallelLinear(
        1024, 2816, config=config, init_method=torch.nn.init.normal_, bias=False,
        skip_bias_add=True, gather_output=False, compression=text).cuda().bfloat16()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(512, 2, 1024, device="cuda", generator=g).bfloat16()

    def micro_batches():
        for _ in range(2):
            out, _ = layer(x.detach().requires_grad_(True))
            out.float().sum().backward()

    micro_batches()
    layer.weight.grad = None
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        micro_batches()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert torch.isfinite(layer.weight.grad).all()
