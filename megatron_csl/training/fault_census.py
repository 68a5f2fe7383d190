"""Fault census behind tools/fault_check.py: kill -9 during checkpoint saves, concurrent submits.

Kill census: one uninterrupted tiny run (launch/pretrain.py, a checkpoint every step) is the
reference. Each trial starts the same run in a fresh directory, waits until a randomly chosen
save ``iter_K.tmp`` appears, waits a random 0..max_delay ms more (so the kill lands while the
shards are written, after the rename or while ``latest`` is written), SIGKILLs the trainer, notes
whether any process it had forked (megatron's checkpoint writers) is still alive 2 s later,
then resumes with --load and compares every metrics row (all keys but tokens_per_s) with the
reference.

Concurrent-submit census: two ``launch/sweep.py submit --executor local`` on one sweep, the
second started a random 0..max_gap s after the first; counts runs that were started more than
once (the run-directory lock must prevent it) and runs that finished.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

from .checkpointing import CHECKPOINTS_DIR, TMP_SUFFIX, checkpoint_dirname
from .rundir import METRICS_JSONL, read_metrics

REPO = Path(__file__).resolve().parents[2]
TINY_RUN = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
            "--ffn-hidden-size", "128", "--seq-length", "32", "--vocab-size", "256",
            "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3",
            "--lr-warmup-iters", "1", "--eval-iters", "1", "--log-interval", "1",
            "--mock-data", "--no-tensorboard", "--compression", "w4a4", "--save-interval", "1"]
TINY_SHAPE = {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "ffn_hidden_size": 64}


def _env() -> dict:
    # One thread per process, as every launcher sets: runs then compare bit for bit.
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def pretrain_command(run_dir: Path, iters: int, python: str = sys.executable) -> List[str]:
    return [python, str(REPO / "launch" / "pretrain.py"), *TINY_RUN, "--train-iters", str(iters),
            "--eval-interval", str(iters), "--run-dir", str(run_dir),
            "--save", str(run_dir / "checkpoints"), "--load", str(run_dir / "checkpoints")]


def comparable_rows(run_dir: Path) -> list:
    return [{k: v for k, v in row.items() if k != "tokens_per_s"}
            for row in read_metrics(Path(run_dir) / METRICS_JSONL)]


def _run_to_end(run_dir: Path, iters: int, timeout: float) -> int:
    with open(Path(run_dir).with_suffix(".log"), "ab") as log:
        return subprocess.run(pretrain_command(run_dir, iters), cwd=REPO, env=_env(),
                              stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode


@dataclasses.dataclass
class KillTrial:
    target_step: int
    delay_ms: float
    during_tmp: bool          # the .tmp directory still existed when the kill landed
    children: int             # processes the trainer had forked, alive when the kill landed
    leaked: int               # of those, alive 2 s after the kill
    resume_rc: int
    exact: bool


@dataclasses.dataclass
class KillCensus:
    trials: List[KillTrial]
    reference_rc: int

    @property
    def exact(self) -> int:
        return sum(t.exact for t in self.trials)

    def summary(self) -> str:
        n = len(self.trials)
        during = sum(t.during_tmp for t in self.trials)
        failed = sum(t.resume_rc != 0 for t in self.trials)
        leaked = sum(t.leaked for t in self.trials)
        leaky = sum(t.leaked > 0 for t in self.trials)
        children = sum(t.children > 0 for t in self.trials)
        return (f"kill -9 census: {n} trials ({during} during the .tmp write, {n - during} after "
                f"it); resumed with every metrics row identical: {self.exact}/{n}; failed "
                f"resumes: {failed}; trials with forked processes at the kill: {children}; "
                f"forked processes left alive: {leaked} (in {leaky} trials)")

    @property
    def ok(self) -> bool:
        return self.reference_rc == 0 and all(
            t.exact and t.resume_rc == 0 and t.leaked == 0 for t in self.trials)


def _alive(procs) -> list:
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def kill_trial(run_dir: Path, iters: int, target_step: int, delay_ms: float,
               reference: list, timeout: float = 600.0) -> KillTrial:
    import psutil

    tmp = Path(run_dir) / CHECKPOINTS_DIR / (checkpoint_dirname(target_step) + TMP_SUFFIX)
    final = Path(run_dir) / CHECKPOINTS_DIR / checkpoint_dirname(target_step)
    with open(Path(run_dir).with_suffix(".log"), "ab") as log:
        proc = subprocess.Popen(pretrain_command(run_dir, iters), cwd=REPO, env=_env(),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    while not (tmp.exists() or final.exists()) and proc.poll() is None:
        if time.time() > deadline:
            proc.kill()
            raise TimeoutError(f"{run_dir}: no save of step {target_step} within {timeout} s")
        time.sleep(0.002)
    time.sleep(delay_ms / 1000.0)
    children = []
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        pass
    during_tmp = tmp.exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2.0)
    left = _alive(children)
    for p in left:              # clean up what the trainer left (the census counts it)
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    rc = _run_to_end(run_dir, iters, timeout)
    return KillTrial(target_step, delay_ms, during_tmp, len(children), len(left), rc,
                     rc == 0 and comparable_rows(run_dir) == reference)


def kill_census(out: Path, trials: int, iters: int = 6, max_delay_ms: float = 120.0,
                seed: int = 0, log: Callable[[str], None] = print,
                timeout: float = 600.0) -> KillCensus:
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    reference_dir = out / "reference"
    reference_rc = _run_to_end(reference_dir, iters, timeout)
    reference = comparable_rows(reference_dir)
    results = []
    for i in range(trials):
        step = rng.randint(1, iters - 1)
        delay = rng.uniform(0.0, max_delay_ms)
        trial = kill_trial(out / f"trial{i:03d}", iters, step, delay, reference, timeout)
        results.append(trial)
        log(f"  trial {i}: kill {delay:5.1f} ms after save {step} began "
            f"({'during .tmp' if trial.during_tmp else 'after rename'}), forked processes "
            f"{trial.children}, left alive {trial.leaked}, "
            f"resume rc {trial.resume_rc}, rows {'identical' if trial.exact else 'DIFFER'}")
    return KillCensus(results, reference_rc)


# ---------------------------------------------------------------------------- concurrent submits
@dataclasses.dataclass
class SubmitTrial:
    gap_s: float
    runs: int
    started_twice: int
    finished: int
    submit_rcs: tuple


@dataclasses.dataclass
class SubmitCensus:
    trials: List[SubmitTrial]

    def summary(self) -> str:
        runs = sum(t.runs for t in self.trials)
        twice = sum(t.started_twice for t in self.trials)
        finished = sum(t.finished for t in self.trials)
        return (f"concurrent submit: {len(self.trials)} trials of two `launch/sweep.py submit "
                f"--executor local`, {runs} runs in all; runs started more than once: {twice}; "
                f"runs finished: {finished}/{runs}")

    @property
    def ok(self) -> bool:
        return all(t.started_twice == 0 and t.finished == t.runs for t in self.trials)


def write_sweep(path: Path, formats: List[str], iters_tokens_per_param: float = 0.05) -> Path:
    import yaml

    sweep = {"name": "faults", "cluster": "local", "models": [{"name": "tiny", **TINY_SHAPE}],
             "formats": formats, "tokens_per_param": [iters_tokens_per_param], "seeds": [1],
             "data": {"mock": True},
             "training": {"seq_length": 32, "vocab_size": 128, "micro_batch_size": 2,
                          "global_batch_size": 4, "lr": 1e-3, "tensorboard": False}}
    path.write_text(yaml.safe_dump(sweep))
    return path


def submit_trial(out: Path, formats: List[str], gap_s: float, timeout: float = 900.0) -> SubmitTrial:
    from megatron_csl.sweeps import rundir as sweep_rundir

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sweep = write_sweep(out / "sweep.yaml", formats)
    runs_dir = out / "runs"
    cmd = [sys.executable, str(REPO / "launch" / "sweep.py"), "submit", str(sweep), "--executor",
           "local", "--output-dir", str(runs_dir), "--no-progress"]
    logs = [open(out / f"submit{i}.log", "wb") for i in range(2)]
    try:
        first = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=logs[0],
                                 stderr=subprocess.STDOUT)
        time.sleep(gap_s)
        second = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=logs[1],
                                  stderr=subprocess.STDOUT)
        rcs = (first.wait(timeout), second.wait(timeout))
    finally:
        for f in logs:
            f.close()
    run_dirs = [d for d in sorted(runs_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    twice = finished = 0
    for d in run_dirs:
        starts = [a for a in sweep_rundir.read_jsonl(d / sweep_rundir.ATTEMPTS_JSONL)
                  if a.get("event") == "start"]
        twice += len(starts) > 1
        result = sweep_rundir.read_json(d / sweep_rundir.RESULT_JSON)
        finished += bool(result and result.get("status") == "finished")
    return SubmitTrial(gap_s, len(run_dirs), twice, finished, rcs)


def submit_census(out: Path, trials: int, formats: Optional[List[str]] = None,
                  max_gap_s: float = 3.0, seed: int = 0,
                  log: Callable[[str], None] = print) -> SubmitCensus:
    rng = random.Random(seed + 1)
    formats = formats or ["dense", "w4"]
    results = []
    for i in range(trials):
        gap = rng.uniform(0.0, max_gap_s)
        trial = submit_trial(Path(out) / f"submit{i:03d}", formats, gap)
        results.append(trial)
        log(f"  trial {i}: second submit {gap:.2f} s after the first; runs started twice "
            f"{trial.started_twice}, finished {trial.finished}/{trial.runs}, "
            f"submit exit codes {trial.submit_rcs}")
    return SubmitCensus(results)


def as_json(kill: Optional[KillCensus], submit: Optional[SubmitCensus]) -> str:
    doc = {}
    if kill is not None:
        doc["kill"] = {"reference_rc": kill.reference_rc,
                       "trials": [dataclasses.asdict(t) for t in kill.trials]}
    if submit is not None:
        doc["submit"] = {"trials": [dataclasses.asdict(t) for t in submit.trials]}
    return json.dumps(doc, indent=2)
