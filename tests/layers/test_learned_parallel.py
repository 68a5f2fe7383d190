"""Learned-step formats (lsq, pact) at TP=2 and PP=2 train the same model as TP=1: loss and every
parameter's gradient, the learned steps' included, agree to 1e-6 relative; and a checkpoint saved
at TP=2 loads at TP=1 with every learned tensor in its place.

Weight-only LSQ runs in float32. Formats that quantize activations run in float64: at TP=2 a
RowParallel output is a sum of two partial matmuls, and in float32 its last bit can differ from
TP=1 and flip an activation across a rounding boundary (tests/layers/test_parallel_exactness.py);
the fixed-rule formats avoid it with an integer-code matmul that learned steps do not have.
"""
import pytest
import torch

from .layout_results import merge_stages, relative_error

FORMATS = {"float32": ["w4:lsq"], "float64": ["w4a4:lsq", "w4:zero,lsq+a4:pact"]}
RTOL = 1e-6
# An activation step's (or clip's) gradient sums one term per quantized value, (L - x/s) * dL/dx_hat, whose
# signs nearly cancel (the rounding residuals average out): the last-bit differences of the
# gradients TP=2 all-reduces (megatron's cross-entropy runs in float32 even in a float64 model)
# come out amplified, ~1e-5 here. A wrong reduction (a missing or a double all-reduce) is off by
# a factor of 2, a wrong gradient scale or initial value by far more than this.
STEP_RTOL = 1e-4
CASES = [(layout, dtype, fmt) for layout in ("tp2", "pp2") for dtype, fmts in FORMATS.items()
         for fmt in fmts]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from megatron_csl.compat import run_ranks

    from .learned_worker import learned_exactness

    ckpt = tmp_path_factory.mktemp("learned_ckpt")
    return run_ranks(learned_exactness, 2, FORMATS, str(ckpt), timeout_s=400)


@pytest.mark.parametrize("layout,dtype,fmt", CASES)
def test_learned_layout_matches_reference(runs, layout, dtype, fmt):
    ref_loss, ref_grads = merge_stages(runs, "reference", dtype, fmt)
    loss, grads = merge_stages(runs, layout, dtype, fmt)
    assert abs(loss - ref_loss) <= RTOL * abs(ref_loss), (loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    learned = [k for k in grads if "learned_scales" in k]
    assert learned, "no learned parameters in the model"
    worst = max((relative_error(grads[k], ref_grads[k]), k) for k in grads if "input_" not in k)
    assert worst[0] <= RTOL, worst
    for k in learned:
        assert relative_error(grads[k], ref_grads[k]) <= STEP_RTOL, k
    # Each kind of learned step / clip gets gradient somewhere (the worker starts PACT's clip at
    # 0.01, so that it clips the RMS-normalised inputs of qkv and fc1).
    for kind in {k.rsplit(".", 1)[-1] for k in learned}:
        assert any(ref_grads[k].abs().sum() > 0 for k in learned if k.endswith(kind)), kind


def test_learned_formats_differ_from_fixed_rules(runs):
    """Guards the comparison: a learned format is not silently its fixed-rule counterpart."""
    loss_lsq, grads = merge_stages(runs, "reference", "float64", "w4a4:lsq")
    loss_pact, pact_grads = merge_stages(runs, "reference", "float64", "w4:zero,lsq+a4:pact")
    assert loss_lsq != loss_pact
    assert {k.rsplit(".", 1)[-1] for k in grads if "learned_scales" in k} == {
        "weight_step_offset", "input_step_offset"}
    assert {k.rsplit(".", 1)[-1] for k in pact_grads if "learned_scales" in k} == {
        "weight_step_offset", "input_clip"}


def test_checkpoint_saved_at_tp2_loads_at_tp1(runs):
    for rank in runs:
        result = rank["checkpoint"]
        assert result["missing"] == []
        saved, restored = result["saved"], result["restored"]
        assert saved.keys() == restored.keys() and len(saved) == 4 * 4 * 4  # layers x linears x tensors
        for name, value in saved.items():
            assert not torch.isnan(value).any(), name
            assert torch.equal(restored[name], value), name
    # Column-parallel rows really were split (and re-joined in order): qkv's 192 output rows.
    qkv = runs[0]["checkpoint"]["saved"]["decoder.layers.0.self_attention.linear_qkv."
                                         "learned_scales.weight_step_offset"]
    assert qkv.shape == (192,) and torch.allclose(qkv[1:] - qkv[:-1], torch.full((191,), 1e-3))
