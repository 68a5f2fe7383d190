"""tools/ptq.py: post-training quantization of a finished dense run (megatron_csl/ptq/run.py)."""
from __future__ import annotations

import argparse
import sys
import warnings

from .run import DEFAULT_CALIBRATION_SAMPLES, METHODS, PTQError, ptq_run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ptq.py",
        description="Quantize a finished dense run's weights without training (RTN or GPTQ), "
                    "evaluate its validation loss on the run's own validation samples and write "
                    "a run directory that tools/fit_laws.py reads as format <spec>@ptq-<method>.")
    p.add_argument("--load", required=True,
                   help="the dense run: its directory, its checkpoints/ or its final iter_ dir")
    p.add_argument("--compression", required=True,
                   help="weight format, e.g. w4, w3, w4:g128 (GPTQ: integer formats; RTN: any "
                        "weight-only spec)")
    p.add_argument("--method", required=True, choices=METHODS,
                   help="rtn: the format's own quantizer applied once; gptq: Frantar et al. 2022 "
                        "calibrated on training samples")
    p.add_argument("--output", required=True, help="new run directory to write (must not exist)")
    p.add_argument("--calibration-samples", type=int, default=DEFAULT_CALIBRATION_SAMPLES,
                   help=f"training samples for GPTQ's Hessians (default "
                        f"{DEFAULT_CALIBRATION_SAMPLES})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*(Transformer Engine and Apex|Apex) (are|is) not "
                                              "installed.*")
    try:
        ptq_run(args.load, args.compression, args.method, args.output,
                calibration_samples=args.calibration_samples, show_progress=not args.quiet)
    except PTQError as err:
        print(f"ptq.py: error: {err}", file=sys.stderr)
        return 2
    return 0
