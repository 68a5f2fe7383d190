"""`sweep.py plan`: N, D, 6ND, resources and GPU-hours per run, and the totals."""
import csv
import io
import json

import pytest

from megatron_csl.model import count_parameters, get_shape
from megatron_csl.sweeps import expand_runs, load_sweep
from megatron_csl.sweeps.plan import format_plan, plan_rows, si

from .conftest import REPO, run_sweep_cli


def test_plan_numbers_follow_6nd_and_the_profile_throughput():
    sweep = load_sweep(REPO / "launch" / "sweeps" / "weight_only.yaml", output_dir="/tmp/o")
    runs = expand_runs(sweep)
    rows = plan_rows(sweep, runs)
    by_name = {r["run"]: r for r in rows}
    row = by_name["100m_w2_tpp20_s1234"]
    n = count_parameters(get_shape("100m"), vocab_size=32000).non_embedding
    tokens_per_step = 256 * 2048
    steps = -(-20 * n // tokens_per_step)
    assert (row["N"], row["steps"], row["D"]) == (n, steps, steps * tokens_per_step)
    assert row["FLOPs"] == 6 * n * steps * tokens_per_step
    assert row["device_hours"] == pytest.approx(row["FLOPs"] / 4.0e14 / 3600)
    assert row["wall_hours"] == pytest.approx(row["device_hours"] / 8)
    assert (row["nodes"], row["per_node"], row["tp"], row["pp"], row["dp"]) == (1, 8, 1, 1, 8)
    text = format_plan(sweep, rows)
    total = sum(r["device_hours"] for r in rows)
    assert text.splitlines()[-1].split()[0] == "TOTAL"
    assert f"{total:.3g}" in text.splitlines()[-1]
    assert "GPU-h" in text and "nodes x GPUs" in text and len(text.splitlines()) == len(rows) + 4


def test_plan_csv_and_json_round_trip():
    sweep = load_sweep(REPO / "launch" / "sweeps" / "demo.yaml", output_dir="/tmp/o")
    rows = plan_rows(sweep, expand_runs(sweep))
    parsed = list(csv.DictReader(io.StringIO(format_plan(sweep, rows, "csv"))))
    assert [r["run"] for r in parsed] == [r["run"] for r in rows]
    assert [int(r["N"]) for r in parsed] == [r["N"] for r in rows]
    doc = json.loads(format_plan(sweep, rows, "json"))
    assert doc["unit"] == "task-h" and doc["total"]["runs"] == len(rows)
    assert doc["total"]["FLOPs"] == pytest.approx(sum(r["FLOPs"] for r in rows))


@pytest.mark.parametrize("value, text", [(999, "999"), (20640, "20.6K"), (99.1e6, "99.1M"),
                                         (6.17e9, "6.17B"), (1.3e12, "1.3T")])
def test_si(value, text):
    assert si(value) == text


def test_plan_cli_and_its_errors(write_sweep):
    ok = run_sweep_cli("plan", REPO / "launch" / "sweeps" / "full_quant.yaml")
    assert ok.returncode == 0, ok.stderr
    assert "300m_w1a1_tpp20_s1234" in ok.stdout and "TOTAL" in ok.stdout
    bad = run_sweep_cli("plan", write_sweep(models=["12m"]))
    assert bad.returncode == 2
    assert "error: " in bad.stderr and "unknown model size '12m'" in bad.stderr
    assert "Traceback" not in bad.stderr
