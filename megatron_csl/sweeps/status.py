"""The state of each run of a sweep, from its run directory and the Slurm queue (no slurmdbd).

finished     result.json says "finished"
pending      its Slurm job waits in the queue (also: requeued and waiting to restart)
running      its Slurm job runs, or its local process is alive
interrupted  the job is gone and the last attempt exited 3 (checkpoint saved) or was cancelled,
             timed out or preempted: a new submit resumes it from the checkpoint
failed       the job is gone without a result for another reason: a new submit retries it
unsubmitted  never submitted
unknown      submitted to Slurm, but squeue is not available here to ask
"""
from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Callable, Iterable, Optional

from . import rundir

FINISHED, PENDING, RUNNING = "finished", "pending", "running"
INTERRUPTED, FAILED, UNSUBMITTED, UNKNOWN = "interrupted", "failed", "unsubmitted", "unknown"
STATES = (FINISHED, RUNNING, PENDING, INTERRUPTED, FAILED, UNSUBMITTED, UNKNOWN)
# States a new `submit` launches again; the others are left alone.
RESUBMIT_STATES = (INTERRUPTED, FAILED, UNSUBMITTED)

# Slurm job states (squeue %T) by what they mean for the run.
SLURM_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                 "SUSPENDED", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD"}
SLURM_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"}
SLURM_INTERRUPTED = {"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE"}


@dataclasses.dataclass
class RunStatus:
    name: str
    state: str
    job: Optional[str] = None          # Slurm job id ("12_3", "15") or "pid 1234@host"
    step: Optional[int] = None         # last logged training step
    train_iters: Optional[int] = None
    loss: Optional[float] = None       # last logged training loss
    val_loss: Optional[float] = None   # final validation loss (finished runs)
    restarts: int = 0                  # attempts started after the first (requeues, resubmits)
    checkpoint_step: Optional[int] = None
    detail: str = ""                   # why it is in that state (exit code, Slurm state)

    @property
    def progress(self) -> Optional[float]:
        if self.state == FINISHED:
            return 1.0
        if self.step is None or not self.train_iters:
            return None
        return min(1.0, self.step / self.train_iters)


# (job id) -> Slurm state for the jobs still in the queue; raises FileNotFoundError without squeue.
QueueReader = Callable[[list], dict]
# (job id) -> (JobState, ExitCode) from `scontrol show job`, or None once Slurm forgot the job.
JobInspector = Callable[[str], Optional[tuple]]


def _local_process_alive(record: dict) -> bool:
    import psutil

    if record.get("host") != socket.gethostname():
        return False
    try:
        proc = psutil.Process(int(record["pid"]))
        return abs(proc.create_time() - float(record.get("create_time", 0))) < 0.5 and \
            proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError, TypeError):
        return False


def _job_label(submission: Optional[dict]) -> Optional[str]:
    if submission is None:
        return None
    if submission.get("executor") == "local":
        return f"pid {submission.get('pid')}@{submission.get('host')}"
    return str(submission.get("job_id"))


