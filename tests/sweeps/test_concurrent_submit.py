"""Two `launch/sweep.py submit --executor local` started together never train one run twice:
the executor holds the run directory's submit lock (megatron_csl.training.lock) while it runs it."""
import os
import subprocess
import sys

from megatron_csl.sweeps import expand_runs, load_sweep, rundir
from megatron_csl.sweeps.local import LocalExecutor
from megatron_csl.training.lock import SUBMIT_LOCK, RunDirLock

from .conftest import REPO, SWEEP_PY

HOLD = ("import sys, time; from megatron_csl.training.lock import RunDirLock, SUBMIT_LOCK; "
        "RunDirLock(sys.argv[1], SUBMIT_LOCK, 'launch/sweep.py submit (local executor)')"
        ".acquire(); print('held', flush=True); time.sleep(60)")


def test_a_run_another_submit_holds_is_skipped_not_started(write_sweep, tmp_path, fake_repo):
    path = write_sweep(formats=["dense", "w4"])
    sweep = load_sweep(path, output_dir=tmp_path / "runs")
    first, second = expand_runs(sweep)
    held = sweep.output_dir / second.name
    held.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(held)], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert other.stdout.readline().strip() == "held"
        executor = LocalExecutor(sweep, [first, second], repo_dir=fake_repo, progress=False)
        assert executor.run() == {first.name: 0, second.name: None}
    finally:
        other.kill()
        other.wait()
    assert list(executor.skipped) == [second.name]
    assert f"PID {other.pid}" in executor.skipped[second.name]
    assert not (held / "attempts.jsonl").exists() and not (held / "metrics.jsonl").exists()
    # Once the other submit is gone, the run is started (and a finished one is not).
    executor = LocalExecutor(sweep, [first, second], repo_dir=fake_repo, progress=False)
    assert executor.run() == {first.name: None, second.name: 0}
    assert executor.skipped == {first.name: "finished meanwhile"}


def test_two_submits_started_together_start_each_run_once(write_sweep, tmp_path, fake_repo):
    """The race the lock closes: both submits look at the sweep before either has started a run,
    so each lists both runs; working through its list one run at a time, each must start only
    the runs the other has not claimed."""
    path = write_sweep(formats=["dense", "w4"])
    sweep = load_sweep(path, output_dir=tmp_path / "runs")
    runs = expand_runs(sweep)
    # Runs long enough (about 5 s) that startup jitter between the two submits stays shorter.
    env = dict(os.environ, FAKE_STEPS="8", FAKE_STEP_S="0.6")
    cmd = [sys.executable, str(SWEEP_PY), "submit", str(path), "--executor", "local",
           "--output-dir", str(sweep.output_dir), "--repo-dir", str(fake_repo), "--no-progress",
           "--parallel", "1"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for r in runs:
        run_dir = sweep.output_dir / r.name
        starts = [a for a in rundir.read_jsonl(run_dir / "attempts.jsonl") if a["event"] == "start"]
        assert len(starts) == 1, outs
        steps = [row["step"] for row in rundir.read_jsonl(run_dir / "metrics.jsonl")]
        assert steps == list(range(1, 9)), outs
        RunDirLock(run_dir, SUBMIT_LOCK).acquire().release()    # released when the submit ended
    assert [p.returncode for p in procs] == [0, 0], outs   # a run taken by the other is no error
    # Which submit skips what depends on timing; that no run starts twice does not.


def test_an_unusable_output_dir_is_refused_before_submitting(write_sweep, tmp_path, capsys):
    from megatron_csl.sweeps import cli

    (tmp_path / "afile").write_text("x")
    path = write_sweep()
    assert cli.main(["submit", str(path), "--executor", "local", "--output-dir",
                     str(tmp_path / "afile" / "runs"), "--no-progress"]) == 2
    assert "is not a folder" in capsys.readouterr().err
