"""Fitting: recovery of known laws, the Epoch Chinchilla reproduction, reduced form, diagnostics."""
import csv

import numpy as np
import pytest

from megatron_csl.data.reference_files import CHINCHILLA_EPOCH_CSV
from megatron_csl.scaling.fitting import FitOptions, decide_data_term, fit_runs
from megatron_csl.scaling.problem import RunTable
from megatron_csl.scaling.runs import read_epoch_chinchilla
from megatron_csl.scaling.synthetic import CHINCHILLA_LAW, PAPER_EPMS, SyntheticSweep

EPOCH_CSV = CHINCHILLA_EPOCH_CSV
# Epoch AI's grid fit of their digitised Chinchilla points (Besiroglu et al. 2024, arXiv 2404.10102)
EPOCH_FIT = {"A": 477.8, "B": 2143.9, "E": 1.8172, "alpha": 0.3473, "beta": 0.3672}
FAST = FitOptions(refine_top=8)


def _assert_epoch_fit(params):
    for name in ("alpha", "beta", "E"):
        assert params[name] == pytest.approx(EPOCH_FIT[name], rel=0.01), name
    for name in ("A", "B"):
        assert params[name] == pytest.approx(EPOCH_FIT[name], rel=0.03), name


def test_reproduces_epoch_grid_fit_on_their_chinchilla_points():
    runs = read_epoch_chinchilla(EPOCH_CSV)
    assert len(runs) == 240  # 245 rows, the 5 highest losses dropped
    result = fit_runs("chinchilla", runs)
    _assert_epoch_fit(result.params)
    assert result.form == "full" and result.warnings == []
    assert 0.005 < result.rmse_log < 0.02


