"""Run a format through the kernels and through the reference and compare them bit for bit."""
import torch

from megatron_csl import kernels
from megatron_csl.compression import parse_spec


def both(text: str, x: torch.Tensor, kind: str = "weight"):
    """(kernel out, reference out, kernel grad, reference grad) for a random upstream grad."""
    spec = parse_spec(text)
    x_fast = x.detach().clone().requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    if kind == "weight":
        fast = kernels.compress_weight(spec, x_fast, require_cuda=False)
        with kernels.use_kernels(False):
            ref = spec.compress_weight(x_ref)
    else:
        fast = kernels.quantize_activation(spec, x_fast, require_cuda=False)
        with kernels.use_kernels(False):
            ref = spec.quantize_activation(x_ref)
    assert fast is not None, f"no kernel ran for {text}"
    up = torch.randn(x.shape, generator=torch.Generator().manual_seed(5)).to(x.device, x.dtype)
    (fast * up).sum().backward()
    (ref * up).sum().backward()
    return fast.detach(), ref.detach(), x_fast.grad, x_ref.grad


def assert_same(text: str, x: torch.Tensor, kind: str = "weight") -> None:
    fast, ref, g_fast, g_ref = both(text, x, kind)
    assert fast.dtype == ref.dtype == x.dtype and fast.shape == ref.shape
    bad = int((fast != ref).sum())
    assert bad == 0, f"{text}: {bad} of {fast.numel()} values differ from the reference"
    bad = int((g_fast != g_ref).sum())
    assert bad == 0, f"{text}: {bad} of {fast.numel()} gradients differ from the reference"


def lowest_index_topk_mask(mags: torch.Tensor, keep: int, dim: int) -> torch.Tensor:
    """The reference's `_topk_mask` with ties resolved to the lowest index (a stable sort), the
    rule of the kernels and of CUDA's torch.topk. CPU's torch.topk resolves ties differently."""
    idx = torch.sort(mags, dim=dim, descending=True, stable=True).indices.narrow(dim, 0, keep)
    return torch.zeros_like(mags, dtype=torch.bool).scatter_(dim, idx, True)


def ties_to_lowest_index(monkeypatch) -> None:
    """On a CPU, make the reference keep the lowest-index ties, so that data with repeated
    magnitudes can be compared; on a GPU the reference stays as it is (it must already agree)."""
    from megatron_csl.compression import sparsity

    if not torch.cuda.is_available():
        monkeypatch.setattr(sparsity, "_topk_mask", lowest_index_topk_mask)
