"""w8a8 (and other integer x integer formats) through torch._int_mm, against fake-quant.

torch._int_mm runs on a CPU in torch 2.13, so the exact-integer arithmetic and the layer path
are checked here; tests/kernels/test_gpu_int8.py repeats it on CUDA (alignment padding, speed
shapes)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from megatron_csl.compression import parse_spec
from megatron_csl.kernels.int8 import int8_gemm_reason, int_codes_matmul, int_mm

INT8_FORMATS = ["w8a8", "w4a4", "w4a8:zero", "w1.58a8", "w8a8:absmax,tensor", "w4a4:trust"]


@pytest.mark.parametrize("text, why", [
    ("w8a8", None), ("w4a4:tensor", None),
    ("w4:g64+a4", "weight granularity 64 (its scale does not factor out of the sum)"),
    ("w4a4:had", "Hadamard rotation"), ("w4", "needs integer weights and activations"),
    ("fp8a8", "needs integer weights and activations"),
    # weight_codes/activation_codes ignore these, so the integer paths must not take them
    ("w4:out1+a4", "full-precision outliers"), ("as50+w8a8", "activation sparsity"),
    ("w4a4:lsq", "learned steps"),
])
def test_which_formats_run_on_int8(text, why):
    assert int8_gemm_reason(parse_spec(text), 4096) == why


def test_overflow_bound():
    assert int8_gemm_reason(parse_spec("w8a8"), 32000) is None
    assert "may overflow int32" in int8_gemm_reason(parse_spec("w8a8"), 40000)


@given(m=st.integers(1, 40), k=st.integers(1, 70), n=st.integers(1, 30),
       sym_x=st.booleans(), sym_w=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_int_codes_matmul_is_the_exact_integer_product(m, k, n, sym_x, sym_w, seed):
    gen = torch.Generator().manual_seed(seed)

    def codes(rows, sym):
        q = torch.randint(-128, 128, (rows, k), generator=gen).float()
        return 2 * q + 1 if sym else q

    cx, cw = codes(m, sym_x), codes(n, sym_w)
    exact = (cx.double() @ cw.double().t())
    assert torch.equal(int_codes_matmul(cx, cw, sym_x, sym_w).double(), exact)


def test_int_mm_pads_what_cuda_needs(monkeypatch):
    """On CUDA, m > 16 and k, n multiples of 8: int_mm zero-pads (checked via a fake CUDA)."""
    seen = []
    real = torch._int_mm

    def fake(a, b):
        seen.append((tuple(a.shape), tuple(b.shape)))
        return real(a, b)

    monkeypatch.setattr(torch, "_int_mm", fake)
    a = torch.randint(-5, 5, (3, 13), dtype=torch.int8)
    b = torch.randint(-5, 5, (13, 6), dtype=torch.int8)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    out = int_mm(a, b)
    assert seen == [((17, 16), (16, 8))]
    monkeypatch.undo()
    one = torch.randint(-5, 5, (3, 1), dtype=torch.int8)  # k = 1: padded on a CPU too
    assert torch.equal(int_mm(one, b[:1]), one.int() @ b[:1].int())
    assert torch.equal(out, a.int() @ b.int())


def _layer(fmt, dtype, kind="column"):
    from megatron_csl.layers import CompressedColumnParallelLinear, CompressedRowParallelLinear
    from megatron_csl.model import ModelShape, llama_transformer_config

    torch.manual_seed(0)
    config = llama_transformer_config(ModelShape(1, 64, 4, 128), bf16=dtype == torch.bfloat16,
                                      use_cpu_initialization=True)
    common = dict(config=config, init_method=lambda w: torch.nn.init.normal_(w, std=0.02),
                  bias=False, skip_bias_add=True, compression=fmt)
    if kind == "column":
        layer = CompressedColumnParallelLinear(256, 96, gather_output=False, **common)
    else:
        layer = CompressedRowParallelLinear(256, 96, input_is_parallel=True, **common)
    return layer.to(dtype)


@pytest.mark.parametrize("kind", ["column", "row"])
@pytest.mark.parametrize("fmt", INT8_FORMATS)
def test_bf16_layer_runs_on_int8_and_matches_fake_quant(megatron_cpu, monkeypatch, fmt, kind):
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.shape) or real(a, b))
    layer = _layer(fmt, torch.bfloat16, kind)
    exact = _layer(fmt, torch.float32, kind)   # float32: integer codes summed exactly in float
    with torch.no_grad():
        exact.weight.copy_(layer.weight.float())
    spec = parse_spec(fmt)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 256, generator=gen).bfloat16().requires_grad_(True)
    up = torch.randn(6, 3, 96, generator=gen)
    out, _ = layer(x)
    (out.float() * up).sum().backward()
    assert calls, "the int8 GEMM did not run"
    assert out.dtype == torch.bfloat16
    # The same exact integer sums and float32 units as the float32 layer: bit for bit.
    x32 = x.detach().float().requires_grad_(True)
    out32, _ = exact(x32)
    assert torch.equal(out, out32.bfloat16())

    # The fake-quant reference (bf16 values, float32 matmul): within bf16 rounding.
    w_ref = layer.weight.detach().float().requires_grad_(True)
    x_ref = x.detach().float().requires_grad_(True)
    ref = F.linear(spec.quantize_activation(x_ref.bfloat16()).float(),
                   spec.compress_weight(w_ref.bfloat16()).float())
    (ref * up).sum().backward()
    scale = ref.abs().max()
    assert (out.float() - ref).abs().max() <= 2e-2 * scale
    for got, want in ((layer.weight.grad, w_ref.grad), (x.grad, x_ref.grad)):
        assert (got.float() - want).abs().max() <= 2e-2 * want.abs().max()


def test_kernels_off_and_float32_keep_the_float_paths(megatron_cpu, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(1))
    x = torch.randn(4, 2, 256)
    _layer("w8a8", torch.float32)(x)          # float32: the exact float codes path
    monkeypatch.setenv("MEGATRON_CSL_KERNELS", "0")
    _layer("w8a8", torch.bfloat16)(x.bfloat16())
    assert calls == []
