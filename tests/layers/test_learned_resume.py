"""A learned-step run (w4a4:lsq) stopped at step 2 and resumed from its checkpoint logs the very
losses of the uninterrupted run: the learned offsets, their Adam state and the initial steps set
at the first forward all come back from the dist checkpoint (launch/pretrain.py, subprocesses)."""
import os
import subprocess
import sys
from pathlib import Path

from megatron_csl.training.rundir import read_metrics

REPO = Path(__file__).resolve().parents[2]
ARGS = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--ffn-hidden-size", "128", "--seq-length", "32", "--vocab-size", "256", "--mock-data",
        "--train-iters", "4", "--lr", "1e-2", "--lr-warmup-iters", "1", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--log-interval", "1", "--eval-interval", "2",
        "--eval-iters", "1", "--no-tensorboard", "--compression", "w4a4:lsq"]


def _pretrain(*extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, str(REPO / "launch" / "pretrain.py"), *ARGS, *extra],
                          capture_output=True, text=True, timeout=300, env=env, cwd=REPO)


def _rows(run_dir):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"}
            for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def test_learned_steps_resume_exactly(tmp_path):
    ref = _pretrain("--run-dir", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    stopped = _pretrain("--run-dir", str(tmp_path / "run"), "--exit-interval", "2")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    resumed = _pretrain("--run-dir", str(tmp_path / "run"), "--load")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    assert _rows(tmp_path / "run") == _rows(tmp_path / "ref")
    assert len([r for r in _rows(tmp_path / "ref") if "val_loss" in r]) == 2
