"""`launch/sweep.py status SWEEP --fit`: a fit of the finished runs while the sweep runs."""
import json

import numpy as np
import pytest

from megatron_csl.scaling.synthetic import SyntheticSweep
from megatron_csl.sweeps.cli import main
from megatron_csl.sweeps.config import load_sweep
from megatron_csl.sweeps.matrix import expand_runs

from .conftest import base_sweep

EPM = {"dense": 1.0, "w4": 0.9, "w2": 0.7}
WIDTHS = (32, 48, 64, 96, 128)


def ladder_sweep(formats=("dense", "w4", "w2"), ratios=(10, 40)):
    models = [{"name": f"m{w}", "num_layers": 2, "hidden_size": w, "num_attention_heads": 4,
               "ffn_hidden_size": 3 * w} for w in WIDTHS]
    return base_sweep(models=models, formats=list(formats), tokens_per_param=list(ratios))


def finish(sweep_path, keep, seed=0, noise=0.003):
    """Write run.json + result.json (loss from a known law) for the sweep's runs where keep(run)."""
    sweep = load_sweep(sweep_path)
    law = SyntheticSweep(noise=noise)
    rng = np.random.default_rng(seed)
    done = []
    for run in expand_runs(sweep):
        if not keep(run):
            continue
        loss = float(law.true_loss(run.N, run.tokens, EPM[run.compression])
                     * np.exp(noise * rng.standard_normal()))
        d = sweep.output_dir / run.name
        d.mkdir(parents=True, exist_ok=True)
        meta = {"N": run.N, "D": run.tokens, "compression": run.compression}
        (d / "run.json").write_text(json.dumps({**meta, "name": run.name}))
        (d / "result.json").write_text(json.dumps({**meta, "val_loss": loss, "status": "finished"}))
        done.append(run)
    return done


def test_status_fit_reports_epms_and_marks_the_unidentified(write_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(ladder_sweep())
    finish(path, lambda r: r.compression != "w2")
    assert main(["status", str(path), "--fit", "--fit-bootstrap", "20"]) == 0
    text = capsys.readouterr().out
    assert "live fit of the 20 finished run(s) (compression law)" in text
    assert "EPMs still unidentified: w2 (no finished runs)" in text
    assert main(["status", str(path), "--fit", "--fit-bootstrap", "20", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["fit"]
    assert fit["finished"] == 20 and fit["error"] is None
    assert fit["unidentified"] == {"w2": ["no finished runs"]}
    assert set(fit["in_doubt"]) <= {"w4"}
    assert fit["report"]["epm"]["w4"]["value"] == pytest.approx(0.9, rel=0.1)
    assert isinstance(fit["report"]["diagnostics"], list)


def test_status_fit_before_the_fit_is_possible(write_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(ladder_sweep())
    # only w4 runs finished: no dense anchor yet
    finish(path, lambda r: r.compression == "w4" and r.tokens_per_param == 10)
    assert main(["status", str(path), "--fit"]) == 0
    text = capsys.readouterr().out
    assert "not possible yet: the compression law needs dense runs" in text
    assert "w4 (no fit yet)" in text and "w2 (no fit yet)" in text
    # one size of w2: its EPM exists but a diagnostic puts it in doubt
    finish(path, lambda r: r.compression == "dense" or (r.compression == "w2" and r.model.name == "m32"))
    assert main(["status", str(path), "--fit", "--fit-bootstrap", "20", "--json"]) == 0
    fit = json.loads(capsys.readouterr().out)["fit"]
    assert "few-sizes" in {**fit["in_doubt"], **fit["unidentified"]}["w2"]
    assert "w2" not in fit["in_doubt"] or "w2" not in fit["unidentified"]
