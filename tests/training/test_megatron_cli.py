"""Megatron-LM's command line on the typed configuration: the example script end to end, refused
flags, notes for GPU-only flags, the generated flag table, quiet start-up, and run directories
written before the typed configuration (config_version 1)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_csl.training.config import (CONFIG_VERSION, PretrainConfig, config_from_run_json,
                                          parse_args, to_argv, yaml_schema)
from megatron_csl.training.errors import ConfigError
from megatron_csl.training.flags_table import render_table, table_in_doc

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "launch" / "examples" / "pretrain_llama_cpu.sh"
FIXTURE = REPO / "tests" / "fixtures" / "run_config_v1"
BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--ffn-hidden-size", "128", "--seq-length", "32", "--vocab-size", "256", "--mock-data",
        "--train-iters", "10", "--lr", "1e-3", "--run-dir", "/tmp/x"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    return env


@pytest.mark.parametrize("extra, named", [
    (["--num-experts", "8"], "--num-experts 8: a Megatron-LM flag that megatron-csl does not "
                             "support (mixture-of-experts"),
    (["--context-parallel-size", "2"], "--context-parallel-size 2: not supported by megatron-csl"),
    (["--use-flash-attn"], "--use-flash-attn: a Megatron-LM flag that megatron-csl does not"),
    (["--position-embedding-type", "learned_absolute"], "learned_absolute: not supported"),
    (["--normalization", "LayerNorm"], "--normalization LayerNorm: not supported"),
    (["--ckpt-format", "torch"], "--ckpt-format torch: not supported"),
    (["--tokenizer-type", "HuggingFaceTokenizer"], "HuggingFaceTokenizer: not supported"),
])
def test_unsupported_megatron_flags_are_named(extra, named):
    with pytest.raises(ConfigError) as err:
        parse_args(BASE + extra)
    assert named in str(err.value)
    assert "unrecognized arguments" not in str(err.value)


def test_harmless_values_of_refused_flags_and_unknown_flags():
    parse_args(BASE + ["--context-parallel-size", "1", "--expert-model-parallel-size", "1",
                       "--optimizer", "adam"])
    with pytest.raises(ConfigError, match="unrecognized arguments: --hiden-size 3; these are "
                                          "neither .*did you mean --hidden-size"):
        parse_args(BASE + ["--hiden-size", "3"])


def test_megatron_load_dir_and_the_deprecated_switch():
    cfg = parse_args(BASE + ["--save", "/tmp/ck", "--load", "/tmp/ck"])
    assert (cfg.checkpoint.save, cfg.checkpoint.load, cfg.checkpoint.resume) == (
        "/tmp/ck", "/tmp/ck", False) and cfg.notices == []
    old = parse_args(BASE + ["--load"])
    assert old.checkpoint.resume and old.checkpoint.load is None
    assert any("--load without a directory is deprecated" in n for n in old.notices)
    # --save alone: the run records go to the save directory.
    from megatron_csl.training.plan import resolve_plan

    plan = resolve_plan(parse_args([a for a in BASE if a not in ("--run-dir", "/tmp/x")]
                                   + ["--save", "/tmp/ck"]), 1)
    assert plan.run_dir == plan.save_dir == Path("/tmp/ck").resolve() and plan.load_dir is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU fallback of GPU-only flags")
def test_gpu_only_flags_on_a_cpu_say_so():
    from megatron_csl.training.plan import resolve_plan

    plan = resolve_plan(parse_args(BASE + ["--bf16"]), 1)
    assert plan.precision == "fp32"
    assert any(n.startswith("--bf16: needs a GPU") for n in plan.notices)
    with pytest.raises(ConfigError, match="--fp8-format e4m3 needs a GPU"):
        resolve_plan(parse_args(BASE + ["--fp8-format", "e4m3"]), 1)


def test_config_round_trips_through_dict_argv_and_schema():
    cfg = parse_args(BASE + ["--save", "/tmp/s", "--swiglu", "--rotary-base", "500000",
                             "--data-cache-path", "/tmp/c", "--no-tensorboard"])
    doc = json.loads(json.dumps(cfg.to_dict()))
    assert PretrainConfig.from_dict(doc) == cfg
    assert parse_args(to_argv(cfg)) == cfg
    schema = yaml_schema()
    assert set(schema["properties"]) == set(doc)
    for group, values in doc.items():
        assert set(schema["properties"][group]["properties"]) == set(values)


def test_committed_flag_table_is_the_generated_one():
    assert table_in_doc(REPO / "docs" / "pretrain.md") == render_table()


def test_run_json_of_config_version_1_loads_and_converts(tmp_path):
    """A run directory written by the code before the typed configuration (committed fixture):
    its configuration loads, the converter finds its checkpoint (tracker file `latest`) and
    plans it at another layout, and an HF export of it works."""
    from megatron_csl.convert.megatron_export import plan_for_layout
    from megatron_csl.convert.run_info import locate_checkpoint

    doc = json.loads((FIXTURE / "run.json").read_text())
    assert "config_version" not in doc and isinstance(doc["args"], dict)
    cfg = config_from_run_json(doc)
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.compression.compression) == (1, 32,
                                                                                          "w4")
    assert cfg.checkpoint.resume is False and cfg.checkpoint.run_dir == doc["args"]["run_dir"]
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    location = locate_checkpoint(run)
    assert location.iteration == 2 and location.checkpoint_dir.name == "iter_0000002"
    assert location.run.config.model.ffn_hidden_size == 64
    plan = plan_for_layout(location.run, 2, 1, tmp_path / "tp2")
    assert (plan.tp, plan.padded_vocab_size) == (2, location.run.padded_vocab_size)
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "--load",
                           str(run), "--to", "hf", "--output", str(tmp_path / "hf")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 1
    # Its format_version 1 checkpoint (RNG in this project's older layout) loads with its RNG
    # states and is rewritten in format 2 (Megatron-LM's RNG layout and args).
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "convert_checkpoint.py"), "--load",
                           str(run), "--to", "megatron", "--output", str(tmp_path / "v2")],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    from megatron.core import dist_checkpointing

    new = locate_checkpoint(tmp_path / "v2")
    common = dist_checkpointing.load_common_state_dict(str(new.checkpoint_dir))
    assert common["format_version"] == 2 and common["iteration"] == 2
    assert (common["args"].num_layers, common["args"].hidden_size) == (1, 32)


def test_megatron_llama_example_runs_resumes_and_starts_quietly(tmp_path):
    """launch/examples/pretrain_llama_cpu.sh, unchanged: the first job stops at iteration 3
    (--exit-interval, exit 3) with a checkpoint in Megatron-LM's layout; the same command again
    resumes from it and finishes. Start-up output has no library warnings."""
    ckpt = tmp_path / "ckpt"
    first = subprocess.run(["bash", str(EXAMPLE), str(ckpt), "--exit-interval", "3"], cwd=REPO,
                           env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 3, first.stdout + first.stderr
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
    assert (ckpt / "iter_0000003" / "metadata.json").is_file()
    assert "no checkpoint there yet; starting fresh" in first.stdout
    assert f"run records and checkpoints in {ckpt}; training in fp32" in first.stdout \
        or torch.cuda.is_available()
    for noise in ("Apex", "Transformer Engine", "Warning", "warn("):
        assert noise not in first.stderr, first.stderr
    assert "--bf16: needs a GPU" in first.stderr or torch.cuda.is_available()
    assert "--wandb-project megatron-csl-example" in first.stderr
    run = json.loads((ckpt / "run.json").read_text())
    assert run["config_version"] == CONFIG_VERSION and run["compression"] == "w4"
    assert run["model"]["num_query_groups"] == 2 and run["config"]["model"]["rotary_base"] == 500000

    second = subprocess.run(["bash", str(EXAMPLE), str(ckpt)], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed from" in second.stdout and "iter_0000003 at step 3/6" in second.stdout
    result = json.loads((ckpt / "result.json").read_text())
    assert result["status"] == "finished" and result["steps"] == 6
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "6"
    assert any((ckpt / "tensorboard").iterdir())


def test_verbose_shows_the_library_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "launch/pretrain.py"] + BASE[:-2]
                          + ["--train-iters", "1", "--lr-decay-style", "constant", "--eval-iters",
                             "1", "--no-tensorboard", "--run-dir", str(tmp_path / "r"),
                             "--verbose"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "not installed" in proc.stderr


def _megatron_lm(mode, directory, *extra):
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("megatron_lm_checkpoint.py")),
                           mode, str(directory), *extra], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_checkpoints_cross_between_megatron_lm_and_this_project(tmp_path):
    """A checkpoint with Megatron-LM's layout and common state, written through megatron-core's
    own GPTModel (local spec) and dist_checkpointing.save, starts compressed training here
    (--finetune --compression w4); the checkpoint this project then writes loads back into
    megatron-core's GPTModel the way Megatron-LM loads (and says its iteration)."""
    from megatron_csl.training import run_pretrain

    megatron_dir, ours = tmp_path / "megatron", tmp_path / "ours"
    _megatron_lm("save", megatron_dir)
    code = run_pretrain(["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
                         "--ffn-hidden-size", "128", "--seq-length", "32", "--vocab-size", "256",
                         "--mock-data", "--train-iters", "2", "--lr", "1e-9",
                         "--lr-decay-style", "constant", "--eval-iters", "1", "--no-tensorboard",
                         "--save", str(ours), "--load", str(megatron_dir), "--finetune",
                         "--compression", "w4"])
    assert code == 0
    assert json.loads((ours / "result.json").read_text())["steps"] == 2   # started at 0, not 5
    back = _megatron_lm("load", ours)
    assert back["iteration"] == 2 and back["checkpoint_version"] == 3.0
    # The recognisable embedding came through (lr 1e-9 leaves it within rounding).
    assert back["embedding_row_3"] == pytest.approx([0.003] * 4, abs=1e-6)
    # A Megatron-LM checkpoint is not resumed as if it were this project's (no training state):
    # exit 2 with the hint to use --finetune.
    assert run_pretrain(["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
                         "--ffn-hidden-size", "128", "--seq-length", "32", "--vocab-size", "256",
                         "--mock-data", "--train-iters", "2", "--lr", "1e-3", "--no-tensorboard",
                         "--save", str(tmp_path / "x"), "--load", str(megatron_dir)]) == 2


