"""Compressed weights computed once per optimizer step and reused by every micro-batch
(megatron_csl/layers/weight_cache.py): same outputs and bit-identical gradients as without the
cache, recomputed after each optimizer step and after any in-place change of the weight."""
import pytest
import torch

from megatron_csl.compression import parse_spec
from megatron_csl.compression.spec import CompressionSpec
from megatron_csl.layers.weight_cache import use_weight_cache

# Straight-through, trust mask, RBBM, N:M, per-tensor top-k, Hadamard (rotated backward),
# float formats, compositions; w4a4 in float32 runs on integer codes (weight_codes).
FORMATS = ["w4", "w4:trust", "s50:rbbm10", "s50:nm2/4", "s50:tensor", "s50+w4:trust", "fp8",
           "w4a4:had", "w4a4", "w2a2:tensor,trust"]


@pytest.fixture
def count_compress(monkeypatch):
    """Counts CompressionSpec.compress_weight + weight_codes calls made by the layers."""
    calls = []
    for name in ("compress_weight", "weight_codes"):
        original = getattr(CompressionSpec, name)

        def counted(self, *args, _original=original, **kwargs):
            calls.append(self.canonical)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(CompressionSpec, name, counted)
    return calls


def _layer(kind, fmt, seed=0):
    from megatron_csl.layers import CompressedColumnParallelLinear, CompressedRowParallelLinear
    from megatron_csl.model import ModelShape, llama_transformer_config

    torch.manual_seed(seed)
    common = dict(config=llama_transformer_config(ModelShape(1, 64, 4, 128)),
                  init_method=torch.nn.init.normal_, bias=False, skip_bias_add=True,
                  compression=fmt)
    if kind == "column":
        return CompressedColumnParallelLinear(128, 64, gather_output=False, **common)
    return CompressedRowParallelLinear(128, 64, input_is_parallel=True, **common)


def _micro_batches(layer, inputs, ups):
    """Forward + backward of every micro-batch, gradients accumulated; (outputs, input grads)."""
    outs, grads = [], []
    for x, up in zip(inputs, ups):
        x = x.clone().requires_grad_(True)
        out, _ = layer(x)
        (out * up).sum().backward()
        outs.append(out.detach())
        grads.append(x.grad)
    return outs, grads


def _data(n=4):
    gen = torch.Generator().manual_seed(3)
    return ([torch.randn(5, 2, 128, generator=gen) for _ in range(n)],
            [torch.randn(5, 2, 64, generator=gen) for _ in range(n)])


