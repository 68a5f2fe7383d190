"""The plan of a sweep: per run N, D, FLOPs (6ND), resources and estimated GPU-hours, and totals."""
from __future__ import annotations

import csv
import io
import json

from tabulate import tabulate

from .config import SweepConfig
from .matrix import RunSpec, format_ratio


def si(value: float) -> str:
    """1.23e8 -> "123M" (3 significant digits)."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"


def device_hours(run: RunSpec, flops_per_device_s: float) -> float:
    """Estimated GPU-hours (or task-hours on CPU): 6ND over the profile's achieved FLOP/s per GPU."""
    return run.flops / flops_per_device_s / 3600.0


def plan_rows(sweep: SweepConfig, runs: list[RunSpec]) -> list[dict]:
    per_device = sweep.cluster.flops_per_gpu_s
    rows = []
    for run in runs:
        lay = run.layout
        devices = lay.gpus if lay.gpus else lay.world_size
        hours = device_hours(run, per_device)
        rows.append({
            "run": run.name, "model": run.model.name, "format": run.compression,
            "tpp": format_ratio(run.tokens_per_param), "seed": run.seed,
            "N": run.N, "D": run.tokens, "FLOPs": run.flops, "steps": run.train_iters,
            "nodes": lay.nodes, "per_node": lay.tasks_per_node, "tp": lay.tp, "pp": lay.pp, "dp": lay.dp,
            "device_hours": hours, "wall_hours": hours / devices, "time_limit": lay.time_limit,
        })
    return rows


def plan_totals(rows: list[dict]) -> dict:
    return {"runs": len(rows), "FLOPs": sum(r["FLOPs"] for r in rows),
            "device_hours": sum(r["device_hours"] for r in rows), "D": sum(r["D"] for r in rows)}


def format_plan(sweep: SweepConfig, rows: list[dict], fmt: str = "table") -> str:
    totals = plan_totals(rows)
    unit = "GPU-h" if sweep.cluster.gpus_per_node else "task-h"
    if fmt == "json":
        return json.dumps({"sweep": sweep.name, "profile": sweep.cluster.name, "unit": unit,
                           "flops_per_device_s": sweep.cluster.flops_per_gpu_s,
                           "runs": rows, "total": totals}, indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["run"])
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    device = "GPUs" if sweep.cluster.gpus_per_node else "tasks"
    table = [[r["run"], si(r["N"]), si(r["D"]), f"{r['FLOPs']:.3g}", r["steps"],
              f"{r['nodes']}x{r['per_node']}", f"{r['tp']}/{r['pp']}/{r['dp']}",
              f"{r['device_hours']:.3g}", f"{r['wall_hours']:.3g}", r["time_limit"]] for r in rows]
    table.append(["TOTAL", "", si(totals["D"]), f"{totals['FLOPs']:.3g}", "", "", "",
                  f"{totals['device_hours']:.3g}", "", ""])
    headers = ["run", "N", "D", "FLOPs(6ND)", "steps", f"nodes x {device}", "tp/pp/dp", unit,
               "wall h", "limit"]
    header = (f"sweep {sweep.name}: {len(rows)} runs on profile {sweep.cluster.name} "
              f"({sweep.cluster.flops_per_gpu_s:.3g} FLOP/s per {device[:-1]}); output {sweep.output_dir}")
    return header + "\n" + tabulate(table, headers=headers, disable_numparse=True,
                                    colalign=("left",) + ("right",) * (len(headers) - 1))