def _write_epoch_format_csv(path, N, flops, loss):
    """A file in the layout of Epoch's chinchilla_epoch_svg.csv (plot coordinates and colours too)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x", "y", "color", "Model Size", "Training FLOP", "hex_color", "loss"])
        for i, (n, c, l) in enumerate(zip(N, flops, loss)):
            w.writerow([float(i), float(i), "#faebdd", repr(float(n)), repr(float(c)), "#faebdd", repr(float(l))])


def test_epoch_format_conversion_and_chinchilla_recovery(tmp_path):
    """Always runs: points drawn from Epoch's law in Epoch's file layout, plus 5 outliers that the
    reader must drop; D = FLOP / (6N) must be recovered for the fit to land on the law."""
    rng = np.random.default_rng(7)
    a, alpha, b, beta, e = CHINCHILLA_LAW
    N = np.exp(rng.uniform(np.log(5e7), np.log(1.5e10), 120))
    D = N * np.exp(rng.uniform(np.log(3), np.log(200), 120))
    loss = e + a / N**alpha + b / D**beta  # noise-free: any error is the conversion's
    outliers = np.array([9.0, 8.5, 8.0, 7.5, 7.0])
    N_all = np.concatenate([N, N[:5]])
    flops_all = 6 * N_all * np.concatenate([D, D[:5]])
    loss_all = np.concatenate([loss, outliers])
    order = rng.permutation(len(N_all))
    path = tmp_path / "epoch.csv"
    _write_epoch_format_csv(path, N_all[order], flops_all[order], loss_all[order])

    runs = read_epoch_chinchilla(path)
    assert len(runs) == 120 and runs.loss.max() < 7.0
    np.testing.assert_allclose(np.sort(runs.D), np.sort(D), rtol=1e-12)
    result = fit_runs("chinchilla", runs, options=FAST)
    for name, true in zip(("A", "alpha", "B", "beta", "E"), CHINCHILLA_LAW):
        assert result.params[name] == pytest.approx(true, rel=1e-3), name


def test_noise_free_sweep_recovers_law_and_epms_exactly():
    sweep = SyntheticSweep(noise=0.0)
    result = fit_runs("compression", sweep.draw(np.random.default_rng(0)), options=FAST)
    assert result.form == "full"
    for name, true in zip("abcde", sweep.law):
        assert result.params[name] == pytest.approx(true, rel=1e-3), name
    for f, true in sweep.epm:
        assert result.epm[f] == pytest.approx(true, rel=1e-4), f
    assert result.rmse_log < 1e-5
    assert result.epm["dense"] == 1.0


def test_noisy_sweep_lands_near_the_truth():
    sweep = SyntheticSweep()  # 0.5% noise, five sizes x three ratios per format
    result = fit_runs("compression", sweep.draw(np.random.default_rng(3)), options=FAST)
    for f, true in sweep.epm:
        assert result.epm[f] == pytest.approx(true, rel=0.08), f
    # residuals are the noise: 0.5% in loss ~ 0.005 in log loss
    assert 0.003 < result.rmse_log < 0.007


def test_grid_prescreen_finds_the_same_optimum_as_every_start():
    """refine_top=K vs all grid starts (reduced form: 150 starts, cheap enough to run all)."""
    sweep = SyntheticSweep(law=(900.0, 0.33, 0.0, 0.3, 1.9), ratios=(20.0,),
                           epm=(("dense", 1.0), ("w2", 0.7)))
    runs = sweep.draw(np.random.default_rng(1))
    every = fit_runs("compression", runs, options=FitOptions(refine_top=None))
    top = fit_runs("compression", runs, options=FitOptions(refine_top=8))
    assert every.n_starts == 150 and top.n_starts == 8
    assert top.objective == pytest.approx(every.objective, rel=1e-7)
    for f in every.epm:
        assert top.epm[f] == pytest.approx(every.epm[f], rel=1e-4)


def test_one_ratio_fits_reduced_form_and_still_reports_epms():
    # data from the reduced law itself (c = 0), all at 20 tokens per parameter
    sweep = SyntheticSweep(law=(900.0, 0.33, 0.0, 0.3, 1.9), ratios=(20.0,), noise=0.0)
    result = fit_runs("compression", sweep.draw(np.random.default_rng(0)), options=FAST)
    assert result.form == "reduced"
    assert set(result.params) == {"a", "b", "e"}
    assert result.tokens_per_param == pytest.approx(20.0)
    assert any("one tokens-per-parameter ratio" in w and "reduced form" in w for w in result.warnings)
    for f, true in sweep.epm:
        assert result.epm[f] == pytest.approx(true, rel=1e-3), f
    assert result.params["b"] == pytest.approx(0.33, rel=1e-3)


def test_one_token_count_also_drops_the_data_term():
    rng = np.random.default_rng(0)
    N = np.geomspace(1e7, 1e9, 8)
    runs = RunTable(N, np.full(8, 1e10), 2.0 + 300 / N**0.3 * np.exp(rng.normal(0, 1e-3, 8)),
                    ["dense"] * 8)
    has, note, _ = decide_data_term(runs, 1.25)
    assert not has and "one token count" in note


def test_ratio_spread_keeps_the_full_form():
    runs = SyntheticSweep(ratios=(10.0, 40.0)).draw(np.random.default_rng(0))
    assert decide_data_term(runs, 1.25)[0] is True


def test_unidentified_irreducible_loss_is_reported():
    sweep = SyntheticSweep(law=(477.8, 0.3473, 2143.9, 0.3672, 1e-9), noise=0.0)
    result = fit_runs("compression", sweep.draw(np.random.default_rng(0)), options=FAST)
    assert any("irreducible loss e" in w and "cannot identify" in w for w in result.warnings)


def test_bound_hit_is_reported():
    # loss rising with N: the best exponent is 0, the lower bound
    N = np.geomspace(1e7, 1e9, 6)
    runs = RunTable(N, 20 * N, 3.0 + 1e-3 * np.log(N), ["dense"] * 6)
    result = fit_runs("chinchilla", runs, options=FAST)
    assert any("bound" in w for w in result.warnings), result.warnings


def test_input_errors_name_the_problem():
    sweep = SyntheticSweep(noise=0.0)
    runs = sweep.draw(np.random.default_rng(0))
    no_dense = runs.subset(runs.formats != "dense")
    with pytest.raises(ValueError, match="needs dense runs"):
        fit_runs("compression", no_dense, options=FAST)
    with pytest.raises(ValueError, match="fits one format"):
        fit_runs("chinchilla", runs, options=FAST)
    one_size = runs.subset(runs.N == runs.N[0])
    with pytest.raises(ValueError, match="one model size"):
        fit_runs("compression", one_size, options=FAST)
    with pytest.raises(ValueError, match="unknown law 'power'; valid: compression, chinchilla, capacity"):
        fit_runs("power", runs, options=FAST)
    with pytest.raises(ValueError, match="no usable runs"):
        fit_runs("compression", runs.subset(np.zeros(len(runs), bool)), options=FAST)


def test_capacity_law_recovers_epms_generated_by_it():
    from megatron_csl.scaling.laws import CapacityLaw
    gmse = {"dense": (None, None), "w4": (0.011543, None), "w2": (0.11885, None), "w1": (0.36338, None),
            "w4a4": (0.011543, 0.011543), "w2a2": (0.11885, 0.11885), "s50": (0.07133, None)}
    truth = np.array([np.log(0.95), 0.5, 1.2])   # log Lc, F, C
    law = CapacityLaw(sorted(gmse), gmse)
    epm = law.epm(truth)
    sweep = SyntheticSweep(epm=tuple(epm.items()), noise=0.0)
    result = fit_runs("capacity", sweep.draw(np.random.default_rng(0)), gmse, options=FAST)
    for f in gmse:
        assert result.epm[f] == pytest.approx(epm[f], rel=1e-3), f
    assert result.params["F"] == pytest.approx(0.5, rel=0.02)
    assert result.params["C"] == pytest.approx(1.2, rel=0.02)
    assert result.params["Lc"] == pytest.approx(0.95, rel=0.02)


def test_paper_epms_are_the_synthetic_default():
    assert dict(SyntheticSweep().epm) == PAPER_EPMS
