"""Does following the planner pay? A sweep simulated on a known law (``synthetic.py``), trained in
two orders until every EPM's 95% interval is narrower than a target (tools/bench_suggest.py):

- grid: the full grid in the usual order, one model size at a time from the smallest (every
  format and ratio at that size), the intervals measured after each size;
- suggest: rounds of ``suggest_runs`` with a fixed GPU-hour budget each (a multiple of the seed
  runs' cost: small rounds, so the planner sees each round's outcome), the suggested runs
  "trained" (drawn from the law with its noise), the intervals measured after each round.

Both start from the same seed runs (dense at every ratio on the two smallest sizes, every format
on them at the middle ratio) and measure the intervals the same way (bootstrap of the compression
law on the runs trained so far). GPU-hours are 6ND over a fixed FLOP/s per GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .bootstrap import bootstrap_fit
from .fitting import FitOptions, fit_runs
from .laws import DENSE
from .planner import Candidate, suggest_runs
from .problem import RunTable
from .synthetic import CHINCHILLA_LAW

FLOPS_PER_GPU_S = 4e14        # a well-used H100 on bf16 (the cluster profiles' order)
OPTIONS = FitOptions(refine_top=16)


@dataclass(frozen=True)
class BenchConfig:
    epm: tuple = (("dense", 1.0), ("w4", 0.92), ("w2", 0.70), ("w1", 0.47))
    sizes: tuple = (2e7, 6e7, 2e8, 6e8, 2e9)
    ratios: tuple = (10.0, 20.0, 40.0)
    noise: float = 0.005
    target: float = 0.13           # largest log-width of a 95% EPM interval to reach
    round_budget: float = 0.5      # GPU-hours per suggest round, in units of the seed runs' cost
    resamples: int = 30            # planner's simulation resamples
    candidates: int = 6
    measure_resamples: int = 100   # bootstrap resamples of the width measurement
    seed: int = 0


@dataclass
class Trace:
    name: str
    steps: list = field(default_factory=list)     # (GPU-hours so far, runs so far, max width)

    def reached(self, target):
        for hours, runs, width in self.steps:
            if width <= target:
                return hours, runs, width
        return None


def gpu_hours(N, D) -> float:
    return 6.0 * N * D / FLOPS_PER_GPU_S / 3600.0


class Simulator:
    """The grid, its costs, and the law every 'trained' run is drawn from (noise fixed per run,
    so both strategies see the same outcome for the same run)."""

    def __init__(self, cfg: BenchConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.grid = [(f, n, r) for f, _ in cfg.epm for n in cfg.sizes for r in cfg.ratios]
        self.eps = {key: float(rng.standard_normal()) for key in self.grid}
        self.eff = dict(cfg.epm)

    def key_name(self, key) -> str:
        f, n, r = key
        return f"{f}_N{n:.0e}_tpp{r:g}"

    def loss(self, key) -> float:
        f, n, r = key
        a, b, c, d, e = CHINCHILLA_LAW
        return (a / (n * self.eff[f]) ** b + c / (n * r) ** d + e) * math.exp(self.cfg.noise * self.eps[key])

    def table(self, keys) -> RunTable:
        return RunTable([k[1] for k in keys], [k[1] * k[2] for k in keys],
                        [self.loss(k) for k in keys], [k[0] for k in keys])

    def cost(self, keys) -> float:
        return sum(gpu_hours(k[1], k[1] * k[2]) for k in keys)

    def seed_keys(self):
        small, mid = self.cfg.sizes[:2], self.cfg.ratios[len(self.cfg.ratios) // 2]
        keys = [(DENSE, n, r) for n in small for r in self.cfg.ratios]
        keys += [(f, n, mid) for f, _ in self.cfg.epm if f != DENSE for n in small]
        return keys

    def max_width(self, keys) -> float:
        result = fit_runs("compression", self.table(keys), options=OPTIONS)
        boot = bootstrap_fit(result, self.cfg.measure_resamples, seed=self.cfg.seed, options=OPTIONS)
        return max(math.log(iv.hi / iv.lo) for f, iv in boot.epm.items() if f != DENSE)


def run_grid(sim: Simulator) -> Trace:
    trace = Trace("full grid, smallest sizes first")
    keys = list(sim.seed_keys())
    trace.steps.append((sim.cost(keys), len(keys), sim.max_width(keys)))
    for n in sim.cfg.sizes:
        keys += [k for k in sim.grid if k[1] == n and k not in keys]
        trace.steps.append((sim.cost(keys), len(keys), sim.max_width(keys)))
        if trace.steps[-1][2] <= sim.cfg.target:
            break
    return trace


def run_suggest(sim: Simulator, progress: bool = False, max_rounds: int = 30) -> Trace:
    trace = Trace("launch/sweep.py suggest, rounds of the budget")
    keys = list(sim.seed_keys())
    trace.steps.append((sim.cost(keys), len(keys), sim.max_width(keys)))
    budget = sim.cfg.round_budget * sim.cost(sim.seed_keys())
    for i in range(max_rounds):
        if trace.steps[-1][2] <= sim.cfg.target:
            break
        todo = [k for k in sim.grid if k not in keys]
        if not todo:
            break
        cands = [Candidate(sim.key_name(k), k[1], k[1] * k[2], k[0], gpu_hours(k[1], k[1] * k[2]))
                 for k in todo]
        by_name = {sim.key_name(k): k for k in todo}
        plan = suggest_runs(sim.table(keys), cands, budget, resamples=sim.cfg.resamples,
                            top_k=sim.cfg.candidates, seed=sim.cfg.seed + i, progress=progress)
        if not plan.picks:
            break
        keys += [by_name[p.candidate.key] for p in plan.picks]
        trace.steps.append((sim.cost(keys), len(keys), sim.max_width(keys)))
    return trace
