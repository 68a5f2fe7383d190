"""On a CUDA device: the compiled kernels inside the formats' public path equal the reference on
realistic shapes, CUDA's torch.topk keeps the lowest-index ties (the rule the kernels follow),
and SDPAttention runs on the flash backend. Skipped without CUDA (the rest of tests/kernels then
runs the same kernels through Triton's interpreter)."""
import pytest
import torch

from .helpers import lowest_index_topk_mask

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FORMATS = ["w4", "w4:trust", "w2", "w4:g128", "w4:tensor", "w1.58:absmean", "s50", "s50:tensor",
           "s50:nm2/4", "s50:nm64/128", "s50+w4", "s50:nm2/4+w4:trust"]
SHAPES = [(3072, 1024), (1024, 2816), (11008, 4096)]


def _compress(text, w, up, mode):
    from megatron_csl import kernels
    from megatron_csl.compression import parse_spec

    w = w.detach().clone().requires_grad_(True)
    with kernels.use_kernels(mode):
        out = parse_spec(text).compress_weight(w)
    (out.float() * up).sum().backward()
    return out.detach(), w.grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("text", FORMATS)
def test_public_path_equals_reference_on_cuda(text, dtype, shape):
    """bf16 weights repeat magnitudes, so this also checks the tie rule against torch.topk."""
    from megatron_csl import kernels
    from megatron_csl.compression import parse_spec

    assert kernels.weight_kernel_reason(parse_spec(text), shape) is None
    g = torch.Generator(device="cuda").manual_seed(0)
    w = (torch.randn(shape, device="cuda", generator=g) * 0.02).to(dtype)
    up = torch.randn(shape, device="cuda", generator=g)
    fast, g_fast = _compress(text, w, up, True)
    ref, g_ref = _compress(text, w, up, False)
    assert int((fast != ref).sum()) == 0, text
    assert int((g_fast != g_ref).sum()) == 0, text


@pytest.mark.parametrize("text", ["a4", "a8", "w4a4:trust", "w2a2"])
def test_activations_equal_reference_on_cuda(text):
    from megatron_csl import kernels
    from megatron_csl.compression import parse_spec

    spec = parse_spec(text)
    x = torch.randn(2048, 8, 1024, device="cuda", dtype=torch.bfloat16)
    with kernels.use_kernels(True):
        fast = spec.quantize_activation(x)
    with kernels.use_kernels(False):
        ref = spec.quantize_activation(x)
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("shape, dim, k", [((1024, 4096), 1, 2048), ((11008 * 4096,), 0, 22544384),
                                           ((4096, 1024, 4), 2, 2), ((4096, 32, 128), 2, 64)])
def test_cuda_topk_keeps_lowest_index_ties(shape, dim, k):
    """The assumption behind bitwise-equal masks: CUDA's torch.topk (single-block, multi-block
    and the sort path for one huge slice) keeps the first k in index order among equal values."""
    x = torch.randint(0, 7, shape, device="cuda").float()
    idx = torch.topk(x, k, dim=dim, sorted=False).indices
    got = torch.zeros_like(x, dtype=torch.bool).scatter_(dim, idx, True)
    assert torch.equal(got, lowest_index_topk_mask(x, k, dim))


def test_sdpa_runs_on_flash_and_matches_megatron_bf16():
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from megatron_csl.layers.attention import SDPAttention
    from megatron_csl.model import ModelShape, llama_transformer_config
    from megatron_csl.kernels.bench.step import init_single_process

    init_single_process(torch.device("cuda"))
    config = llama_transformer_config(ModelShape(2, 1024, 16, 2816), bf16=True)
    kwargs = dict(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal,
                  attention_type="self")
    q, k, v = (torch.randn(2048, 2, 16, 64, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # raises if flash cannot take these inputs
        out = SDPAttention(**kwargs)(q, k, v, None)
    ref = DotProductAttention(**kwargs).cuda()(q, k, v, None)
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
