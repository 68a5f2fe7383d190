#!/usr/bin/env python
"""launch/pretrain.py on a GPU: NCCL, bf16, the distributed optimizer, compressed layers, resume.

Runs (one process per visible GPU, at most 2) the same short job twice: once
straight through, once stopped at the half-way checkpoint (--exit-interval, exit code 3 = requeue)
and resumed with --save DIR --load DIR. Prints both loss columns and the largest difference, and
exits 1 if the
runs fail, if a loss is not finite, or if the resumed losses differ by more than --tolerance
(relative; bf16 on a GPU is not promised bit-for-bit, because some CUDA backward kernels add in a
nondeterministic order). Used by tools/gpu_check.sh; on a CPU it runs the same job in fp32 over
gloo, where resume is exact.

    python tools/gpu_pretrain_check.py --work /tmp/gpu_pretrain [--compression w4a4]
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_csl.sweeps.local import launcher  # noqa: E402
from megatron_csl.training import REQUEUE_EXIT_CODE  # noqa: E402
from megatron_csl.training.rundir import read_metrics  # noqa: E402


def job_args(cuda: bool, compression: str, iters: int) -> list:
    shape = (["--model-size", "10m", "--seq-length", "512", "--vocab-size", "32000",
              "--micro-batch-size", "8", "--global-batch-size", "16", "--bf16"] if cuda else
             ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
              "--ffn-hidden-size", "192", "--seq-length", "64", "--vocab-size", "256",
              "--micro-batch-size", "4", "--global-batch-size", "8"])
    return shape + ["--mock-data", "--compression", compression, "--use-distributed-optimizer",
                    "--train-iters", str(iters), "--lr", "1e-3", "--lr-warmup-iters", "2",
                    "--log-interval", "1", "--eval-interval", str(iters), "--eval-iters", "2",
                    "--save-interval", str(iters // 2), "--no-tensorboard", "--seed", "1"]


def launch(args: list, nproc: int) -> int:
    # As the local sweep executor starts runs (torchrun's own launcher would turn exit 3 into 1).
    cmd = launcher(sys.executable, nproc) + [str(REPO / "launch" / "pretrain.py")] + args
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode


def train_rows(run_dir: Path) -> list:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_pretrain"))
    p.add_argument("--compression", default="w4a4")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--tolerance", type=float, default=2e-2)
    args = p.parse_args(argv)
    if args.iters < 2:
        p.error(f"--iters must be at least 2 (the run stops at iters // 2), got {args.iters}")

    import torch

    cuda = torch.cuda.is_available()
    nproc = min(torch.cuda.device_count(), 2) if cuda else 1
    print(f"{'CUDA x' + str(nproc) + ', bf16, NCCL' if cuda else 'CPU, fp32, gloo'}; "
          f"compression {args.compression}", flush=True)
    shutil.rmtree(args.work, ignore_errors=True)
    straight, resumed = args.work / "straight", args.work / "resumed"
    base = job_args(cuda, args.compression, args.iters)

    failures = []
    if launch(base + ["--run-dir", str(straight)], nproc) != 0:
        failures.append("the uninterrupted run failed")
    half = str(args.iters // 2)
    # Megatron-LM's resume idiom: the same --save DIR --load DIR on both jobs.
    ckpts = ["--save", str(resumed / "checkpoints"), "--load", str(resumed / "checkpoints")]
    code = launch(base + ["--run-dir", str(resumed), "--exit-interval", half] + ckpts, nproc)
    if code != REQUEUE_EXIT_CODE:
        failures.append(f"the stopped run exited {code}, not {REQUEUE_EXIT_CODE} (requeue)")
    if launch(base + ["--run-dir", str(resumed)] + ckpts, nproc) != 0:
        failures.append("the resumed run failed")
    if failures:
        print("FAILED:", "; ".join(failures))
        return 1

    straight_rows = train_rows(straight)
    a = {r["step"]: r["loss"] for r in straight_rows}
    b = {r["step"]: r["loss"] for r in train_rows(resumed)}
    worst = 0.0
    print(f"{'step':>5} {'straight':>10} {'resumed':>10}")
    for step in sorted(a):
        print(f"{step:>5} {a[step]:>10.5f} {b.get(step, float('nan')):>10.5f}")
        if not (math.isfinite(a[step]) and math.isfinite(b.get(step, math.nan))):
            failures.append(f"step {step}: loss not finite")
            continue
        worst = max(worst, abs(a[step] - b[step]) / abs(a[step]))
    if sorted(a) != sorted(b):
        failures.append(f"steps differ: {sorted(a)} vs {sorted(b)}")
    result = json.loads((straight / "result.json").read_text())
    print(f"largest relative loss difference after resume: {worst:.2e} "
          f"(tolerance {args.tolerance:g}); val_loss {result['val_loss']:.4f}; "
          f"tokens/s at the last logged step: {straight_rows[-1]['tokens_per_s']:,.0f}")
    if worst > args.tolerance:
        failures.append(f"resume differs by {worst:.2e}")
    if failures:
        print("FAILED:", "; ".join(failures))
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
