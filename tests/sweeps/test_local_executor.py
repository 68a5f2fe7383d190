"""The local executor's own logic, with the fast stand-in for launch/pretrain.py
(tests/sweeps/fake_pretrain.py, same run-directory and exit-code contract); the real
launch/pretrain.py runs in test_e2e_local.py and test_e2e_slurm.py."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_csl.sweeps import cli, expand_runs, load_sweep, rundir
from megatron_csl.sweeps.local import LocalExecutor, local_command
from megatron_csl.sweeps.status import FINISHED, INTERRUPTED, collect_status

from .conftest import REPO, SWEEP_PY, TINY_SHAPE


def _three_runs(write_sweep, tmp_path):
    path = write_sweep(formats=["dense", "w4", "w2"])
    sweep = load_sweep(path, output_dir=tmp_path / "runs")
    return path, sweep, expand_runs(sweep)


def _state(sweep, runs):
    return {s.name: s.state for s in collect_status(
        [(r.name, sweep.output_dir / r.name, r.train_iters) for r in runs], None, None)}


def _overlaps(sweep, runs) -> int:
    spans = []
    for r in runs:
        d = sweep.output_dir / r.name
        spans.append((json.loads((d / "run.json").read_text())["started_at"],
                      json.loads((d / "result.json").read_text())["ended_at"]))
    return sum(1 for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1])


@pytest.mark.parametrize("parallel", [1, 2])
def test_runs_all_and_k_at_a_time(write_sweep, tmp_path, fake_repo, monkeypatch, parallel):
    monkeypatch.setenv("FAKE_STEP_S", "0.1")
    _, sweep, runs = _three_runs(write_sweep, tmp_path)
    results = LocalExecutor(sweep, runs, parallel=parallel, repo_dir=fake_repo, progress=False).run()
    assert results == {r.name: 0 for r in runs}
    assert set(_state(sweep, runs).values()) == {FINISHED}
    for r in runs:
        sub = rundir.last_submission(sweep.output_dir / r.name)
        assert sub["executor"] == "local" and sub["command"][1] == "launch/pretrain.py"
        assert "--load" in sub["command"]
    if parallel == 1:
        assert _overlaps(sweep, runs) == 0
    else:
        assert _overlaps(sweep, runs) >= 1


def test_exit_3_is_requeued_and_resumes(write_sweep, tmp_path, fake_repo, monkeypatch):
    _, sweep, runs = _three_runs(write_sweep, tmp_path)
    run = runs[0]
    monkeypatch.setenv("FAKE_PREEMPT", run.name)
    assert LocalExecutor(sweep, [run], repo_dir=fake_repo, progress=False).run() == {run.name: 0}
    attempts = rundir.read_jsonl(sweep.output_dir / run.name / "attempts.jsonl")
    assert [(a["event"], a.get("rc")) for a in attempts] == [("start", None), ("end", 3),
                                                             ("start", None), ("end", 0)]
    steps = [r["step"] for r in rundir.read_jsonl(sweep.output_dir / run.name / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]      # the second attempt went on from the checkpoint at 1


def test_failed_runs_are_resubmitted_and_finished_ones_skipped(write_sweep, tmp_path, fake_repo,
                                                               monkeypatch, capsys):
    path, sweep, runs = _three_runs(write_sweep, tmp_path)
    monkeypatch.setenv("FAKE_FAIL", runs[1].name)
    argv = ["submit", str(path), "--executor", "local", "--output-dir", str(sweep.output_dir),
            "--repo-dir", str(fake_repo), "--no-progress", "--parallel", "2"]
    assert cli.main(argv) == 1
    assert _state(sweep, runs) == {runs[0].name: FINISHED, runs[1].name: "failed",
                                   runs[2].name: FINISHED}
    out = capsys.readouterr().out
    assert "2/3 runs finished" in out
    monkeypatch.delenv("FAKE_FAIL")
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"skip {runs[0].name}: finished" in out and f"skip {runs[2].name}: finished" in out
    assert f"resubmit {runs[1].name}: failed" in out and "1/1 runs finished" in out
    assert set(_state(sweep, runs).values()) == {FINISHED}
    # Finished runs were not run again.
    assert len(rundir.read_jsonl(sweep.output_dir / runs[0].name / "jobs.jsonl")) == 1
    assert cli.main(argv) == 0
    assert "nothing to submit: 3 finished" in capsys.readouterr().out
    assert cli.main(["status", str(path), "--output-dir", str(sweep.output_dir), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"] == {"finished": 3}
    assert [(r["name"], r["step"], r["progress"]) for r in doc["runs"]] == [
        (r.name, 6, 1.0) for r in runs]
    assert doc["runs"][1]["restarts"] == 1       # failed once, then resubmitted


def test_sigterm_stops_runs_with_a_checkpoint_and_submit_resumes(write_sweep, tmp_path, fake_repo):
    path, sweep, runs = _three_runs(write_sweep, tmp_path)
    env = dict(os.environ, FAKE_STEPS="30", FAKE_STEP_S="0.05")
    cmd = [sys.executable, str(SWEEP_PY), "submit", str(path), "--executor", "local", "--output-dir",
           str(sweep.output_dir), "--repo-dir", str(fake_repo), "--only", runs[0].name]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = sweep.output_dir / runs[0].name / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and len(rundir.read_jsonl(metrics)) >= 3):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, out
    status = collect_status([(runs[0].name, sweep.output_dir / runs[0].name, 30)], None, None)[0]
    assert status.state == INTERRUPTED and 3 <= status.checkpoint_step < 30, status
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resubmit {runs[0].name}: interrupted, resumes from step {status.checkpoint_step}" in done.stdout
    steps = [r["step"] for r in rundir.read_jsonl(metrics)]
    assert steps == list(range(1, 31))


def test_local_executor_refuses_multi_node_layouts(write_sweep, tmp_path):
    from megatron_csl.sweeps import SweepError

    path = write_sweep(layout={"nodes": 2})
    sweep = load_sweep(path, output_dir=tmp_path / "runs")
    with pytest.raises(SweepError, match="the layout asks for 2 nodes; set layout.nodes: 1"):
        local_command(expand_runs(sweep)[0], sweep)


def test_commands_plain_python_or_torchrun(write_sweep, tmp_path):
    path = write_sweep(models=[{"name": "one", **TINY_SHAPE}, {"name": "two", **TINY_SHAPE}],
                       per_model={"two": {"tasks_per_node": 2}})
    sweep = load_sweep(path, output_dir=tmp_path / "runs")
    one, two = expand_runs(sweep)
    assert local_command(one, sweep, "py")[:2] == ["py", "launch/pretrain.py"]
    assert local_command(two, sweep, "py")[:6] == ["py", "-m", "megatron_csl.sweeps.torchrun",
                                                   "--standalone", "--nproc-per-node=2",
                                                   "launch/pretrain.py"]
