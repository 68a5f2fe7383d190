"""`make demo` in miniature: every step of megatron_csl.demo runs for real (synthetic shards,
tokenizer, indexed data, a local sweep of tiny models, the law fit and capacity predictions), and a
second run reuses everything."""
import json

import pytest

from megatron_csl.demo import Demo, DemoSettings

SWEEP = """\
name: demo_test
output_dir: runs
cluster: local
models:
  - {name: a, num_layers: 1, hidden_size: 16, num_attention_heads: 2, ffn_hidden_size: 48}
  - {name: b, num_layers: 1, hidden_size: 24, num_attention_heads: 2, ffn_hidden_size: 64}
  - {name: c, num_layers: 1, hidden_size: 32, num_attention_heads: 2, ffn_hidden_size: 96}
formats: [dense, w2]
tokens_per_param: [5]
seeds: [1]
data:
  paths: [data/demo_train_text_document]
  tokenizer_model: tokenizer/demo_spm.model
training:
  seq_length: 32
  micro_batch_size: 16
  global_batch_size: 16
  lr: 1.0e-2
  eval_interval: 100000
  eval_iters: 2
  log_interval: 5
  tensorboard: false
layout: {nodes: 1, tasks_per_node: 1}
"""


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    sweep = root / "sweep.yaml"
    sweep.write_text(SWEEP)
    settings = DemoSettings(sweep_file=str(sweep), train_shards=1, docs_per_shard=300,
                            vocab_size=512, tokenizer_sample_docs=300, parallel_runs=2,
                            bootstrap=20)
    out = root / "out"
    Demo(out, settings).run()
    return out, settings


def test_demo_writes_every_output(demo_run, capfd):
    out, _ = demo_run
    assert (out / "tokenizer" / "demo_spm.model").exists()
    assert (out / "data" / "demo_train_text_document.idx").exists()
    results = sorted(p.parent.name for p in (out / "runs").glob("*/result.json"))
    assert results == sorted(f"{m}_{f}_tpp5_s1" for m in "abc" for f in ("dense", "w2"))
    fit = json.loads((out / "fit" / "fit.json").read_text())
    assert set(fit["epm"]) == {"dense", "w2"} and fit["epm"]["dense"]["value"] == 1.0
    assert fit["n_points"] == 6
    for plot in ("loss_vs_N.png", "epm.png", "pareto.png"):
        assert (out / "fit" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capacity = json.loads((out / "fit" / "capacity.json").read_text())
    assert {row["canonical"] for row in capacity} == {"dense", "w2"}


def test_second_demo_reuses_finished_work(demo_run, capfd):
    out, settings = demo_run
    capfd.readouterr()
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")}
    fit_before = (out / "fit" / "fit.json").stat().st_mtime_ns
    Demo(out, settings).run()
    printed = capfd.readouterr().out
    assert printed.count("done already") == 4          # shards, tokenizer, indexed data, fit
    assert "nothing to submit: 6 finished" in printed    # the sweep skips finished runs
    assert (out / "fit" / "fit.json").stat().st_mtime_ns == fit_before  # no run changed: no refit
    assert "w2" in printed.split("capacity (Gaussian MSE)")[1]  # the EPM table is shown again
    assert printed.rstrip().splitlines()[-1] == f"Output folder: {out.resolve()}"
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/result.json")} == before


def test_a_run_finished_after_the_fit_makes_the_demo_refit(demo_run):
    import os
    import time

    out, settings = demo_run
    fit_json = out / "fit" / "fit.json"
    fit_before = fit_json.stat().st_mtime_ns
    newer = time.time() + 5  # as if a run (re)finished after the last fit
    os.utime(next((out / "runs").glob("*/result.json")), (newer, newer))
    fit = Demo(out, settings).fit()
    assert fit_json.stat().st_mtime_ns != fit_before and fit["n_points"] == 6
