"""validate_parallel_layout: impossible layouts fail early, naming the values and valid choices."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from megatron_csl.model import LayoutError, ModelShape, padded_vocab_size, validate_parallel_layout

SHAPE = ModelShape(num_layers=6, hidden_size=384, num_attention_heads=6, ffn_hidden_size=1024)


def test_valid_layouts_pass():
    validate_parallel_layout(SHAPE, 2, 3, 12, compression="w4a4", vocab_size=256)
    validate_parallel_layout(SHAPE, 1, 1)


def test_heads_not_divisible_by_tp():
    with pytest.raises(LayoutError, match=r"num_attention_heads 6 is not divisible by tensor "
                                          r"parallel size 4; valid TP sizes for this model: \[1, 2, 3, 6\]"):
        validate_parallel_layout(SHAPE, 4, 1, 4)


def test_query_groups_not_divisible_by_tp():
    shape = ModelShape(2, 256, 4, 768, num_query_groups=2)
    with pytest.raises(LayoutError, match=r"num_query_groups 2 is not divisible by tensor parallel "
                                          r"size 4; valid TP sizes for this model: \[1, 2\]"):
        validate_parallel_layout(shape, 4, 1)


def test_layers_not_divisible_by_pp():
    with pytest.raises(LayoutError, match=r"num_layers 6 is not divisible by pipeline parallel size "
                                          r"4; valid PP sizes for this model: \[1, 2, 3, 6\]"):
        validate_parallel_layout(SHAPE, 1, 4, 4)


def test_world_size_not_divisible_by_tp_pp():
    with pytest.raises(LayoutError, match=r"world size 6 is not divisible by TP\*PP = 2\*2 = 4"):
        validate_parallel_layout(SHAPE, 2, 2, 6)


def test_nm_group_not_dividing_local_input_dim():
    shape = ModelShape(2, 256, 4, 768)
    validate_parallel_layout(shape, 2, 1, compression="s50:nm64/128")
    with pytest.raises(LayoutError) as err:
        validate_parallel_layout(shape, 4, 1, compression="s50:nm64/128")
    message = str(err.value)
    assert "'s50:nm64/128' does not fit linear_proj at TP=4" in message
    assert "local input dim 64" in message and "multiple of 128" in message
    assert "TP sizes that fit this model and format: [1, 2]" in message


def test_vocab_and_bad_values():
    with pytest.raises(LayoutError, match=r"vocab_size 1001 is not divisible by tensor parallel "
                                          r"size 2; pad it, e.g. to 1024"):
        validate_parallel_layout(SHAPE, 2, 1, vocab_size=1001)
    with pytest.raises(LayoutError, match="tensor_model_parallel_size must be a positive int, got 0"):
        validate_parallel_layout(SHAPE, 0, 1)
    assert padded_vocab_size(32000, 8) == 32768 and padded_vocab_size(256, 1) == 256


@given(tp=st.integers(1, 8), pp=st.integers(1, 8), dp=st.integers(1, 4), extra=st.integers(0, 3))
def test_layout_accepted_exactly_when_divisible(tp, pp, dp, extra):
    world = tp * pp * dp + extra
    ok = (SHAPE.num_attention_heads % tp == 0 and SHAPE.ffn_hidden_size % tp == 0
          and SHAPE.num_layers % pp == 0 and world % (tp * pp) == 0)
    if ok:
        validate_parallel_layout(SHAPE, tp, pp, world)
    else:
        with pytest.raises(LayoutError):
            validate_parallel_layout(SHAPE, tp, pp, world)