def run_status(run_dir: Path, name: str, queue: Optional[dict], inspect: Optional[JobInspector],
               expected_iters: Optional[int] = None) -> RunStatus:
    """The state of one run; `queue` maps job ids in the Slurm queue to their state (None: squeue
    unavailable)."""
    run_dir = Path(run_dir)
    status = RunStatus(name=name, state=UNSUBMITTED, train_iters=expected_iters)
    run_json = rundir.read_json(run_dir / rundir.RUN_JSON)
    if run_json and isinstance(run_json.get("train_iters"), int):
        status.train_iters = run_json["train_iters"]
    row = rundir.last_train_row(run_dir)
    if row is not None:
        status.step, status.loss = row.get("step"), row.get("loss")
    status.checkpoint_step = rundir.latest_checkpoint_step(run_dir)
    starts = [a for a in rundir.read_jsonl(run_dir / rundir.ATTEMPTS_JSONL) if a.get("event") == "start"]
    status.restarts = max(0, len(starts) - 1)

    submission = rundir.last_submission(run_dir)
    result = rundir.read_json(run_dir / rundir.RESULT_JSON)
    if result and result.get("status") == "finished":
        status.job = _job_label(submission)
        status.state = FINISHED
        status.val_loss = result.get("val_loss")
        if result.get("train_loss") is not None:
            status.loss = result["train_loss"]
        if isinstance(result.get("steps"), int):
            status.step = result["steps"]
        return status

    if submission is None:
        status.state = UNSUBMITTED if not starts else FAILED
        if starts:
            status.detail = "started but not recorded as submitted"
        return status

    end = rundir.last_attempt_end(run_dir)
    status.job = _job_label(submission)
    if submission.get("executor") == "local":
        if _local_process_alive(submission):
            status.state = RUNNING
            return status
    else:
        job_id = str(submission.get("job_id"))
        if queue is None:
            status.state, status.detail = UNKNOWN, "squeue is not available to ask about the job"
            return status
        slurm_state = queue.get(job_id)
        if slurm_state is not None:
            base = slurm_state.split()[0].rstrip("+")
            status.state = RUNNING if base in SLURM_RUNNING else PENDING
            status.detail = slurm_state.lower()
            return status
        if inspect is not None:
            info = inspect(job_id)
            if info is not None:
                job_state, exit_code = info
                status.detail = f"slurm {job_state.lower()} (exit {exit_code})"
                if job_state in SLURM_INTERRUPTED:
                    status.state = INTERRUPTED
                    return status

    # The job or process is gone and left no result.
    rc = end.get("rc") if end else None
    stopped = bool(end and end.get("signal"))
    if rc == 3 or (stopped and status.checkpoint_step is not None):
        status.state = INTERRUPTED
        how = "exited 3" if rc == 3 else f"stopped by SIG{end.get('signal')} (exit {rc})"
        status.detail = status.detail or f"{how}: checkpoint saved, resumes on the next submit"
    else:
        status.state = FAILED
        what = f"last attempt exited {rc}" if rc is not None else "ended without recording an exit code"
        status.detail = f"{what}; {status.detail}" if status.detail else what
    return status


def collect_status(entries: Iterable[tuple], queue_reader: Optional[QueueReader],
                   inspect: Optional[JobInspector]) -> list[RunStatus]:
    """Status of each (name, run_dir, expected_iters); the queue is read once for all runs."""
    entries = list(entries)
    job_ids = []
    for _, run_dir, _ in entries:
        sub = rundir.last_submission(run_dir)
        if sub and sub.get("executor") == "slurm" and not (Path(run_dir) / rundir.RESULT_JSON).exists():
            job_ids.append(str(sub["job_id"]))
    queue: Optional[dict] = {}
    if job_ids:
        try:
            queue = queue_reader(job_ids) if queue_reader is not None else None
        except FileNotFoundError:
            queue = None
    return [run_status(run_dir, name, queue, inspect, iters) for name, run_dir, iters in entries]


def summarize(statuses: list[RunStatus]) -> dict:
    counts = {state: 0 for state in STATES}
    for s in statuses:
        counts[s.state] += 1
    return {k: v for k, v in counts.items() if v}


def status_rows(statuses: list[RunStatus]) -> list[dict]:
    rows = []
    for s in statuses:
        progress = s.progress
        rows.append({
            "run": s.name, "state": s.state, "job": s.job or "",
            "step": "" if s.step is None else (f"{s.step}/{s.train_iters}" if s.train_iters else str(s.step)),
            "progress": "" if progress is None else f"{100 * progress:.0f}%",
            "loss": "" if s.loss is None else f"{s.loss:.4f}",
            "val_loss": "" if s.val_loss is None else f"{s.val_loss:.4f}",
            "restarts": s.restarts,
            "ckpt": "" if s.checkpoint_step is None else s.checkpoint_step,
            "detail": s.detail,
        })
    return rows
