"""`launch/sweep.py status SWEEP --fit`: the compression law fitted to the runs finished so far.

While a sweep runs, the fit of its finished runs (with bootstrap intervals and the diagnostics of
``megatron_csl.scaling.diagnostics``) says which EPMs are settled and which are still unidentified:
a format with no finished run, or one whose EPM or a shared parameter sits on a bound or has an
interval reaching one (``param-on-bound``, ``interval-on-bound``). EPMs other diagnostics concern
(too few sizes, non-monotone losses, ...) are listed as "in doubt". A fit that is not possible yet (no dense runs, one size) is
reported with the reason instead.
"""
from __future__ import annotations

from pathlib import Path

from . import status as status_mod

NO_RUNS = "no finished runs"


def finished_run_dirs(sweep, statuses) -> list[Path]:
    return [Path(sweep.output_dir) / s.name for s in statuses if s.state == status_mod.FINISHED]


def fit_finished(run_dirs, formats, bootstrap: int = 200, seed: int = 0, workers: int = 1,
                 progress: bool = False) -> dict:
    """{finished, report (the fit_laws JSON dict, or None), error, unidentified: {spec: reasons}}
    for the sweep's ``formats`` (canonical specs)."""
    from megatron_csl.scaling.bootstrap import bootstrap_fit
    from megatron_csl.scaling.diagnostics import (UNIDENTIFIED_CODES, diagnose_fit,
                                                  unidentified_formats)
    from megatron_csl.scaling.fitting import FitOptions, fit_runs
    from megatron_csl.scaling.loso import leave_one_size_out
    from megatron_csl.scaling.report import build_report
    from megatron_csl.scaling.runs import collect_runs

    out = {"finished": len(run_dirs), "report": None, "error": None, "unidentified": {},
           "in_doubt": {}}
    report = None
    if not run_dirs:
        out["error"] = "no finished runs yet"
    else:
        runs, skipped = collect_runs(run_dirs)
        options = FitOptions(refine_top=16)
        try:
            result = fit_runs("compression", runs, options=options, workers=workers,
                              progress=progress)
            boot = bootstrap_fit(result, bootstrap, seed, workers=workers, options=options,
                                 progress=progress) if bootstrap else None
            loso = leave_one_size_out(result, options) if boot else ()
            report = build_report(result, boot, skipped, diagnostics=diagnose_fit(result, boot, loso))
        except ValueError as e:
            out["error"] = str(e)
    out["report"] = report
    flagged = unidentified_formats(report) if report else {}
    fitted = set(report["epm"]) if report else set()
    for spec in formats:
        if spec == "dense":
            continue
        if spec not in fitted:
            out["unidentified"][spec] = [NO_RUNS if report else "no fit yet"]
        elif spec in flagged:
            codes = flagged[spec]
            key = "unidentified" if set(codes) & set(UNIDENTIFIED_CODES) else "in_doubt"
            out[key][spec] = codes
    return out


def format_live_fit(fit: dict) -> str:
    from megatron_csl.scaling.report import format_text

    lines = ["", f"live fit of the {fit['finished']} finished run(s) (compression law):"]
    if fit["report"] is None:
        lines.append(f"  not possible yet: {fit['error']}")
    else:
        lines.append(format_text(fit["report"]).rstrip("\n"))
    if fit["unidentified"]:
        lines.append("EPMs still unidentified: " + "; ".join(
            f"{spec} ({', '.join(reasons)})" for spec, reasons in fit["unidentified"].items()))
    else:
        lines.append("every format's EPM is identified")
    if fit["in_doubt"]:
        lines.append("EPMs identified but in doubt: " + "; ".join(
            f"{spec} ({', '.join(reasons)})" for spec, reasons in fit["in_doubt"].items()))
    return "\n".join(lines) + "\n"
