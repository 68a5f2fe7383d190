"""The three command-line tools, run as a user would.

The cheap tools and the error paths run as subprocesses (with timeouts); the preprocessing run
calls the script's ``main`` in this process, which already has megatron-core imported (a new
process would spend seconds importing it again).
"""
import gzip
import importlib.util
import os
import subprocess
import sys

import numpy as np

from .conftest import REPO_ROOT


def tool(name, *args, timeout=120):
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def tool_main(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(REPO_ROOT, "tools", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_synthetic_then_tokenizer_then_preprocess(tmp_path, capsys):
    shards = tmp_path / "c4"
    r = tool("make_synthetic_c4.py", "--output-dir", shards, "--num-shards", 3,
             "--docs-per-shard", 60, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert len(os.listdir(shards)) == 3

    r = tool("train_tokenizer.py", "--input", shards / "c4-train.*.json.gz", "--vocab-size", 700,
             "--model-type", "bpe", "--sample-docs", 100, "--output-prefix", tmp_path / "tok" / "syn",
             "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "700 pieces" in r.stdout and '"eos": 2' in r.stdout

    code = tool_main("preprocess_c4.py")([
        "--input", str(shards / "c4-train.*.json.gz"),
        "--tokenizer-model", str(tmp_path / "tok" / "syn.model"),
        "--output-prefix", str(tmp_path / "out" / "syn"), "--workers", "2", "--append-eod"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "180 documents" in out
    assert "docs/s" in err and "tokens/s" in err  # the progress bar
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ds = IndexedDataset(str(tmp_path / "out" / "syn_text_document"))
    assert len(ds) == 180 and all(ds[i][-1] == 2 for i in range(len(ds)))
    assert ds.index.dtype == np.uint16


def test_preprocess_errors_are_one_line_with_exit_codes(tmp_path):
    r = tool("preprocess_c4.py", "--input", tmp_path / "none-*.json.gz", "--tokenizer-model",
             tmp_path / "x.model", "--output-prefix", tmp_path / "o")
    assert r.returncode == 2 and "none-*.json.gz" in r.stderr and "matches no files" in r.stderr
    assert "Traceback" not in r.stderr

    data = gzip.compress("".join(f'{{"text": "document {i} says {i * i}"}}\n'
                                 for i in range(5000)).encode())
    (tmp_path / "c4-train.00003-of-01024.json.gz").write_bytes(data[: len(data) // 2])
    r = tool("train_tokenizer.py", "--input", tmp_path / "*.json.gz", "--output-prefix",
             tmp_path / "t", "--vocab-size", 300, "--no-progress")
    assert r.returncode == 1 and "c4-train.00003-of-01024.json.gz" in r.stderr
    assert "Traceback" not in r.stderr


def test_unusable_output_prefixes_are_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")            # a file where the output folder should be
    r = tool("preprocess_c4.py", "--input", tmp_path / "none-*.json.gz", "--tokenizer-model",
             tmp_path / "x.model", "--output-prefix", tmp_path / "afile" / "o")
    assert r.returncode == 2 and "--output-prefix" in r.stderr and "is not a folder" in r.stderr
    r = tool("train_tokenizer.py", "--input", tmp_path / "none-*.json.gz", "--output-prefix",
             tmp_path / "afile" / "t", "--vocab-size", 300, "--no-progress")
    assert r.returncode == 2 and "is not a folder" in r.stderr and "Traceback" not in r.stderr
