#!/usr/bin/env python
"""Plan, submit and track a sweep of pretraining runs (docs/sweeps.md).

    launch/sweep.py plan   launch/sweeps/weight_only.yaml
    launch/sweep.py submit launch/sweeps/weight_only.yaml --executor slurm [--dry-run]
    launch/sweep.py submit launch/sweeps/demo.yaml --executor local [--parallel 2]
    launch/sweep.py status launch/sweeps/weight_only.yaml [--fit]
    launch/sweep.py suggest launch/sweeps/weight_only.yaml --budget-gpu-hours 500
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from megatron_csl.sweeps.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
