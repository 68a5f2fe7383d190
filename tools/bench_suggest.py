#!/usr/bin/env python3
"""Benchmark of `launch/sweep.py suggest` on a synthetic sweep with a known law: GPU-hours until
every EPM's 95% interval is narrower than a target, following the planner vs the full grid
(megatron_csl/scaling/plan_benchmark.py; docs/fitting.md, "Planning the next runs")."""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_csl.scaling.plan_benchmark import (BenchConfig, Simulator, run_grid,  # noqa: E402
                                                 run_suggest)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--target", type=float, default=BenchConfig.target,
                   help="largest log-width of a 95%% EPM interval to reach (default %(default)s)")
    p.add_argument("--round-budget", type=float, default=BenchConfig.round_budget,
                   help="GPU-hours per suggest round, in units of the seed runs' cost (default %(default)s)")
    p.add_argument("--resamples", type=int, default=BenchConfig.resamples)
    p.add_argument("--candidates", type=int, default=BenchConfig.candidates)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true",
                   help="3 formats x 4 sizes x 2 ratios, few resamples: checks the script runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    cfg = BenchConfig(target=args.target, round_budget=args.round_budget, resamples=args.resamples,
                      candidates=args.candidates, seed=args.seed)
    if args.tiny:
        cfg = BenchConfig(epm=(("dense", 1.0), ("w4", 0.92), ("w2", 0.7)),
                          sizes=(2e7, 6e7, 2e8, 6e8), ratios=(10.0, 40.0), target=args.target,
                          round_budget=1.0, resamples=6, candidates=2, measure_resamples=20,
                          seed=args.seed)
    sim = Simulator(cfg)
    full = sim.cost(sim.grid)
    print(f"grid: {len(sim.grid)} runs ({len(cfg.epm)} formats x {len(cfg.sizes)} sizes x "
          f"{len(cfg.ratios)} ratios), {full:.4g} GPU-h in all; target: every EPM interval "
          f"log-width <= {cfg.target:g}; suggest rounds of {cfg.round_budget:g}x the seed runs' "
          f"{sim.cost(sim.seed_keys()):.3g} GPU-h")
    results = []
    for run in (run_grid, run_suggest):
        t0 = time.time()
        trace = run(sim, progress=not args.quiet) if run is run_suggest else run(sim)
        results.append((trace, time.time() - t0))
    print(f"{'strategy':<46} {'GPU-h to target':>16} {'runs':>5} {'width':>7} {'share of grid':>14} {'wall s':>7}")
    for trace, wall in results:
        hit = trace.reached(cfg.target)
        hours, runs, width = hit if hit else trace.steps[-1]
        label = f"{hours:.4g}" if hit else f">{hours:.4g} (not reached)"
        print(f"{trace.name:<46} {label:>16} {runs:>5} {width:>7.3g} {hours / full:>14.1%} {wall:>7.1f}")
        print("    trace (GPU-h, runs, max width): " + ", ".join(
            f"({h:.3g}, {n}, {w:.3g})" for h, n, w in trace.steps))
    grid_hit, sugg_hit = (t.reached(cfg.target) for t, _ in results)
    if grid_hit and sugg_hit:
        print(f"suggest reached the target with {sugg_hit[0] / grid_hit[0]:.2f}x the grid's GPU-hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
