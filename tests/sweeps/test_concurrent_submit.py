"""Two `launch/sweep.py submit --executor local` started together never train one run twice:
the executor holds the run directory's submit lock (megatron_csl.training.lock) while it runs it."""
import os
import subprocess
import sys
import time

from megatron_csl.sweeps import expand_runs, load_sweep, rundir
from megatron_csl.training.lock import SUBMIT_LOCK, RunDirLock

from .conftest import SWEEP_PY


def test_two_submits_started_together_start_each_run_once(write_sweep, tmp_path, fake_repo):
    """The race the lock closes: submit A works through its list one run at a time; submit B,
    started while A trains the first run, takes the second (unsubmitted when B looked); when A
    reaches it, it must not start it again."""
    path = write_sweep(formats=["dense", "w4"])
    sweep = load_sweep(path, output_dir=tmp_path / "runs")
    runs = expand_runs(sweep)
    env = dict(os.environ, FAKE_STEPS="8", FAKE_STEP_S="0.25")
    cmd = [sys.executable, str(SWEEP_PY), "submit", str(path), "--executor", "local",
           "--output-dir", str(sweep.output_dir), "--repo-dir", str(fake_repo), "--no-progress",
           "--parallel", "1"]
    first = sweep.output_dir / runs[0].name / "metrics.jsonl"
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)]
    deadline = time.time() + 120
    while not first.exists():
        assert procs[0].poll() is None and time.time() < deadline, procs[0].communicate()[0]
        time.sleep(0.05)
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
    outs = [p.communicate(timeout=180)[0] for p in procs]
    for r in runs:
        run_dir = sweep.output_dir / r.name
        starts = [a for a in rundir.read_jsonl(run_dir / "attempts.jsonl") if a["event"] == "start"]
        assert len(starts) == 1, outs
        steps = [row["step"] for row in rundir.read_jsonl(run_dir / "metrics.jsonl")]
        assert steps == list(range(1, 9)), outs
        RunDirLock(run_dir, SUBMIT_LOCK).acquire().release()    # released when the submit ended
    assert any("skip" in out for out in outs), outs
    assert [p.returncode for p in procs] == [0, 0], outs   # a run taken by the other is no error
    assert any("run by another submit" in out for out in outs), outs


def test_an_unusable_output_dir_is_refused_before_submitting(write_sweep, tmp_path, capsys):
    from megatron_csl.sweeps import cli

    (tmp_path / "afile").write_text("x")
    path = write_sweep()
    assert cli.main(["submit", str(path), "--executor", "local", "--output-dir",
                     str(tmp_path / "afile" / "runs"), "--no-progress"]) == 2
    assert "is not a folder" in capsys.readouterr().err