def test_megatron_budget_and_schedule_flags_reach_the_plan(tmp_path):
    from megatron_csl.training.plan import resolve_plan

    base = [a for a in BASE if a not in ("--train-iters", "10")]
    plan = resolve_plan(parse_args(base + ["--train-samples", "10", "--global-batch-size", "4",
                                           "--lr-decay-iters", "2", "--lr-warmup-iters", "1"]), 1)
    assert (plan.train_iters, plan.lr_decay_iters, plan.warmup_iters) == (3, 2, 1)
    # A grouped --config file is the same as flat flag names.
    grouped = tmp_path / "grouped.yaml"
    grouped.write_text("model: {num_layers: 3, rotary_base: 500000}\noptimizer: {lr: 2.0e-4}\n")
    cfg = parse_args(["--config", str(grouped)] + [a for a in BASE if a not in
                                                   ("--num-layers", "2", "--lr", "1e-3")])
    assert (cfg.model.num_layers, cfg.model.rotary_base, cfg.optimizer.lr) == (3, 500000, 2e-4)


def test_exit_duration_in_mins_stops_with_a_checkpoint(tmp_path):
    from megatron_csl.training import REQUEUE_EXIT_CODE, run_pretrain
    from megatron_csl.training.checkpointing import read_latest

    code = run_pretrain(BASE[:-2] + ["--train-iters", "50", "--eval-iters", "1",
                                     "--no-tensorboard", "--exit-duration-in-mins", "0.00001",
                                     "--save", str(tmp_path / "ck")])
    assert code == REQUEUE_EXIT_CODE
    assert read_latest(tmp_path / "ck") == 1     # checked before every step after the first


