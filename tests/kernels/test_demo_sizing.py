"""GPU demo sizing from a measured tokens/s (megatron_csl/demo_sizing.py)."""
import pytest

from megatron_csl.demo_sizing import demo_size, main


def test_size_fits_the_budget_and_grows_with_speed():
    slow, fast = demo_size(100_000), demo_size(400_000)
    assert slow.tokens_per_param < fast.tokens_per_param <= 20
    for size in (slow, fast):
        assert size.seconds <= 8 * 60
    assert demo_size(1e9).tokens_per_param == 20  # capped at the sweep's 20 tokens/param
    # one tenth more would not fit
    assert demo_size(100_000).seconds + 0.1 * slow.train_tokens / slow.tokens_per_param \
        / 100_000 > 8 * 60 - 1e-6


def test_from_bench_step_json(tmp_path, capsys):
    import json

    path = tmp_path / "rate.json"
    path.write_text(json.dumps({"results": [{"tokens_per_s": None}, {"tokens_per_s": 3e5}]}))
    assert main(["--from-json", str(path)]) == 0
    assert f"tokens_per_param {demo_size(3e5).tokens_per_param:g} " in capsys.readouterr().out


def test_bad_input(capsys):
    with pytest.raises(ValueError, match="tokens_per_s and budget_s must be positive"):
        demo_size(0)
    with pytest.raises(ValueError, match="do not fit 60 s"):
        demo_size(1e5, budget_s=60)
    assert main(["--tokens-per-s", "250000"]) == 0
    assert "GPU demo at 250,000 tokens/s: tokens_per_param" in capsys.readouterr().out
    assert main(["--tokens-per-s", "100"]) == 0
    assert "too slow, not even 1 token per parameter fits 8.0 min" in capsys.readouterr().out
