#!/usr/bin/env python3
"""Fault census: kill -9 during checkpoint saves, and two sweep submits at once (tiny CPU runs).

    python tools/fault_check.py --trials 12 --submit-trials 3 --out /tmp/faults
    python tools/fault_check.py --tiny --out /tmp/faults     # 1 kill trial, 1 submit trial

Kill census: an uninterrupted run is the reference; each trial SIGKILLs the same run at a random
moment of a randomly chosen checkpoint save (0..--max-delay-ms after its .tmp directory appears),
counts forked processes left alive, resumes with --load and compares every metrics row.
Concurrent-submit census: two `launch/sweep.py submit --executor local` on one sweep, started
0..--max-gap-s apart; counts runs started more than once. Prints the counts; exit 0 when every
trial resumed exactly, nothing leaked and no run started twice, else 1.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=10, help="kill -9 trials (default 10)")
    p.add_argument("--submit-trials", type=int, default=2,
                   help="concurrent-submit trials (default 2)")
    p.add_argument("--iters", type=int, default=6, help="iterations of each run (default 6)")
    p.add_argument("--max-delay-ms", type=float, default=120.0,
                   help="kill at most this long after a save's .tmp appears (default 120)")
    p.add_argument("--max-gap-s", type=float, default=3.0,
                   help="second submit at most this long after the first (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="working folder (default: a new temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="also write every trial as JSON here")
    p.add_argument("--tiny", action="store_true",
                   help="1 kill trial of 3 iterations and 1 submit trial of one run (a smoke test)")
    args = p.parse_args(argv)
    for name in ("trials", "submit_trials"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.iters < 2:
        p.error("--iters must be at least 2 (a save to kill before the last step)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_csl.training import fault_census as fc
    from megatron_csl.training.preflight import NotWritableError, check_writable

    out = args.out or Path(tempfile.mkdtemp(prefix="fault_check_"))
    try:
        check_writable(out, "--out")
        if args.json:
            check_writable(args.json.parent, "--json")
    except NotWritableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trials, submit_trials, iters = args.trials, args.submit_trials, args.iters
    formats = None
    if args.tiny:
        trials, submit_trials, iters, formats = 1, 1, 3, ["dense"]
    print(f"fault census in {out}", flush=True)
    kill = submit = None
    if trials:
        kill = fc.kill_census(out / "kill", trials, iters, args.max_delay_ms, args.seed,
                              log=lambda m: print(m, flush=True))
    if submit_trials:
        submit = fc.submit_census(out / "submit", submit_trials, formats, args.max_gap_s,
                                  args.seed, log=lambda m: print(m, flush=True))
    if kill is not None:
        print(kill.summary())
    if submit is not None:
        print(submit.summary())
    if args.json:
        from megatron_csl.atomic import atomic_write_text

        atomic_write_text(args.json, fc.as_json(kill, submit) + "\n")
    ok = (kill is None or kill.ok) and (submit is None or submit.ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