TINY_LLAMA = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
              "--ffn-hidden-size", "128", "--seq-length", "32", "--vocab-size", "256",
              "--mock-data", "--lr", "1e-3", "--eval-iters", "1", "--no-tensorboard"]


def test_megatron_lm_load_side_reads_of_a_checkpoint_of_this_project(tmp_path):
    """Megatron-LM's load_checkpoint reads (megatron_lm_checkpoint.megatron_lm_reads, key for key)
    succeed on a checkpoint written by launch/pretrain.py: args with Megatron-LM's field names,
    RNG in Megatron-LM's layout and names, iteration, consumed samples, scheduler."""
    from megatron_csl.training import run_pretrain

    ours = tmp_path / "ours"
    assert run_pretrain(TINY_LLAMA + ["--train-iters", "2", "--global-batch-size", "4",
                                      "--save", str(ours)]) == 0
    reads = _megatron_lm("reads", ours)
    assert (reads["iteration"], reads["checkpoint_version"], reads["flops"]) == (2, 3.0, 0)
    assert reads["consumed"] == [8, 0, 0]
    # Megatron-LM's scheduler counts samples: 2 iterations of 4 sequences, warm-up 0, decay and
    # weight-decay increments over the 2 iterations.
    assert reads["scheduler"] == {"num_steps": 8, "lr_warmup_steps": 0, "lr_decay_steps": 8,
                                  "wd_incr_steps": 8}
    # cuda_rng_state is written only on a GPU (a CPU checkpoint needs --no-load-rng there).
    expected = {"random_rng_state", "np_rng_state", "torch_rng_state", "rng_tracker_states"}
    assert set(reads["rng_keys"]) - {"cuda_rng_state"} == expected
    args = reads["use_checkpoint_args"]
    assert {k: args[k] for k in ("num_layers", "hidden_size", "ffn_hidden_size",
                                 "num_attention_heads", "num_query_groups", "kv_channels",
                                 "seq_length", "padded_vocab_size", "tensor_model_parallel_size",
                                 "pipeline_model_parallel_size")} == dict(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
        num_query_groups=4, kv_channels=16, seq_length=32, padded_vocab_size=256,
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
    assert (args["swiglu"], args["normalization"], args["position_embedding_type"],
            args["add_bias_linear"], args["group_query_attention"], args["ckpt_format"]) == (
        True, "RMSNorm", "rope", False, False, "torch_dist")


def test_a_megatron_lm_checkpoint_of_another_shape_is_a_named_error(tmp_path, capsys):
    """A checkpoint with Megatron-LM's common state (args: 3 layers) against a 2-layer command
    line: the error names the field and both values, as Megatron-LM's check_checkpoint_args."""
    from megatron_csl.training import run_pretrain

    megatron_dir = tmp_path / "megatron"
    _megatron_lm("save", megatron_dir, "--num-layers", "3")
    code = run_pretrain(TINY_LLAMA + ["--train-iters", "2", "--save", str(tmp_path / "x"),
                                      "--load", str(megatron_dir), "--finetune"])
    assert code == 2
    err = capsys.readouterr()
    assert "num_layers 3 in the checkpoint, 2 here" in err.out + err.err


def test_checkpoint_args_check_names_every_differing_field():
    import argparse

    from megatron_csl.training.megatron_args import CheckpointShapeError, check_checkpoint_args
    from megatron_csl.training.errors import ConfigError

    class Bare(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = argparse.Namespace(num_layers=2, hidden_size=64, num_attention_heads=4,
                                             num_query_groups=None, ffn_hidden_size=128,
                                             kv_channels=16)
            self.vocab_size = 256

    saved = argparse.Namespace(num_layers=2, hidden_size=64, num_attention_heads=4,
                               num_query_groups=None, group_query_attention=False,
                               ffn_hidden_size=128, kv_channels=16, padded_vocab_size=256)
    check_checkpoint_args({"args": saved}, Bare(), "ck")          # same shape: no error
    check_checkpoint_args({}, Bare(), "ck")                       # no args: not checked here
    wrong = argparse.Namespace(**{**vars(saved), "hidden_size": 32, "padded_vocab_size": 512})
    with pytest.raises(CheckpointShapeError) as err:
        check_checkpoint_args({"args": wrong}, Bare(), "ck")
    assert isinstance(err.value, ConfigError)
    assert "hidden_size 32 in the checkpoint, 64 here" in str(err.value)
    assert "padded_vocab_size 512 in the checkpoint, 256 here" in str(err.value)
