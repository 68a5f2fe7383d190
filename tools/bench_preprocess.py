#!/usr/bin/env python3
"""Benchmark: preprocessing tokens/s with 1 and 2 workers vs SentencePiece's batched encoding.

Example (by default on the corpus shipped in megatron_csl/data/reference/: 10,033 English Wikipedia
summaries; the tokenizer is trained on it if none is given):
  python tools/bench_preprocess.py

Prints tokens/s of the whole pipeline (gzip, JSON, encode, write, merge) and of
sp.encode(texts, num_threads=K) on the same texts and cores, and their ratio (target >= 0.85
with 2 workers). Timings are best of --trials. See docs/data.md.
"""
import argparse
import json
import os
import sys
import tempfile


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=None,
                   help="C4-format shard to time (default: the shipped Wikipedia corpus, "
                        "megatron_csl/data/reference/wiki_vital_en.c4.json.gz)")
    p.add_argument("--tokenizer-model", default=None,
                   help="SentencePiece model (default: train a 32k BPE on the corpus first)")
    p.add_argument("--vocab-size", type=int, default=32000, help="for the trained tokenizer")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeat", type=int, default=8, help="copies of the corpus as shards (default 8)")
    p.add_argument("--trials", type=int, default=3, help="best of this many runs (default 3)")
    p.add_argument("--cpus", default=None,
                   help="pin to these CPUs, e.g. '0,1' (workers and threads inherit it)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.corpus is None:
        from megatron_csl.data.reference_files import WIKI_CORPUS

        args.corpus = str(WIKI_CORPUS)
    if not os.path.exists(args.corpus):
        print(f"error: corpus {args.corpus} not found", file=sys.stderr)
        return 2
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    from megatron_csl.data.bench import benchmark, format_rows
    from megatron_csl.data.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench_tok_") as folder:
        model = args.tokenizer_model
        if model is None:
            model = train_tokenizer([args.corpus], os.path.join(folder, "bench"),
                                    vocab_size=args.vocab_size, sample_docs=10**9,
                                    progress=False).model_path
        rows = benchmark(args.corpus, model, args.workers, args.repeat, args.trials)
    print(f"corpus {args.corpus}; CPUs available: {len(os.sched_getaffinity(0))}; "
          f"best of {args.trials}")
    print(format_rows(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in rows], f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
