"""Sweeps: a sweep file expanded into runs, planned, submitted (Slurm or local) and tracked."""
from .config import SweepConfig, load_sweep
from .errors import SweepError
from .matrix import RunLayout, RunSpec, expand_runs, pretrain_args, run_name
from .profile import ClusterProfile, load_profile
from .status import RunStatus, collect_status

__all__ = ["SweepConfig", "load_sweep", "SweepError", "RunLayout", "RunSpec", "expand_runs",
           "pretrain_args", "run_name", "ClusterProfile", "load_profile", "RunStatus", "collect_status"]
