import pytest
from hypothesis import given, settings, strategies as st

from megatron_csl.data.preprocess.plan import (
    build_plan, choose_parts_per_shard, describe_difference, estimated_makespan, split_range,
)

from .conftest import write_jsonl


@pytest.mark.parametrize("shards,workers,expected", [
    (1, 1, 1), (1, 2, 2), (3, 2, 2), (1024, 16, 1), (8, 2, 1), (1, 16, 16),
])
def test_choose_parts_per_shard(shards, workers, expected):
    assert choose_parts_per_shard(shards, workers) == expected


@settings(max_examples=200, deadline=None)
@given(shards=st.integers(1, 300), workers=st.integers(1, 64))
def test_chosen_split_is_never_worse_than_no_split_or_any_other_split(shards, workers):
    parts = choose_parts_per_shard(shards, workers)
    assert 1 <= parts <= 16
    chosen = estimated_makespan(shards, workers, parts)
    assert chosen <= estimated_makespan(shards, workers, 1)
    if shards < 4 * workers:
        # the best split of the model, which need not keep every worker busy: 2 shards on 13
        # workers finish soonest as 12 units of 1/6 shard (one round), not 14 of 1/7 (two rounds)
        assert all(chosen <= estimated_makespan(shards, workers, p) + 1e-9 for p in range(1, 17))


@settings(max_examples=200, deadline=None)
@given(lines=st.integers(0, 10_000), parts=st.integers(1, 16))
def test_split_range_is_a_contiguous_nearly_even_cover(lines, parts):
    ranges = split_range(lines, parts)
    assert [a for a, _ in ranges][:1] == ([0] if lines else [])
    assert all(b1 == a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:]))
    assert sum(b - a for a, b in ranges) == lines
    sizes = [b - a for a, b in ranges]
    assert not sizes or max(sizes) - min(sizes) <= 1


def test_plan_splits_a_single_shard_for_two_workers_without_reading_it(tmp_path):
    path = write_jsonl(str(tmp_path / "a.json.gz"), [f'{{"text": "{i}"}}' for i in range(101)])
    text_size = len("".join(f'{{"text": "{i}"}}\n' for i in range(101)))
    units, counts = build_plan([path], workers=2)
    assert counts == {}  # no line count: the gzip trailer gives the text size
    assert [(u.part, u.start, u.stop, u.by) for u in units] == [
        (0, 0, text_size // 2, "byte"), (1, text_size // 2, None, "byte")]


def test_plan_with_many_shards_needs_no_line_counts(tmp_path):
    paths = [write_jsonl(str(tmp_path / f"{i}.jsonl"), ['{"text": "x"}']) for i in range(9)]
    units, counts = build_plan(paths, workers=2)
    assert counts == {}
    assert [(u.shard_index, u.start, u.stop, u.by) for u in units] == [
        (i, 0, None, "line") for i in range(9)]


def test_plan_max_docs_reads_only_the_shards_it_needs(tmp_path):
    paths = [write_jsonl(str(tmp_path / f"{i}.jsonl"), ['{"text": "x"}'] * 10) for i in range(5)]
    counted = []

    def count(jobs):
        from megatron_csl.data.c4_shards import count_lines
        counted.extend(p for p, _ in jobs)
        return [count_lines(p, limit) for p, limit in jobs]

    units, _ = build_plan(paths, workers=1, max_docs=25, count_lines_many=count)
    assert counted == paths[:3]
    assert [(u.shard_index, u.start, u.stop) for u in units] == [(0, 0, 10), (1, 0, 10), (2, 0, 5)]


def test_describe_difference_names_changed_fields():
    old = {"inputs": [{"path": "a", "size": 1}], "append_eod": True, "max_docs": None}
    new = {"inputs": [{"path": "a", "size": 2}], "append_eod": False, "max_docs": None}
    text = describe_difference(old, new)
    assert "append_eod" in text and "size" in text and "max_docs" not in text
