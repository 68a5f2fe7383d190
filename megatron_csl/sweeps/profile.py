"""Cluster profiles: where and how a sweep's jobs run (slurm/profiles/*.yaml).

A profile holds what differs between clusters (partition, account, QoS, default time limit, GPUs
per node, container image, environment setup) and one throughput figure that turns a run's
6·N·D FLOPs into an estimate of GPU-hours for `sweep.py plan`.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional

from .errors import SweepError
from .yamlio import check_keys, load_yaml_mapping

# slurm/profiles/ of this checkout: where `cluster: NAME` in a sweep file is looked up.
PROFILES_DIR = Path(__file__).resolve().parents[2] / "slurm" / "profiles"

REQUIRED_KEYS = ("name", "partition", "time_limit", "gpus_per_node", "throughput")
OPTIONAL_KEYS = ("description", "account", "qos", "tasks_per_node", "cpus_per_task", "mem",
                 "signal_grace_s", "container", "env_setup", "env", "python", "repo_dir",
                 "sbatch_extra", "srun_extra", "array_parallelism")
CONTAINER_KEYS = ("image", "mounts", "workdir", "extra")
THROUGHPUT_KEYS = ("flops_per_gpu_s",)


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """A pyxis/enroot container for the srun step (--container-image/--container-mounts)."""

    image: str
    mounts: tuple[str, ...] = ()
    workdir: Optional[str] = None
    extra: tuple[str, ...] = ()   # more srun flags for the container, e.g. --no-container-mount-home


@dataclasses.dataclass(frozen=True)
class ClusterProfile:
    name: str
    partition: str
    time_limit: str                 # Slurm syntax, e.g. "04:00:00" or "1-00:00:00"
    gpus_per_node: int              # 0 on a CPU-only cluster (tasks are then plain CPU processes)
    flops_per_gpu_s: float          # achieved model FLOP/s per GPU (6ND counting), for estimates
    description: str = ""
    account: Optional[str] = None
    qos: Optional[str] = None
    tasks_per_node: Optional[int] = None   # default tasks (ranks) per node; None: gpus_per_node or 1
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None
    signal_grace_s: int = 120       # USR1 this long before the time limit: checkpoint, then requeue
    container: Optional[ContainerSpec] = None
    env_setup: str = ""             # bash lines run in the job before the launch (module load, ...)
    env: tuple[tuple[str, str], ...] = ()   # exported variables, in order
    python: str = "python3"         # interpreter in the job (relative paths: from repo_dir)
    repo_dir: Optional[str] = None  # checkout of megatron-csl on the cluster; None: this checkout
    sbatch_extra: tuple[str, ...] = ()
    srun_extra: tuple[str, ...] = ()
    array_parallelism: Optional[int] = None   # --array=0-9%K: at most K tasks of an array at once
    source: Optional[str] = None    # the file it came from (for messages)

    @property
    def default_tasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def time_limit_s(self) -> int:
        return parse_time_limit(self.time_limit, f"profile {self.name!r} time_limit")


_TIME_FORMATS = (
    (re.compile(r"^(\d+)$"), ("m",)),
    (re.compile(r"^(\d+):(\d{1,2})$"), ("m", "s")),
    (re.compile(r"^(\d+):(\d{1,2}):(\d{1,2})$"), ("h", "m", "s")),
    (re.compile(r"^(\d+)-(\d+)$"), ("d", "h")),
    (re.compile(r"^(\d+)-(\d+):(\d{1,2})$"), ("d", "h", "m")),
    (re.compile(r"^(\d+)-(\d+):(\d{1,2}):(\d{1,2})$"), ("d", "h", "m", "s")),
)
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_time_limit(value, where: str) -> int:
    """Seconds in a Slurm time limit ("30", "30:00", "04:00:00", "1-12:00:00", ...)."""
    text = str(value).strip()
    for pattern, units in _TIME_FORMATS:
        match = pattern.match(text)
        if match:
            seconds = sum(int(g) * _UNIT_S[u] for g, u in zip(match.groups(), units))
            if seconds <= 0:
                break
            return seconds
    raise SweepError(f"{where}: bad time limit {value!r}; use Slurm syntax: minutes ('30'), "
                     f"'MM:SS', 'HH:MM:SS', 'D-HH', 'D-HH:MM' or 'D-HH:MM:SS', greater than zero")


def _int(value, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SweepError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def _str_list(value, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise SweepError(f"{where} must be a list of strings, got {value!r}")
    return tuple(str(v) for v in value)


def profile_from_mapping(data: dict, source: str) -> ClusterProfile:
    """Validate a profile mapping (from a file or inline in a sweep file)."""
    where = f"cluster profile {source}"
    check_keys(data, REQUIRED_KEYS + OPTIONAL_KEYS, where)
    missing = [k for k in REQUIRED_KEYS if data.get(k) is None]
    if missing:
        raise SweepError(f"{where}: missing required field {missing[0]!r} (required: "
                         f"{', '.join(REQUIRED_KEYS)}; throughput needs flops_per_gpu_s)")
    name = str(data["name"])
    for key in ("partition",):
        if not isinstance(data[key], str) or not data[key].strip():
            raise SweepError(f"{where}: {key} must be a non-empty string, got {data[key]!r}")
    time_limit = str(data["time_limit"])
    time_limit_s = parse_time_limit(time_limit, f"{where} time_limit")
    gpus = _int(data["gpus_per_node"], f"{where} gpus_per_node", 0)

    throughput = data["throughput"]
    if not isinstance(throughput, dict):
        raise SweepError(f"{where}: throughput must be a mapping with flops_per_gpu_s, got {throughput!r}")
    check_keys(throughput, THROUGHPUT_KEYS, f"{where} throughput")
    flops = throughput.get("flops_per_gpu_s")
    if isinstance(flops, str):
        try:
            flops = float(flops)   # YAML 1.1 reads "4e14" (no dot) as a string
        except ValueError:
            pass
    if isinstance(flops, bool) or not isinstance(flops, (int, float)) or not flops > 0:
        raise SweepError(f"{where}: missing or bad throughput.flops_per_gpu_s {flops!r}; give the "
                         f"achieved model FLOP/s per GPU (or per task on CPU), e.g. 4.0e14")

    container = None
    if data.get("container") is not None:
        c = data["container"]
        if not isinstance(c, dict) or not c.get("image"):
            raise SweepError(f"{where}: container must be a mapping with at least 'image', got {c!r}")
        check_keys(c, CONTAINER_KEYS, f"{where} container")
        container = ContainerSpec(image=str(c["image"]),
                                  mounts=_str_list(c.get("mounts", []), f"{where} container.mounts"),
                                  workdir=str(c["workdir"]) if c.get("workdir") else None,
                                  extra=_str_list(c.get("extra", []), f"{where} container.extra"))

    env = data.get("env") or {}
    if not isinstance(env, dict) or not all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(k)) for k in env):
        raise SweepError(f"{where}: env must map variable names to values, got {env!r}")

    grace = _int(data.get("signal_grace_s", 120), f"{where} signal_grace_s", 1)
    if grace >= time_limit_s:
        raise SweepError(f"{where}: signal_grace_s {grace} must be shorter than the time limit "
                         f"{time_limit!r} ({time_limit_s} s)")
    tasks = data.get("tasks_per_node")
    if tasks is not None:
        tasks = _int(tasks, f"{where} tasks_per_node", 1)
    return ClusterProfile(
        name=name,
        partition=data["partition"].strip(),
        time_limit=time_limit,
        gpus_per_node=gpus,
        flops_per_gpu_s=float(flops),
        description=str(data.get("description") or ""),
        account=str(data["account"]) if data.get("account") else None,
        qos=str(data["qos"]) if data.get("qos") else None,
        tasks_per_node=tasks,
        cpus_per_task=(_int(data["cpus_per_task"], f"{where} cpus_per_task", 1)
                       if data.get("cpus_per_task") is not None else None),
        mem=str(data["mem"]) if data.get("mem") is not None else None,
        signal_grace_s=grace,
        container=container,
        env_setup=str(data.get("env_setup") or "").rstrip("\n"),
        env=tuple((str(k), str(v)) for k, v in env.items()),
        python=str(data.get("python") or "python3"),
        repo_dir=str(data["repo_dir"]) if data.get("repo_dir") else None,
        sbatch_extra=_str_list(data.get("sbatch_extra", []), f"{where} sbatch_extra"),
        srun_extra=_str_list(data.get("srun_extra", []), f"{where} srun_extra"),
        array_parallelism=(_int(data["array_parallelism"], f"{where} array_parallelism", 1)
                           if data.get("array_parallelism") is not None else None),
        source=source,
    )


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(ref, base_dir: Optional[Path] = None) -> ClusterProfile:
    """A profile from a name in slurm/profiles/ ("h100-2x8"), a path to a YAML file, or a mapping.

    Relative paths are tried against `base_dir` (the sweep file's folder) and the current folder.
    """
    if isinstance(ref, dict):
        return profile_from_mapping(ref, "(inline in the sweep file)")
    if not isinstance(ref, str) or not ref.strip():
        raise SweepError(f"cluster must be a profile name, a path to a profile YAML, or a mapping; "
                         f"got {ref!r}; profiles: {', '.join(available_profiles())}")
    ref = ref.strip()
    candidates = []
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        path = Path(ref).expanduser()
        candidates = [path] if path.is_absolute() else (
            ([base_dir / path] if base_dir is not None else []) + [Path.cwd() / path])
    else:
        candidates = [PROFILES_DIR / f"{ref}.yaml"]
    for path in candidates:
        if path.is_file():
            return profile_from_mapping(load_yaml_mapping(path, "cluster profile"), repr(str(path)))
    raise SweepError(f"unknown cluster profile {ref!r} (looked for {', '.join(str(c) for c in candidates)}); "
                     f"profiles in {PROFILES_DIR}: {', '.join(available_profiles()) or 'none'}")
