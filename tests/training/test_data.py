"""Batch order, data-path and vocabulary checks, and megatron's dataset builder."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.training.data import (BatchSampler, check_prefixes_exist, check_split,
                                        check_token_range, max_token_id, microbatch_indices)
from megatron_csl.training.errors import ConfigError

from .helpers import random_documents, write_indexed_dataset


@settings(max_examples=60, deadline=None)
@given(first=st.integers(0, 10**6), mbs=st.integers(1, 4), dp=st.integers(1, 4),
       micro=st.integers(1, 4), steps=st.integers(1, 3))
def test_each_global_batch_is_split_once_over_ranks_and_micro_batches(first, mbs, dp, micro,
                                                                      steps):
    gbs = mbs * dp * micro
    seen = []
    for rank in range(dp):
        batches = list(BatchSampler(first, steps, gbs, mbs, dp, rank))
        assert len(batches) == steps * micro and all(len(b) == mbs for b in batches)
        # Step k of this rank draws only from global batch k.
        for k in range(steps):
            for b in batches[k * micro:(k + 1) * micro]:
                assert all(first + k * gbs <= i < first + (k + 1) * gbs for i in b)
        seen += [i for b in batches for i in b]
    assert sorted(seen) == list(range(first, first + steps * gbs))


def test_megatron_sampler_order():
    # Megatron-LM's pretraining sampler: rank r takes [r*mbs, (r+1)*mbs) of each chunk of mbs*dp.
    assert microbatch_indices(100, 2, 2, 2, 0) == [[100, 101], [104, 105]]
    assert microbatch_indices(100, 2, 2, 2, 1) == [[102, 103], [106, 107]]


def test_missing_prefix_is_named_with_a_hint(tmp_path):
    prefix = write_indexed_dataset(tmp_path / "c4_text_document", random_documents(3, 50))
    check_prefixes_exist([prefix], "--data-path")
    with pytest.raises(ConfigError, match=r"prefix '.*c4_text' not found .*missing .*c4_text.bin"
                                          r".*prefixes found there: .*c4_text_document"):
        check_prefixes_exist([str(tmp_path / "c4_text")], "--data-path")
    with pytest.raises(ConfigError, match="without the extension"):
        check_prefixes_exist([prefix + ".bin"], "--data-path")


def test_token_range_scan_finds_the_largest_id(tmp_path):
    docs = random_documents(20, 100, seed=3)
    docs[7][2] = 4321
    prefix = write_indexed_dataset(tmp_path / "d", docs)
    assert max_token_id(prefix) == 4321
    # Windowed scan for large files: the first and last windows are always read.
    assert max_token_id(prefix, limit=8, windows=2) <= 4321
    check_token_range([prefix], 4322, "--data-path")
    with pytest.raises(ConfigError, match="holds token id 4321, which does not fit the "
                                          "vocabulary of 4000"):
        check_token_range([prefix], 4000, "--data-path")


@pytest.mark.parametrize("split, separate, message", [
    ("99,1,0", False, None), ("100,0,0", True, None), ("1", True, None),
    ("100,0,0", False, "validation share is 0"), ("a,b", False, "comma-separated"),
    ("0,1,0", False, "training share must be positive"), ("1,1,1,1", False, "up to three"),
])
def test_split_strings(split, separate, message):
    if message is None:
        check_split(split, separate)
    else:
        with pytest.raises(ConfigError, match=message):
            check_split(split, separate)
