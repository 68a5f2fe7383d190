"""Against a real one-node Slurm (slurm/local-cluster.sh) with the real launch/pretrain.py:
a 3-run CPU sweep (a job array of two one-task runs and a two-task gloo run) completes; a run
warned with USR1 mid-way checkpoints, requeues itself and, after a cancel and a resubmit, still
finishes with the loss of an uninterrupted run."""
import subprocess
import time

import pytest

from megatron_csl.sweeps import cli, rundir, slurm
from megatron_csl.sweeps.status import FINISHED, collect_status

from .conftest import E2E_SWEEP, read_result, run_sweep_cli

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]
SWEEP_RUNS = ("a_dense_tpp0.75_s7", "a_w4_tpp0.75_s7", "b_dense_tpp0.75_s7")


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", slurm_cluster["SLURM_CONF"])
    return slurm_cluster


def _statuses(out, runs):
    return collect_status([(r, out / r, None) for r in runs], slurm.read_queue, slurm.inspect_job)


def _wait(predicate, timeout_s, what):
    deadline = time.time() + timeout_s
    while not predicate():
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


def _submit(out, *runs):
    argv = ["submit", str(E2E_SWEEP), "--executor", "slurm", "--output-dir", str(out)]
    for run in runs:
        argv += ["--only", run]
    assert cli.main(argv) == 0


def _job_of(out, run):
    return rundir.last_submission(out / run)["job_id"]


def test_sweep_completes_on_slurm(slurm_env, e2e_reference, tmp_path, capsys):
    out = tmp_path / "runs"
    _submit(out, *SWEEP_RUNS)
    printed = capsys.readouterr().out
    assert "(array of 2)" in printed and "(job)" in printed
    jobs = {run: rundir.last_submission(out / run) for run in SWEEP_RUNS}
    # The two runs of model a share one array job; b (another layout) is a job of its own.
    assert jobs["a_dense_tpp0.75_s7"]["array_job_id"] == jobs["a_w4_tpp0.75_s7"]["array_job_id"]
    assert jobs["b_dense_tpp0.75_s7"]["array_job_id"] is None
    assert {jobs["a_dense_tpp0.75_s7"]["job_id"], jobs["a_w4_tpp0.75_s7"]["job_id"]} == {
        f"{jobs['a_w4_tpp0.75_s7']['array_job_id']}_0", f"{jobs['a_w4_tpp0.75_s7']['array_job_id']}_1"}

    _wait(lambda: all(s.state == FINISHED for s in _statuses(out, SWEEP_RUNS)), 600,
          "the three runs to finish")
    for run in SWEEP_RUNS:
        assert read_result(out / run)["status"] == "finished"
    run_json = rundir.read_json(out / "b_dense_tpp0.75_s7" / "run.json")
    assert run_json["parallel"]["world_size"] == 2 and run_json["parallel"]["dp"] == 2
    # Same results as the local executor's uninterrupted runs (one process and two with gloo).
    for run, reference in e2e_reference.items():
        assert read_result(out / run)["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-6)

    # A second submit skips finished runs; status reads them back.
    _submit(out, *SWEEP_RUNS)
    assert "nothing to submit: 3 finished" in capsys.readouterr().out
    status = run_sweep_cli("status", E2E_SWEEP, "--output-dir", out, env=slurm_env)
    assert status.returncode == 0, status.stderr
    assert "3 finished, 1 unsubmitted" in status.stdout
    assert all(len(rundir.read_jsonl(out / run / "jobs.jsonl")) == 1 for run in SWEEP_RUNS)


def test_usr1_requeue_then_cancel_and_resubmit(slurm_env, e2e_reference, tmp_path, capsys):
    run = "a_dense_tpp0.75_s7"
    out = tmp_path / "runs"
    metrics = out / run / "metrics.jsonl"

    def last_step():
        rows = [r for r in rundir.read_jsonl(metrics) if "loss" in r]
        return rows[-1]["step"] if rows else 0

    _submit(out, run)
    job = _job_of(out, run)
    _wait(lambda: last_step() >= 5, 300, "step 5")
    # The time-limit warning, as Slurm sends it with --signal=B:USR1@grace: to the batch shell.
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, env=slurm_env, timeout=60)
    _wait(lambda: len(rundir.read_jsonl(out / run / "attempts.jsonl")) >= 3, 300,
          "the requeued job to start again")
    first_end = rundir.read_jsonl(out / run / "attempts.jsonl")[1]
    assert (first_end["event"], first_end["rc"], first_end["signal"]) == ("end", 3, "USR1")
    first_checkpoint = rundir.latest_checkpoint_step(out / run)
    assert 5 <= first_checkpoint < 121
    restarted = rundir.read_jsonl(out / run / "attempts.jsonl")[2]
    assert (restarted["event"], restarted["restart"]) == ("start", 1)
    assert _job_of(out, run) == job          # requeued: the same job, not a new submission

    # Cancel the requeued job mid-way: the run is interrupted, not requeued ...
    _wait(lambda: last_step() >= first_checkpoint + 5, 300, "progress after the requeue")
    subprocess.run(["scancel", job], check=True, env=slurm_env, timeout=60)
    _wait(lambda: _statuses(out, [run])[0].state not in ("running", "pending"), 120,
          "the cancelled job to end")
    assert not (out / run / "result.json").exists()
    cancelled = _statuses(out, [run])[0]
    assert cancelled.state == "interrupted", cancelled
    assert rundir.last_attempt_end(out / run)["signal"] == "TERM"
    # ... and a second submit resumes it from its checkpoint.
    _submit(out, run)
    assert f"resubmit {run}: interrupted, resumes from step {cancelled.checkpoint_step}" in \
        capsys.readouterr().out
    assert _job_of(out, run) != job
    _wait(lambda: _statuses(out, [run])[0].state == FINISHED, 600, "the run to finish")

    result, reference = read_result(out / run), e2e_reference[run]
    assert result["steps"] == reference["steps"] == 121
    assert result["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-6)
    assert result["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-6)
    log = (out / run / "slurm.log").read_text()
    assert "received SIGUSR1" in log and "requeueing job" in log and "resumed from" in log
    assert [r["step"] for r in rundir.read_jsonl(metrics) if "loss" in r] == list(range(1, 122))
