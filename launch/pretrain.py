#!/usr/bin/env python
"""One pretraining run (what torchrun or srun starts on every rank). See docs/pretrain.md.

    torchrun --nproc-per-node 2 launch/pretrain.py --model-size 10m --seq-length 256 \
        --vocab-size 32000 --mock-data --train-iters 100 --lr 3e-4 --run-dir runs/demo

Exit codes: 0 finished, 1 error, 2 bad arguments, 3 preempted with a checkpoint (requeue).
"""
import logging
import os
import sys

# The __main__ guard keeps this file import-safe for multiprocessing's spawn mode.
if __name__ == "__main__":
    from megatron_csl.training import run_pretrain

    exit_code = run_pretrain(sys.argv[1:])
    # run_pretrain has written and closed everything (result.json, metrics, checkpoints, process
    # group). A normal interpreter exit would now spend about 3 s (2-core machine) garbage-
    # collecting every object torch, sympy and megatron created; `make demo` starts 16 runs.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
