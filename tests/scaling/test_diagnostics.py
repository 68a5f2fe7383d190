"""Diagnostics (issue 18): the fitter says when not to trust it; --strict; --calibrate refuses."""
import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from megatron_csl.scaling import diagnostics as dg
from megatron_csl.scaling.bootstrap import Interval, bootstrap_fit
from megatron_csl.scaling.capacity_cli import main as capacity_main
from megatron_csl.scaling.fit_cli import main as fit_main
from megatron_csl.scaling.fitting import FitOptions, fit_runs
from megatron_csl.scaling.loso import leave_one_size_out
from megatron_csl.scaling.problem import RunTable
from megatron_csl.scaling.synthetic import SyntheticSweep

FAST = FitOptions(refine_top=8)
QUICK = ["--bootstrap", "40", "--workers", "1", "--refine-top", "8", "--quiet"]

# The weak-data case: six small runs at 20 tokens per parameter, dense losses not
# monotone in N (4.99, 4.90, 4.95).
WEAK_CSV = """N,D,loss,compression
1e6,2e7,4.99,
2e6,4e7,4.90,
4e6,8e7,4.95,
1e6,2e7,5.10,w4
2e6,4e7,5.00,w4
4e6,8e7,4.99,w4
"""


@pytest.fixture(scope="module")
def clean_fit():
    runs = SyntheticSweep().draw(np.random.default_rng(4))
    result = fit_runs("compression", runs, options=FAST)
    boot = bootstrap_fit(result, 50, seed=0, options=FAST)
    return result, boot


def _codes(diags, spec=None):
    return {d.code for d in diags if spec is None or d.format == spec}


def test_weak_data_is_flagged_and_strict_exits_4(tmp_path, capsys):
    (tmp_path / "weak.csv").write_text(WEAK_CSV)
    out = tmp_path / "fit.json"
    rc = fit_main(["--table", str(tmp_path / "weak.csv"), *QUICK, "--json", str(out), "--strict"])
    text = capsys.readouterr()
    assert rc == 4
    report = json.loads(out.read_text())     # outputs are still written under --strict
    diags = report["diagnostics"]
    assert all(set(d) == {"code", "format", "N", "message"} for d in diags)
    mono = [d for d in diags if d["code"] == dg.NON_MONOTONE]
    assert len(mono) == 1 and mono[0]["format"] == "dense" and mono[0]["N"] == 4e6
    assert "4.99" in mono[0]["message"] and "4.9 " in mono[0]["message"]
    assert any(d["code"] == dg.FEW_SIZES and d["format"] == "w4" for d in diags)
    assert "[non-monotone] dense N=4e+06" in text.out
    assert "exit 4" in text.err
    # without --strict the same fit exits 0
    assert fit_main(["--table", str(tmp_path / "weak.csv"), *QUICK]) == 0
    capsys.readouterr()

    # --calibrate refuses the flagged w4 EPM, names why, and takes it with --force
    assert capacity_main(["w3", "--calibrate", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refusing to calibrate" in err and "w4" in err and "[non-monotone]" in err
    assert capacity_main(["w3", "--calibrate", str(out), "--force"]) == 0
    cap = capsys.readouterr()
    assert "calibrated on 1 measured format(s) (w4)" in cap.out and "--force" in cap.err


def test_a_clean_sweep_has_no_diagnostics(clean_fit):
    result, boot = clean_fit
    assert dg.diagnose_fit(result, boot, leave_one_size_out(result, FAST)) == []


def test_an_exponent_beyond_its_bound_is_flagged_with_what_it_means():
    N = np.array([1e7, 3e7, 1e8, 3e8, 1e9] * 2)
    D = np.concatenate([20 * N[:5], 60 * N[5:]])
    loss = 2 + (3e7 / N) ** 6 + 2000 / D ** 0.3       # b = 6 > its bound 4
    result = fit_runs("chinchilla", RunTable(N, D, loss, ["dense"] * 10), options=FAST)
    diags = dg.bound_diagnostics(result)
    assert [d.code for d in diags] == [dg.PARAM_ON_BOUND]
    assert diags[0].format is None and "b sits on its upper bound" in diags[0].message
    assert "every EPM is unreliable" in diags[0].message


def test_residual_structure_is_found_when_the_loss_steps():
    sweep = SyntheticSweep(noise=0.001)
    runs = sweep.draw(np.random.default_rng(0))
    # a 3% step down from N = 2e8 on (as the demo's models crossing a step), which a/N^b misses
    stepped = RunTable(runs.N, runs.D, runs.loss * np.where(runs.N >= 2e8, 0.97, 1.0), runs.formats)
    result = fit_runs("compression", stepped, options=FAST)
    found = dg.residual_diagnostics(result)
    assert "dense" in {d.format for d in found}
    assert all(d.code == dg.RESIDUAL_STRUCTURE and "runs of one sign" in d.message for d in found)
    clean = fit_runs("compression", runs, options=FAST)
    assert dg.residual_diagnostics(clean) == []


def _brute_force_runs_p(signs):
    """P(R <= observed) over every distinct arrangement of the same signs."""
    observed = 1 + sum(a != b for a, b in zip(signs, signs[1:]))
    arrangements = set(itertools.permutations(signs))
    runs = [1 + sum(a != b for a, b in zip(s, s[1:])) for s in arrangements]
    return sum(r <= observed for r in runs) / len(arrangements)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([-1, 1]), min_size=2, max_size=9))
