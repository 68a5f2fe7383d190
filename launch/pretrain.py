#!/usr/bin/env python
"""One pretraining run (what torchrun or srun starts on every rank). See docs/pretrain.md.

    torchrun --nproc-per-node 2 launch/pretrain.py --model-size 10m --seq-length 256 \
        --vocab-size 32000 --mock-data --train-iters 100 --lr 3e-4 --run-dir runs/demo

Exit codes: 0 finished, 1 error, 2 bad arguments, 3 preempted with a checkpoint (requeue).
"""
import sys

# The __main__ guard is required: megatron's checkpoint saving starts a spawn-mode
# multiprocessing Manager, which re-imports this file.
if __name__ == "__main__":
    from megatron_csl.training import run_pretrain

    sys.exit(run_pretrain(sys.argv[1:]))
