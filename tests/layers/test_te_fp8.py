"""FP8 through Transformer Engine (megatron_csl/layers/fp8.py): argument checks and config fields
on any machine; the FP8 GEMMs themselves need TE and a GPU (marked gpu, skipped elsewhere)."""
import importlib.util

import pytest
import torch

from megatron_csl.layers.fp8 import FP8_RECIPES, check_fp8, fp8_autocast, fp8_config_overrides

HAVE_TE = importlib.util.find_spec("transformer_engine") is not None
needs_te_gpu = pytest.mark.skipif(not (HAVE_TE and torch.cuda.is_available()),
                                  reason="needs Transformer Engine and a CUDA device")


@pytest.mark.parametrize("fmt, recipe, impl, message", [
    ("e5m2", "delayed", "te", "fp8 format must be one of hybrid, e4m3, got 'e5m2'"),
    ("hybrid", "current", "te",
     "fp8 recipe must be one of delayed, tensorwise, mxfp8, blockwise, got 'current'"),
    ("hybrid", "delayed", "local",
     "fp8 format 'hybrid' needs the Transformer Engine layers (impl 'te', --transformer-impl te)"
     ", got impl 'local'"),
])
def test_bad_fp8_settings_are_named(fmt, recipe, impl, message):
    with pytest.raises(ValueError) as err:
        check_fp8(fmt, recipe, impl)
    assert str(err.value) == message


@pytest.mark.parametrize("recipe", FP8_RECIPES)
def test_config_fields_are_megatrons_own(recipe):
    from megatron.core.transformer.transformer_config import TransformerConfig

    overrides = fp8_config_overrides("hybrid", recipe)
    assert overrides == {"fp8": "hybrid", "fp8_recipe": recipe}
    fields = TransformerConfig.__dataclass_fields__
    assert all(name in fields for name in overrides)
    assert fp8_config_overrides(None, "delayed", impl="local") == {}
    assert isinstance(fp8_autocast(None), type(fp8_autocast(None)))  # a null context, no TE


@pytest.mark.gpu
@needs_te_gpu
@pytest.mark.parametrize("fmt, recipe", [("hybrid", "delayed"), ("hybrid", "tensorwise"),
                                         ("e4m3", "delayed")])
def test_te_linear_runs_fp8_gemm_close_to_bf16(fmt, recipe):
    import transformer_engine.pytorch as te

    torch.manual_seed(0)
    layer = te.Linear(1024, 2816, bias=False, params_dtype=torch.bfloat16).cuda()
    x = torch.randn(4096, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ref = layer(x)
    with fp8_autocast(fmt, recipe):
        out = layer(x)
    out.float().sum().backward()
    err = (out.float() - ref.float()).norm() / ref.float().norm()
    assert 0 < err < 0.1  # FP8 ran (not bit-equal to bf16) and stayed close
    assert torch.isfinite(x.grad).all()

