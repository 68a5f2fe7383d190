"""The local executor with the real launch/pretrain.py: uninterrupted runs (the reference, one
process and torchrun with two), and a run stopped with SIGTERM that the next submit resumes to
the same final loss."""
import signal
import subprocess
import sys
import time

import pytest

from megatron_csl.sweeps import rundir
from megatron_csl.sweeps.status import INTERRUPTED, collect_status

from .conftest import E2E_SWEEP, REPO, SWEEP_PY, read_result, run_sweep_cli

pytestmark = pytest.mark.timeout(600)
RUN = "a_dense_tpp0.75_s7"


def test_reference_runs_finish(e2e_reference):
    a, b = e2e_reference["a_dense_tpp0.75_s7"], e2e_reference["b_dense_tpp0.75_s7"]
    assert a["status"] == b["status"] == "finished"
    assert (a["steps"], b["steps"]) == (121, 79)       # the plan's step counts
    assert a["D"] == 121 * 4 * 32 and b["D"] == 79 * 8 * 32


def test_sigterm_then_resubmit_resumes_to_the_same_loss(e2e_reference, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, str(SWEEP_PY), "submit", str(E2E_SWEEP), "--executor", "local",
           "--output-dir", str(out), "--only", RUN, "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / RUN / "metrics.jsonl"
    deadline = time.time() + 300
    while not any(r.get("step", 0) >= 5 for r in rundir.read_jsonl(metrics)):
        assert proc.poll() is None, proc.communicate()[0]
        assert time.time() < deadline, "the run did not reach step 5"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, output
    status = collect_status([(RUN, out / RUN, 121)], None, None)[0]
    assert status.state == INTERRUPTED, (status, output)
    assert 5 <= status.checkpoint_step < 121
    assert rundir.last_attempt_end(out / RUN)["rc"] == 3

    done = run_sweep_cli(*cmd[2:], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumes from step {status.checkpoint_step}" in done.stdout
    assert f"resumed from" in (out / RUN / "local.log").read_text()
    result = read_result(out / RUN)
    reference = e2e_reference[RUN]
    assert result["steps"] == reference["steps"]
    assert result["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-6)
    assert result["val_loss"] == pytest.approx(reference["val_loss"], rel=1e-6)
    # Each step is logged once, although the steps after the checkpoint ran twice.
    steps = [r["step"] for r in rundir.read_jsonl(metrics) if "loss" in r]
    assert steps == list(range(1, 122))
