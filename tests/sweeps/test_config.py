"""Sweep files and cluster profiles: what loads, and the errors for what does not."""
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.compression import parse_spec
from megatron_csl.model import LADDER, count_parameters, get_shape
from megatron_csl.sweeps import SweepError, expand_runs, load_sweep, pretrain_args, run_name
from megatron_csl.sweeps.profile import load_profile, parse_time_limit, profile_from_mapping

from .conftest import REPO, TINY_SHAPE, base_sweep

SHIPPED = sorted((REPO / "launch" / "sweeps").glob("*.yaml"))


def _profile(**changes) -> dict:
    data = yaml.safe_load((REPO / "slurm" / "profiles" / "h100.yaml").read_text())
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_shipped_sweeps_load_and_expand():
    names = {p.stem for p in SHIPPED}
    assert {"weight_only", "full_quant", "mixed", "sparsity", "chinchilla_2x", "demo",
            "vector"} <= names
    expected_formats = {
        "weight_only": {"dense", "w4", "w2", "w1"},
        "full_quant": {"dense", "w8a8", "w4a4", "w2a2", "w1a1"},
        "mixed": {"dense", "w2a4", "w4a2", "w2a2", "w4a4"},
        "vector": {"dense", "w2", "w3", "w4", "vq2:2", "vq2:3", "vq2:4", "vq4:2"},
    }
    for path in SHIPPED:
        sweep = load_sweep(path, output_dir="/tmp/unused")
        runs = expand_runs(sweep)
        assert len(runs) == (len(sweep.models) * len(sweep.formats) * len(sweep.tokens_per_param)
                             * len(sweep.seeds))
        if path.stem in expected_formats:
            assert set(sweep.formats) == expected_formats[path.stem]
        if path.stem == "sparsity":
            assert {"s50", "s75"} <= set(sweep.formats)
            assert any(":nm" in f for f in sweep.formats)
        if path.stem == "chinchilla_2x":
            assert sweep.tokens_per_param == [40.0]
    demo = load_sweep(REPO / "launch" / "sweeps" / "demo.yaml")
    # The demo trains on the synthetic C4 that tools/demo.py tokenizes (issue 9): dense, w4, w2
    # and s50 at 20 tokens per parameter, on the local profile.
    assert demo.cluster.name == "local" and not demo.data.mock
    assert set(demo.formats) == {"dense", "w4", "w2", "s50"} and demo.tokens_per_param == [20.0]


