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


def test_tool_runs_with_no_corpus_argument_on_the_shipped_corpus():
    """`python tools/bench_preprocess.py` (as docs/data.md shows it) works from the repository alone:
    its default corpus ships in megatron_csl/data/reference/."""
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=repo, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "tools/bench_preprocess.py", "--repeat", "1", "--trials", "1",
                           "--workers", "1", "--vocab-size", "1000"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wiki_vital_en.c4.json.gz" in proc.stdout and "1 shard" in proc.stdout
