"""The command line as launchers use it: torchrun with TP=2, srun-style ranks and preemption.

Each test starts real processes (python launch/pretrain.py, torchrun), with timeouts so a hang
fails instead of blocking.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_csl.training import REQUEUE_EXIT_CODE
from megatron_csl.training.checkpointing import find_latest, read_latest
from megatron_csl.training.rundir import read_metrics

from .helpers import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "launch" / "pretrain.py")
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
TIMEOUT_S = 240

# w4a4 with weights cut from one CPU master weight, so TP=2 starts from the TP=1 model.
TP_RUN = TINY_MODEL + ["--vocab-size", "256", "--mock-data", "--train-iters", "4", "--lr", "1e-3",
                       "--lr-warmup-iters", "1", "--micro-batch-size", "2",
                       "--global-batch-size", "4", "--log-interval", "1", "--eval-interval", "4",
                       "--eval-iters", "2", "--compression", "w4a4", "--use-cpu-initialization"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return env


def run(cmd, **kwargs):
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S, **kwargs)
    return proc


@pytest.fixture(scope="module")
def tp_runs(tmp_path_factory):
    """(single-process run dir, torchrun TP=2 run dir, torchrun's stdout); both exit 0.

    The single-process reference runs in this process (run_pretrain, the function the script
    calls; one thread like the ranks) to save a second interpreter start."""
    from megatron_csl.training import run_pretrain

    base = tmp_path_factory.mktemp("tp")
    assert run_pretrain(TP_RUN + ["--run-dir", str(base / "tp1")]) == 0
    two = run([TORCHRUN, "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), SCRIPT] + TP_RUN
              + ["--tensor-model-parallel-size", "2", "--run-dir", str(base / "tp2")])
    assert two.returncode == 0, two.stderr[-3000:]
    return base / "tp1", base / "tp2", two.stdout


def test_command_line_run_writes_the_run_directory_contract(tp_runs):
    _, run_dir, stdout = tp_runs
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["compression"] == "w4a4"
    assert run_json["parallel"] == {"tp": 2, "pp": 1, "dp": 1, "world_size": 2,
                                    "use_distributed_optimizer": False}
    assert run_json["D"] == 4 * 4 * 32 and run_json["train_iters"] == 4
    rows = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in rows if "loss" in r]
    assert [tuple(r) for r in train] == [("step", "tokens", "loss", "lr", "grad_norm",
                                         "tokens_per_s")] * 4
    assert [r["tokens"] for r in train] == [128, 256, 384, 512]
    assert all(r["tokens_per_s"] > 0 for r in train)
    # Linear warm-up over 1 iteration from 0, then cosine decay to min-lr (lr/10) at step 4.
    lr, min_lr = 1e-3, 1e-4
    cosine = [min_lr + (lr - min_lr) * 0.5 * (1 + __import__("math").cos(__import__("math").pi
                                                                         * (k - 1) / 3))
              for k in (1, 2, 3)]
    assert [r["lr"] for r in train] == pytest.approx([0.0] + cosine, rel=1e-12)
    result = json.loads((run_dir / "result.json").read_text())
    assert set(result) >= {"val_loss", "N", "D", "compression", "status", "train_loss", "steps",
                           "wall_s"}
    assert result["status"] == "finished" and result["val_loss"] == rows[-1]["val_loss"]
    assert read_latest(run_dir / "checkpoints") == 4
    assert any(p.name.startswith("events.out.tfevents") for p in (run_dir / "tensorboard").iterdir())
    assert "step 4/4 | loss" in stdout and "tok/s | ETA" in stdout


def test_tensor_parallel_w4a4_reproduces_the_single_process_losses(tp_runs):
    tp1, tp2, _ = tp_runs
    assert json.loads((tp2 / "run.json").read_text())["parallel"]["tp"] == 2
    one = [r for r in read_metrics(tp1 / "metrics.jsonl") if "loss" in r]
    two = [r for r in read_metrics(tp2 / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    # Same weights, same batch: w4a4 multiplies integer codes, whose sums do not depend on the
    # split (megatron_csl/layers/linear.py), so the first step's loss is TP=1's to the last bit.
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-6)
    # Later steps start from weights updated with gradients whose TP all-reduce summed in another
    # order (last-bit differences), so a weight at a 4-bit rounding boundary could flip a level:
    # measured 0 over these 4 steps (loss) and <1e-7 (grad norm). A sharding bug (a statistic over
    # half a row, a missing gradient reduction) moves the loss by 1e-2 and more.
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        assert b["lr"] == a["lr"]


def test_bad_flag_exits_2_before_any_work(tmp_path):
    proc = run([sys.executable, SCRIPT, "--hidden-size", "abc", "--run-dir", str(tmp_path)])
    assert proc.returncode == 2
    assert "--hidden-size: invalid int value: 'abc'" in proc.stderr
    assert "megatron" not in proc.stderr    # refused before megatron-core was even imported


def test_preemption_signal_to_one_rank_checkpoints_all_and_exits_3(tmp_path, capfd):
    """Two ranks started the way srun starts them (SLURM_* variables, no torchrun); SIGUSR1 to
    rank 1 only: both agree, save one checkpoint and exit with the requeue code. The run then
    resumes on one rank, in this process (the distributed optimizer's state resharded from DP=2
    to DP=1)."""
    run_dir = tmp_path / "run"
    args = TINY_MODEL + ["--vocab-size", "256", "--mock-data", "--train-iters", "100000",
                         "--lr", "1e-3", "--micro-batch-size", "2", "--global-batch-size", "4",
                         "--log-interval", "1", "--eval-interval", "100000",
                         "--use-distributed-optimizer", "--no-tensorboard",
                         "--run-dir", str(run_dir)]
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, SCRIPT] + args, cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              env=child_env(SLURM_PROCID=str(r), SLURM_NTASKS="2",
                                            SLURM_LOCALID=str(r), MASTER_ADDR="127.0.0.1",
                                            MASTER_PORT=port))
             for r in range(2)]
    try:
        deadline = time.time() + TIMEOUT_S
        while not read_metrics(run_dir / "metrics.jsonl"):
            assert time.time() < deadline, "no training step within the timeout"
            assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGUSR1)
        outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [REQUEUE_EXIT_CODE] * 2, outputs[0][-3000:]
    assert "preempted at step" in outputs[0]
    step = read_latest(run_dir / "checkpoints")
    assert step is not None and find_latest(run_dir / "checkpoints")[0] == step
    assert not (run_dir / "result.json").exists()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert rows[-1]["step"] == step and [r["step"] for r in rows] == list(range(1, step + 1))

    from megatron_csl.training import run_pretrain

    assert run_pretrain(args + ["--load", "--exit-interval", "1"]) == REQUEUE_EXIT_CODE
    out = capfd.readouterr()
    assert f"resumed from {run_dir / 'checkpoints'}" in out.out
    assert "differs from this run's" in out.err   # DP=2 -> DP=1 resharding notice
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, step + 2))
    assert read_latest(run_dir / "checkpoints") == step + 1
    assert abs(rows[-1]["loss"] - rows[-2]["loss"]) < 0.5   # continues, does not restart


def test_pipeline_parallel_run_continues_a_single_stage_checkpoint_exactly(tmp_path):
    """PP=1 for two steps (in this process), then torchrun PP=2 resumes from that checkpoint
    (resharded into two stages): megatron's 1F1B schedule with the loss on the last stage must
    log the very losses of the uninterrupted PP=1 run."""
    from megatron_csl.training import run_pretrain

    args = TINY_MODEL + ["--vocab-size", "256", "--mock-data", "--train-iters", "4",
                         "--lr", "1e-3", "--lr-warmup-iters", "1", "--micro-batch-size", "2",
                         "--global-batch-size", "8", "--log-interval", "1", "--eval-interval",
                         "2", "--eval-iters", "2", "--no-tensorboard"]
    assert run_pretrain(args + ["--run-dir", str(tmp_path / "ref")]) == 0
    run_dir = str(tmp_path / "pp")
    assert run_pretrain(args + ["--run-dir", run_dir, "--exit-interval", "2"]) == \
        REQUEUE_EXIT_CODE
    two = run([TORCHRUN, "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), SCRIPT] + args
              + ["--pipeline-model-parallel-size", "2", "--run-dir", run_dir, "--load"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert "resumed from" in two.stdout and "step 4/4" in two.stdout

    def rows(d):
        return [{k: v for k, v in r.items() if k != "tokens_per_s"}
                for r in read_metrics(Path(d) / "metrics.jsonl")]

    assert rows(run_dir) == rows(tmp_path / "ref")
    assert json.loads((Path(run_dir) / "run.json").read_text())["parallel"]["pp"] == 2
