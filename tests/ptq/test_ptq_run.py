"""tools/ptq.py end to end on a tiny dense run trained by launch/pretrain.py: RTN and GPTQ run
directories the fitter reads as their own formats, evaluation on the run's own validation
samples, calibration on training samples, and bad inputs refused with nothing written."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_csl.ptq import cli
from megatron_csl.ptq import run as ptq
from tests.training.helpers import tool_env

REPO = Path(__file__).resolve().parents[2]
SHAPE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--ffn-hidden-size", "128", "--seq-length", "32", "--vocab-size", "300",
         "--split", "90,10,0", "--train-iters", "40", "--lr", "1e-2", "--micro-batch-size", "4",
         "--global-batch-size", "8", "--eval-iters", "2", "--no-tensorboard"]


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    from tests.training.helpers import write_indexed_dataset

    root = tmp_path_factory.mktemp("ptq")
    # Documents made of a few repeated patterns: in 40 steps the model learns them (validation
    # loss ~0.2), so quantizing its weights costs measurable loss.
    rng = np.random.default_rng(0)
    motifs = [rng.integers(0, 300, size=16).tolist() for _ in range(6)]
    docs = [sum((motifs[k] for k in rng.integers(0, 6, size=5)), []) for _ in range(150)]
    prefix = write_indexed_dataset(root / "data", docs)
    run_dir = root / "runs" / "dense"
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "pretrain.py"), *SHAPE,
                           "--data-path", prefix, "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=300, env=tool_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _main(argv, capsys):
    code = cli.main([str(a) for a in argv] + ["--quiet"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dense_model_evaluates_to_the_runs_own_validation_loss(dense_run):
    """Same samples, same reduction: PTQ losses are comparable with the run's and QAT runs'."""
    from megatron_csl.convert.loading import load_model
    from megatron_csl.convert.run_info import locate_checkpoint

    location = locate_checkpoint(dense_run)
    loaded = load_model(location)
    plan, train_ds, valid_ds = ptq.run_datasets(location)
    expected = json.loads((dense_run / "result.json").read_text())["val_loss"]
    assert ptq.validation_loss(loaded.model, plan, valid_ds) == pytest.approx(expected, rel=1e-5)

    # Calibration takes the first training samples, in training order, never validation ones.
    batches = ptq.calibration_batches(plan, train_ds, 6)
    tokens = torch.cat([b["tokens"] for b in batches])
    assert tokens.shape[0] == 8   # rounded up to whole micro-batches of 4
    for i in range(8):
        assert torch.equal(tokens[i], torch.as_tensor(train_ds[i]["tokens"]))
    assert train_ds.index_split.name == "train" and valid_ds.index_split.name == "valid"


def test_rtn_and_gptq_write_runs_the_fitter_reads(dense_run, tmp_path, capsys):
    from megatron_csl.scaling.formats import format_info
    from megatron_csl.scaling.runs import collect_runs

    source = json.loads((dense_run / "result.json").read_text())
    root = tmp_path / "runs"
    shutil.copytree(dense_run.parent, root)
    results = {}
    for method in ("rtn", "gptq"):
        out = root / f"dense-w2-{method}"
        code, text, err = _main(["--load", dense_run, "--compression", "w2", "--method", method,
                                 "--output", out, "--calibration-samples", "16"], capsys)
        assert code == 0, err
        assert f"w2@ptq-{method}: validation loss" in text
        assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "result.json", "run.json"]
        result = json.loads((out / "result.json").read_text())
        run = json.loads((out / "run.json").read_text())
        assert result["status"] == "finished" and result["compression"] == f"w2@ptq-{method}"
        assert (result["N"], result["D"], result["steps"]) == (source["N"], source["D"], source["steps"])
        assert run["compression"] == f"w2@ptq-{method}" and run["name"] == out.name
        assert run["ptq"]["calibration_split"] == "train" and run["ptq"]["spec"] == "w2"
        assert run["ptq"]["calibration_samples"] == (16 if method == "gptq" else 0)
        assert len(run["ptq"]["quantized"]) == 2 * 4
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert rows == [{"step": source["steps"], "tokens": source["D"], "val_loss": result["val_loss"]}]
        results[method] = result["val_loss"]
    # 2-bit weights cost loss, and the two methods give different models.
    assert source["val_loss"] < min(results.values()) and results["gptq"] != results["rtn"], (
        source["val_loss"], results)
    assert not [p for p in root.iterdir() if p.name.startswith(".")]   # no staging left

    table, skipped = collect_runs([root])
    assert skipped == []
    assert sorted(table.formats) == ["dense", "w2@ptq-gptq", "w2@ptq-rtn"]
    assert format_info("w2@ptq-gptq").w_bits == 2.0


def test_bad_inputs_are_named_and_write_nothing(dense_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    cases = []
    cases.append((["--load", tmp_path / "missing"], "does not exist"))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(dense_run, unfinished)
    (unfinished / "result.json").unlink()
    cases.append((["--load", unfinished], "is not finished (no result.json)"))
    quantized = tmp_path / "qat"
    shutil.copytree(dense_run, quantized)
    doc = json.loads((quantized / "run.json").read_text())
    doc["compression"] = "w4"
    (quantized / "run.json").write_text(json.dumps(doc))
    cases.append((["--load", quantized], "was trained with compression 'w4'; PTQ starts from a dense run"))
    for load, message in cases:
        code, _, err = _main([*load, "--compression", "w4", "--method", "rtn", "--output", out], capsys)
        assert code == 2 and message in err, err
    for spec, method, message in [("w4a4", "rtn", "compresses weights only"),
                                  ("dense", "rtn", "compresses weights only"),
                                  ("w4:lsq", "rtn", "learned step"),
                                  ("fp4", "gptq", "float formats"), ("w9", "rtn", "weight bits")]:
        code, _, err = _main(["--load", dense_run, "--compression", spec, "--method", method,
                              "--output", out], capsys)
        assert code == 2 and message in err, (spec, err)
    existing = tmp_path / "existing"
    existing.mkdir()
    code, _, err = _main(["--load", dense_run, "--compression", "w4", "--method", "rtn",
                          "--output", existing], capsys)
    assert code == 2 and "already exists" in err
    assert not out.exists()

    # A failure while writing leaves neither the output nor its staging directory.
    def explode(staging, *args, **kwargs):
        (staging / "run.json").write_text("{}")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ptq, "_write_run_dir", explode)
    with pytest.raises(OSError, match="disk full"):
        cli.main([f"--load={dense_run}", "--compression=w4", "--method=rtn", f"--output={out}", "--quiet"])
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
