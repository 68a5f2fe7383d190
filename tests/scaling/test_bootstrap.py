"""Bootstrap over runs: stratified resampling, determinism, recovery and interval coverage."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.scaling.bootstrap import (bootstrap_fit, resample_weights,
                                            resample_weights_paired, size_groups, warm_starts)
from megatron_csl.scaling.fitting import FitOptions, fit_runs
from megatron_csl.scaling.synthetic import SyntheticSweep

FAST = FitOptions(refine_top=8)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=40), st.integers(1, 20), st.integers(0, 2**31))
def test_resampling_is_stratified_by_format(fmt, n_resamples, seed):
    fmt = np.array(fmt)
    w = resample_weights(fmt, n_resamples, np.random.default_rng(seed))
    assert w.shape == (n_resamples, len(fmt))
    assert (w >= 0).all() and np.all(w == np.round(w))
    for k in np.unique(fmt):
        # every resample draws exactly as many runs of each format as there are
        np.testing.assert_array_equal(w[:, fmt == k].sum(axis=1), np.sum(fmt == k))


def test_resampling_draws_uniformly_within_a_format():
    fmt = np.array([0] * 4 + [1] * 6)
    w = resample_weights(fmt, 20000, np.random.default_rng(0))
    np.testing.assert_allclose(w.mean(axis=0), 1.0, atol=0.03)
    # a run appears zero times with probability (1 - 1/n)^n
    np.testing.assert_allclose((w[:, 0] == 0).mean(), (3 / 4) ** 4, atol=0.01)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.integers(1, 20), st.integers(0, 2**31))
def test_paired_resampling_takes_whole_groups(group, n_resamples, seed):
    group = np.array(group)
    w = resample_weights_paired(group, n_resamples, np.random.default_rng(seed))
    assert w.shape == (n_resamples, len(group))
    assert (w >= 0).all() and np.all(w == np.round(w))
    for g in np.unique(group):
        # every run of a group has the same multiplicity: a size is drawn with all its formats
        members = w[:, group == g]
        np.testing.assert_array_equal(members, np.repeat(members[:, :1], members.shape[1], axis=1))
    # as many groups drawn as there are
    first = np.array([np.flatnonzero(group == g)[0] for g in np.unique(group)])
    np.testing.assert_array_equal(w[:, first].sum(axis=1), len(first))


@pytest.fixture(scope="module")
def sweep_fit():
    sweep = SyntheticSweep()
    return sweep, fit_runs("compression", sweep.draw(np.random.default_rng(11)), options=FAST)


def test_same_seed_same_intervals_whatever_the_worker_count(sweep_fit):
    _, result = sweep_fit
    one = bootstrap_fit(result, 6, seed=5, workers=1)
    two = bootstrap_fit(result, 6, seed=5, workers=2)
    np.testing.assert_array_equal(one.thetas, two.thetas)
    other = bootstrap_fit(result, 6, seed=6, workers=1)
    assert not np.array_equal(one.thetas, other.thetas)


def test_truth_inside_the_epm_intervals_of_one_sweep(sweep_fit):
    """One draw: every EPM within its interval (~88% of draws cover all five at once; the
    parameters' coverage is checked statistically below)."""
    sweep, result = sweep_fit
    boot = bootstrap_fit(result, 100, seed=0)
    for f, true in sweep.epm:
        iv = boot.epm[f]
        assert iv.lo <= iv.value <= iv.hi
        assert iv.contains(true), (f, true, iv)
    for name in "abcde":
        assert boot.params[name].lo <= result.params[name] <= boot.params[name].hi
    assert boot.epm["dense"].lo == boot.epm["dense"].hi == 1.0


def test_warm_starts_skip_uncompetitive_and_duplicate_optima(sweep_fit):
    _, result = sweep_fit
    starts = warm_starts(result, extra_starts=2)
    assert np.array_equal(starts[0], result.optima[0])
    best = result.optima_objective[0]
    by_id = {id(t): v for v, t in zip(result.optima_objective, result.optima)}
    for t in starts[1:]:
        assert best * (1 + 1e-6) < by_id[id(t)] <= 1.25 * best
    assert len(warm_starts(result, extra_starts=0)) == 1


def _coverage(draws, resamples, seed0, workers=1):
    """Fraction of intervals (5 EPMs and a..e per sweep) holding the truth; median EPM width."""
    sweep = SyntheticSweep()
    truth = {f: e for f, e in sweep.epm if f != "dense"}
    hits, widths = [], []
    for i in range(draws):
        result = fit_runs("compression", sweep.draw(np.random.default_rng(seed0 + i)), options=FAST)
        boot = bootstrap_fit(result, resamples, seed=i, workers=workers)
        for f, true in truth.items():
            hits.append(boot.epm[f].contains(true))
            widths.append((boot.epm[f].hi - boot.epm[f].lo) / true)
        hits.extend(boot.params[name].contains(true) for name, true in zip("abcde", sweep.law))
    return np.mean(hits), np.median(widths)


def test_intervals_cover_the_truth_at_about_the_nominal_rate():
    """Cheap version: 8 sweeps x 10 intervals, 60 resamples each. Measured once with 100 sweeps
    and 200 resamples: ~97% for the EPMs, ~99% for a..e. The band catches gross under-coverage;
    the width bound catches intervals made wide enough to always cover."""
    coverage, width = _coverage(draws=8, resamples=60, seed0=500)
    assert coverage >= 0.8, coverage
    assert width < 0.2, width


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_intervals_cover_the_truth_at_the_nominal_rate_thorough():
    """60 sweeps x 10 intervals, 200 resamples each (~1 min on 2 idle cores)."""
    coverage, width = _coverage(draws=60, resamples=200, seed0=1000, workers=2)
    assert 0.9 <= coverage <= 0.995, coverage
    assert width < 0.15, width


def test_paired_bootstrap_groups_runs_by_size_and_covers_the_truth(sweep_fit):
    sweep, result = sweep_fit
    groups = size_groups(result.problem)
    runs = result.problem.runs
    for g in np.unique(groups):
        sizes = {(n, d) for n, d in zip(runs.N[groups == g], runs.D[groups == g])}
        assert len(sizes) == 1
    boot = bootstrap_fit(result, 60, seed=0, unit="size")
    assert boot.unit == "size"
    for f, true in sweep.epm:
        assert boot.epm[f].lo <= boot.epm[f].value <= boot.epm[f].hi
    assert boot.epm["dense"].lo == boot.epm["dense"].hi == 1.0


def test_bad_bootstrap_arguments(sweep_fit):
    _, result = sweep_fit
    with pytest.raises(ValueError, match="bootstrap unit must be one of run, size, got 'tokens'"):
        bootstrap_fit(result, 10, unit="tokens")
    with pytest.raises(ValueError, match="at least 2 resamples, got 1"):
        bootstrap_fit(result, 1)
    with pytest.raises(ValueError, match=r"level must be in \(0, 1\), got 1.5"):
        bootstrap_fit(result, 10, level=1.5)
