"""Run state from run directories plus the Slurm queue, without slurmdbd."""
import json
import os
import socket
import subprocess
import sys

import pytest

from megatron_csl.sweeps import rundir
from megatron_csl.sweeps.status import (FAILED, FINISHED, INTERRUPTED, PENDING, RESUBMIT_STATES,
                                        RUNNING, UNKNOWN, UNSUBMITTED, collect_status, run_status,
                                        status_rows, summarize)


def _slurm_run(tmp_path, name, job="12_3"):
    run = tmp_path / name
    run.mkdir()
    rundir.record_slurm_submission(run, job, job.split("_")[0], 3, tmp_path / "s.sbatch", "t")
    return run


def _metrics(run, *losses):
    with open(run / "metrics.jsonl", "w") as f:
        for step, loss in enumerate(losses, 1):
            f.write(json.dumps({"step": step, "tokens": step * 8, "loss": loss, "lr": 1e-3,
                                "grad_norm": 1.0, "tokens_per_s": 9.0}) + "\n")
        f.write(json.dumps({"step": len(losses), "tokens": 0, "val_loss": 9.9}) + "\n")
        f.write('{"step": 99, "loss": ')      # a torn last line from a crash


def test_unsubmitted_and_finished(tmp_path):
    assert run_status(tmp_path / "nothing", "x", {}, None).state == UNSUBMITTED
    run = _slurm_run(tmp_path, "done")
    (run / "result.json").write_text(json.dumps({"status": "finished", "val_loss": 3.5,
                                                 "train_loss": 3.4, "steps": 10}))
    s = run_status(run, "done", {"12_3": "RUNNING"}, None)   # result.json wins over the queue
    assert (s.state, s.val_loss, s.loss, s.step, s.progress, s.job) == (FINISHED, 3.5, 3.4, 10, 1.0, "12_3")


@pytest.mark.parametrize("queue_state, expected", [("RUNNING", RUNNING), ("COMPLETING", RUNNING),
                                                   ("PENDING (Priority)", PENDING),
                                                   ("REQUEUED", PENDING)])
def test_job_in_the_queue(tmp_path, queue_state, expected):
    run = _slurm_run(tmp_path, "r")
    _metrics(run, 5.0, 4.5, 4.25)
    (run / "run.json").write_text(json.dumps({"train_iters": 12}))
    s = run_status(run, "r", {"12_3": queue_state, "99": "RUNNING"}, None)
    assert s.state == expected
    assert (s.step, s.loss, s.train_iters) == (3, 4.25, 12)
    assert s.progress == pytest.approx(0.25)


def test_job_gone(tmp_path):
    # Gone after exiting 3 with a checkpoint: interrupted (resubmit resumes it).
    run = _slurm_run(tmp_path, "preempted")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "latest").write_text("40")
    rundir.record_attempt(run, "start", job_id="13", restart=0)
    rundir.record_attempt(run, "end", job_id="13", restart=0, rc=3, signal="USR1")
    s = run_status(run, "preempted", {}, lambda job: None)
    assert (s.state, s.checkpoint_step) == (INTERRUPTED, 40)
    # Gone after an error: failed, with the exit code.
    run = _slurm_run(tmp_path, "crashed")
    rundir.record_attempt(run, "start", job_id="14", restart=0)
    rundir.record_attempt(run, "start", job_id="14", restart=1)
    rundir.record_attempt(run, "end", job_id="14", restart=1, rc=1, signal="")
    s = run_status(run, "crashed", {}, lambda job: ("FAILED", "1:0"))
    assert (s.state, s.restarts) == (FAILED, 1)
    assert "last attempt exited 1" in s.detail and "slurm failed (exit 1:0)" in s.detail
    # Cancelled or timed out according to scontrol: interrupted.
    run = _slurm_run(tmp_path, "cancelled")
    assert run_status(run, "cancelled", {}, lambda job: ("CANCELLED", "0:15")).state == INTERRUPTED
    # Submitted, but squeue cannot be asked: unknown (and not resubmitted).
    s = run_status(run, "cancelled", None, None)
    assert s.state == UNKNOWN and UNKNOWN not in RESUBMIT_STATES


def test_local_process_liveness(tmp_path):
    import psutil

    run = tmp_path / "local"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        rundir.record_local_submission(run, proc.pid, psutil.Process(proc.pid).create_time(),
                                       ["x"], "t")
        assert run_status(run, "local", {}, None).state == RUNNING
    finally:
        proc.kill()
        proc.wait()
    assert run_status(run, "local", {}, None).state == FAILED
    # A PID that now belongs to another process (different start time) is not our run.
    rundir.record_local_submission(run, os.getpid(), 12345.0, ["x"], "t")
    assert run_status(run, "local", {}, None).state == FAILED


def test_collect_status_reads_the_queue_once_and_survives_no_squeue(tmp_path):
    runs = [_slurm_run(tmp_path, f"r{i}", job=f"20_{i}") for i in range(3)]
    calls = []

    def reader(job_ids):
        calls.append(sorted(job_ids))
        return {"20_0": "RUNNING", "20_1": "PENDING (Resources)"}

    statuses = collect_status([(r.name, r, 5) for r in runs], reader, lambda job: None)
    assert calls == [["20_0", "20_1", "20_2"]]
    assert [s.state for s in statuses] == [RUNNING, PENDING, FAILED]
    assert summarize(statuses) == {RUNNING: 1, PENDING: 1, FAILED: 1}

    def no_squeue(job_ids):
        raise FileNotFoundError("squeue")

    assert {s.state for s in collect_status([(r.name, r, 5) for r in runs], no_squeue, None)} == {UNKNOWN}
    rows = status_rows(statuses)
    assert rows[0]["state"] == RUNNING and rows[1]["job"] == "20_1"


def test_append_jsonl_keeps_lines_whole(tmp_path):
    path = tmp_path / "a.jsonl"
    for i in range(50):
        rundir.append_jsonl(path, {"i": i, "host": socket.gethostname()})
    with path.open("a") as f:
        f.write('{"torn": ')
    rows = rundir.read_jsonl(path)
    assert [r["i"] for r in rows] == list(range(50))
