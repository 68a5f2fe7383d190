"""megatron_csl.sweeps.torchrun: torchrun that keeps the workers' exit code (requeue = 3)."""
import subprocess
import sys
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from megatron_csl.sweeps.torchrun import exit_code_of

WORKER = """
import os, sys
codes = [int(c) for c in sys.argv[1].split(",")]
sys.exit(codes[int(os.environ["RANK"])])
"""


def launch(tmp_path, codes):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return subprocess.run([sys.executable, "-m", "megatron_csl.sweeps.torchrun", "--standalone",
                           f"--nproc-per-node={len(codes)}", str(script),
                           ",".join(map(str, codes))],
                          capture_output=True, text=True, timeout=120)


def test_the_workers_requeue_code_reaches_the_caller(tmp_path):
    # torchrun itself exits 1 here; the executor must see 3 to requeue the run.
    proc = launch(tmp_path, [3, 3])
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "exitcode  : 3" in proc.stderr


def test_success_and_one_failed_rank(tmp_path):
    assert launch(tmp_path, [0, 0]).returncode == 0
    assert launch(tmp_path, [0, 2]).returncode == 2        # one rank failed: its code


@given(st.dictionaries(st.integers(0, 7), st.integers(-15, 5).filter(bool), min_size=1))
def test_exit_code_is_the_common_positive_code_else_1(codes):
    failures = {rank: SimpleNamespace(exitcode=code) for rank, code in codes.items()}
    common = {c for c in codes.values() if c > 0}     # ranks killed by a signal do not vote
    expected = common.pop() if len(common) == 1 else 1
    assert exit_code_of(failures) == expected


def test_a_rank_stopped_by_torchrun_does_not_hide_the_error_code():
    """Rank 0 rejects a TP=2 layout (exit 2); torchrun SIGTERMs rank 1 before it gets there."""
    failures = {0: SimpleNamespace(exitcode=2), 1: SimpleNamespace(exitcode=-15)}
    assert exit_code_of(failures) == 2
