"""`launch/sweep.py suggest SWEEP --budget-gpu-hours H`: the next runs of a sweep, chosen where the
EPM intervals are widest (``megatron_csl.scaling.planner``), written as a sweep file `submit` takes.

The candidates are the sweep's runs that are not finished, running or pending; their cost is the
plan's GPU-hour estimate (6ND over the cluster profile's FLOP/s per GPU). The written file is the
sweep file itself with a `runs:` list naming the chosen runs, and absolute `output_dir`, data and
profile paths, so the runs land in the same run directories wherever the file is used from.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from megatron_csl.atomic import atomic_write_text

from . import status as status_mod
from .errors import SweepError
from .live_fit import finished_run_dirs
from .plan import device_hours
from .yamlio import load_yaml_mapping


def select_listed(runs, names) -> list:
    """The runs a sweep file's `runs:` list names (all runs without one); unknown names fail."""
    if names is None:
        return runs
    by_name = {r.name: r for r in runs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SweepError(f"runs: {unknown[0]!r} is not a run of this sweep (its runs are named like "
                         f"{runs[0].name if runs else '-'}; `plan` lists them)")
    return [by_name[n] for n in dict.fromkeys(names)]


def candidates(sweep, runs, statuses):
    from megatron_csl.scaling.planner import Candidate

    state = {s.name: s.state for s in statuses}
    return [Candidate(r.name, float(r.N), float(r.tokens), r.compression,
                      device_hours(r, sweep.cluster.flops_per_gpu_s))
            for r in runs if state[r.name] in status_mod.RESUBMIT_STATES]


def suggestion_yaml(sweep, names) -> str:
    """The sweep file with `runs: names` and absolute paths."""
    raw = load_yaml_mapping(sweep.source, "sweep file")
    raw["output_dir"] = str(sweep.output_dir)
    cluster = raw.get("cluster")
    if isinstance(cluster, str) and (cluster.endswith((".yaml", ".yml")) or "/" in cluster):
        path = Path(cluster).expanduser()
        if not path.is_absolute():
            near = sweep.source.parent / path
            raw["cluster"] = str((near if near.exists() else Path.cwd() / path).resolve())
    data = dict(raw.get("data") or {})
    if sweep.data.paths:
        data["paths"] = list(sweep.data.paths)
    if sweep.data.tokenizer_model and not Path(sweep.data.tokenizer_model).is_absolute():
        data["tokenizer_model"] = str(Path(sweep.data.tokenizer_model).resolve())
    raw["data"] = data
    if isinstance(sweep.training.get("config"), str):
        raw.setdefault("training", {})["config"] = sweep.training["config"]
    raw["runs"] = list(names)
    header = (f"# Written by `launch/sweep.py suggest {sweep.source.name}`: the runs of sweep "
              f"{sweep.name!r} that shrink the widest EPM intervals most per GPU-hour.\n"
              "# Submit with: launch/sweep.py submit THIS_FILE --executor ...\n")
    return header + yaml.safe_dump(raw, sort_keys=False)


def run_suggest(sweep, runs, statuses, budget, out_path, *, resamples=30, top_k=6, seed=0,
                progress=True):
    """Plan, write the sweep file (atomically), and return (plan, out_path)."""
    from megatron_csl.scaling.planner import suggest_runs
    from megatron_csl.scaling.runs import collect_runs

    dirs = finished_run_dirs(sweep, statuses)
    finished, _ = collect_runs(dirs) if dirs else (None, [])
    if finished is None:
        from megatron_csl.scaling.problem import RunTable
        finished = RunTable([], [], [], [])
    cands = candidates(sweep, runs, statuses)
    if not cands:
        raise SweepError(f"sweep {sweep.name}: every run is finished, running or pending; nothing "
                         "to suggest")
    try:
        plan = suggest_runs(finished, cands, budget, resamples=resamples, top_k=top_k, seed=seed,
                            progress=progress)
    except ValueError as e:
        raise SweepError(str(e)) from None
    if plan.picks:
        atomic_write_text(out_path, suggestion_yaml(sweep, [p.candidate.key for p in plan.picks]))
    return plan
