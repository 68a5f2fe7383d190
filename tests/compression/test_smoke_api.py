"""The public API exists and works end to end on a few specs (fuller tests live beside this)."""
import torch

from megatron_csl.compression import LOCAL, CompressionSpec, ShardContext, SpecError, parse_spec


def test_api_round_trip_and_shapes():
    for text in ["dense", "w4", "w4a8", "a8", "s50", "s50:nm2/4+w4a8", "fp8", "fp4:nv"]:
        spec = parse_spec(text)
        assert isinstance(spec, CompressionSpec)
        assert parse_spec(spec.canonical) == spec and str(spec) == spec.canonical
        w = torch.randn(4, 64, requires_grad=True)
        out = spec.compress_weight(w, LOCAL)
        assert out.shape == w.shape and out.dtype == w.dtype
        x = torch.randn(2, 3, 64)
        assert spec.quantize_activation(x, ShardContext()).shape == x.shape


def test_spec_error_is_value_error():
    try:
        parse_spec("w9")
    except ValueError as e:
        assert isinstance(e, SpecError) and "w9" in str(e)
    else:
        raise AssertionError("w9 must be rejected")
