"""The capacity law against megatron_csl.compression, calibration, and tools/capacity.py."""
import json
import math

import numpy as np
import pytest

from megatron_csl.compression import CapacityParams, gaussian_mse_parts, predicted_epm
from megatron_csl.scaling.capacity import calibrate, measured_epms
from megatron_csl.scaling.capacity_cli import main as capacity_main
from megatron_csl.scaling.laws import CapacityLaw

SPECS = ["dense", "w4", "w2", "w1", "w4a4", "w8a8", "s50", "fp8", "a8"]


@pytest.mark.parametrize("params", [CapacityParams(), CapacityParams(Lc=0.9, F=0.6, C=1.1)])
def test_capacity_law_matches_predicted_epm(params):
    parts = {s: gaussian_mse_parts(s) for s in SPECS}
    law = CapacityLaw(SPECS, parts)
    epm = law.epm(np.array([math.log(params.Lc), params.F, params.C]))
    for s in SPECS:
        assert epm[s] == pytest.approx(predicted_epm(s, params), rel=1e-12), s
    assert epm["dense"] == 1.0


def test_capacity_law_rejects_gmse_at_or_above_one():
    with pytest.raises(ValueError, match="'x' has Gaussian MSE 1.0; the capacity law needs 0 <= GMSE < 1"):
        CapacityLaw(["x"], {"x": (1.0, None)})


def test_calibration_recovers_known_parameters():
    truth = CapacityParams(Lc=0.93, F=0.55, C=1.2)
    specs = ["w4", "w2", "w1", "w4a4", "s50", "w8a8"]
    parts = {s: gaussian_mse_parts(s) for s in specs}
    measured = {s: {"value": predicted_epm(s, truth), "lo": None, "hi": None} for s in specs}
    cal = calibrate(measured, parts)
    assert cal.fitted == ("Lc", "F", "C")
    assert (cal.Lc, cal.F, cal.C) == pytest.approx((0.93, 0.55, 1.2), rel=1e-4)
    assert cal.rmse_log < 1e-8


def test_calibration_with_few_formats_fixes_the_rest():
    truth = CapacityParams(F=0.5)
    parts = {"w2": gaussian_mse_parts("w2")}
    cal = calibrate({"w2": {"value": predicted_epm("w2", truth)}}, parts)
    assert cal.fitted == ("F",) and cal.Lc == 1.0 and cal.C == 1.39
    assert cal.F == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError, match="no measured non-dense EPMs"):
        calibrate({}, {})


def _fit_json(path, epm):
    path.write_text(json.dumps({"law": "compression", "epm": {s: {"value": v, "lo": v * 0.97, "hi": v * 1.03}
                                                              for s, v in epm.items()}}))
    return path


def test_cli_json_has_the_documented_keys(capsys):
    assert capacity_main(["w4", "bf16", "s50+w4a8", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["spec"] for r in rows] == ["w4", "bf16", "s50+w4a8"]
    assert rows[1]["canonical"] == "dense" and rows[1]["predicted_epm"] == 1.0
    for r in rows:
        assert {"spec", "canonical", "w_bits", "a_bits", "gmse", "predicted_epm"} <= set(r)
    w4 = rows[0]
    assert (w4["w_bits"], w4["a_bits"]) == (4.0, 16.0)
    assert w4["gmse"] == pytest.approx(0.011543, rel=1e-3)
    assert w4["predicted_epm"] == pytest.approx(predicted_epm("w4"), rel=1e-12)
    assert rows[2]["a_bits"] == 8.0 and rows[2]["gmse_a"] is not None


def test_cli_invalid_spec_exits_nonzero_with_the_parser_message(capsys):
    assert capacity_main(["w4", "w99", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "capacity.py: error:" in captured.err and "'w99'" in captured.err and "valid" in captured.err


def test_cli_table_and_calibration(tmp_path, capsys):
    truth = CapacityParams(Lc=1.0, F=0.6, C=1.0)
    fit = _fit_json(tmp_path / "fit.json",
                    {s: predicted_epm(s, truth) for s in ["dense", "w4", "w2", "w1", "w4a4"]})
    assert capacity_main(["w3", "w2", "--calibrate", str(fit), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["measured_epm"] is None and rows[1]["measured_epm"] == pytest.approx(predicted_epm("w2", truth))
    assert rows[0]["predicted_epm"] == pytest.approx(predicted_epm("w3", truth), rel=1e-3)
    assert rows[0]["default_epm"] == pytest.approx(predicted_epm("w3"), rel=1e-12)
    assert capacity_main(["w3", "--calibrate", str(fit)]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 4 measured format(s)" in out and "w3" in out


def test_cli_calibrate_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert capacity_main(["w4", "--calibrate", str(bad)]) == 2
    assert "has no 'epm' object" in capsys.readouterr().err
    assert capacity_main(["w4", "--calibrate", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert measured_epms(_fit_json(tmp_path / "f.json", {"dense": 1.0, "w4": 0.9})) == \
        {"w4": {"value": 0.9, "lo": pytest.approx(0.873), "hi": pytest.approx(0.927)}}
