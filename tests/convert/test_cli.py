"""End to end on a real run directory written by launch/pretrain.py: every --to target, the
resharded checkpoint resumed by pretrain at TP=2, and the errors (nothing written on failure)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_csl.convert import cli
from megatron_csl.convert.errors import ConversionError

from tests.training.helpers import tool_env

from .helpers import megatron_logits, relative_error

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = [sys.executable, str(REPO / "launch" / "pretrain.py")]
SHAPE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--num-query-groups", "2",
         "--ffn-hidden-size", "128", "--seq-length", "32", "--vocab-size", "300", "--mock-data",
         "--train-iters", "3", "--lr", "1e-3", "--micro-batch-size", "2", "--eval-iters", "1",
         "--no-tensorboard"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("convert") / "run-w4"
    proc = subprocess.run(PRETRAIN + SHAPE + ["--compression", "w4", "--run-dir", str(run_dir)],
                          capture_output=True, text=True, timeout=300, env=tool_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def _main(argv, capsys):
    code = cli.main([str(a) for a in argv + ["--quiet"]])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_hf_and_packed_from_a_trained_run(trained_run, tmp_path, capsys):
    from transformers import LlamaForCausalLM

    from megatron_csl.convert.hf_export import compressed_state
    from megatron_csl.convert.loading import load_model
    from megatron_csl.convert.packed_export import read_packed
    from megatron_csl.convert.run_info import locate_checkpoint

    # --output's missing parent (exports/) is created; the results get umask permissions
    umask = os.umask(0o022)
    try:
        code, out, err = _main(["--load", trained_run, "--to", "hf", "--output", tmp_path / "exports" / "hf"],
                               capsys)
    finally:
        os.umask(umask)
    assert code == 0, err
    assert "Hugging Face Llama (compressed weights" in out
    (tmp_path / "exports" / "hf").rename(tmp_path / "hf")
    assert not list((tmp_path / "exports").iterdir())  # no staging leftovers
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "hf").iterdir()} == {"0o644"}
    assert oct((tmp_path / "hf").stat().st_mode & 0o777) == "0o755"
    loaded = load_model(locate_checkpoint(trained_run))
    tokens = torch.randint(0, 300, (2, 32), generator=torch.Generator().manual_seed(1))
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    with torch.no_grad():
        assert relative_error(megatron_logits(loaded.model, tokens), hf(tokens).logits) <= 1e-4

    code, out, err = _main(["--load", trained_run / "checkpoints", "--to", "packed", "--output",
                            tmp_path / "packed"], capsys)
    assert code == 0, err
    assert "bits/weight" in out and "smaller" in out
    expected = compressed_state(loaded.state_dict(), loaded.dims(), "w4", progress=False)
    restored = read_packed(tmp_path / "packed")
    assert all(torch.equal(restored[k], v) for k, v in expected.items())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_megatron_tp2_resumes_with_the_same_loss(trained_run, tmp_path, capsys):
    out_dir = tmp_path / "tp2"
    code, out, err = _main(["--load", trained_run, "--to", "megatron", "--target-tp", "2",
                            "--output", out_dir, "--timeout", "300"], capsys)
    assert code == 0, err
    run = json.loads((out_dir / "run.json").read_text())
    assert run["parallel"]["tp"] == 2 and run["model"]["padded_vocab_size"] == 384
    assert (out_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    # pretrain accepts it at TP=2: it resumes at step 3 of 3, validates and finishes.
    from megatron_csl.training.distributed import free_port

    port = str(free_port())
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", port, str(REPO / "launch" / "pretrain.py"),
                           "--config", str(out_dir / "pretrain_args.yaml")],
                          capture_output=True, text=True, timeout=300, env=tool_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout
    source = json.loads((trained_run / "result.json").read_text())
    resumed = json.loads((out_dir / "result.json").read_text())
    assert resumed["val_loss"] == pytest.approx(source["val_loss"], rel=1e-5)


def test_errors_write_nothing(trained_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    code, _, err = _main(["--load", trained_run, "--to", "megatron", "--target-tp", "3", "--output", out], capsys)
    assert code == 2 and "target layout TP=3 PP=1 is impossible" in err and "valid TP sizes" in err
    code, _, err = _main(["--load", trained_run, "--to", "megatron", "--target-pp", "4", "--output", out], capsys)
    assert code == 2 and "num_layers 2 is not divisible by pipeline parallel size 4" in err
    code, _, err = _main(["--load", trained_run, "--to", "packed", "--weights", "master", "--output", out], capsys)
    assert code == 2 and "--weights applies to --to hf only" in err
    code, _, err = _main(["--load", tmp_path / "missing", "--to", "hf", "--output", out], capsys)
    assert code == 2 and "does not exist" in err
    assert not out.exists()

    # A different checkpoint format version is refused.
    other = tmp_path / "other-run"
    shutil.copytree(trained_run, other)
    common = other / "checkpoints" / "iter_0000003" / "common.pt"
    state = torch.load(common, weights_only=False)
    state["format_version"] = 99
    torch.save(state, common)
    code, _, err = _main(["--load", other, "--to", "hf", "--output", out], capsys)
    assert code == 2 and "format_version 99" in err

    # A failure half-way (packed.safetensors written, the manifest not) leaves neither the output
    # nor a staging directory behind.
    from types import SimpleNamespace

    from megatron_csl.convert import packed_export

    def explode(*args, **kwargs):
        raise ConversionError("disk full (simulated)")

    monkeypatch.setattr(packed_export, "json", SimpleNamespace(dumps=explode))
    code, _, err = _main(["--load", trained_run, "--to", "packed", "--output", out], capsys)
    assert code == 2 and "disk full" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other-run"]

    (out).mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = _main(["--load", trained_run, "--to", "hf", "--output", out], capsys)
    assert code == 2 and "already exists and is not an empty directory" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
