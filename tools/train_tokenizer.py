#!/usr/bin/env python3
"""Train a Llama-like SentencePiece tokenizer on a deterministic sample of C4-format shards.

Example:
  python tools/train_tokenizer.py --input 'c4/en/c4-train.*.json.gz' --vocab-size 32000 \
      --model-type bpe --sample-docs 1000000 --output-prefix tok/c4_32k

Writes PREFIX.model and PREFIX.vocab. Ids: unk 0, bos 1, eos 2 (the EOD), no pad. See docs/data.md.
"""
import argparse
import json
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, metavar="GLOB",
                   help="shard glob (.json.gz, .jsonl.gz, .jsonl, .json); repeat for more")
    p.add_argument("--vocab-size", type=int, default=32000, help="pieces in the model (default 32000)")
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--sample-docs", type=int, default=1_000_000,
                   help="documents to train on (default 1,000,000)")
    p.add_argument("--output-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--seed", type=int, default=0, help="shard order / sampling seed (default 0)")
    p.add_argument("--sample-rate", type=float, default=1.0,
                   help="keep each document with this probability (default 1.0: take them in order "
                        "from seeded-randomly ordered shards)")
    p.add_argument("--threads", type=int, default=None, help="trainer threads (default: all CPUs)")
    p.add_argument("--max-sentence-bytes", type=int, default=16384,
                   help="paragraphs longer than this are left out of training (default 16384)")
    p.add_argument("--json-key", default="text", help="JSON field holding the text")
    p.add_argument("--verbose", action="store_true", help="show SentencePiece's trainer log")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_csl.data.c4_shards import ShardReadError, expand_inputs
    from megatron_csl.data.tokenizer import train_tokenizer
    from megatron_csl.training.preflight import output_file_problem

    problem = output_file_problem(args.output_prefix + ".model", "--output-prefix")
    if problem:     # found before the (long) sampling and training
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        report = train_tokenizer(
            expand_inputs(args.input), args.output_prefix, vocab_size=args.vocab_size,
            model_type=args.model_type, sample_docs=args.sample_docs, seed=args.seed,
            sample_rate=args.sample_rate, threads=args.threads,
            max_sentence_bytes=args.max_sentence_bytes, key=args.json_key,
            progress=not args.no_progress, log_level=0 if args.verbose else 1,
        )
    except ShardReadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = report.sample
    print(f"wrote {report.model_path} and {report.vocab_path}: {report.model_type}, "
          f"{report.vocab_size} pieces, ids {json.dumps(report.special_ids)}")
    print(f"trained on {s.documents} documents ({s.paragraphs} paragraphs, {s.text_bytes:,} bytes) "
          f"from {len(s.shards_read)} shard(s); {s.malformed_lines} malformed lines and "
          f"{s.too_long_paragraphs} over-long paragraphs skipped; {report.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