@pytest.mark.parametrize("kind", ["column", "row"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_cache_gives_the_uncached_outputs_and_gradients(megatron_cpu, count_compress, kind, fmt):
    inputs, ups = _data()
    results = {}
    for cached in (True, False):
        layer = _layer(kind, fmt)
        count_compress.clear()
        with use_weight_cache(cached):
            outs, grads = _micro_batches(layer, inputs, ups)
        results[cached] = (outs, grads, layer.weight.grad.clone(), len(count_compress))
    (outs_c, grads_c, wgrad_c, calls_c), (outs_u, grads_u, wgrad_u, calls_u) = \
        results[True], results[False]
    assert (calls_c, calls_u) == (1, 4)  # once per step instead of once per micro-batch
    assert all(torch.equal(a, b) for a, b in zip(outs_c, outs_u))
    assert all(torch.equal(a, b) for a, b in zip(grads_c, grads_u))
    assert torch.equal(wgrad_c, wgrad_u)  # the format's backward, accumulated: bit-identical


def test_optimizer_step_and_in_place_changes_invalidate(megatron_cpu, count_compress):
    layer = _layer("column", "w4:trust")
    reference = _layer("column", "w4:trust")
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    inputs, ups = _data(2)
    for step in range(3):
        count_compress.clear()
        outs, _ = _micro_batches(layer, inputs, ups)
        assert len(count_compress) == 1, step
        with use_weight_cache(False):
            ref_outs, _ = _micro_batches(reference, inputs, ups)
        assert all(torch.equal(a, b) for a, b in zip(outs, ref_outs)), step
        assert torch.equal(layer.weight.grad, reference.weight.grad)
        optimizer.step()
        ref_optimizer.step()
        optimizer.zero_grad()
        ref_optimizer.zero_grad()
        assert layer._weight_cache._entries == {}  # freed at the step, not kept until next use
    # An in-place change outside an optimizer bumps the weight's version: recomputed.
    _micro_batches(layer, inputs, ups)
    with torch.no_grad():
        layer.weight.mul_(-1.0)
    count_compress.clear()
    out, _ = layer(inputs[0])
    with use_weight_cache(False):
        expected, _ = layer(inputs[0])
    assert len(count_compress) == 2 and torch.equal(out, expected)


def test_evaluation_reuses_one_compressed_weight(megatron_cpu, count_compress):
    layer = _layer("row", "s50+w4")
    inputs, _ = _data(3)
    layer.eval()
    with torch.no_grad():
        outs = [layer(x)[0] for x in inputs]
    assert len(count_compress) == 1
    with torch.no_grad(), use_weight_cache(False):
        assert all(torch.equal(layer(x)[0], o) for x, o in zip(inputs, outs))
    layer.train()
    count_compress.clear()
    layer(inputs[0].requires_grad_(True))[0].sum().backward()
    assert len(count_compress) == 1  # training keeps its own entry, with the backward's graph


def test_no_cache_for_learned_parameters_or_random_formats(megatron_cpu, count_compress,
                                                            monkeypatch):
    layer = _layer("column", "w4")
    layer.register_parameter("scale", torch.nn.Parameter(torch.ones(())))
    inputs, ups = _data(3)
    _micro_batches(layer, inputs, ups)
    assert len(count_compress) == 3
    layer = _layer("column", "noise:w4")  # fresh noise every forward: never cached
    count_compress.clear()
    _micro_batches(layer, inputs, ups)
    assert len(count_compress) == 3
    layer = _layer("column", "w4")
    monkeypatch.setattr(CompressionSpec, "weight_is_deterministic", False, raising=False)
    count_compress.clear()
    _micro_batches(layer, inputs, ups)
    assert len(count_compress) == 3


def test_environment_switch(megatron_cpu, count_compress, monkeypatch):
    from megatron_csl.layers import weight_cache

    monkeypatch.setenv(weight_cache.ENV_VAR, "0")
    layer = _layer("column", "w4")
    inputs, ups = _data(2)
    _micro_batches(layer, inputs, ups)
    assert len(count_compress) == 2
    monkeypatch.setenv(weight_cache.ENV_VAR, "yes")
    with pytest.raises(ValueError, match="MEGATRON_CSL_WEIGHT_CACHE must be 0 or 1, got 'yes'"):
        layer(inputs[0])


@pytest.mark.parametrize("fmt", ["w4", "w4a4"])
def test_megatron_training_step_compresses_once_per_step(megatron_cpu, count_compress, fmt):
    """The real path (megatron DDP, get_megatron_optimizer, forward_backward_func with 4
    micro-batches): one compression per linear per optimizer step, and the same losses and
    parameters as without the cache."""
    from megatron_csl.kernels.bench.step import StepBenchConfig, build_training_step

    cfg = StepBenchConfig.cpu_smoke(num_layers=2, hidden_size=64, num_attention_heads=4,
                                    ffn_hidden_size=128, seq_length=16, micro_batch_size=2,
                                    micro_batches=4)
    runs = {}
    for cached in (True, False):
        with use_weight_cache(cached):
            step, (model, _) = build_training_step(fmt, cfg, torch.device("cpu"))
            if cached:
                initial = {k: v.clone() for k, v in model.module.state_dict().items()
                           if v is not None}
            else:
                model.module.load_state_dict(initial, strict=False)
            losses, calls = [], []
            for _ in range(3):
                count_compress.clear()
                losses.append([float(item["lm loss"]) for item in step()])
                calls.append(len(count_compress))
        params = [p.detach().clone() for p in model.parameters()]
        runs[cached] = (losses, calls, params)
    linears = 4 * cfg.num_layers
    assert runs[True][1] == [linears] * 3
    assert runs[False][1] == [linears * 4] * 3
    assert runs[True][0] == runs[False][0] and len(runs[True][0][0]) == 4
    assert all(torch.equal(a, b) for a, b in zip(runs[True][2], runs[False][2]))
