"""Run-directory files: atomic JSON, metrics.jsonl rows and truncation on resume, progress line."""
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.training.rundir import (EVAL_ROW_KEYS, TRAIN_ROW_KEYS, MetricsLog,
                                          atomic_write_json, format_duration, progress_line,
                                          read_metrics)


def test_atomic_json_replaces_whole_files_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "result.json"
    atomic_write_json(path, {"val_loss": 1.5, "bad": float("nan")})
    atomic_write_json(path, {"val_loss": 2.5})
    assert json.loads(path.read_text()) == {"val_loss": 2.5}
    assert os.listdir(tmp_path) == ["result.json"]


def test_non_finite_numbers_are_written_as_null(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"x": float("inf"), "y": [float("nan"), 1.0]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"x": None, "y": [None, 1.0]}


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "run.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["run.json"]


def test_metrics_rows_have_the_contract_keys(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=True)
    log.log_train(1, 128, 5.5, 1e-3, 1.2, 1000.0)
    log.log_eval(1, 128, 5.4)
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert tuple(rows[0]) == TRAIN_ROW_KEYS and tuple(rows[1]) == EVAL_ROW_KEYS
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(1, 30), resume=st.integers(0, 30), torn=st.booleans())
def test_resume_drops_rows_after_the_checkpoint(tmp_path_factory, steps, resume, torn):
    d = tmp_path_factory.mktemp("run")
    log = MetricsLog(d, tensorboard=False)
    for s in range(1, steps + 1):
        log.log_train(s, s * 10, 1.0 / s, 0.1, 0.5, 1.0)
        if s % 5 == 0:
            log.log_eval(s, s * 10, 2.0 / s)
    log.close()
    if torn:  # a crash in the middle of a write
        with open(d / "metrics.jsonl", "a") as f:
            f.write('{"step": 99, "tok')
    before = read_metrics(d / "metrics.jsonl")
    MetricsLog(d, resume_step=resume, tensorboard=False).close()
    after = read_metrics(d / "metrics.jsonl")
    assert after == [r for r in before if r["step"] <= resume]
    assert (d / "metrics.jsonl").read_text().count("\n") == len(after)


def test_progress_line_and_durations():
    line = progress_line(10, 100, 3.14159, 3e-4, 0.5, 12345.6, 3725)
    assert line == ("step  10/100 | loss 3.1416 | lr 3.000e-04 | grad 0.500 | 12,346 tok/s | "
                    "ETA 1:02:05")
    assert format_duration(float("inf")) == "?"
    assert "grad n/a" in progress_line(1, 2, 1.0, 0.1, None, 1.0, 0)
