"""What the sweep tool reads from and adds to a run directory.

Training writes run.json, metrics.jsonl, result.json and checkpoints/ (docs/interfaces.md). The
sweep tool adds two append-only logs, so the state of a run is known without slurmdbd:
- `jobs.jsonl`: one line per submission (Slurm job id, or local PID and host);
- `attempts.jsonl`: one line when an attempt starts and one when it ends (exit code), written
  by the sbatch script or the local executor; a requeued job adds a start line per restart.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Optional

from megatron_csl.training.rundir import read_jsonl  # noqa: F401  (the one JSON Lines reader; re-exported)

from megatron_csl.runfiles import (CHECKPOINTS_DIR, LATEST_FILES, METRICS_JSONL,  # noqa: F401
                                   RESULT_JSON, RUN_JSON)

JOBS_JSONL = "jobs.jsonl"
ATTEMPTS_JSONL = "attempts.jsonl"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single write (O_APPEND), so concurrent writers never interleave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_json(path: Path) -> Optional[dict]:
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else None
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def last_train_row(run_dir: Path, tail_bytes: int = 65536) -> Optional[dict]:
    """The last metrics.jsonl row with a train loss, reading only the end of the file."""
    path = Path(run_dir) / METRICS_JSONL
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - tail_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("loss") is not None:
            return row
    return None


def latest_checkpoint_step(run_dir: Path) -> Optional[int]:
    """The iteration in the checkpoint tracker (written atomically after a save completes), if
    any. A sweep's runs keep their checkpoints in RUN_DIR/checkpoints."""
    for name in LATEST_FILES:
        try:
            text = (Path(run_dir) / CHECKPOINTS_DIR / name).read_text().strip()
            break
        except FileNotFoundError:
            continue
    else:
        return None
    digits = "".join(c for c in text if c.isdigit())
    return int(digits) if digits else None


def record_slurm_submission(run_dir: Path, job_id: str, array_job_id: Optional[str],
                            array_task_id: Optional[int], script: Path, sweep: str) -> None:
    append_jsonl(Path(run_dir) / JOBS_JSONL, {
        "executor": "slurm", "job_id": job_id, "array_job_id": array_job_id,
        "array_task_id": array_task_id, "script": str(script), "sweep": sweep,
        "submitted_at": now_iso()})


def record_local_submission(run_dir: Path, pid: int, create_time: float, command: list[str],
                            sweep: str) -> None:
    append_jsonl(Path(run_dir) / JOBS_JSONL, {
        "executor": "local", "pid": pid, "host": socket.gethostname(), "create_time": create_time,
        "command": command, "sweep": sweep, "submitted_at": now_iso()})


def record_attempt(run_dir: Path, event: str, **fields) -> None:
    append_jsonl(Path(run_dir) / ATTEMPTS_JSONL, {"event": event, "time": now_iso(), **fields})


def last_submission(run_dir: Path) -> Optional[dict]:
    rows = read_jsonl(Path(run_dir) / JOBS_JSONL)
    return rows[-1] if rows else None


def last_attempt_end(run_dir: Path) -> Optional[dict]:
    for row in reversed(read_jsonl(Path(run_dir) / ATTEMPTS_JSONL)):
        if row.get("event") == "end":
            return row
    return None
