#!/usr/bin/env python3
"""Benchmark the fitter: 100 runs x 6 formats, compression law, 1000 bootstrap resamples.

Target: under 10 s end to end on a 2-core machine (prints the time; exits non-zero when over
--target-s only with --check). See docs/fitting.md.
"""
import argparse
import resource
import sys
import time

import numpy as np

from megatron_csl.scaling.bootstrap import bootstrap_fit
from megatron_csl.scaling.fitting import FitOptions, fit_runs
from megatron_csl.scaling.parallel import default_workers
from megatron_csl.scaling.synthetic import PAPER_EPMS, random_sweep, write_table_csv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-per-format", type=int, default=100)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--workers", type=int, default=min(2, default_workers()))
    p.add_argument("--refine-top", type=int, default=FitOptions().refine_top)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-s", type=float, default=10.0)
    p.add_argument("--check", action="store_true", help="exit 1 when slower than --target-s")
    p.add_argument("--write-csv", metavar="PATH",
                   help="also save the synthetic runs as a fit_laws.py --table CSV")
    args = p.parse_args(argv)

    runs = random_sweep(args.runs_per_format, np.random.default_rng(args.seed))
    if args.write_csv:
        write_table_csv(runs, args.write_csv)
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    result = fit_runs("compression", runs, options=FitOptions(refine_top=args.refine_top),
                      workers=args.workers)
    t1 = time.perf_counter()
    boot = bootstrap_fit(result, args.bootstrap, seed=args.seed, workers=args.workers)
    t2 = time.perf_counter()
    cpu = _cpu_s() - cpu0

    total = t2 - t0
    print(f"runs: {len(runs)} ({len(PAPER_EPMS)} formats x {args.runs_per_format}); "
          f"workers: {args.workers}; bootstrap resamples: {args.bootstrap}")
    print(f"first fit ({result.n_starts} L-BFGS-B starts from the 4,500-point grid): {t1 - t0:.2f} s")
    print(f"bootstrap: {t2 - t1:.2f} s ({1e3 * (t2 - t1) / args.bootstrap:.2f} ms per resample)")
    print(f"total: {total:.2f} s wall (target < {args.target_s:g} s); "
          f"{cpu:.2f} s CPU in all processes (on a loaded machine CPU/workers ~ idle wall time)")
    for f in PAPER_EPMS:
        iv = boot.epm[f]
        print(f"  {f:6s} true EPM {PAPER_EPMS[f]:.3f}  fitted {iv.value:.3f} [{iv.lo:.3f}, {iv.hi:.3f}]")
    if args.check and total > args.target_s:
        print(f"FAIL: {total:.2f} s > {args.target_s:g} s", file=sys.stderr)
        return 1
    return 0


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished worker processes
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
