"""Flags, YAML config files and the checks on raw arguments (no megatron needed)."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.training.config import OPTIONS, parse_args, warmup_iters
from megatron_csl.training.errors import ConfigError

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--ffn-hidden-size", "128", "--seq-length", "32", "--vocab-size", "256", "--mock-data",
        "--train-iters", "10", "--lr", "1e-3", "--run-dir", "/tmp/x"]

ISSUE_FLAGS = ("--num-layers --hidden-size --num-attention-heads --ffn-hidden-size --seq-length "
               "--vocab-size --model-size --compression --tensor-model-parallel-size "
               "--pipeline-model-parallel-size --micro-batch-size --global-batch-size --lr --min-lr "
               "--lr-warmup-fraction --weight-decay --clip-grad --train-iters --train-tokens "
               "--tokens-per-param --data-path --tokenizer-model --mock-data --eval-interval "
               "--eval-iters --log-interval --save-interval --run-dir --load --seed --bf16 "
               "--transformer-impl --config --use-distributed-optimizer").split()


def test_every_flag_of_the_issue_exists():
    assert [f for f in ISSUE_FLAGS if f not in OPTIONS and f != "--config"] == []


def test_base_arguments_parse():
    cfg = parse_args(BASE)
    assert (cfg.model.num_layers, cfg.model.hidden_size, cfg.optimizer.lr,
            cfg.data.mock_data) == (2, 64, 1e-3, True)
    assert cfg.compression.compression == "dense" and cfg.model.transformer_impl == "local"


def test_megatron_no_switches_only_turn_on():
    """--no-load-optim / --no-load-rng are Megatron-LM's store_true switches: no --no-no-... twin."""
    cfg = parse_args(BASE + ["--no-load-optim", "--no-load-rng"])
    assert cfg.checkpoint.no_load_optim is True and cfg.checkpoint.no_load_rng is True
    assert "--no-no-load-optim" not in OPTIONS and "--no-no-load-rng" not in OPTIONS
    with pytest.raises(ConfigError, match="unrecognized arguments: --no-no-load-optim"):
        parse_args(BASE + ["--no-no-load-optim"])


@pytest.mark.parametrize("extra, message", [
    (["--train-tokens", "1000"], "exactly one token budget"),
    (["--data-path", "x"], "exclusive"),
    (["--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "3"], "exclusive"),
    (["--min-lr", "1"], "must not exceed --lr"),
    (["--transformer-impl", "cuda"], "invalid choice"),
    (["--hidden-size", "-3"], "positive integer"),
    (["--lr-warmup-fraction", "1.5"], "[0, 1)"),
    (["--bogus-flag", "1"], "unrecognized arguments: --bogus-flag"),
])
def test_bad_flags_name_the_problem(extra, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        parse_args(BASE + extra)


def test_missing_required_values():
    without = lambda flag: [a for i, a in enumerate(BASE)  # noqa: E731
                            if a != flag and (i == 0 or BASE[i - 1] != flag)]
    with pytest.raises(ConfigError, match="--run-dir is required"):
        parse_args(without("--run-dir"))
    with pytest.raises(ConfigError, match="--lr is required"):
        parse_args(without("--lr"))
    with pytest.raises(ConfigError, match="no training data"):
        parse_args([a for a in BASE if a != "--mock-data"])
    with pytest.raises(ConfigError, match="no model shape.*--num-layers"):
        parse_args(without("--num-layers"))


def test_yaml_supplies_defaults_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("hidden-size: 128\nnum_attention_heads: 8\nlr: 3.0e-4\nbf16: false\n"
                   "tokens-per-param: 20\ndata-path: [0.3, a, 0.7, b]\nseed: 7\n")
    args = parse_args(["--config", str(cfg), "--seed", "9", "--num-layers", "2",
                       "--ffn-hidden-size", "256", "--seq-length", "16", "--vocab-size", "99",
                       "--run-dir", "/tmp/y"])
    args = args.flat()
    assert (args["hidden_size"], args["num_attention_heads"], args["lr"]) == (128, 8, 3e-4)
    assert args["seed"] == 9                            # command line wins
    assert args["data_path"] == ["0.3", "a", "0.7", "b"] and args["tokens_per_param"] == 20
    # A budget or data source on the command line replaces the file's, instead of conflicting.
    args = parse_args(["--config", str(cfg), "--num-layers", "2", "--ffn-hidden-size", "256",
                       "--seq-length", "16", "--vocab-size", "99", "--run-dir", "/tmp/y",
                       "--train-iters", "5", "--mock-data"])
    b = args.budget
    assert (b.train_iters, b.tokens_per_param, args.data.data_path) == (5, None, None)


def test_yaml_errors(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("hiden-size: 128\n")
    with pytest.raises(ConfigError, match="unknown key 'hiden-size'.*did you mean hidden-size"):
        parse_args(["--config", str(cfg)] + BASE)
    cfg.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_args(["--config", str(cfg)] + BASE)
    cfg.write_text("bf16: maybe\n")
    with pytest.raises(ConfigError, match="'bf16' must be true or false"):
        parse_args(["--config", str(cfg)] + BASE)
    with pytest.raises(ConfigError, match="file not found"):
        parse_args(["--config", str(tmp_path / "missing.yaml")] + BASE)


@settings(max_examples=25, deadline=None)
@given(layers=st.integers(1, 64), seed=st.integers(0, 2**31), lr=st.floats(1e-6, 1.0),
       impl=st.sampled_from(["local", "te"]), load=st.booleans())
def test_yaml_and_command_line_agree(tmp_path_factory, layers, seed, lr, impl, load):
    import yaml

    values = {"num-layers": layers, "seed": seed, "lr": lr, "transformer-impl": impl,
              "load": load}
    cfg = tmp_path_factory.mktemp("cfg") / "c.yaml"
    cfg.write_text(yaml.safe_dump(values))
    rest = [a for a in BASE]
    for flag in ("--num-layers", "--lr"):
        i = rest.index(flag)
        del rest[i:i + 2]
    from_yaml = parse_args(["--config", str(cfg)] + rest)
    cli = rest + ["--num-layers", str(layers), "--seed", str(seed), "--lr", repr(lr),
                  "--transformer-impl", impl, "--load" if load else "--no-load"]
    from_cli = parse_args(cli)
    for key in ("num_layers", "seed", "lr", "transformer_impl", "resume"):
        assert from_yaml.flat()[key] == from_cli.flat()[key]
    assert from_cli.checkpoint.resume is load


@pytest.mark.parametrize("extra, iters, expected", [
    ([], 1000, 10), (["--lr-warmup-fraction", "0.05"], 200, 10),
    (["--lr-warmup-iters", "7"], 100, 7), (["--lr-warmup-fraction", "0"], 5, 0)])
def test_warmup_iterations(extra, iters, expected):
    assert warmup_iters(parse_args(BASE + extra), iters) == expected


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ConfigError, match="warm-up of 10 iterations must be shorter"):
        warmup_iters(parse_args(BASE + ["--lr-warmup-iters", "10"]), 10)


def test_speed_options_parse_and_default_off():
    cfg = parse_args(BASE)
    assert (cfg.model.fused_kernels, cfg.model.torch_compile) == ("none", False)
    cfg = parse_args(BASE + ["--fused-kernels", "liger", "--torch-compile"])
    assert (cfg.model.fused_kernels, cfg.model.torch_compile) == ("liger", True)
    with pytest.raises(ConfigError, match="--fused-kernels: invalid choice: 'apex'"):
        parse_args(BASE + ["--fused-kernels", "apex"])
