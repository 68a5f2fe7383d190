"""Reading runs: run directories (with every skip reason), CSV tables, duplicates, mixed inputs."""
import json

import numpy as np
import pytest

from megatron_csl.scaling.runs import collect_runs, find_run_dirs, read_table

from .helpers import write_run_dir


def test_run_directories_and_every_skip_reason(tmp_path):
    root = tmp_path / "runs"
    write_run_dir(root, "ok_dense", N=1e7, D=2e8, loss=3.5)
    write_run_dir(root, "ok_w4", N=1e7, D=2e8, loss=3.6, compression="w4")
    write_run_dir(root, "bf16_alias", N=2e7, D=4e8, loss=3.3, compression="bf16")
    write_run_dir(root, "unfinished", N=1e7, D=2e8, loss=3.5, result=False)
    write_run_dir(root, "diverged", N=1e7, D=2e8, loss=9.9, status="diverged")
    write_run_dir(root, "nan", N=3e7, D=2e8, loss=float("nan"))
    write_run_dir(root, "badspec", N=1e7, D=2e8, loss=3.5, compression="w99")
    write_run_dir(root, "w4_copy", N=1e7, D=2e8, loss=3.6, compression="w4")
    write_run_dir(root, "mismatch", N=1e7, D=2e8, loss=3.5, run_extra={"N": 5e6})
    (root / "only_result").mkdir()
    (root / "only_result" / "result.json").write_text(json.dumps(
        {"val_loss": 3.0, "N": 1e7, "D": 2e8, "compression": "dense", "status": "finished"}))
    (root / "ok_dense" / "checkpoints" / "iter_0000100").mkdir(parents=True)  # never searched

    runs, skipped = collect_runs([root])
    reasons = {s.source.split("/")[-1]: s.reason for s in skipped}
    assert sorted(runs.formats.tolist()) == ["dense", "dense", "w4"]   # bf16 canonicalised to dense
    assert reasons["unfinished"] == "unfinished: no result.json"
    assert reasons["diverged"] == "status 'diverged' (only 'finished' runs are fitted)"
    assert reasons["nan"].startswith("non-finite val_loss")
    assert reasons["badspec"].startswith("unparseable compression 'w99'") and "valid" in reasons["badspec"]
    assert reasons["w4_copy"].startswith("duplicate of") and "ok_w4" in reasons["w4_copy"]
    assert "disagree on N" in reasons["mismatch"]
    assert reasons["only_result"] == "no run.json next to result.json"
    assert len(skipped) == 7


def test_same_directory_twice_is_a_duplicate(tmp_path):
    d = write_run_dir(tmp_path, "r", N=1e7, D=2e8, loss=3.5)
    runs, skipped = collect_runs([tmp_path, d])
    assert len(runs) == 1
    assert len(skipped) == 1 and skipped[0].reason.startswith("duplicate: same directory")


def test_run_dir_search_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_run_dirs(tmp_path / "nope")
    f = tmp_path / "x.csv"
    f.write_text("N,D,loss\n")
    with pytest.raises(NotADirectoryError, match="pass CSV tables with --table"):
        find_run_dirs(f)


def test_csv_table_with_optional_compression(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("N,D,loss,compression\n1e7,2e8,3.5,\n1e7,2e8,3.6,w4\n2e7,4e8,nan,w4\n"
                    "2e7,4e8,3.1,zz\n-1,4e8,3.1,\n")
    runs, skipped = read_table(path)
    assert [r.compression for r in runs] == ["dense", "w4"]
    assert [s.source for s in skipped] == [f"{path}:4", f"{path}:5", f"{path}:6"]
    assert skipped[0].reason.startswith("non-finite loss")
    assert skipped[1].reason.startswith("unparseable compression 'zz'")
    assert skipped[2].reason == "N must be positive, got -1"


def test_csv_without_compression_column_is_dense(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("loss,N,D\n3.5,1e7,2e8\n3.2,2e7,4e8\n")
    runs, skipped = read_table(path)
    assert [r.compression for r in runs] == ["dense", "dense"] and not skipped


def test_csv_missing_columns_is_an_error(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("N,tokens,loss\n1,2,3\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) D; it has N, tokens, loss"):
        read_table(path)


def test_mixed_inputs_and_cross_source_duplicates(tmp_path):
    write_run_dir(tmp_path / "runs", "a", N=1e7, D=2e8, loss=3.5, compression="w4")
    write_run_dir(tmp_path / "runs", "b", N=2e7, D=4e8, loss=3.2)
    table = tmp_path / "t.csv"
    table.write_text("N,D,loss,compression\n10000000,200000000,3.5,w4\n4e7,8e8,3.0,\n")
    runs, skipped = collect_runs([tmp_path / "runs"], [table])
    assert len(runs) == 3
    np.testing.assert_allclose(sorted(runs.N), [1e7, 2e7, 4e7])
    assert len(skipped) == 1 and skipped[0].reason.startswith("duplicate of")


def test_synthetic_csv_round_trips_through_the_table_reader(tmp_path):
    from megatron_csl.scaling.synthetic import SyntheticSweep, write_table_csv

    runs = SyntheticSweep().draw(np.random.default_rng(0))
    write_table_csv(runs, tmp_path / "s.csv")
    back, skipped = read_table(tmp_path / "s.csv")
    assert not skipped
    np.testing.assert_array_equal([r.N for r in back], runs.N)
    np.testing.assert_array_equal([r.loss for r in back], runs.loss)
    assert [r.compression for r in back] == runs.formats.tolist()


def test_result_json_that_is_not_an_object_is_skipped_with_a_reason(tmp_path):
    root = tmp_path / "runs"
    write_run_dir(root, "ok", N=1e7, D=2e8, loss=3.5)
    write_run_dir(root, "list", N=1e7, D=2e8, loss=3.5)
    (root / "list" / "result.json").write_text("[1, 2, 3]")
    write_run_dir(root, "number", N=1e7, D=2e8, loss=3.5)
    (root / "number" / "run.json").write_text("7")
    runs, skipped = collect_runs([root])
    reasons = {s.source.split("/")[-1]: s.reason for s in skipped}
    assert len(runs.formats) == 1
    assert reasons == {"list": "result.json holds a JSON list, not an object",
                       "number": "run.json holds a JSON int, not an object"}
