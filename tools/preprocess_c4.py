#!/usr/bin/env python3
"""Tokenize C4-format shards into a Megatron indexed dataset (PREFIX_text_document.bin/.idx).

Example:
  python tools/preprocess_c4.py --input 'c4/en/c4-train.0000*-of-01024.json.gz' \
      --tokenizer-model tok/c4_32k.model --output-prefix data/c4_train --workers 16 --append-eod

Rerun the same command after an interruption: finished shard parts are kept. See docs/data.md.
"""
import argparse
import os
import signal
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, metavar="GLOB",
                   help="shard glob (.json.gz, .jsonl.gz, .jsonl, .json); repeat for more; "
                        "shards are taken in the order given, each glob's matches sorted")
    p.add_argument("--tokenizer-model", required=True, help="SentencePiece .model file")
    p.add_argument("--output-prefix", required=True,
                   help="writes PREFIX_text_document.bin/.idx (+ .stats.json)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="worker processes (default: the CPUs this process may use)")
    p.add_argument("--append-eod", action="store_true",
                   help="end every document with the tokenizer's eos id")
    p.add_argument("--max-docs", type=int, default=None,
                   help="only the first N input lines (documents), in input order")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first malformed line instead of counting and skipping it")
    p.add_argument("--json-key", default="text", help="JSON field holding the text (default: text)")
    p.add_argument("--work-dir", default=None,
                   help="where per-shard partial outputs live (default: PREFIX_text_document.work)")
    p.add_argument("--keep-work-dir", action="store_true",
                   help="keep the partial outputs after the final merge")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output or an unfinished job of different settings")
    p.add_argument("--batch-lines", type=int, default=1024,
                   help="lines decoded and encoded per batch inside a worker (default: 1024)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _stop_on_sigterm(signum, frame):
    # Slurm and kill send SIGTERM: stop like Ctrl-C (terminate the workers, keep finished parts)
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    from megatron_csl.data.c4_shards import MalformedLineError, ShardReadError
    from megatron_csl.data.preprocess import (
        PreprocessConfig, PreprocessStateError, preprocess,
    )
    from megatron_csl.data.preprocess.report import format_report

    from megatron_csl.training.preflight import output_file_problem

    problem = output_file_problem(args.output_prefix + "_text_document.bin", "--output-prefix")
    if problem:     # found before any shard is read
        print(f"error: {problem}", file=sys.stderr)
        return 2
    config = PreprocessConfig(
        inputs=args.input, tokenizer_model=args.tokenizer_model,
        output_prefix=args.output_prefix, workers=args.workers, append_eod=args.append_eod,
        max_docs=args.max_docs, strict=args.strict, json_key=args.json_key,
        work_dir=args.work_dir, keep_work_dir=args.keep_work_dir, overwrite=args.overwrite,
        batch_lines=args.batch_lines, progress=not args.no_progress,
    )
    try:
        report = preprocess(config)
    except (ShardReadError, MalformedLineError, PreprocessStateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished shard parts are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
