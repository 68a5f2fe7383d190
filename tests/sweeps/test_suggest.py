"""`launch/sweep.py suggest`: the next runs within a GPU-hour budget, as a sweep file submit takes."""
import pytest

from megatron_csl.sweeps.cli import main
from megatron_csl.sweeps.config import load_sweep
from megatron_csl.sweeps.matrix import expand_runs
from megatron_csl.sweeps.plan import device_hours

from .test_live_fit import finish, ladder_sweep

FAST = ["--resamples", "10", "--candidates", "2", "--no-progress"]


def _cost(sweep, names):
    by_name = {r.name: r for r in expand_runs(sweep)}
    return sum(device_hours(by_name[n], sweep.cluster.flops_per_gpu_s) for n in names)


def test_suggest_writes_a_sweep_file_that_submit_takes(write_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(ladder_sweep())
    sweep = load_sweep(path)
    small = {"m32", "m48", "m64"}
    done = finish(path, lambda r: r.compression == "dense" or
                  (r.model.name in small and r.tokens_per_param == 10))
    todo = [r for r in expand_runs(sweep) if r.name not in {d.name for d in done}]
    budget = 0.3 * _cost(sweep, [r.name for r in todo])
    out = tmp_path / "next.yaml"
    assert main(["suggest", str(path), "--budget-gpu-hours", repr(budget), "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "EPM interval log-widths now:" in text and f"wrote {out}" in text

    suggested = load_sweep(out)
    names = list(suggested.runs)
    assert names and set(names) <= {r.name for r in todo}        # only runs not finished yet
    assert _cost(sweep, names) <= budget * (1 + 1e-9)
    assert suggested.output_dir == sweep.output_dir               # same run directories
    assert main(["submit", str(out), "--executor", "local", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert sorted(line.split()[2].rstrip(":") for line in dry.splitlines()
                  if line.startswith("would run")) == sorted(names)
    assert main(["plan", str(out)]) == 0
    assert f"{len(names)} runs" in capsys.readouterr().out


def test_suggest_from_scratch_covers_every_format_first(write_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(ladder_sweep())
    sweep = load_sweep(path)
    out = tmp_path / "first.yaml"
    budget = _cost(sweep, [r.name for r in expand_runs(sweep)])
    assert main(["suggest", str(path), "--budget-gpu-hours", repr(budget), "--out", str(out), *FAST]) == 0
    assert "run suggest again once they have finished" in capsys.readouterr().out
    picked = [r for r in expand_runs(sweep) if r.name in set(load_sweep(out).runs)]
    assert {r.compression for r in picked} == {"dense", "w4", "w2"}
    assert len({r.N for r in picked if r.compression == "dense"}) >= 2


@pytest.mark.parametrize("args,message", [
    (["--budget-gpu-hours", "-3"], "--budget-gpu-hours must be a positive number, got -3.0"),
    (["--budget-gpu-hours", "1", "--resamples", "2"], "at least 5 bootstrap resamples"),
])
def test_suggest_bad_arguments(write_sweep, tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(ladder_sweep())
    finish(path, lambda r: r.compression == "dense")
    assert main(["suggest", str(path), *args, "--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_runs_list_must_name_runs_of_the_sweep(write_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write_sweep(ladder_sweep(formats=("dense",), ratios=(10,)) | {"runs": ["m32_dense_tpp99_s1"]})
    assert main(["plan", str(path)]) == 2
    assert "runs: 'm32_dense_tpp99_s1' is not a run of this sweep" in capsys.readouterr().err
    path = write_sweep(ladder_sweep(formats=("dense",), ratios=(10,)) | {"runs": ["m32_dense_tpp10_s1"]})
    assert main(["plan", str(path)]) == 0
    assert "1 runs" in capsys.readouterr().out
