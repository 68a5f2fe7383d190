"""tools/gpu_check.sh: --help prints help, and without CUDA it says so and stops (issue 19)."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "gpu_check.sh"


def _run(*args, python=sys.executable, out=None, timeout=60):
    env = dict(os.environ, PYTHON=str(python), OUT=str(out) if out else "/nonexistent/out")
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_help_prints_usage_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    for flag in ("--help", "-h"):
        proc = _run(flag, out=out)
        assert proc.returncode == 0, proc.stderr
        assert "Usage: bash tools/gpu_check.sh [--help] [--cpu-smoke]" in proc.stdout
        assert "step_308m" in proc.stdout and "OUT=DIR" in proc.stdout
        assert "set -uo" not in proc.stdout
    assert not out.exists()  # nothing ran


def test_unknown_argument_is_refused(tmp_path):
    proc = _run("--fast", out=tmp_path / "out")
    assert proc.returncode == 2
    assert "unknown argument '--fast' (valid: --help, --cpu-smoke)" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_it_says_so_and_stops(tmp_path):
    out = tmp_path / "out"
    proc = _run(out=out)
    assert proc.returncode == 2
    assert "no CUDA device visible to" in proc.stderr and "nothing measured" in proc.stderr
    assert "FAILED" not in proc.stdout + proc.stderr
    assert not out.exists()


def test_python_without_torch_is_named(tmp_path):
    fake = tmp_path / "python-without-torch"
    fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'torch'\" >&2\n"
                    "exit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc = _run(python=fake, out=tmp_path / "out")
    assert proc.returncode == 2
    assert f"'{fake}' cannot import torch; set PYTHON" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_no_step_stops_the_others():
    """pytest without -x (one failing test must not hide the rest), and every step counted."""
    text = SCRIPT.read_text()
    pytest_lines = [line for line in text.splitlines() if "-m pytest" in line]
    assert pytest_lines and all(" -x" not in line for line in pytest_lines)
    assert "set -e" not in text and 'echo "failed steps: $FAILED"' in text


def test_gpu_step_limits_fit_nine_minutes_and_bench_the_dense_options():
    """The time limits of the GPU run (te included, demo at its GPU limit) add up to <= 540 s,
    and both step benchmarks carry the dense speed-option rows (issue 15, item 1)."""
    import re

    text = SCRIPT.read_text()
    gpu_branch = text.split('else\n    SMOKE=()', 1)[1].split("\nfi\n", 1)[0]
    demo = int(re.search(r"DEMO_LIMIT=(\d+)", gpu_branch).group(1))
    assert re.search(r"DENSE_OPTIONS=\(--dense-options compile,liger\)", gpu_branch)
    limits = [demo if limit == '"$DEMO_LIMIT"' else int(limit)
              for limit in re.findall(r"^\s*step \w+ (\S+) ", text, flags=re.M)]
    assert len(limits) == 7 and sum(limits) <= 540, limits
    for name in ("step_308m", "step_1b"):
        command = text.split(f"step {name} ", 1)[1].split("\nstep", 1)[0]
        assert '"${DENSE_OPTIONS[@]}"' in command, name
