"""What the README's "reproducible bit for bit" covers, tested on tiny runs (never the whole demo):

- the same run twice with the same thread count gives identical losses;
- the loss depends on torch's intra-op thread count (so the demo fixes one thread per run), and
  SentencePiece's trained model on the trainer's thread count (so the demo fixes --threads 2);
- it depends on the CPU instruction set torch's kernels use (a machine without AVX-512 rounds
  differently): shown by forcing ATEN_CPU_CAPABILITY=avx2 (slow, subprocesses).
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_csl.training import run_pretrain
from megatron_csl.training.rundir import read_metrics

REPO = Path(__file__).resolve().parents[2]
RUN = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--ffn-hidden-size", "192",
       "--seq-length", "64", "--vocab-size", "512", "--mock-data", "--train-iters", "6", "--lr", "1e-2",
       "--micro-batch-size", "16", "--global-batch-size", "16", "--log-interval", "1",
       "--eval-iters", "2", "--eval-interval", "1000", "--no-tensorboard", "--compression", "w4",
       "--attention", "sdpa"]


def _losses(run_dir):
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    return [r["loss"] for r in rows if "loss" in r], [r["val_loss"] for r in rows if "val_loss" in r]


def _run_with_threads(run_dir, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert run_pretrain(RUN + ["--run-dir", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(before)
    return _losses(run_dir)


def test_same_run_same_thread_count_is_bit_identical_and_thread_count_matters(tmp_path):
    first = _run_with_threads(tmp_path / "a", 1)
    again = _run_with_threads(tmp_path / "b", 1)
    assert first == again  # every training and validation loss, exactly
    two_threads = _run_with_threads(tmp_path / "c", 2)
    # Documents why the demo pins OMP_NUM_THREADS=1: two threads split reductions differently.
    assert two_threads[1] != first[1]


def test_tokenizer_model_depends_on_trainer_threads_and_the_demo_fixes_them(tmp_path, monkeypatch):
    from megatron_csl.data.reference_files import WIKI_CORPUS
    from megatron_csl.data.tokenizer import train_tokenizer
    from megatron_csl.demo import CPU, Demo

    def digest(name, threads):
        report = train_tokenizer([str(WIKI_CORPUS)], str(tmp_path / name), vocab_size=512, sample_docs=3000,
                                 threads=threads, progress=False)
        return hashlib.sha256(Path(report.model_path).read_bytes()).hexdigest()

    assert digest("a", 2) == digest("b", 2)
    assert digest("c", 1) != digest("a", 2)

    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    demo = Demo(tmp_path / "demo", CPU)
    commands = []
    monkeypatch.setattr(demo, "_run", lambda argv, **kw: commands.append([str(a) for a in argv]) or "")
    demo.train_tokenizer()
    argv = commands[0]
    assert argv[argv.index("--threads") + 1] == "2" == str(CPU.tokenizer_threads)
    assert demo.env["OMP_NUM_THREADS"] == "1"  # whatever the caller's environment says


@pytest.mark.slow
@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"),
                    reason="this CPU has no instruction set beyond AVX2 to compare with")
def test_cpu_instruction_set_changes_the_losses(tmp_path):
    def run(name, **extra_env):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(REPO), **extra_env)
        env.pop("RANK", None)
        env.pop("WORLD_SIZE", None)
        proc = subprocess.run([sys.executable, str(REPO / "launch" / "pretrain.py"), *RUN,
                               "--run-dir", str(tmp_path / name)], env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads((tmp_path / name / "result.json").read_text())["val_loss"]

    native = run("native")
    assert run("native_again") == native
    assert run("avx2", ATEN_CPU_CAPABILITY="avx2") != native
