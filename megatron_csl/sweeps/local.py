"""The local executor: runs a sweep's runs on this machine, k at a time.

One process runs plain `python launch/pretrain.py`; several run under torchrun (standalone
rendezvous on a free port) through `megatron_csl.sweeps.torchrun`, which keeps the workers' exit
code (torchrun's own exits 1 for any failure, requeue included). Each run gets its own process
group, so a Ctrl-C reaches only this executor, which forwards SIGTERM to the runs: they save a
checkpoint and exit 3, and the next `submit` resumes them. A run that exits 3 on its own (someone sent it SIGUSR1) is started again
at once from its checkpoint, as Slurm would requeue it.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from megatron_csl.training.lock import SUBMIT_LOCK, RunDirLock, RunDirLockedError

from . import rundir
from .config import SweepConfig
from .errors import SweepError
from .matrix import RunSpec, pretrain_args
from .slurm import REPO_ROOT

REQUEUE_EXIT_CODE = 3   # docs/interfaces.md: "preempted, checkpoint saved, requeue me"
POLL_S = 0.5


def local_command(run: RunSpec, sweep: SweepConfig, python: str = sys.executable) -> list[str]:
    if run.layout.nodes != 1:
        raise SweepError(f"run {run.name}: the local executor runs on this machine, but the layout asks "
                         f"for {run.layout.nodes} nodes; set layout.nodes: 1 or use --executor slurm")
    args = pretrain_args(run, sweep.output_dir / run.name, sweep)
    return launcher(python, run.layout.world_size) + ["launch/pretrain.py", *args]


def launcher(python: str, nproc: int) -> list[str]:
    """What starts a script on `nproc` local processes: plain python for one, else torchrun
    through megatron_csl.sweeps.torchrun (which keeps the workers' requeue exit code)."""
    if nproc == 1:
        return [python]
    return [python, "-m", "megatron_csl.sweeps.torchrun", "--standalone",
            f"--nproc-per-node={nproc}"]


@dataclasses.dataclass
class _Active:
    run: RunSpec
    proc: subprocess.Popen
    log: object
    lock: RunDirLock
    requeues: int = 0


class LocalExecutor:
    """Runs `runs` with at most `parallel` at once; returns {run name: final exit code}."""

    def __init__(self, sweep: SweepConfig, runs: list[RunSpec], parallel: int = 1,
                 python: str = sys.executable, repo_dir: Path = REPO_ROOT, max_requeues: int = 5,
                 progress: bool = True):
        if parallel < 1:
            raise SweepError(f"--parallel must be at least 1, got {parallel}")
        self.sweep, self.runs, self.parallel = sweep, list(runs), parallel
        self.python, self.repo_dir, self.max_requeues = python, Path(repo_dir), max_requeues
        self.progress = progress
        self._stop_signal: Optional[int] = None
        # Runs not started because another submit holds them or finished them meanwhile.
        self.skipped: dict[str, str] = {}
        for run in self.runs:          # fail before starting anything
            local_command(run, sweep, python)

    def _on_signal(self, signum, frame):  # noqa: ARG002
        if self._stop_signal is not None:
            # Second Ctrl-C: stop waiting for checkpoints.
            for active in list(self._active.values()):
                _signal_group(active.proc, signal.SIGKILL)
            return
        self._stop_signal = signum
        # Only the run's main process (pretrain, or torchrun, which passes SIGTERM to its
        # workers): helper processes it started (e.g. a checkpoint writer) must not die mid-save.
        for active in list(self._active.values()):
            try:
                active.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def _claim(self, run: RunSpec) -> tuple:
        """(lock, None) when this executor may start ``run``, else (None, why not): another
        submit holds it (a second `submit` started at the same time), or it finished meanwhile."""
        run_dir = self.sweep.output_dir / run.name
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunDirLock(run_dir, SUBMIT_LOCK, "launch/sweep.py submit (local executor)")
        try:
            lock.acquire()
        except RunDirLockedError as e:
            return None, str(e)
        result = rundir.read_json(run_dir / rundir.RESULT_JSON)
        if isinstance(result, dict) and result.get("status") == "finished":
            lock.release()
            return None, "finished meanwhile"
        return lock, None

    def _start(self, run: RunSpec, lock: RunDirLock, requeues: int = 0) -> _Active:
        import psutil

        run_dir = self.sweep.output_dir / run.name
        cmd = local_command(run, self.sweep, self.python)
        log = open(run_dir / "local.log", "ab")
        log.write(f"[sweep] {rundir.now_iso()} {' '.join(cmd)}\n".encode())
        log.flush()
        # One thread per process unless told otherwise, as torchrun and the sbatch template do.
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.Popen(cmd, cwd=self.repo_dir, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = 0.0
        rundir.record_local_submission(run_dir, proc.pid, create_time, cmd, self.sweep.name)
        rundir.record_attempt(run_dir, "start", job_id=f"local:{proc.pid}", restart=requeues)
        return _Active(run=run, proc=proc, log=log, lock=lock, requeues=requeues)

    def _postfix(self) -> str:
        parts = []
        for active in self._active.values():
            row = rundir.last_train_row(self.sweep.output_dir / active.run.name)
            if row is None:
                parts.append(f"{active.run.name}: starting")
            else:
                parts.append(f"{active.run.name}: step {row.get('step')}/{active.run.train_iters} "
                             f"loss {row.get('loss'):.4f}")
        return " | ".join(parts)

    def run(self) -> dict:
        from tqdm import tqdm

        self._active: dict[str, _Active] = {}
        results: dict[str, int] = {}
        pending = list(self.runs)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        # Off a terminal (logs, CI) redraw rarely instead of twice a second.
        interactive = sys.stderr.isatty()
        bar = tqdm(total=len(self.runs), unit="run", desc=f"sweep {self.sweep.name}",
                   disable=not self.progress, dynamic_ncols=True,
                   mininterval=0.5 if interactive else 30.0)
        try:
            while pending or self._active:
                while pending and len(self._active) < self.parallel and self._stop_signal is None:
                    run = pending.pop(0)
                    lock, why_not = self._claim(run)
                    if lock is None:
                        bar.write(f"[sweep] skip {run.name}: {why_not}")
                        results[run.name] = None
                        self.skipped[run.name] = why_not
                        bar.update(1)
                        continue
                    self._active[run.name] = self._start(run, lock)
                if self._stop_signal is not None and not self._active:
                    break
                time.sleep(POLL_S)
                for name, active in list(self._active.items()):
                    rc = active.proc.poll()
                    if rc is None:
                        continue
                    active.log.close()
                    del self._active[name]
                    run_dir = self.sweep.output_dir / name
                    stop = signal.Signals(self._stop_signal).name if self._stop_signal else ""
                    rundir.record_attempt(run_dir, "end", job_id=f"local:{active.proc.pid}", rc=rc,
                                          restart=active.requeues, signal=stop)
                    if (rc == REQUEUE_EXIT_CODE and self._stop_signal is None
                            and active.requeues < self.max_requeues):
                        bar.write(f"[sweep] {name}: exited {rc} (checkpoint saved); starting it again")
                        self._active[name] = self._start(active.run, active.lock,
                                                         active.requeues + 1)
                        continue
                    active.lock.release()
                    results[name] = rc
                    bar.update(1)
                    result = rundir.read_json(run_dir / rundir.RESULT_JSON)
                    if rc == 0 and result:
                        bar.write(f"[sweep] {name}: finished, val_loss {result.get('val_loss')}")
                    else:
                        bar.write(f"[sweep] {name}: exited {rc}; log: {run_dir / 'local.log'}")
                bar.set_postfix_str(self._postfix(), refresh=False)
                if interactive:
                    bar.refresh()
            for run in pending:
                results.setdefault(run.name, None)
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            for active in self._active.values():
                _signal_group(active.proc, signal.SIGKILL)
                active.lock.release()
        return results


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the run's whole process group (torchrun and its workers alike)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
