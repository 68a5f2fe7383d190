"""Throughput of the preprocessing pipeline against SentencePiece's own batched encoding.

The ceiling is ``sp.encode(texts, num_threads=K)`` on texts already decoded in memory: pure
tokenization on K threads, no reading, no JSON, no writing. The pipeline is the whole job (gzip,
JSON, encode, write partial datasets, merge) with K worker processes, timed from the call to
``preprocess`` to its return (megatron-core is imported before the clock starts: the command
line tool pays that import once, ~5 s, whatever the corpus size).

The corpus is copied ``repeat`` times as separate shards so that a run lasts long enough for the
fixed costs (starting the pool, the final merge) to weigh what they weigh on real jobs; the
single-shard case (split into parts) is measured too.
"""
from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

from megatron_csl.data.c4_shards import decode_batch, iter_line_batches


@dataclass
class BenchRow:
    case: str  # e.g. "1 shard" or "8 shards"
    workers: int
    documents: int
    tokens: int
    pipeline_seconds: float
    ceiling_seconds: float
    ceiling_numpy_seconds: float
    pipeline_cpu_seconds: float  # user+sys of this process and its workers, best trial
    ceiling_cpu_seconds: float

    @property
    def pipeline_tokens_per_s(self) -> float:
        return self.tokens / self.pipeline_seconds

    @property
    def ceiling_tokens_per_s(self) -> float:
        return self.tokens / self.ceiling_seconds

    @property
    def ratio(self) -> float:
        return self.pipeline_tokens_per_s / self.ceiling_tokens_per_s

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(pipeline_tokens_per_s=self.pipeline_tokens_per_s,
                 ceiling_tokens_per_s=self.ceiling_tokens_per_s, ratio=self.ratio)
        return d


def read_texts(path: str) -> List[str]:
    return [t for batch in iter_line_batches(path) for t in decode_batch(batch).texts]


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # counted once a child is reaped
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(fn) -> tuple:
    cpu, started = _cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - started, _cpu_seconds() - cpu


def _best_interleaved(trials: int, *fns) -> list:
    """Best (wall seconds, CPU seconds of that run) of each function over ``trials`` rounds.

    The functions take turns within a round, so a burst of load from other jobs on a shared
    machine hits them alike; CPU time is reported too, being less sensitive to such load."""
    best = [(float("inf"), 0.0)] * len(fns)
    for _ in range(trials):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], _timed(fn))
    return best


def benchmark(
    corpus: str,
    tokenizer_model: str,
    workers: Sequence[int] = (1, 2),
    repeat: int = 8,
    trials: int = 3,
    scratch: Optional[str] = None,
) -> List[BenchRow]:
    """Best-of-``trials`` timings of pipeline and ceiling for 1 shard and ``repeat`` shards."""
    import sentencepiece as spm

    from megatron_csl.data.preprocess import PreprocessConfig, preprocess
    import megatron.core.datasets.indexed_dataset  # noqa: F401  (imported before the clock starts)

    sp = spm.SentencePieceProcessor(model_file=tokenizer_model)
    texts = read_texts(corpus)
    folder = tempfile.mkdtemp(prefix="bench_preprocess_", dir=scratch)
    try:
        shards = []
        for i in range(repeat):
            shards.append(os.path.join(folder, f"c4-train.{i:05d}-of-{repeat:05d}.json.gz"))
            shutil.copyfile(corpus, shards[-1])
        rows = []
        for case, inputs, copies in (("1 shard", shards[:1], 1), (f"{repeat} shards", shards, repeat)):
            batch = texts * copies
            for k in workers:
                result = {}

                def pipeline():
                    result["report"] = preprocess(PreprocessConfig(
                        inputs=inputs, tokenizer_model=tokenizer_model,
                        output_prefix=os.path.join(folder, "out"), workers=k, overwrite=True,
                        progress=False,
                    ))

                (pipeline_s, pipeline_cpu), (ceiling_s, ceiling_cpu), (numpy_s, _) = \
                    _best_interleaved(
                        trials, pipeline,
                        lambda: sp.encode(batch, num_threads=k),
                        lambda: sp.encode(batch, num_threads=k, return_type="numpy"),
                    )
                report = result["report"]
                ceiling_tokens = sum(map(len, sp.encode(texts))) * copies
                if report.tokens != ceiling_tokens:  # both must have tokenized the same text
                    raise AssertionError(f"pipeline wrote {report.tokens} tokens, "
                                         f"sp.encode gives {ceiling_tokens}")
                rows.append(BenchRow(case, k, report.documents, report.tokens, pipeline_s,
                                     ceiling_s, numpy_s, pipeline_cpu, ceiling_cpu))
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def format_rows(rows: Sequence[BenchRow]) -> str:
    header = (f"{'case':<10} {'workers':>7} {'tokens':>11} {'pipeline tok/s':>15} "
              f"{'ceiling tok/s':>14} {'ratio':>6} {'CPU s pipe/ceil':>16} "
              f"{'ceiling numpy tok/s':>20}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r.case:<10} {r.workers:>7} {r.tokens:>11,} {r.pipeline_tokens_per_s:>15,.0f} "
            f"{r.ceiling_tokens_per_s:>14,.0f} {r.ratio:>6.2f} "
            f"{r.pipeline_cpu_seconds:>7.2f}/{r.ceiling_cpu_seconds:<8.2f} "
            f"{r.tokens / r.ceiling_numpy_seconds:>20,.0f}"
        )
    return "\n".join(lines)
