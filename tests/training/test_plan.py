"""Run plans: model shape from the ladder, token budget, batch layout, vocabulary checks."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_csl.training.config import parse_args
from megatron_csl.training.errors import ConfigError
from megatron_csl.training.plan import parse_data_path, resolve_plan, run_json

SHAPE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
         "--ffn-hidden-size", "128"]
COMMON = ["--seq-length", "32", "--vocab-size", "256", "--mock-data", "--lr", "1e-3",
          "--run-dir", "/tmp/plan"]


def plan_for(extra, world_size=1):
    return resolve_plan(parse_args(COMMON + extra), world_size)


def test_tokens_per_param_sets_d_from_non_embedding_parameters():
    from megatron_csl.model import count_parameters, get_shape

    plan = plan_for(["--model-size", "1m", "--tokens-per-param", "20",
                     "--global-batch-size", "8"])
    n = count_parameters(get_shape("1m"), 256).non_embedding
    assert plan.n_params == n
    tokens_per_iter = 8 * 32
    assert plan.train_iters == math.ceil(20 * n / tokens_per_iter)
    assert plan.train_tokens == plan.train_iters * tokens_per_iter
    doc = run_json(plan)
    assert (doc["N"], doc["D"], doc["train_iters"]) == (n, plan.train_tokens, plan.train_iters)
    assert doc["tokens_per_param"] == pytest.approx(plan.train_tokens / n)
    assert doc["config"]["budget"]["tokens_per_param"] == 20 and doc["config_version"] == 2
    assert set(doc) >= {"name", "model", "N", "N_total", "D", "tokens_per_param", "compression",
                        "parallel", "train_iters", "global_batch_size", "micro_batch_size",
                        "lr", "seed", "data", "versions", "config", "config_version"}
    assert doc["model"]["model_size"] == "1m" and doc["versions"]["megatron_core"] == "0.16.1"


@settings(max_examples=30, deadline=None)
@given(ratio=st.floats(0.01, 100.0), gbs_mult=st.integers(1, 8), mbs=st.integers(1, 4),
       seq=st.sampled_from([16, 32, 128]))
def test_budget_is_the_smallest_whole_number_of_iterations_covering_d(ratio, gbs_mult, mbs, seq):
    plan = resolve_plan(parse_args(SHAPE + ["--seq-length", str(seq), "--vocab-size", "256",
                                            "--mock-data", "--lr", "1e-3", "--run-dir", "/tmp/p",
                                            "--tokens-per-param", repr(ratio),
                                            "--micro-batch-size", str(mbs),
                                            "--global-batch-size", str(mbs * gbs_mult),
                                            "--lr-decay-style", "constant"]), 1)
    target = ratio * plan.n_params
    assert plan.train_tokens % plan.tokens_per_iter == 0
    assert plan.train_tokens >= target
    assert plan.train_tokens - target < plan.tokens_per_iter or plan.train_iters == 1


def test_explicit_shape_flags_override_the_ladder_entry():
    from megatron_csl.model import get_shape

    plan = plan_for(["--model-size", "3m", "--num-layers", "2", "--train-iters", "5"])
    base = get_shape("3m")
    assert plan.shape.num_layers == 2 and plan.shape.hidden_size == base.hidden_size


def test_unknown_model_size_lists_the_ladder():
    with pytest.raises(ConfigError, match="--model-size '7q'.*10m"):
        plan_for(["--model-size", "7q", "--train-iters", "5"])


def test_global_batch_must_split_over_micro_batches_and_data_parallel_ranks():
    with pytest.raises(ConfigError, match=r"--global-batch-size 6 is not divisible by "
                                          r"--micro-batch-size 2 x data-parallel size 2 = 4"):
        plan_for(SHAPE + ["--train-iters", "5", "--micro-batch-size", "2",
                          "--global-batch-size", "6"], world_size=2)
    plan = plan_for(SHAPE + ["--train-iters", "5", "--micro-batch-size", "2",
                             "--global-batch-size", "8"], world_size=2)
    assert (plan.dp, plan.num_microbatches) == (2, 2)
    assert plan_for(SHAPE + ["--train-iters", "5"], world_size=4).global_batch_size == 4


def test_layout_and_compression_are_checked_before_anything_runs():
    with pytest.raises(ConfigError, match="num_attention_heads 4 is not divisible by tensor "
                                          "parallel size 3"):
        plan_for(SHAPE + ["--train-iters", "5", "--tensor-model-parallel-size", "3"], 3)
    with pytest.raises(ConfigError, match="--compression 'w4q9'"):
        plan_for(SHAPE + ["--train-iters", "5", "--compression", "w4q9"])
    assert plan_for(SHAPE + ["--train-iters", "5", "--compression", "w4a4"]).compression == "w4a4"


def test_padded_vocabulary_is_recorded():
    plan = plan_for(SHAPE + ["--train-iters", "5", "--vocab-size", "1000"])
    assert (plan.vocab_size, plan.padded_vocab_size) == (1000, 1024)
    assert run_json(plan)["model"]["padded_vocab_size"] == 1024


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    import sentencepiece

    d = tmp_path_factory.mktemp("spm")
    text = d / "text.txt"
    text.write_text("\n".join(f"the quick brown fox {i} jumps over the lazy dog {i % 7}"
                              for i in range(300)))
    sentencepiece.SentencePieceTrainer.train(input=str(text), model_prefix=str(d / "m"),
                                             vocab_size=60, model_type="bpe",
                                             minloglevel=2)
    return str(d / "m.model")


def test_sentencepiece_vocabulary_must_match_vocab_size(spm_model):
    args = COMMON[:2] + ["--mock-data", "--lr", "1e-3", "--run-dir", "/tmp/p",
                         "--tokenizer-model", spm_model]
    plan = resolve_plan(parse_args(SHAPE + args + ["--train-iters", "3"]), 1)
    assert plan.vocab_size == 60
    with pytest.raises(ConfigError, match="--vocab-size 64 does not match the SentencePiece "
                                          "model .* 60 pieces"):
        resolve_plan(parse_args(SHAPE + args + ["--train-iters", "3", "--vocab-size", "64"]), 1)
    with pytest.raises(ConfigError, match="not a SentencePiece model"):
        resolve_plan(parse_args(SHAPE + COMMON[:2] + ["--mock-data", "--lr", "1", "--run-dir",
                                                      "/x", "--train-iters", "3",
                                                      "--tokenizer-model", __file__]), 1)


@pytest.mark.parametrize("tokens, expected", [
    (["a"], (("a",), None)),
    (["a", "b"], (("a", "b"), None)),
    (["0.3", "a", "0.7", "b"], (("a", "b"), (0.3, 0.7))),
    (["1", "x/y_text_document"], (("x/y_text_document",), (1.0,))),
])
def test_data_path_forms(tokens, expected):
    assert parse_data_path(tokens, "--data-path") == expected


@pytest.mark.parametrize("tokens, message", [
    (["0.3", "a", "0.7"], "come in pairs"),
    (["0.3", "a", "b", "c"], "weight 'b'"),
    (["a", "0.3"], "looks like a weight"),
    (["0", "a", "0", "b"], "sum to 0"),
    (["-1", "a", "2", "b"], "weight '-1'"),
])
def test_bad_data_paths(tokens, message):
    with pytest.raises(ConfigError, match=message):
        parse_data_path(tokens, "--data-path")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.001, 1000.0), st.from_regex(r"[a-z_/]{1,12}", fullmatch=True)),
                min_size=1, max_size=5))
def test_weighted_data_paths_round_trip(pairs):
    tokens = [t for w, p in pairs for t in (repr(w), p)]
    prefixes, weights = parse_data_path(tokens, "--data-path")
    assert list(prefixes) == [p for _, p in pairs]
    assert list(weights) == [w for w, _ in pairs]


def test_fused_kernels_need_liger_and_cuda_and_local_layers(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="--fused-kernels liger: .*needs (a CUDA GPU|liger-k)"):
        plan_for(SHAPE + ["--train-iters", "10", "--fused-kernels", "liger"])


def test_speed_options_reach_the_model_builder(monkeypatch):
    """--fused-kernels / --torch-compile are passed to build_gpt_model (inductor)."""
    import megatron_csl.model as model_pkg
    from megatron_csl.layers import fused
    from megatron_csl.training import model_setup

    seen = {}

    class Stop(Exception):
        pass

    def fake_build(config, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(fused, "check_fused_kernels", lambda name: name)
    monkeypatch.setattr(model_pkg, "build_gpt_model", fake_build)
    plan = plan_for(SHAPE + ["--train-iters", "10", "--fused-kernels", "liger",
                             "--torch-compile"])
    with pytest.raises(Stop):
        model_setup.build_model(plan)
    assert (seen["fused_kernels"], seen["compile_backend"]) == ("liger", "inductor")
    plan = plan_for(SHAPE + ["--train-iters", "10"])
    with pytest.raises(Stop):
        model_setup.build_model(plan)
    assert (seen["fused_kernels"], seen["compile_backend"]) == ("none", None)
