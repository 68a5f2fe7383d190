"""When the kernels replace the reference, and that CPU runs never change."""
import pytest
import torch

from megatron_csl import kernels
from megatron_csl.compression import parse_spec
from megatron_csl.kernels import ops

from .conftest import DEVICE


class _SplitShard:
    """A ShardContext stand-in whose statistics span a tensor-parallel split."""

    def __init__(self, weight_split_dim=None, input_split=False):
        self.weight_split_dim, self.input_split = weight_split_dim, input_split

    def weight_group(self, dim):
        return "tp" if self.weight_split_dim == dim else None

    def weight_tensor_group(self):
        return "tp" if self.weight_split_dim is not None else None

    def activation_group(self):
        return "tp" if self.input_split else None


@pytest.mark.parametrize("text", ["w4", "w1.58:absmean,trust", "w2:zero,g64", "w4:tensor",
                                  "s50", "s50:tensor", "s50:nm2/4", "s50:nm64/128+w4:trust"])
def test_covered_weight_formats(text):
    assert kernels.weight_kernel_reason(parse_spec(text), (256, 1024)) is None


@pytest.mark.parametrize("text, reason", [
    ("fp8", "float formats"), ("fp4:nv", "float formats"), ("w4:had", "Hadamard"),
    ("s50:rbbm10", "RBBM"), ("s50+fp8", "float formats"), ("a4", "leaves weights alone"),
])
def test_weight_formats_left_to_reference(text, reason):
    assert reason in kernels.weight_kernel_reason(parse_spec(text), (256, 1024))


def test_tensor_parallel_splits():
    row_parallel, column_parallel = _SplitShard(1, True), _SplitShard(0, False)
    reason = kernels.weight_kernel_reason
    # Column parallel keeps whole rows: per-row statistics and masks stay local.
    assert reason(parse_spec("s50+w4"), (64, 128), column_parallel) is None
    assert reason(parse_spec("s50:nm2/4+w4:g32"), (64, 128), row_parallel) is None
    assert "all-reduce" in reason(parse_spec("w4"), (64, 128), row_parallel)
    assert "all-reduce" in reason(parse_spec("w4:tensor"), (64, 128), column_parallel)
    assert "gather" in reason(parse_spec("s50"), (64, 128), row_parallel)
    assert "gather" in reason(parse_spec("s50:tensor"), (64, 128), column_parallel)
    assert kernels.activation_kernel_reason(parse_spec("a4"), 128, column_parallel) is None
    assert "all-reduce" in kernels.activation_kernel_reason(parse_spec("a4"), 128, row_parallel)


def test_long_segments_left_to_reference():
    long_row = (8, ops.MAX_SEGMENT * 2)
    assert "MAX_SEGMENT" in kernels.weight_kernel_reason(parse_spec("w4"), long_row)
    assert "MAX_SEGMENT" in kernels.weight_kernel_reason(parse_spec("s50"), long_row)
    assert kernels.weight_kernel_reason(parse_spec("w4:g128"), long_row) is None
    assert kernels.weight_kernel_reason(parse_spec("s50:tensor"), long_row) is None
    assert "MAX_SEGMENT" in kernels.activation_kernel_reason(parse_spec("a8"), ops.MAX_SEGMENT + 1)


def test_activation_coverage():
    assert kernels.activation_kernel_reason(parse_spec("w4a4"), 1024) is None
    assert "float" in kernels.activation_kernel_reason(parse_spec("afp8"), 1024)
    assert "Hadamard" in kernels.activation_kernel_reason(parse_spec("w4a4:had"), 1024)
    assert "leaves activations alone" in kernels.activation_kernel_reason(parse_spec("w4"), 64)


def test_describe():
    assert kernels.describe(parse_spec("dense")) == "-"
    assert kernels.describe(parse_spec("w4a4")) == "W: kernel; A: kernel"
    assert kernels.describe(parse_spec("fp8")).startswith("W: reference (float formats")


def test_cpu_tensors_never_reach_the_kernels(monkeypatch):
    """The formats consult the kernels for CUDA tensors only: CPU results cannot change."""
    spec = parse_spec("s50+w4a4")
    # the hooks decline CPU tensors unless a test asks for them
    assert kernels.compress_weight(spec, torch.randn(8, 16)) is None
    assert kernels.quantize_activation(spec, torch.randn(2, 16)) is None

    def boom(*args, **kwargs):
        raise AssertionError("kernels called for a CPU tensor")

    monkeypatch.setattr(kernels, "compress_weight", boom)
    monkeypatch.setattr(kernels, "quantize_activation", boom)
    spec.compress_weight(torch.randn(8, 16, requires_grad=True))
    spec.quantize_activation(torch.randn(2, 16))


def test_modes(monkeypatch):
    spec, w = parse_spec("w4"), torch.randn(4, 32, device=DEVICE)
    monkeypatch.setenv(kernels.ENV_VAR, "0")
    assert kernels.kernel_mode() == "0"
    assert kernels.compress_weight(spec, w, require_cuda=False) is None
    with kernels.use_kernels(True):
        assert kernels.kernel_mode() == "1"
    monkeypatch.setenv(kernels.ENV_VAR, "fast")
    with pytest.raises(ValueError, match="MEGATRON_CSL_KERNELS must be one of 1, 0, check, got "
                                         "'fast'"):
        kernels.kernel_mode()
    with pytest.raises(ValueError, match="mode must be True, False"):
        with kernels.use_kernels("yes"):
            pass


def test_float64_and_non_matrix_left_to_reference(triton_kernels):
    spec = parse_spec("w4")
    assert kernels.compress_weight(spec, torch.randn(4, 8, dtype=torch.float64,
                                                     device=DEVICE), require_cuda=False) is None
    assert "not a non-empty matrix" in kernels.weight_kernel_reason(spec, (4, 8, 2))


def test_check_mode_compares_with_the_reference(triton_kernels, monkeypatch):
    spec, w = parse_spec("w4:trust"), torch.randn(6, 64, device=DEVICE)
    with kernels.use_kernels("check"):
        out = kernels.compress_weight(spec, w, require_cuda=False)
    with kernels.use_kernels(False):
        assert torch.equal(out, spec.compress_weight(w))
    real = ops.int_fake_quant

    def off_by_one_step(x, *args, **kwargs):
        out, mask = real(x, *args, **kwargs)[:2]
        out = out.clone()
        out[0, 0] += 1.0
        return out, mask

    monkeypatch.setattr(ops, "int_fake_quant", off_by_one_step)
    with kernels.use_kernels("check"), pytest.raises(
            RuntimeError, match=r"kernel's compress_weight for 'w4:trust' differs from the "
                                r"reference at 1 of 384 entries"):
        kernels.compress_weight(spec, w, require_cuda=False)
