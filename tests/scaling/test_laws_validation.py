"""Issue 18 items 2-4: arguments checked before the fit, the precision law, --compare-laws,
--holdout-ratio."""
import json
import math

import numpy as np
import pytest

from megatron_csl.scaling import fit_cli
from megatron_csl.scaling.fitting import FitOptions, fit_runs
from megatron_csl.scaling.formats import law_inputs
from megatron_csl.scaling.laws import PrecisionLaw
from megatron_csl.scaling.problem import RunTable
from megatron_csl.scaling.synthetic import SyntheticSweep, write_table_csv
from megatron_csl.scaling.validation import predict_values_as_options

QUICK = ["--bootstrap", "0", "--workers", "1", "--refine-top", "8", "--quiet"]


@pytest.fixture(scope="module")
def sweep_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("laws") / "sweep.csv"
    runs = SyntheticSweep().draw(np.random.default_rng(4))
    write_table_csv(runs, path)
    return path, runs


def test_predict_values_become_options_so_negative_numbers_parse():
    argv = ["runs", "--predict", "-1e8,2e9,w4", "1e8,2e9,dense", "--quiet", "-x"]
    assert predict_values_as_options(argv) == ["runs", "--predict=-1e8,2e9,w4",
                                               "--predict=1e8,2e9,dense", "--quiet", "-x"]


@pytest.mark.parametrize("args,message", [
    (["--predict", "-1e8,2e9,w4"], "N must be finite and positive, got -1e8"),
    (["--predict", "1e8,-2e9,w4"], "D must be finite and positive, got -2e9"),
    (["--predict", "1e8,2e9,w3"], "--predict '1e8,2e9,w3': format 'w3' was not fitted"),
    (["--predict", "1e8,2e9,w9x"], "--predict '1e8,2e9,w9x': invalid compression spec"),
    (["--holdout-ratio", "30"], "no runs at that tokens-per-parameter ratio (within 10%); the runs have D/N = 10, 20, 40"),
    (["--holdout-ratio", "-4"], "--holdout-ratio must be a positive"),
    (["--compare-laws", "compression,kaplan"], "unknown law 'kaplan'"),
    (["--compare-laws", "compression"], "two or more different laws"),
    (["--compare-laws", "compression,chinchilla"], "--compare-laws: chinchilla: --law chinchilla fits one format"),
])
def test_arguments_are_checked_before_the_fit(sweep_csv, capsys, monkeypatch, args, message):
    def no_fit(*a, **k):
        raise AssertionError("the fit started before the arguments were checked")

    monkeypatch.setattr(fit_cli, "fit_runs", no_fit)
    assert fit_cli.main(["--table", str(sweep_csv[0]), *QUICK, *args]) == 2
    assert message in capsys.readouterr().err


def test_holdout_needs_two_other_ratios(tmp_path, capsys):
    runs = SyntheticSweep(ratios=(20.0, 40.0)).draw(np.random.default_rng(0))
    write_table_csv(runs, tmp_path / "two.csv")
    assert fit_cli.main(["--table", str(tmp_path / "two.csv"), *QUICK, "--holdout-ratio", "40"]) == 2
    assert "the other runs are all at one ratio" in capsys.readouterr().err


def test_precision_law_gradient_and_dense_reference():
    law = PrecisionLaw(["dense", "w4", "w2a2", "s50"],
                       {"dense": (16, 16), "w4": (4, 16), "w2a2": (2, 2), "s50": (8, 16)})
    x = np.array([math.log(2.0)])
    log_eff, jac = law.format_log_eff(x)
    assert log_eff[0] == 0.0 and np.all(log_eff[1:] < 0)
    assert log_eff[2] == pytest.approx(2 * math.log((1 - math.exp(-1)) / (1 - math.exp(-8))))
    h = 1e-6
    numeric = (law.format_log_eff(x + h)[0] - law.format_log_eff(x - h)[0]) / (2 * h)
    assert np.allclose(jac[:, 0], numeric, rtol=1e-5, atol=1e-9)


def test_precision_law_recovers_gamma_from_its_own_data():
    formats = ["dense", "w8", "w4", "w3", "w2"]
    bits = law_inputs("precision", formats)["bits"]
    truth = PrecisionLaw(formats, bits).epm(np.array([math.log(1.5)]))
    sweep = SyntheticSweep(epm=tuple(truth.items()), noise=0.002)
    runs = sweep.draw(np.random.default_rng(3))
    result = fit_runs("precision", runs, options=FitOptions(refine_top=8), bits=bits)
    assert result.params["gamma"] == pytest.approx(1.5, rel=0.1)
    for f in formats:
        assert result.epm[f] == pytest.approx(truth[f], rel=0.05)


def test_compare_laws_and_holdout_in_the_json(sweep_csv, tmp_path, capsys):
    path, runs = sweep_csv
    out = tmp_path / "fit.json"
    assert fit_cli.main(["--table", str(path), *QUICK, "--json", str(out),
                         "--compare-laws", "compression,capacity,precision",
                         "--holdout-ratio", "40"]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    rows = {r["law"]: r for r in report["law_comparison"]}
    assert set(rows) == {"compression", "capacity", "precision"}
    for r in rows.values():
        assert r["loso_rmse_log"] > r["rmse_log"] > 0 and math.isfinite(r["aic"])
    # the data come from free per-format EPMs (the paper's), which neither one-parameter-family
    # law can follow: the compression law has the lowest AIC
    assert rows["compression"]["delta_aic"] == 0.0
    assert rows["capacity"]["delta_aic"] > 2 and rows["precision"]["delta_aic"] > 2
    assert "law comparison" in text and "leave-one-size-out RMSE(log)" in text

    hold = report["holdout"]
    assert hold["ratio"] == 40 and hold["heldout_runs"] == 30 and hold["fitted_runs"] == 60
    assert {r["spec"] for r in hold["formats"]} == set(runs.format_names())
    for r in hold["formats"]:
        assert abs(r["mean_rel_error"]) < 0.01 and r["max_abs_rel_error"] < 0.03
    assert "hold-out check" in text


def test_holdout_detects_runs_that_the_other_ratios_do_not_predict(tmp_path, capsys):
    runs = SyntheticSweep(noise=0.001).draw(np.random.default_rng(1))
    at40 = np.isclose(runs.D / runs.N, 40)
    shifted = RunTable(runs.N, runs.D, np.where(at40, runs.loss * 1.05, runs.loss), runs.formats)
    write_table_csv(shifted, tmp_path / "s.csv")
    out = tmp_path / "s.json"
    assert fit_cli.main(["--table", str(tmp_path / "s.csv"), *QUICK, "--json", str(out),
                         "--holdout-ratio", "40"]) == 0
    capsys.readouterr()
    for r in json.loads(out.read_text())["holdout"]["formats"]:
        assert r["mean_rel_error"] == pytest.approx(-0.05 / 1.05, abs=0.015)
