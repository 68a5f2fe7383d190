"""Command line of tools/convert_checkpoint.py (see docs/convert.md).

Exit codes: 0 written, 2 bad input (a checkpoint from another format or version, a missing or
partial checkpoint, an impossible target layout, bad flags), 1 an unexpected failure. Nothing is
written on failure: the output is staged in a temporary directory next to --output and renamed
only when complete.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

from megatron_csl.convert.errors import ConversionError

TARGETS = ("megatron", "hf", "packed")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # exit code 2 with the usage, like argparse, but our prefix
        self.print_usage(sys.stderr)
        print(f"convert_checkpoint: error: {message}", file=sys.stderr)
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="convert_checkpoint.py", allow_abbrev=False,
                description="Convert a megatron-csl checkpoint: to another TP/PP layout (megatron), "
                            "to a Hugging Face Llama (hf), or to a packed low-bit artefact (packed).")
    p.add_argument("--load", required=True, metavar="RUN_DIR_OR_CKPT",
                   help="a run directory (its newest checkpoint is used), its checkpoints/ folder, "
                        "or one checkpoints/iter_XXXXXXX directory")
    p.add_argument("--to", required=True, choices=TARGETS, help="what to write")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="directory to create (must not exist, or be empty)")
    p.add_argument("--target-tp", type=_positive_int, metavar="K",
                   help="--to megatron: tensor-parallel size of the output (default: the source's)")
    p.add_argument("--target-pp", type=_positive_int, metavar="K",
                   help="--to megatron: pipeline-parallel size of the output (default: the source's)")
    p.add_argument("--weights", choices=("compressed", "master"),
                   help="--to hf: 'compressed' (default) exports the weights the forward pass used "
                        "(pruned/quantized, dequantized); 'master' the latent weights")
    p.add_argument("--max-shard-size", default="5GB",
                   help="--to hf: largest safetensors file before sharding (default 5GB)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="--to megatron: give up when the conversion ranks run longer (default 3600)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def check_flags(args) -> None:
    if args.to != "megatron":
        for flag, value in (("--target-tp", args.target_tp), ("--target-pp", args.target_pp)):
            if value is not None:
                raise ConversionError(f"{flag} applies to --to megatron only (got --to {args.to})")
    if args.weights is not None and args.to != "hf":
        raise ConversionError(f"--weights applies to --to hf only (--to {args.to} "
                              + ("always stores the compressed weights)" if args.to == "packed"
                                 else "keeps the master weights and the optimizer state)"))


def convert(args) -> str:
    """Run one conversion; returns the summary to print."""
    from megatron_csl.convert.run_info import locate_checkpoint
    from megatron_csl.convert.staging import check_output_dir, staged_output_dir

    check_flags(args)
    output = check_output_dir(args.output)
    location = locate_checkpoint(args.load)
    run = location.run
    head = (f"source: {location.checkpoint_dir} (step {location.iteration}, compression "
            f"{run.compression}, TP={run.tp} PP={run.pp})")
    progress = not args.quiet
    if args.to == "megatron":
        from megatron_csl.convert.megatron_export import export_megatron, plan_for_layout

        tp = args.target_tp or run.tp
        pp = args.target_pp or run.pp
        plan_for_layout(run, tp, pp, output)  # fail on an impossible layout before staging
        with staged_output_dir(output) as staging:
            summary = export_megatron(location, staging, output, tp=tp, pp=pp, timeout_s=args.timeout)
        lines = [head, f"wrote {output}: checkpoint for TP={tp} PP={pp} (step {summary['step']})"]
        if summary["divisor_changed"]:
            lines.append(f"note: --make-vocab-size-divisible-by {summary['make_vocab_size_divisible_by']} "
                         "keeps the padded vocabulary (and so the model) unchanged at this TP size")
        lines.append(f"resume: {summary['resume']}")
        return "\n".join(lines)

    from megatron_csl.convert.loading import load_model

    loaded = load_model(location)
    if args.to == "hf":
        from megatron_csl.convert.hf_export import export_hf

        with staged_output_dir(output) as staging:
            summary = export_hf(loaded, staging, weights=args.weights or "compressed",
                                max_shard_size=args.max_shard_size, progress=progress)
        lines = [head, f"wrote {output}: Hugging Face Llama ({summary['weights']} weights, "
                       f"{summary['dtype']}; files {', '.join(summary['files'])})"]
        lines += [f"note: {n}" for n in summary["notes"]]
        return "\n".join(lines)

    from megatron_csl.convert.packed_export import export_packed, format_size_report

    with staged_output_dir(output) as staging:
        manifest = export_packed(loaded, staging, progress=progress)
    return "\n".join([head, f"wrote {output}: packed export (manifest.json, packed.safetensors)",
                      format_size_report(manifest)])


def main(argv: Optional[Sequence[str]] = None) -> int:
    warnings.filterwarnings("ignore", message=".*(Transformer Engine and Apex|Apex) (are|is) not installed.*")
    args = build_parser().parse_args(argv)
    t0 = time.time()
    try:
        summary = convert(args)
    except ConversionError as err:
        print(f"convert_checkpoint: error: {err}", file=sys.stderr)
        return 2
    print(summary)
    print(f"done in {time.time() - t0:.1f} s")
    return 0