def test_expansion_order_names_and_budget(write_sweep):
    path = write_sweep(models=["1m", {"name": "tiny", **TINY_SHAPE}], formats=["w4", "dense"],
                       tokens_per_param=[20, 0.5], seeds=[3, 4])
    runs = expand_runs(load_sweep(path, output_dir="/tmp/x"))
    assert [r.name for r in runs[:4]] == ["1m_w4_tpp20_s3", "1m_w4_tpp20_s4",
                                          "1m_w4_tpp0.5_s3", "1m_w4_tpp0.5_s4"]
    assert len(runs) == 16 and len({r.name for r in runs}) == 16
    first = runs[0]
    n = count_parameters(get_shape("1m"), vocab_size=1).non_embedding
    assert first.N == n
    tokens_per_step = 4 * 32
    assert first.train_iters == -(-20 * n // tokens_per_step)
    assert first.tokens == first.train_iters * tokens_per_step >= 20 * n
    assert first.flops == 6 * n * first.tokens


def test_pretrain_args_for_ladder_and_explicit_shapes(write_sweep):
    path = write_sweep(models=["1m", {"name": "tiny", **TINY_SHAPE}], formats=["s50:nm2/4+w4"],
                       training={**base_sweep()["training"], "lr": 2e-3, "tensorboard": False})
    sweep = load_sweep(path, output_dir="/tmp/out")
    ladder, explicit = expand_runs(sweep)
    args = pretrain_args(ladder, Path("/tmp/out") / ladder.name, sweep)
    assert args[:4] == ["--run-dir", f"/tmp/out/{ladder.name}", "--load",
                        f"/tmp/out/{ladder.name}/checkpoints"]
    joined = " ".join(args)
    assert "--model-size 1m" in joined and "--num-layers" not in joined
    assert "--compression s50:nm2/4+w4" in joined and "--tokens-per-param 0.1" in joined
    assert "--mock-data" in joined and "--lr 0.002" in joined and "--no-tensorboard" in joined
    explicit_args = " ".join(pretrain_args(explicit, Path("/tmp/out/x"), sweep))
    assert "--num-layers 2 --hidden-size 32 --num-attention-heads 4 --ffn-hidden-size 64" in explicit_args
    assert "--model-size" not in explicit_args
    # Names are file-safe, and say the spec: ':' and '/' become '-'.
    assert explicit.name == "tiny_s50-nm2-4+w4_tpp0.1_s1"


def test_data_paths_resolved_and_blend_weights_kept(write_sweep, tmp_path):
    path = write_sweep(data={"paths": ["0.3", "rel/prefix_a", "0.7", "/abs/prefix_b"],
                             "tokenizer_model": "tok/sp.model"})
    sweep = load_sweep(path, output_dir="/tmp/o", base_dir=tmp_path)
    assert sweep.data.paths == ("0.3", str(tmp_path / "rel/prefix_a"), "0.7", "/abs/prefix_b")
    assert sweep.data.tokenizer_model == str(tmp_path / "tok/sp.model")


@pytest.mark.parametrize("overrides, message", [
    ({"models": ["7m"]}, r"models\[0\]: unknown model size '7m'; valid sizes: 1m, 3m"),
    ({"models": [{"name": "x", "num_layers": 2, "hidden_size": 30, "num_attention_heads": 4,
                  "ffn_hidden_size": 64}]}, r"hidden_size 30 is not divisible by num_attention_heads 4"),
    ({"models": [{"num_layers": 2}]}, r"an explicit shape needs a 'name'"),
    ({"formats": ["dense", "w9"]}, r"formats\[1\]: bad compression spec 'w9'"),
    ({"formats": ["dense", "bf16"]}, r"'bf16' is the same format as 'dense'"),
    ({"tokens_per_param": [20, -1]}, r"tokens_per_param\[1\]: .* positive number .* got -1"),
    ({"seeds": [1, 1]}, r"a seed is listed twice"),
    ({"data": {}}, r"give dataset prefixes in 'paths' or set 'mock: true'"),
    ({"data": {"mock": True, "paths": ["a"]}}, r"exclude each other"),
    ({"cluster": "nope"}, r"unknown cluster profile 'nope'.*profiles in .*: h100, local"),
    ({"trainng": {}}, r"unknown key 'trainng'; valid keys: .*training"),
    ({"training": {"seq_length": 32, "global_batch_size": 4, "lr": 1e-3, "learning_rate": 1}},
     r"unknown key 'learning_rate'"),
    ({"training": {"seq_length": 32, "global_batch_size": 4, "lr": 1e-3, "train_iters": 5}},
     r"training.train_iters: set by the sweep per run; put it in tokens_per_param"),
    ({"training": {"seq_length": 32, "lr": 1e-3}}, r"training: missing 'global_batch_size'"),
    ({"training": {"seq_length": 32, "global_batch_size": 4, "lr": 1e-3, "bf16": "yes"}},
     r"training.bf16 must be true or false, got 'yes'"),
    ({"per_model": {"other": {"lr": 1}}}, r"per_model: 'other' is not one of the sweep's models \(tiny\)"),
    ({"layout": {"time_limit": "4 hours"}}, r"bad time limit '4 hours'"),
    ({"layout": {"nodes": 0}}, r"layout.nodes must be a positive integer, got 0"),
    ({"name": "has space"}, r"name must be a word without spaces"),
])
def test_bad_sweep_files_name_the_value(write_sweep, overrides, message):
    with pytest.raises(SweepError, match=message):
        expand_runs(load_sweep(write_sweep(**overrides), output_dir="/tmp/o"))


@pytest.mark.parametrize("layout, training, message", [
    # TP must divide the 4 heads
    ({"tasks_per_node": 3, "tensor_model_parallel_size": 3}, {},
     r"impossible layout .*num_attention_heads 4 is not divisible by tensor parallel size 3"),
    ({"tasks_per_node": 3, "tensor_model_parallel_size": 2}, {},
     r"world size 3 is not divisible by TP\*PP = 2\*1"),
    ({"tasks_per_node": 2, "pipeline_model_parallel_size": 2, "nodes": 2}, {"global_batch_size": 5},
     r"global_batch_size 5 is not divisible by micro_batch_size 2 x data-parallel size 2 = 4"),
    ({"pipeline_model_parallel_size": 3, "tasks_per_node": 3}, {},
     r"num_layers 2 is not divisible by pipeline parallel size 3"),
])
def test_impossible_layouts(write_sweep, layout, training, message):
    sweep = base_sweep(layout=layout)
    sweep["training"].update(training)
    with pytest.raises(SweepError, match=message):
        expand_runs(load_sweep(write_sweep(sweep), output_dir="/tmp/o"))


def test_layout_must_fit_the_profile_and_the_format(write_sweep, tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text(yaml.safe_dump(_profile()))
    path = write_sweep(cluster=str(profile), layout={"tasks_per_node": 16})
    with pytest.raises(SweepError, match=r"tasks_per_node 16 exceeds the 8 GPUs per node"):
        expand_runs(load_sweep(path, output_dir="/tmp/o"))
    # N:M 64:128 needs input dims that are multiples of 128; the tiny model has 32/64.
    path = write_sweep(formats=["s50:nm64/128"])
    with pytest.raises(SweepError, match=r"'s50:nm64/128' does not fit linear_qkv .* multiple of 128"):
        expand_runs(load_sweep(path, output_dir="/tmp/o"))
    # The checkpoint warning must come before the time limit.
    path = write_sweep(layout={"time_limit": "00:00:20"})
    with pytest.raises(SweepError, match=r"time_limit '00:00:20' \(20 s\) leaves no time .*signal_grace_s 30"):
        expand_runs(load_sweep(path, output_dir="/tmp/o"))


def test_pretrain_checks_run_on_the_arguments(write_sweep):
    # A value only launch/pretrain.py's own checks reject: min-lr above lr.
    sweep = base_sweep()
    sweep["training"]["min_lr"] = 1.0
    with pytest.raises(SweepError, match=r"launch/pretrain.py rejects the arguments of run tiny_dense_tpp0.1_s1: "
                                         r".*--min-lr 1.0 must not exceed --lr 0.001"):
        expand_runs(load_sweep(write_sweep(sweep), output_dir="/tmp/o"))


@pytest.mark.parametrize("field", ["name", "partition", "time_limit", "gpus_per_node", "throughput"])
def test_profile_missing_required_field(field):
    data = _profile(**{field: None})
    with pytest.raises(SweepError, match=rf"missing required field '{field}'"):
        profile_from_mapping(data, "test")


@pytest.mark.parametrize("changes, message", [
    ({"throughput": {}}, r"missing or bad throughput.flops_per_gpu_s None"),
    ({"throughput": {"tflops": 1}}, r"throughput: unknown key 'tflops'"),
    ({"gpus_per_node": -1}, r"gpus_per_node must be an integer >= 0, got -1"),
    ({"signal_grace_s": 14400}, r"signal_grace_s 14400 must be shorter than the time limit '04:00:00'"),
    ({"container": {"mounts": ["/a:/a"]}}, r"container must be a mapping with at least 'image'"),
    ({"partitoin": "x"}, r"unknown key 'partitoin'"),
])
def test_profile_bad_values(changes, message):
    with pytest.raises(SweepError, match=message):
        profile_from_mapping(_profile(**changes), "test")


def test_profile_lookup_and_defaults(tmp_path):
    local = load_profile("local")
    assert local.gpus_per_node == 0 and local.default_tasks_per_node == 1
    h100 = load_profile("h100")
    assert h100.default_tasks_per_node == 8 and h100.container.image.startswith("nvcr.io")
    assert h100.flops_per_gpu_s == 4.0e14 and h100.time_limit_s == 4 * 3600
    inline = load_profile({**_profile(), "throughput": {"flops_per_gpu_s": "3e14"}})
    assert inline.flops_per_gpu_s == 3e14     # YAML reads 3e14 (no dot) as a string


@pytest.mark.parametrize("text, seconds", [("30", 1800), ("30:15", 1815), ("04:00:00", 14400),
                                           ("1-12", 129600), ("1-00:30", 88200),
                                           ("2-01:02:03", 2 * 86400 + 3723)])
def test_time_limits(text, seconds):
    assert parse_time_limit(text, "t") == seconds


@pytest.mark.parametrize("text", ["", "0", "1:2:3:4", "abc", "-5", "00:00:00"])
def test_bad_time_limits(text):
    with pytest.raises(SweepError, match="bad time limit"):
        parse_time_limit(text, "t")


SPECS = ["dense", "w4", "w2a4", "w1.58", "s50", "s50:nm2/4", "s50:nm64/128+w4a8", "fp8", "fp4",
         "s75:nm1/4", "s50+w4:g128", "w4:had"]


@given(model=st.sampled_from(sorted(LADDER)), spec=st.sampled_from(SPECS),
       ratio=st.floats(min_value=0.01, max_value=1000, allow_nan=False),
       seed=st.integers(min_value=0, max_value=2**31))
@settings(max_examples=200, deadline=None)
def test_run_names_are_safe_and_say_what_they_run(model, spec, ratio, seed):
    canonical = parse_spec(spec).canonical
    name = run_name(model, canonical, ratio, seed)
    assert re.fullmatch(r"[A-Za-z0-9._+-]+_[A-Za-z0-9._+-]+_tpp[0-9.e+-]+_s\d+", name)
    assert name.startswith(model + "_") and name.endswith(f"_s{seed}")
    assert name == run_name(model, canonical, ratio, seed)          # stable
    tpp = name.rsplit("_tpp", 1)[1].rsplit("_s", 1)[0]
    assert float(tpp) == pytest.approx(ratio, rel=1e-5)


@given(a=st.tuples(st.sampled_from(SPECS), st.sampled_from([0.5, 1, 20, 40]), st.integers(0, 5)),
       b=st.tuples(st.sampled_from(SPECS), st.sampled_from([0.5, 1, 20, 40]), st.integers(0, 5)))
@settings(max_examples=200, deadline=None)
def test_distinct_runs_get_distinct_names(a, b):
    ca, cb = parse_spec(a[0]).canonical, parse_spec(b[0]).canonical
    if (ca, a[1], a[2]) != (cb, b[1], b[2]):
        assert run_name("10m", ca, a[1], a[2]) != run_name("10m", cb, b[1], b[2])


def test_a_repeated_key_is_an_error_naming_it_and_its_lines(tmp_path):
    text = yaml.safe_dump(base_sweep(), sort_keys=False)
    path = tmp_path / "dup.yaml"
    path.write_text(text + "formats: [w4]\n")      # a second formats: would silently win
    line = len(text.splitlines()) + 1
    first = next(i for i, l in enumerate(text.splitlines(), 1) if l.startswith("formats:"))
    with pytest.raises(SweepError, match=rf"duplicate key 'formats' \(first on line {first}, "
                                         rf"again on line {line}\)"):
        load_sweep(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text(text.replace("training:\n", "training:\n  lr: 0.5\n", 1))
    with pytest.raises(SweepError, match="duplicate key 'lr'"):
        load_sweep(nested)


def test_training_config_yaml_reaches_every_run(write_sweep, tmp_path):
    """training.config: a --config YAML of defaults, resolved from the base directory like the
    data paths; its values reach the run's configuration and its path the run's command line."""
    from megatron_csl.sweeps.matrix import run_config

    (tmp_path / "defaults.yaml").write_text("weight_decay: 0.05\n")
    sweep = base_sweep()
    sweep["training"]["config"] = "defaults.yaml"
    loaded = load_sweep(write_sweep(sweep), output_dir="/tmp/o", base_dir=tmp_path)
    run = expand_runs(loaded)[0]
    assert run_config(run, Path("/tmp/o") / run.name, loaded).optimizer.weight_decay == 0.05
    argv = pretrain_args(run, Path("/tmp/o") / run.name, loaded)
    assert argv[argv.index("--config") + 1] == str(tmp_path / "defaults.yaml")
