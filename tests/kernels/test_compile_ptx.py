"""Without a GPU: compile the kernels for an H100 (sm_90) to PTX with the installed Triton and
check the instructions that exactness depends on.

Triton compiles to PTX (and with its bundled ptxas to a cubin) without a GPU, so CI finds
kernels that would not compile, and verifies what the interpreter cannot: x / step is IEEE
division (div.rn.f32, not div.full/approx), float64 sqrt/div are round-to-nearest, no
float32 multiply-add was contracted into an FMA, and bf16 outputs are converted with rounding.
On a GPU machine the compiled kernels run in the other tests instead, so this one skips there.
"""
import importlib.util
import os
import re
from pathlib import Path

import pytest
import torch

from .conftest import HAVE_TRITON

pytestmark = [
    pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed"),
    pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU runs the compiled kernels"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="TRITON_INTERPRET=1 set for the whole session"),
]

KERNELS_FILE = Path(__file__).resolve().parents[2] / "megatron_csl" / "kernels" / "triton_kernels.py"


@pytest.fixture(scope="module")
def compiled_module(tmp_path_factory):
    """A fresh, non-interpreted copy of triton_kernels (the tests' copy is interpreted),
    compiling into a temporary cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_CACHE_DIR", str(tmp_path_factory.mktemp("triton_cache")))
        spec = importlib.util.spec_from_file_location("mcsl_triton_kernels_for_ptx",
                                                      KERNELS_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module


def _ptx(fn, signature: dict, constexprs: dict, num_warps: int = 4) -> str:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = dict(signature, **{name: "constexpr" for name in constexprs})
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                            target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": num_warps, "enable_fp_fusion": False})
    return kernel.asm["ptx"]


def _count(ptx: str, instruction: str) -> int:
    return len(re.findall(re.escape(instruction) + r"\b", ptx))


QUANT_SIGNATURE = {
    "x_ptr": "*bf16", "keep_ptr": "*u8", "step_in_ptr": "*fp32", "rms_in_ptr": "*fp64",
    "out_ptr": "*bf16", "gmask_ptr": "*u8", "step_out_ptr": "*fp32", "rms_out_ptr": "*fp64",
    "consts_ptr": "*fp64", "consts32_ptr": "*fp32", "n_seg": "i32", "seg_len": "i32",
    "step_in_stride": "i32",
}
QUANT_FLAGS = dict(QMIN=-8, QMAX=7, SCALE=1, FLOOR_GRID=True, ZERO_ABSMAX=False, HALF_RANGE=True,
                   HAS_KEEP=True, STEP_GIVEN=False, TRUST=True, ONE_BIT=False, STORE_STATS=False,
                   OUT_BF16=True, BLOCK_R=4, BLOCK_C=1024)


def test_quantize_kernel_uses_exact_arithmetic(compiled_module):
    ptx = _ptx(compiled_module.int_fake_quant_kernel, QUANT_SIGNATURE, QUANT_FLAGS)
    assert _count(ptx, "div.rn.f32") > 0          # x / step, IEEE
    assert _count(ptx, "div.full.f32") == 0 and _count(ptx, "div.approx.f32") == 0
    assert _count(ptx, "sqrt.rn.f64") == 4        # one RMS per row of the 4-row tile
    assert _count(ptx, "sqrt.approx.f32") == 0
    assert _count(ptx, "div.rn.f64") == 8         # sum / count and size * 2 / (2^b - 1)
    assert _count(ptx, "fma.rn.f32") == 0         # (code + 0.5) * step - x rounds twice
    assert _count(ptx, "cvt.rn.bf16.f32") > 0


def test_topk_kernels_compile(compiled_module):
    """Per-row / N:M selection and the whole-tensor radix passes (the slowest to compile of the
    rest are left to the GPU run)."""
    m = compiled_module
    x = {"x_ptr": "*fp32", "n": "i32"}
    rows = _ptx(m.segment_topk_kernel, {"x_ptr": "*bf16", "keep_ptr": "*u8", "out_ptr": "*bf16",
                                        "n_seg": "i32", "seg_len": "i32", "k": "i32"},
                dict(STORE_VALUE=True, BLOCK_R=1, BLOCK_C=4096))
    histogram = _ptx(m.radix_histogram_kernel, dict(x, prefix_ptr="*i32", hist_ptr="*i32"),
                     dict(SHIFT=16, BLOCK=8192))
    select = _ptx(m.radix_select_kernel, {"hist_ptr": "*i32", "prefix_ptr": "*i32",
                                          "remaining_ptr": "*i64"}, dict(SHIFT=8))
    assert ".entry segment_topk_kernel" in rows and ".entry radix_select_kernel" in select
    assert re.search(r"atom\.global\.\S*add", histogram)  # bins merged with global atomics
