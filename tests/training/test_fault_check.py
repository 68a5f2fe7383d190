"""tools/fault_check.py: the kill -9 and concurrent-submit census (its tiny mode end to end; the
verdict logic on made-up trials)."""
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_csl.training.fault_census import KillCensus, KillTrial, SubmitCensus, SubmitTrial

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "fault_check.py"


@pytest.mark.slow
def test_tiny_mode_runs_both_censuses_and_prints_the_counts(tmp_path):
    proc = subprocess.run([sys.executable, str(TOOL), "--tiny", "--out", str(tmp_path / "f"),
                           "--json", str(tmp_path / "census.json")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumed with every metrics row identical: 1/1; failed resumes: 0" in proc.stdout
    assert "forked processes left alive: 0 (in 0 trials)" in proc.stdout
    assert "runs started more than once: 0; runs finished: 1/1" in proc.stdout
    assert '"exact": true' in (tmp_path / "census.json").read_text()


def trial(**changes):
    fields = dict(target_step=2, delay_ms=10.0, during_tmp=True, children=2, leaked=0,
                  resume_rc=0, exact=True)
    fields.update(changes)
    return KillTrial(**fields)


def test_any_differing_row_failed_resume_or_leak_fails_the_census():
    assert KillCensus([trial(), trial(during_tmp=False)], 0).ok
    for bad in (dict(exact=False), dict(resume_rc=1), dict(leaked=1)):
        census = KillCensus([trial(), trial(**bad)], 0)
        assert not census.ok
    census = KillCensus([trial(), trial(leaked=2, during_tmp=False), trial(exact=False)], 0)
    assert census.summary() == (
        "kill -9 census: 3 trials (2 during the .tmp write, 1 after it); resumed with every "
        "metrics row identical: 2/3; failed resumes: 0; trials with forked processes at the "
        "kill: 3; forked processes left alive: 2 (in 1 trials)")
    assert not KillCensus([trial()], 1).ok          # the reference run itself failed


def test_a_run_started_twice_fails_the_submit_census():
    good = SubmitTrial(gap_s=1.0, runs=2, started_twice=0, finished=2, submit_rcs=(0, 0))
    assert SubmitCensus([good]).ok
    assert not SubmitCensus([good, SubmitTrial(0.5, 2, 1, 2, (0, 0))]).ok
    assert not SubmitCensus([SubmitTrial(0.5, 2, 0, 1, (0, 1))]).ok
    assert "runs started more than once: 1; runs finished: 4/4" in SubmitCensus(
        [good, SubmitTrial(0.5, 2, 1, 2, (0, 0))]).summary()


def test_bad_arguments_exit_2():
    proc = subprocess.run([sys.executable, str(TOOL), "--iters", "1"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "--iters must be at least 2" in proc.stderr
