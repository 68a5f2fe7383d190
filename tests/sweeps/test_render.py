"""sbatch scripts: golden files for a 2-node x 8-GPU profile, and `bash -n` on every script.

Regenerate the golden files after an intended template change with
    UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/sweeps/test_render.py
and review the diff.
"""
import os
import subprocess
from pathlib import Path

import pytest

from megatron_csl.sweeps import expand_runs, load_sweep
from megatron_csl.sweeps.slurm import build_scripts, group_runs

from .conftest import DATA, REPO

GOLDEN = Path(__file__).resolve().parent / "golden"
OUTPUT = "/lustre/me/runs/golden"


def _golden_scripts():
    sweep = load_sweep(DATA / "golden_2x8.yaml", output_dir=OUTPUT)
    runs = expand_runs(sweep)
    # Two arrays (one per model: their layouts differ) and one lone run as a plain job.
    return sweep, runs, build_scripts(sweep, runs) + build_scripts(sweep, runs[:1])


def test_golden_scripts_2x8():
    _, runs, scripts = _golden_scripts()
    assert [s.job_name for s in scripts] == ["golden-300m", "golden-1b", "golden-300m_dense_tpp20_s1234"]
    update = os.environ.get("UPDATE_GOLDEN") == "1"
    for script in scripts:
        path = GOLDEN / f"{script.job_name}.sbatch"
        if update:
            GOLDEN.mkdir(exist_ok=True)
            path.write_text(script.text)
        assert path.exists(), f"missing golden file {path}; run with UPDATE_GOLDEN=1 to create it"
        assert script.text == path.read_text(), (
            f"{path.name} differs from the rendered script; if the change is intended, "
            f"regenerate with UPDATE_GOLDEN=1 and review the diff")


def test_golden_content_says_what_the_issue_asks():
    _, runs, scripts = _golden_scripts()
    array_300m, array_1b, single = (s.text for s in scripts)
    for text in (array_300m, array_1b):
        assert "#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=8\n#SBATCH --gpus-per-node=8\n" in text
        assert "#SBATCH --array=0-1%4\n" in text
        assert "#SBATCH --signal=B:USR1@600\n" in text and "#SBATCH --requeue\n" in text
        assert "--container-image='nvcr.io#nvidia/pytorch:25.01-py3'" in text
        assert "--container-mounts=/lustre:/lustre,/home/me:/home/me" in text
        assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in text
        assert 'scontrol requeue "$SLURM_JOB_ID"' in text
        assert "export TRITON_CACHE_DIR='/tmp/triton cache'" in text
        assert "#SBATCH --account=proj123\n#SBATCH --qos=high\n" in text
    assert "#SBATCH --time=08:00:00" in array_300m and "#SBATCH --time=1-00:00:00" in array_1b
    assert "--tensor-model-parallel-size 2" in array_1b and "--micro-batch-size 2" in array_1b
    assert "#SBATCH --array" not in single and "%x-%j.out" in single
    # Every run of a group is a case of the array, with its own run directory and --load.
    for index, run in enumerate(group_runs(runs)[0]):
        assert f"    {index})\n        RUN_NAME={run.name}\n        RUN_DIR={OUTPUT}/{run.name}\n" in array_300m
    assert array_300m.count(f"            --load {OUTPUT}/") == 2


def _bash_n(text: str, tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_text(text)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"bash -n {name}: {result.stderr}"


def test_golden_scripts_are_valid_bash(tmp_path):
    for script in _golden_scripts()[2]:
        _bash_n(script.text, tmp_path, script.job_name + ".sbatch")


@pytest.mark.parametrize("sweep_file", sorted((REPO / "launch" / "sweeps").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_shipped_sweeps_render_valid_bash(sweep_file, tmp_path):
    sweep = load_sweep(sweep_file, output_dir=tmp_path / "runs")
    runs = expand_runs(sweep)
    scripts = build_scripts(sweep, runs)
    assert sum(len(s.runs) for s in scripts) == len(runs)
    for script in scripts:
        _bash_n(script.text, tmp_path, script.job_name + ".sbatch")
