import gzip
import json
import os

import pytest
from hypothesis import given, settings, strategies as st

from megatron_csl.data.c4_shards import (
    ShardReadError, count_lines, decode_batch, decode_line, expand_inputs, iter_line_batches,
)

from .conftest import write_jsonl


def test_expand_inputs_keeps_pattern_order_sorts_matches_and_dedupes(tmp_path):
    for name in ["b.json.gz", "a.json.gz", "z.jsonl"]:
        (tmp_path / name).write_bytes(gzip.compress(b"") if name.endswith("gz") else b"")
    got = expand_inputs([str(tmp_path / "z.jsonl"), str(tmp_path / "*.json.gz"),
                         str(tmp_path / "a.json.gz")])
    assert [os.path.basename(p) for p in got] == ["z.jsonl", "a.json.gz", "b.json.gz"]


def test_expand_inputs_errors_name_the_pattern_or_file(tmp_path):
    with pytest.raises(ValueError, match="nothing-here"):
        expand_inputs([str(tmp_path / "nothing-here*.json.gz")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt.*\.json\.gz"):
        expand_inputs([str(tmp_path / "notes.txt")])


@pytest.mark.parametrize("payload,expected", [
    (b"", 0), (b"a\n", 1), (b"a\nb", 2), (b"a\nb\n", 2), (b"\n\n\n", 3),
])
@pytest.mark.parametrize("compress", [True, False])
def test_count_lines_matches_line_iteration(tmp_path, payload, expected, compress):
    path = str(tmp_path / ("s.json.gz" if compress else "s.jsonl"))
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(payload)
    assert count_lines(path) == expected
    assert sum(len(b.lines) for b in iter_line_batches(path)) == expected
    assert count_lines(path, limit=1) == min(1, expected)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 60), start=st.integers(0, 70), length=st.integers(0, 70),
       batch=st.integers(1, 9))
def test_line_batches_cover_exactly_the_requested_range(tmp_path_factory, n, start, length, batch):
    path = str(tmp_path_factory.mktemp("r") / "s.json.gz")
    lines = [f'{{"text": "line {i}"}}' for i in range(n)]
    write_jsonl(path, lines)
    stop = start + length
    batches = list(iter_line_batches(path, start, stop, batch_lines=batch))
    got = [line.decode().rstrip("\n") for b in batches for line in b.lines]
    assert got == lines[start:stop]
    assert all(len(b.lines) <= batch for b in batches)
    firsts = [b.first_line for b in batches]
    assert firsts == sorted(firsts) and (not batches or firsts[0] == start)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 40), max_size=30), cuts=st.lists(st.integers(0, 1500), max_size=4),
       trailing_newline=st.booleans(), compress=st.booleans(), batch=st.integers(1, 5))
def test_byte_ranges_give_every_line_to_exactly_one_part(
        tmp_path_factory, lengths, cuts, trailing_newline, compress, batch):
    lines = [b"x" * n for n in lengths]
    payload = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    path = str(tmp_path_factory.mktemp("b") / ("s.json.gz" if compress else "s.jsonl"))
    with (gzip.open(path, "wb") if compress else open(path, "wb")) as f:
        f.write(payload)
    bounds = [0] + sorted(set(c for c in cuts if c > 0)) + [None]
    got, numbers = [], []
    for start, stop in zip(bounds, bounds[1:]):
        for b in iter_line_batches(path, start, stop, batch_lines=batch, by="byte"):
            got += [line.rstrip(b"\n") for line in b.lines]
            numbers += range(b.first_line, b.first_line + len(b.lines))
    expected = payload.split(b"\n")
    if payload.endswith(b"\n") or not payload:
        expected = expected[:-1]
    assert got == expected
    assert numbers == list(range(len(expected)))  # line numbers stay exact after a skipped prefix


def test_uncompressed_size_comes_from_the_gzip_trailer(tmp_path):
    from megatron_csl.data.c4_shards import uncompressed_size

    payload = b'{"text": "abc"}\n' * 1000
    gz, plain = tmp_path / "a.json.gz", tmp_path / "a.jsonl"
    gz.write_bytes(gzip.compress(payload))
    plain.write_bytes(payload)
    assert uncompressed_size(str(gz)) == uncompressed_size(str(plain)) == len(payload)