def test_exact_runs_test_matches_brute_force(signs):
    if len(set(signs)) < 2:
        return
    assert dg.runs_test_p(np.array(signs)) == pytest.approx(_brute_force_runs_p(signs))


def test_leave_one_size_out_refits_and_flags_a_deciding_size(clean_fit):
    result, boot = clean_fit
    fits = leave_one_size_out(result, FAST)
    assert [f.N for f in fits] == sorted(set(result.problem.runs.N.tolist()))
    for f in fits:
        assert len(f.heldout_resid) == 18 and np.all(np.abs(f.heldout_resid) < 0.05)
        assert f.epm["w4"] == pytest.approx(result.epm["w4"], rel=0.1)
    assert dg.loso_diagnostics(result, boot, fits) == []
    # an interval far narrower than the moves leaving a size out causes: flagged
    narrow = type(boot)(**{**boot.__dict__, "epm": {
        f: Interval(iv.value, iv.value - 1e-6, iv.value + 1e-6) for f, iv in boot.epm.items()}})
    flagged = dg.loso_diagnostics(result, narrow, fits)
    assert flagged and {d.code for d in flagged} == {dg.LOSO_SHIFT}
    assert all(d.N in {f.N for f in fits} and d.format != "dense" for d in flagged)


def test_unconverged_resamples_are_counted_and_flagged(clean_fit):
    result, _ = clean_fit
    starved = FitOptions(refine_top=8, maxiter=2)      # L-BFGS-B stops before converging
    boot = bootstrap_fit(result, 20, seed=1, options=starved)
    assert boot.n_failed > 2
    assert dg.BOOTSTRAP_FAILURES in _codes(dg.bootstrap_diagnostics(result, boot))


def test_interval_on_bound_names_the_format():
    runs = SyntheticSweep(noise=0.005).draw(np.random.default_rng(2))
    # w1 with a single run, below the irreducible loss: no EPM reaches it, so the EPM sits on its bound
    keep = (runs.formats != "w1") | (runs.N == runs.N.min())
    weak = runs.subset(keep)
    weak.loss[weak.formats == "w1"] *= 0.5
    result = fit_runs("compression", weak, options=FAST)
    boot = bootstrap_fit(result, 20, seed=0, options=FAST)
    diags = dg.fit_diagnostics(result) + dg.bootstrap_diagnostics(result, boot)
    assert {dg.PARAM_ON_BOUND, dg.FEW_SIZES} <= _codes(diags, "w1")
    assert dg.INTERVAL_ON_BOUND in _codes(diags, "w1")


def test_scattered_sizes_are_left_out_in_groups():
    from megatron_csl.scaling.loso import MAX_GROUPS, size_labels
    from megatron_csl.scaling.synthetic import random_sweep

    assert size_labels(np.array([1e7, 2e7, 1e7, 3e7])).tolist() == [0, 1, 0, 2]
    runs = random_sweep(40, np.random.default_rng(0))       # every run its own size
    labels = size_labels(runs.N)
    assert len(np.unique(labels)) == MAX_GROUPS
    order = np.argsort(runs.N)
    assert np.all(np.diff(labels[order]) >= 0)                # groups of neighbouring sizes
    result = fit_runs("compression", runs, options=FAST)
    fits = leave_one_size_out(result, FAST)
    assert len(fits) == MAX_GROUPS
    assert sum(len(f.heldout_resid) for f in fits) == len(runs)
