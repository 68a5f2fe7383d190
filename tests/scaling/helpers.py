"""Shared helpers for the scaling tests: run directories in the documented format."""
import json
from pathlib import Path


def write_run_dir(root: Path, name: str, *, N, D, loss, compression="dense", status="finished",
                  result=True, run_extra=None, result_extra=None) -> Path:
    """A run directory as training writes it (docs/interfaces.md): run.json and result.json."""
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    run = {"name": name, "N": N, "N_total": N * 1.2, "D": D, "tokens_per_param": D / N,
           "compression": compression, "seed": 1234, "parallel": {"tp": 1, "pp": 1, "dp": 1, "world_size": 1}}
    run.update(run_extra or {})
    (d / "run.json").write_text(json.dumps(run))
    if result:
        res = {"val_loss": loss, "N": N, "D": D, "compression": compression, "status": status,
               "train_loss": loss, "steps": 100, "wall_s": 1.0}
        res.update(result_extra or {})
        (d / "result.json").write_text(json.dumps(res))
    return d


def write_sweep(root: Path, runs) -> list:
    """One run directory per row of a RunTable; returns the directories."""
    dirs = []
    for i, (n, dd, loss, f) in enumerate(zip(runs.N, runs.D, runs.loss, runs.formats)):
        dirs.append(write_run_dir(root, f"{f.replace('/', '_').replace(':', '_')}/run{i:03d}", N=float(n), D=float(dd), loss=float(loss),
                                  compression=f))
    return dirs
