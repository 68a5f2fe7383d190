#!/usr/bin/env python3
"""Write C4-format shards of synthetic text with learnable structure (no downloads).

Example:
  python tools/make_synthetic_c4.py --output-dir data/synthetic --num-shards 4 --docs-per-shard 5000
  python tools/make_synthetic_c4.py --output-dir data/synthetic --split validation --num-shards 1 \
      --docs-per-shard 500 --seed 1

Files are named like C4's: c4-train.00000-of-00004.json.gz. Same seeds, same bytes. See docs/data.md.
"""
import argparse
import sys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--num-shards", type=int, default=4)
    p.add_argument("--docs-per-shard", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="document seed (default 0)")
    p.add_argument("--split", choices=["train", "validation"], default="train")
    p.add_argument("--language-seed", type=int, default=1234,
                   help="seed of the lexicon and grammar; keep it equal across splits (default 1234)")
    p.add_argument("--show", type=int, default=0, metavar="N",
                   help="print N sample documents instead of writing shards")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_csl.data.synthetic_c4 import sample_text, write_shards

    if args.show:
        print(sample_text(args.show, args.seed, args.language_seed))
        return 0
    try:
        paths = write_shards(args.output_dir, args.num_shards, args.docs_per_shard, args.seed,
                             args.split, args.language_seed, progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} {args.split} shard(s) of {args.docs_per_shard} documents to "
          f"{args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