def test_truncated_gzip_is_an_error_naming_the_shard(tmp_path):
    path = str(tmp_path / "c4-train.00007-of-01024.json.gz")
    full = gzip.compress(("".join(json.dumps({"text": f"doc {i} " * 50}) + "\n"
                                  for i in range(400))).encode())
    (tmp_path / "c4-train.00007-of-01024.json.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(ShardReadError, match=r"c4-train\.00007-of-01024\.json\.gz.*truncated"):
        list(iter_line_batches(path))
    with pytest.raises(ShardReadError, match=r"c4-train\.00007-of-01024"):
        count_lines(path)


def test_not_gzip_data_is_an_error_naming_the_shard(tmp_path):
    path = tmp_path / "fake.json.gz"
    path.write_bytes(b'{"text": "plain text, not gzip"}\n')
    with pytest.raises(ShardReadError, match="fake.json.gz"):
        list(iter_line_batches(str(path)))


@pytest.mark.parametrize("line,reason", [
    (b"not json", "invalid JSON"),
    (b'{"text": "unterminated', "invalid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"url": "u"}', "missing key 'text'"),
    (b'{"text": null}', "not a string"),
    (b'{"text": "\\ud800 lone surrogate"}', ""),
    (b'{"text": "\xff\xfe bad utf-8"}', "invalid JSON"),
])
def test_decode_line_classifies_malformed_lines(line, reason):
    text, why = decode_line(line)
    assert text is None and why is not None and reason in why


def test_decode_batch_reports_one_based_line_numbers_and_blank_lines():
    from megatron_csl.data.c4_shards import LineBatch

    lines = [b'{"text": "a"}\n', b"\n", b"oops\n", b'{"text": "\\u00e9\\n"}\n']
    out = decode_batch(LineBatch(first_line=10, lines=lines, compressed_position=0))
    assert out.texts == ["a", "é\n"]
    assert out.blank_lines == 1
    assert [(m.line, m.reason.split(" ")[0]) for m in out.malformed] == [(13, "invalid")]


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=200))
def test_any_json_encoded_text_decodes_back_exactly(text):
    for ensure_ascii in (True, False):
        line = json.dumps({"text": text, "url": "u"}, ensure_ascii=ensure_ascii).encode() + b"\n"
        assert decode_line(line) == (text, None)


def test_atomic_writes_leave_no_temp_file_and_normal_permissions(tmp_path):
    from megatron_csl.atomic import atomic_write_text

    target = tmp_path / "result.json"
    atomic_write_text(str(target), "{}")
    assert os.listdir(tmp_path) == ["result.json"] and target.read_text() == "{}"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_standard_library_fallbacks_read_and_classify_the_same(tmp_path, monkeypatch):
    """Without orjson and isal (optional speed-ups) the same lines come out, classified alike."""
    from megatron_csl.data import c4_shards

    path = write_jsonl(str(tmp_path / "s.json.gz"),
                       ['{"text": "a\\u00e9"}', "oops", '{"text": "\\ud800"}', '{"text": 1}'])
    fast = [decode_line(l) for b in iter_line_batches(path) for l in b.lines]
    monkeypatch.setattr(c4_shards, "_gzip", gzip)
    monkeypatch.setattr(c4_shards, "_loads", json.loads)
    monkeypatch.setattr(c4_shards, "_STRICT_UNICODE", False)
    slow = [decode_line(l) for b in iter_line_batches(path) for l in b.lines]
    assert [t for t, _ in slow] == [t for t, _ in fast] == ["aé", None, None, None]
    assert [r is None for _, r in slow] == [r is None for _, r in fast] == [True, False, False, False]


def test_gzip_corrupt_mid_stream_is_an_error_naming_the_shard(tmp_path):
    from .conftest import write_gzip_corrupt_mid_stream

    path = write_gzip_corrupt_mid_stream(tmp_path / "c4-train.00003-of-01024.json.gz",
                                         [{"text": f"doc {i} " * 30} for i in range(400)])
    with pytest.raises(ShardReadError, match=r"c4-train\.00003-of-01024\.json\.gz.*corrupt"):
        list(iter_line_batches(path))
    with pytest.raises(ShardReadError, match=r"c4-train\.00003-of-01024"):
        count_lines(path)
