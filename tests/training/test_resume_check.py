"""Resume consistency: a resume that would change D or the optimizer trajectory is refused before
run.json is touched; the token count recorded is the one trained."""
import json
import os
import shutil
import signal

import pytest

from megatron_csl.training import REQUEUE_EXIT_CODE, run_pretrain
from megatron_csl.training import loop
from megatron_csl.training.resume_check import differences

from .helpers import TINY_MODEL

RUN = TINY_MODEL + ["--vocab-size", "256", "--train-iters", "4", "--lr", "1e-3",
                    "--lr-warmup-iters", "1", "--micro-batch-size", "2", "--global-batch-size",
                    "4", "--log-interval", "1", "--eval-interval", "4", "--eval-iters", "1",
                    "--mock-data", "--no-tensorboard"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A run stopped at step 2 with a checkpoint (copied by each test that changes it)."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    assert run_pretrain(RUN + ["--run-dir", str(run_dir), "--exit-interval", "2"]) == \
        REQUEUE_EXIT_CODE
    return run_dir


@pytest.mark.parametrize("change, name", [
    (["--global-batch-size", "8"], "global_batch_size"),
    (["--lr", "2e-3"], "lr"),
    (["--train-iters", "6"], "train_iters"),
    (["--weight-decay", "0.0"], "weight_decay"),
    (["--adam-beta2", "0.99"], "adam_beta2"),
    (["--seed", "7"], "seed"),
])
def test_a_resume_that_changes_the_trajectory_is_refused_and_run_json_kept(stopped, tmp_path,
                                                                            capsys, change, name):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    before = (run_dir / "run.json").read_bytes()
    assert run_pretrain(RUN + change + ["--run-dir", str(run_dir), "--load"]) == 2
    err = capsys.readouterr().err
    assert "holds a different run" in err and f"{name}: was" in err
    assert "Traceback" not in err and "AssertionError" not in err
    assert (run_dir / "run.json").read_bytes() == before
    assert not (run_dir / "result.json").exists()


def test_a_legitimate_resume_records_the_tokens_trained(stopped, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    # The micro-batch size and intervals may change: the trajectory does not.
    argv = RUN + ["--run-dir", str(run_dir), "--load", "--micro-batch-size", "1",
                  "--log-interval", "2"]
    assert run_pretrain(argv) == 0
    result = json.loads((run_dir / "result.json").read_text())
    run = json.loads((run_dir / "run.json").read_text())
    assert result["D"] == run["D"] == 4 * 4 * 32 and result["steps"] == 4
    assert run["restarts"] == 1 and run["micro_batch_size"] == 1


def test_a_directory_holding_another_runs_run_json_is_not_overwritten(stopped, tmp_path, capsys):
    run_dir = tmp_path / "other"
    run_dir.mkdir()
    shutil.copy(stopped / "run.json", run_dir / "run.json")
    before = (run_dir / "run.json").read_bytes()
    for extra in ([], ["--load"]):
        assert run_pretrain(RUN + ["--lr", "5e-4", "--run-dir", str(run_dir)] + extra) == 2
        assert "lr: was 0.001, now 0.0005" in capsys.readouterr().err
        assert (run_dir / "run.json").read_bytes() == before


def test_the_same_run_may_start_over_on_its_own_run_json(stopped, tmp_path):
    run_dir = tmp_path / "again"
    run_dir.mkdir()
    shutil.copy(stopped / "run.json", run_dir / "run.json")   # died before its first checkpoint
    assert run_pretrain(RUN + ["--run-dir", str(run_dir)]) == 0


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT])
def test_a_signal_before_the_first_step_does_not_claim_a_checkpoint(tmp_path, capsys,
                                                                    monkeypatch, sig):
    real_build = loop.build_training_objects

    def build_then_signal(plan):
        objs = real_build(plan)
        os.kill(os.getpid(), sig)    # arrives during the set-up, before step 1
        return objs

    monkeypatch.setattr(loop, "build_training_objects", build_then_signal)
    run_dir = tmp_path / "run"
    assert run_pretrain(RUN + ["--run-dir", str(run_dir)]) == REQUEUE_EXIT_CODE
    out = capsys.readouterr().out
    assert "checkpoint saved" not in out and "no checkpoint written" in out
    assert not (run_dir / "checkpoints").exists()


def test_settings_are_read_from_the_typed_config_and_from_older_flat_args():
    old = {"args": {"weight_decay": 0.1, "adam_beta2": 0.95}}
    new = {"config": {"optimizer": {"weight_decay": 0.1, "adam_beta2": 0.95}}}
    assert differences(old, new) == []
    new["config"]["optimizer"]["adam_beta2"] = 0.99
    assert differences(old, new) == ["adam_beta2: was 0.95, now 0.99"]


def test_differences_ignore_how_the_run_is_executed():
    recorded = {"model": {"num_layers": 2, "padded_vocab_size": 256}, "N": 10, "lr": 1e-3,
                "parallel": {"tp": 1}, "args": {"weight_decay": 0.1, "log_interval": 10}}
    current = {"model": {"num_layers": 2, "padded_vocab_size": 384}, "N": 10, "lr": 1e-3,
               "parallel": {"tp": 2}, "args": {"weight_decay": 0.1, "log_interval": 1}}
    assert differences(recorded, current) == []
    current["args"]["weight_decay"] = 0.0
    assert differences(recorded, current) == ["weight_decay: was 0.1, now 0.0"]


@pytest.mark.parametrize("how", ["missing", "truncated"])
def test_a_damaged_shard_in_the_newest_checkpoint_resumes_from_the_previous(tmp_path, capsys, how):
    run_dir = tmp_path / "run"
    argv = RUN + ["--run-dir", str(run_dir), "--save-interval", "1"]
    assert run_pretrain(argv + ["--exit-interval", "2"]) == REQUEUE_EXIT_CODE
    shard = sorted((run_dir / "checkpoints" / "iter_0000002").glob("__0_*.distcp"))[-1]
    if how == "missing":
        shard.unlink()
    else:
        with open(shard, "r+b") as f:
            f.truncate(shard.stat().st_size - 100)
    capsys.readouterr()
    assert run_pretrain(argv + ["--load"]) == 0
    captured = capsys.readouterr()
    assert "iter_0000002 is damaged" in captured.err
    assert "resumed from" in captured.out and "iter_0000001 at step 1" in captured.out


def test_ctrl_c_during_training_checkpoints_and_exits_3(tmp_path, capsys, monkeypatch):
    """SIGINT is a preemption like SIGTERM (not a KeyboardInterrupt traceback, exit 1)."""
    real_step = loop.Trainer._train_step

    def step_then_interrupt(self, batches):
        out = real_step(self, batches)
        if self.step == 1:      # the second step: interrupted while it runs
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(loop.Trainer, "_train_step", step_then_interrupt)
    run_dir = tmp_path / "run"
    assert run_pretrain(RUN + ["--run-dir", str(run_dir)]) == REQUEUE_EXIT_CODE
    assert "preempted at step 2: checkpoint saved" in capsys.readouterr().out
    assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
