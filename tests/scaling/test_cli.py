"""tools/fit_laws.py end to end (in-process): run directories + CSV in, table/JSON/Markdown/PNG out."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_csl.scaling.fit_cli import main
from megatron_csl.scaling.synthetic import SyntheticSweep

from .helpers import write_run_dir, write_sweep

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--bootstrap", "20", "--workers", "1", "--refine-top", "8", "--quiet"]


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory):
    """The synthetic sweep as run directories, minus the dense runs (those go in a CSV), plus
    runs the fitter must skip."""
    root = tmp_path_factory.mktemp("cli")
    sweep = SyntheticSweep()
    runs = sweep.draw(np.random.default_rng(4))
    write_sweep(root / "runs", runs.subset(runs.formats != "dense"))
    dense = runs.subset(runs.formats == "dense")
    lines = ["N,D,loss"] + [f"{float(n)!r},{float(d)!r},{float(l)!r}" for n, d, l in zip(dense.N, dense.D, dense.loss)]
    (root / "dense.csv").write_text("\n".join(lines) + "\n")
    write_run_dir(root / "runs", "zz_unfinished", N=1e8, D=2e9, loss=3.0, result=False)
    write_run_dir(root / "runs", "zz_diverged", N=1e8, D=2e9, loss=9.0, status="diverged")
    return root, sweep


def test_fit_from_run_dirs_and_csv_writes_every_output(sweep_root, capsys):
    root, sweep = sweep_root
    out = root / "out"
    rc = main([str(root / "runs"), "--table", str(root / "dense.csv"), *QUICK,
               "--json", str(out / "fit.json"), "--markdown", str(out / "fit.md"),
               "--plot-dir", str(out / "plots"), "--predict", "1e8,2e9,w4", "3e8,6e9,bf16"])
    assert rc == 0
    text = capsys.readouterr().out

    report = json.loads((out / "fit.json").read_text())
    assert {"law", "params", "epm", "rmse_log", "n_points", "skipped"} <= set(report)
    assert report["law"] == "compression" and report["form"] == "full"
    assert report["n_points"] == 90
    assert set(report["params"]) == set("abcde")
    truth = dict(sweep.epm)
    assert set(report["epm"]) == set(truth)
    for spec, iv in report["epm"].items():
        assert set(iv) == {"value", "lo", "hi"}
        assert iv["lo"] <= iv["value"] <= iv["hi"]
        assert iv["value"] == pytest.approx(truth[spec], rel=0.1)
    reasons = sorted(s["reason"] for s in report["skipped"])
    assert reasons == ["status 'diverged' (only 'finished' runs are fitted)", "unfinished: no result.json"]
    w4 = next(r for r in report["formats"] if r["spec"] == "w4")
    assert w4["size_gain"]["value"] == pytest.approx(w4["epm"]["value"] * 16 / 4)
    assert w4["runs"] == 15

    # terminal table like the paper's, skipped runs listed, predictions
    assert "format" in text and "bits W/A" in text and "size gain" in text
    assert "w4a4    4/4" in text
    assert "zz_unfinished: unfinished: no result.json" in text
    assert "Chinchilla-optimal D" in text and "N=3e+08 D=6e+09 dense" in text
    preds = report["predictions"]
    assert preds[1]["spec"] == "dense" and preds[1]["eff"] == 1.0
    assert preds[0]["optimal_D"] < preds[0]["D"] * 2

    md = (out / "fit.md").read_text()
    assert md.startswith("# Scaling-law fit: compression law") and "| w4 | 4/16 |" in md

    for name in ("loss_vs_N.png", "epm.png", "pareto.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name
    assert not list(out.rglob("*.tmp"))


def test_chinchilla_and_capacity_laws(sweep_root, tmp_path, capsys):
    root, _ = sweep_root
    assert main(["--table", str(root / "dense.csv"), "--law", "chinchilla", *QUICK,
                 "--json", str(tmp_path / "c.json")]) == 0
    chin = json.loads((tmp_path / "c.json").read_text())
    assert set(chin["params"]) == {"A", "alpha", "B", "beta", "E"}
    assert chin["params"]["alpha"]["value"] == pytest.approx(0.3473, rel=0.15)
    assert main([str(root / "runs"), "--table", str(root / "dense.csv"), "--law", "capacity", *QUICK,
                 "--json", str(tmp_path / "k.json"), "--predict", "1e8,2e9,w3"]) == 0
    cap = json.loads((tmp_path / "k.json").read_text())
    assert {"Lc", "F", "C"} <= set(cap["params"])
    assert 0 < cap["predictions"][0]["eff"] < 1
    capsys.readouterr()


def test_chinchilla_on_mixed_formats_asks_for_a_filter(sweep_root, capsys):
    root, _ = sweep_root
    assert main([str(root / "runs"), "--law", "chinchilla", *QUICK]) == 2
    assert "fits one format" in capsys.readouterr().err
    assert main([str(root / "runs"), "--law", "chinchilla", "--format", "w2", *QUICK]) == 0
    assert "law: chinchilla" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [
    (["--predict", "1e8,2e9,w99"], "invalid compression spec 'w99'"),
    (["--predict", "1e8,2e9"], "takes N,D,SPEC"),
    (["--refine-top", "zero"], "--refine-top must be a positive integer or 'all'"),
    (["--bootstrap", "1"], "--bootstrap must be 0 (off) or at least 2"),
    (["--predict", "1e8,2e9,w3"], "format 'w3' was not fitted"),
])
def test_bad_arguments_exit_2_naming_the_value(sweep_root, capsys, args, message):
    root, _ = sweep_root
    assert main([str(root / "runs"), "--table", str(root / "dense.csv"), *QUICK[:-1], *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_inputs(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    write_run_dir(tmp_path, "r", N=1e7, D=2e8, loss=3.0, result=False)
    assert main([str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no usable runs" in err and "unfinished" in err
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_tool_script_runs_as_a_subprocess(sweep_root):
    root, _ = sweep_root
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "fit_laws.py"), "--table",
                           str(root / "dense.csv"), "--law", "chinchilla", "--bootstrap", "0",
                           "--refine-top", "4", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("law: chinchilla (full form)")


def test_an_unusable_json_output_is_refused_before_the_fit(sweep_root, tmp_path, capsys):
    root, _ = sweep_root
    (tmp_path / "afile").write_text("x")
    for out, message in ((tmp_path / "afile" / "fit.json", "is not a folder"),
                         (tmp_path, "is a folder; give a file name")):
        assert main([str(root / "runs"), "--json", str(out), *QUICK]) == 2
        err = capsys.readouterr().err
        assert "--json" in err and message in err
