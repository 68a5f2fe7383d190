"""PTQ runs are their own formats to the fitter: "<spec>@ptq-<method>" keys get separate
multipliers beside the QAT format, with the spec's bits and Gaussian MSE."""
import json

import numpy as np
import pytest

from megatron_csl.scaling.fit_cli import main
from megatron_csl.scaling.formats import format_info, gmse_parts, split_format_key
from megatron_csl.scaling.runs import canonical_spec
from megatron_csl.scaling.synthetic import SyntheticSweep
from tests.scaling.helpers import write_sweep

TRUTH = {"dense": 1.0, "w4": 0.923, "w4@ptq-gptq": 0.86, "w4@ptq-rtn": 0.78}


def test_ptq_and_qat_points_get_separate_multipliers(tmp_path, capsys):
    sweep = SyntheticSweep(epm=tuple(TRUTH.items()), noise=0.002)
    write_sweep(tmp_path / "runs", sweep.draw(np.random.default_rng(7)))
    rc = main([str(tmp_path / "runs"), "--bootstrap", "10", "--workers", "1", "--refine-top", "8",
               "--quiet", "--json", str(tmp_path / "fit.json")])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "fit.json").read_text())
    assert set(report["epm"]) == set(TRUTH)
    for key, value in TRUTH.items():
        assert report["epm"][key]["value"] == pytest.approx(value, rel=0.05), key
    assert report["epm"]["w4@ptq-rtn"]["value"] < report["epm"]["w4@ptq-gptq"]["value"] \
        < report["epm"]["w4"]["value"]
    rows = {r["spec"]: r for r in report["formats"]}
    assert rows["w4@ptq-rtn"]["runs"] == 15 and "4/16" in capsys.readouterr().out


def test_format_keys_parse_and_keep_the_specs_accounting():
    assert canonical_spec("w4:row,sym@ptq-gptq") == "w4@ptq-gptq"
    assert split_format_key("w4@ptq-rtn") == ("w4", "ptq-rtn")
    assert split_format_key("s50+w4") == ("s50+w4", None)
    assert format_info("w4@ptq-rtn").w_bits == format_info("w4").w_bits == 4.0
    assert gmse_parts("w4@ptq-rtn") == gmse_parts("w4")
    for bad in ("w4@", "w4@PTQ", "w4@ptq rtn"):
        with pytest.raises(ValueError, match="the method after '@'"):
            canonical_spec(bad)
