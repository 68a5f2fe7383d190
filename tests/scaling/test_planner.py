"""The adaptive planner (launch/sweep.py suggest) on a synthetic sweep with a known law."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_csl.scaling.planner import Candidate, fisher_gain, suggest_runs
from megatron_csl.scaling.synthetic import SyntheticSweep

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def weak_w2():
    """Dense and w4 at every size and ratio; w2 only at the two smallest sizes, ratio 20."""
    sweep = SyntheticSweep(epm=(("dense", 1.0), ("w4", 0.92), ("w2", 0.7)))
    full = sweep.draw(np.random.default_rng(0))
    have = (full.formats != "w2") | (np.isin(full.N, [2e7, 6e7]) & np.isclose(full.D / full.N, 20))
    cands = [Candidate(f"{f}-{n:.0e}-{d / n:g}", n, d, f, 6 * n * d / 1e18)
             for n, d, f in zip(full.N[~have], full.D[~have], full.formats[~have])]
    return full.subset(have), cands


def test_picks_fit_the_budget_and_narrow_the_widest_interval(weak_w2):
    runs, cands = weak_w2
    budget = 0.05 * sum(c.cost for c in cands)
    plan = suggest_runs(runs, cands, budget, resamples=12, top_k=2, seed=0)
    assert plan.picks and plan.cost <= budget
    keys = [p.candidate.key for p in plan.picks]
    assert len(set(keys)) == len(keys) and set(keys) <= {c.key for c in cands}
    assert max(plan.predicted_widths.values()) < max(plan.widths.values())
    scores = [plan.score] + [p.score_after for p in plan.picks]
    assert all(a >= b for a, b in zip(scores, scores[1:]))
    assert all(p.reason == "interval" for p in plan.picks)


def test_linearised_prescreen_values_runs_of_the_weak_format(weak_w2):
    from megatron_csl.scaling.fitting import FitOptions, fit_runs
    from megatron_csl.scaling.planner import _State

    runs, cands = weak_w2
    result = fit_runs("compression", runs, options=FitOptions(refine_top=8))
    p = result.problem
    state = _State(p.law, True, p.runs, np.ones((2, len(runs))), np.tile(p.y, (2, 1)),
                   np.tile(result.theta, (2, 1)), result.theta)
    # one more run at 2e9 x 20: worth more for w2 (2 runs) than for w4 (15 runs)
    at = [Candidate(f, 2e9, 4e10, f, 1.0) for f in ("w2", "w4")]
    gain = dict(zip(["w2", "w4"], fisher_gain(state, result.theta, at, 0.005)))
    assert gain["w2"] > gain["w4"] > 0


def test_budget_below_every_candidate_picks_nothing(weak_w2):
    runs, cands = weak_w2
    plan = suggest_runs(runs, cands, 0.5 * min(c.cost for c in cands), resamples=6, top_k=1)
    assert plan.picks == [] and plan.score > 0


def test_bench_suggest_runs_in_tiny_mode():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "bench_suggest.py"), "--tiny",
                           "--quiet", "--target", "0.15"], capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "full grid, smallest sizes first" in out and "launch/sweep.py suggest" in out
    assert "GPU-h to target" in out and "trace (GPU-h, runs, max width)" in out
