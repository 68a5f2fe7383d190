"""The benchmark's machinery on a tiny corpus (its figures are printed by tools/bench_preprocess.py,
never asserted here)."""
from megatron_csl.data.bench import benchmark, format_rows

from .conftest import c4_rows, synthetic_texts, write_jsonl


def test_benchmark_compares_equal_token_counts(tiny_tokenizer, sp, tmp_path):
    texts = synthetic_texts(30, seed=4)
    corpus = write_jsonl(str(tmp_path / "corpus.json.gz"), c4_rows(texts))
    rows = benchmark(corpus, tiny_tokenizer, workers=(1, 2), repeat=2, trials=1,
                     scratch=str(tmp_path))
    assert [(r.case, r.workers) for r in rows] == [("1 shard", 1), ("1 shard", 2),
                                                   ("2 shards", 1), ("2 shards", 2)]
    one = sum(map(len, sp.encode(texts)))
    assert [r.tokens for r in rows] == [one, one, 2 * one, 2 * one]
    assert all(r.pipeline_seconds > 0 and r.ceiling_seconds > 0 for r in rows)
    table = format_rows(rows)
    assert "ratio" in table and len(table.splitlines()) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["corpus.json.gz"]  # scratch cleaned up
