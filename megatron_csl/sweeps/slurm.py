"""The Slurm executor: sbatch scripts rendered from slurm/templates/, submission, queue queries.

Runs that share a model and a layout go into one job array (one script, a `case` on
SLURM_ARRAY_TASK_ID picks the run); a lone run is a plain job. Every submitted job id is recorded
in its run directory (jobs.jsonl), so `status` needs only squeue/scontrol, never slurmdbd.
"""
from __future__ import annotations

import dataclasses
import getpass
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Optional

import jinja2

from . import rundir
from .config import SweepConfig
from .errors import SweepError
from .matrix import RunSpec, pretrain_args

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATES_DIR = REPO_ROOT / "slurm" / "templates"
TEMPLATE_NAME = "pretrain.sbatch.j2"
SWEEP_META_DIR = ".sweep"          # under the sweep's output_dir: scripts/ and logs/


@dataclasses.dataclass
class JobScript:
    """One rendered sbatch script: a job array (or single job) over `runs`."""

    job_name: str
    runs: list                      # [RunSpec], array index = position
    text: str
    path: Optional[Path] = None

    @property
    def is_array(self) -> bool:
        return len(self.runs) > 1


def group_runs(runs: list[RunSpec]) -> list[list[RunSpec]]:
    """Runs grouped by (model, layout), in first-appearance order: one job array per group."""
    groups: dict = {}
    for run in runs:
        groups.setdefault(run.array_group, []).append(run)
    return list(groups.values())


def _arg_lines(args: list[str]) -> list[str]:
    """Each flag with its values on one line (shell-quoted), for readable scripts."""
    lines, current = [], []
    for arg in args:
        if arg.startswith("--") and current:
            lines.append(" ".join(current))
            current = []
        current.append(shlex.quote(arg))
    if current:
        lines.append(" ".join(current))
    return lines


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             autoescape=False)
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def render_job(sweep: SweepConfig, runs: list[RunSpec], repo_dir: Path, job_name: str) -> str:
    """The sbatch script for `runs` (all of one array group)."""
    first = runs[0]
    layout = first.layout
    profile = sweep.cluster
    log_dir = sweep.output_dir / SWEEP_META_DIR / "logs"
    array = None
    if len(runs) > 1:
        array = f"0-{len(runs) - 1}" + (f"%{profile.array_parallelism}" if profile.array_parallelism else "")
    context = {
        "sweep": sweep.name, "model": first.model.name, "profile": profile, "job_name": job_name,
        "nodes": layout.nodes, "tasks_per_node": layout.tasks_per_node,
        "gpus_per_node": layout.gpus_per_node, "time_limit": layout.time_limit, "array": array,
        "log_pattern": str(log_dir / ("%x-%A_%a.out" if array else "%x-%j.out")),
        "repo_dir": str(repo_dir), "python": profile.python,
        "runs": [{"index": i, "name": run.name, "run_dir": str(sweep.output_dir / run.name),
                  "arg_lines": _arg_lines(pretrain_args(run, sweep.output_dir / run.name, sweep))}
                 for i, run in enumerate(runs)],
    }
    return _environment().get_template(TEMPLATE_NAME).render(**context)


def repo_dir_for(sweep: SweepConfig) -> Path:
    """Where launch/pretrain.py lives on the cluster: the profile's repo_dir, else this checkout."""
    return Path(sweep.cluster.repo_dir) if sweep.cluster.repo_dir else REPO_ROOT


def build_scripts(sweep: SweepConfig, runs: list[RunSpec], repo_dir: Optional[Path] = None) -> list[JobScript]:
    repo_dir = repo_dir or repo_dir_for(sweep)
    scripts = []
    for group in group_runs(runs):
        job_name = f"{sweep.name}-{group[0].model.name}" if len(group) > 1 else f"{sweep.name}-{group[0].name}"
        scripts.append(JobScript(job_name=job_name, runs=group,
                                 text=render_job(sweep, group, repo_dir, job_name)))
    return scripts


def write_script(script: JobScript, directory: Path) -> Path:
    """Write to a temporary name and rename, so a half-written script never looks complete."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"{script.job_name}-{stamp}-{os.getpid()}.sbatch"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(script.text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    script.path = path
    return path


def _run(cmd: list[str], what: str, timeout: float = 60) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SweepError(f"{cmd[0]} not found: {what} needs the Slurm client commands on PATH "
                         f"(and SLURM_CONF for a private cluster)") from None
    except subprocess.TimeoutExpired:
        raise SweepError(f"{' '.join(cmd)} did not answer in {timeout:.0f} s ({what})") from None
    if proc.returncode != 0:
        raise SweepError(f"{' '.join(map(shlex.quote, cmd))} failed with exit code {proc.returncode} "
                         f"({what}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def sbatch(script_path: Path) -> str:
    """Submit; the job id (`sbatch --parsable` prints "ID" or "ID;cluster")."""
    out = _run(["sbatch", "--parsable", str(script_path)], f"submitting {script_path.name}").strip()
    job_id = out.splitlines()[-1].split(";")[0].strip() if out else ""
    if not job_id.isdigit():
        raise SweepError(f"sbatch {script_path} printed {out!r} instead of a job id")
    return job_id


def submit_script(script: JobScript, sweep: SweepConfig) -> list[str]:
    """sbatch the written script and record each run's job id in its run directory."""
    # Slurm does not create the folder of --output; a job whose log cannot be opened dies at once.
    (sweep.output_dir / SWEEP_META_DIR / "logs").mkdir(parents=True, exist_ok=True)
    job_id = sbatch(script.path)
    ids = []
    for index, run in enumerate(script.runs):
        run_dir = sweep.output_dir / run.name
        run_dir.mkdir(parents=True, exist_ok=True)
        task_id = f"{job_id}_{index}" if script.is_array else job_id
        rundir.record_slurm_submission(run_dir, task_id, job_id if script.is_array else None,
                                       index if script.is_array else None, script.path, sweep.name)
        ids.append(task_id)
    return ids


def sbatch_command(script_path: Path) -> str:
    return f"sbatch --parsable {shlex.quote(str(script_path))}"


def read_queue(job_ids: list) -> dict:
    """Queue state of our jobs: {job id ("12_3" for array tasks): "RUNNING" or "PENDING (reason)"}.

    Reads the whole queue of this user once (`squeue -j` with an id Slurm has forgotten fails).
    FileNotFoundError when squeue is not installed.
    """
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"],
                              capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise SweepError("squeue did not answer in 60 s") from None
    if proc.returncode != 0:
        raise SweepError(f"squeue failed with exit code {proc.returncode}: {proc.stderr.strip()}")
    queue = {}
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 3:
            continue
        job, state, reason = parts
        queue[job] = state if state != "PENDING" or reason in ("None", "") else f"{state} ({reason})"
    return queue


_FIELD = re.compile(r"(\w+)=(\S*)")


def inspect_job(job_id: str) -> Optional[tuple]:
    """(JobState, ExitCode) from `scontrol show job` while Slurm remembers the job, else None."""
    try:
        proc = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)],
                              capture_output=True, text=True, timeout=60)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    fields = dict(_FIELD.findall(proc.stdout.splitlines()[0])) if proc.stdout.strip() else {}
    if "JobState" not in fields:
        return None
    return fields["JobState"], fields.get("ExitCode", "?")
