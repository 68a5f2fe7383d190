"""tools/gpu_pretrain_check.py (step 5 of tools/gpu_check.sh) on the CPU: fp32 over gloo, where
stopping at the half-way checkpoint (exit 3) and resuming must reproduce the losses exactly."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_stop_and_resume_check_passes_and_prints_both_loss_columns(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_pretrain_check.py"),
                           "--work", str(tmp_path), "--iters", "4"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "CPU, fp32, gloo; compression w4a4" in out
    assert "largest relative loss difference after resume: 0.00e+00" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4] and all(r[1] == r[2] for r in rows)
    assert (tmp_path / "resumed" / "checkpoints" / "iter_0000002").is_dir()  # the stop's save


def test_too_few_iterations_are_refused():
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_pretrain_check.py"),
                           "--iters", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--iters must be at least 2" in proc.stderr
