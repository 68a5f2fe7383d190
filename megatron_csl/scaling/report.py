"""The fit as a table (like the paper's), as JSON with every number, and as Markdown.

Table columns: format, bits W/A, EPM with its bootstrap interval, size gain = EPM * 16 /
effective weight bits (sparsity counted: ``effective_w_bits = w_bits * (1 - sparsity)``), runs used.
"""
from __future__ import annotations

import math

import numpy as np

from .bootstrap import BootstrapResult
from .fitting import FitResult, epm_names
from .formats import format_info

JSON_VERSION = 1


def _interval(value, boot_interval=None) -> dict:
    if boot_interval is None:
        return {"value": value, "lo": None, "hi": None}
    return {"value": value, "lo": boot_interval.lo, "hi": boot_interval.hi}


def build_report(result: FitResult, boot: BootstrapResult | None = None, skipped=(),
                 info=format_info, diagnostics=()) -> dict:
    """Everything about a fit as a JSON-ready dict (``fit_laws.py --json``)."""
    runs_per_format = {f: int(np.sum(result.problem.runs.formats == f)) for f in result.formats}
    rows = []
    size_gain = {}
    for f in epm_names(result):
        fi = info(f)
        epm_iv = boot.epm[f] if boot else None
        gain = {k: (None if v is None else v * fi.size_factor)
                for k, v in _interval(result.epm[f], epm_iv).items()}
        size_gain[f] = gain
        rows.append({
            "spec": f, "w_bits": fi.w_bits, "a_bits": fi.a_bits, "sparsity": fi.sparsity,
            "effective_w_bits": fi.effective_w_bits, "epm": _interval(result.epm[f], epm_iv),
            "size_gain": gain, "runs": runs_per_format[f],
        })
    report = {
        "version": JSON_VERSION,
        "law": result.law,
        "form": result.form,
        "params": {k: _interval(v, boot.params[k] if boot else None)
                   for k, v in result.params.items()},
        "epm": {r["spec"]: r["epm"] for r in rows},
        "size_gain": size_gain,
        "formats": rows,
        "rmse_log": result.rmse_log,
        "objective": result.objective,
        "n_points": result.n_points,
        "n_starts": result.n_starts,
        "tokens_per_param": result.tokens_per_param,
        "warnings": list(result.warnings),
        "diagnostics": [d.as_dict() for d in diagnostics],
        "skipped": [s.as_dict() for s in skipped],
        "bootstrap": None if boot is None else {
            "resamples": boot.n_resamples, "seed": boot.seed, "level": boot.level,
            "unit": boot.unit,
            "extra_starts": boot.extra_starts, "stratified_by": "format",
            "failed": boot.n_failed,
        },
        "fitted": {"names": list(result.names), "theta": [float(t) for t in result.theta]},
    }
    return report


def _fmt(x, digits=4):
    if x is None:
        return "-"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{digits - 1}e}"


def _with_ci(iv, digits=3):
    value = _fmt(iv["value"], digits)
    if iv["lo"] is None:
        return value
    return f"{value} [{_fmt(iv['lo'], digits)}, {_fmt(iv['hi'], digits)}]"


def _bits(x):
    return f"{x:g}"


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    header = ["format", "bits W/A", "EPM (95% CI)", "size gain", "runs"]
    if report["bootstrap"]:
        header[2] = f"EPM ({100 * report['bootstrap']['level']:g}% CI)"
    rows = [[r["spec"], f"{_bits(r['w_bits'])}/{_bits(r['a_bits'])}",
             _with_ci(r["epm"]), _with_ci(r["size_gain"]) + "x", str(r["runs"])]
            for r in report["formats"]]
    return header, rows


def _law_line(report: dict) -> str:
    if report["law"] == "chinchilla":
        law = "L = A/N^alpha + B/D^beta + E"
        if report["form"] == "reduced":
            law = "L = A/N^alpha + E (reduced form)"
    else:
        eff = "eff(C) = Lc*tanh(F*log_1/4 GMSE(C))^C" if report["law"] == "capacity" else "eff per format"
        law = "L = a/(N*eff(C))^b + c/D^d + e" if report["form"] == "full" else \
            "L = a/(N*eff(C))^b + e (reduced form)"
        law += f"; {eff}"
    return law


def format_text(report: dict) -> str:
    """Plain-text report for the terminal."""
    header, rows = table_rows(report)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = [f"law: {report['law']} ({report['form']} form)   {_law_line(report)}"]
    lines.append("params: " + ", ".join(f"{k}={_with_ci(v, 4)}" for k, v in report["params"].items()))
    lines.append(f"objective (summed Huber): {report['objective']:.6g}   RMSE(log loss): "
                 f"{report['rmse_log']:.4g}   runs: {report['n_points']}   starts: {report['n_starts']}")
    if report["bootstrap"]:
        b = report["bootstrap"]
        unit = ("whole model sizes (paired across formats)" if b.get("unit") == "size"
                else "runs (stratified by format)")
        lines.append(f"bootstrap: {b['resamples']} resamples over {unit}, seed {b['seed']}")
    lines.append("")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)))
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    lines.extend(format_diagnostics(report))
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])} run(s):")
        lines.extend(f"  {s['source']}: {s['reason']}" for s in report["skipped"])
    return "\n".join(lines) + "\n"


def _diagnostic_lines(report: dict) -> list[str]:
    from .diagnostics import Diagnostic

    return [Diagnostic(d["code"], d["message"], d["format"], d["N"]).line()
            for d in report.get("diagnostics") or []]


def format_diagnostics(report: dict) -> list[str]:
    """The diagnostics block of the terminal report (empty when there are none)."""
    lines = _diagnostic_lines(report)
    if not lines:
        return []
    return [f"diagnostics ({len(lines)}; docs/fitting.md explains each code):"] + \
        [f"  {line}" for line in lines]


def format_markdown(report: dict) -> str:
    header, rows = table_rows(report)
    out = [f"# Scaling-law fit: {report['law']} law ({report['form']} form)", "",
           f"`{_law_line(report)}`", "",
           "| parameter | value | 95% CI |", "|---|---|---|"]
    for k, v in report["params"].items():
        ci = "-" if v["lo"] is None else f"[{_fmt(v['lo'])}, {_fmt(v['hi'])}]"
        out.append(f"| {k} | {_fmt(v['value'])} | {ci} |")
    out += ["", f"Objective (summed Huber, delta 1e-3): {report['objective']:.6g}; "
                f"RMSE in log loss: {report['rmse_log']:.4g}; runs: {report['n_points']}.", ""]
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "---|" * len(header))
    out.extend("| " + " | ".join(r) + " |" for r in rows)
    if report["warnings"]:
        out += ["", "Warnings:", ""] + [f"- {w}" for w in report["warnings"]]
    if report.get("diagnostics"):
        out += ["", "Diagnostics:", ""] + [f"- {line}" for line in _diagnostic_lines(report)]
    if report["skipped"]:
        out += ["", f"Skipped runs ({len(report['skipped'])}):", ""]
        out += [f"- `{s['source']}`: {s['reason']}" for s in report["skipped"]]
    return "\n".join(out) + "\n"


def check_finite(report: dict) -> None:
    """JSON has no NaN/inf; fail loudly rather than write an unreadable file."""
    def walk(x, path):
        if isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"non-finite value at {path}: {x}")
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}")
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
    walk(report, "report")
