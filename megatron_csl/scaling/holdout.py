"""``--holdout-ratio R``: is the law data-independent? (Frantar et al.'s Figure 2.)

The law is fitted on the runs at every tokens-per-parameter ratio but R, and predicts the runs at
R; the error per format says whether a law fitted at some ratios transfers to another. Runs belong
to ratio R when their D/N is within ``diagnostics.RATIO_GROUP`` (10%) of it.
"""
from __future__ import annotations

import math

import numpy as np

from .diagnostics import RATIO_GROUP
from .fitting import FitOptions, decide_data_term, fit_runs
from .formats import law_inputs
from .predict import efficiency, law_loss


def split_by_ratio(runs, ratio: float):
    """(held-out mask, other runs); raises ValueError naming the ratios present when the split
    cannot test anything."""
    if not (ratio > 0 and math.isfinite(ratio)):
        raise ValueError(f"--holdout-ratio must be a positive tokens-per-parameter ratio, got {ratio}")
    log_r = np.log(runs.D / runs.N)
    held = np.abs(log_r - math.log(ratio)) <= math.log(RATIO_GROUP)
    present = sorted({float(f"{r:.3g}") for r in np.exp(log_r)})
    if not held.any():
        raise ValueError(f"--holdout-ratio {ratio:g}: no runs at that tokens-per-parameter ratio "
                         f"(within 10%); the runs have D/N = {', '.join(f'{r:g}' for r in present)}")
    if held.all():
        raise ValueError(f"--holdout-ratio {ratio:g}: every run is at that ratio; nothing is left "
                         "to fit on")
    return held, runs.subset(~held)


def check_holdout(runs, ratio: float, options: FitOptions) -> None:
    """Everything that can be checked before any fit runs."""
    held, rest = split_by_ratio(runs, ratio)
    has_data_term, _, _ = decide_data_term(rest, options.ratio_tolerance)
    if not has_data_term:
        raise ValueError(f"--holdout-ratio {ratio:g}: the other runs are all at one ratio, where "
                         "the data term c/D^d cannot be fitted, so the law cannot predict another "
                         "ratio; runs at two or more other ratios are needed")


def holdout_report(law: str, runs, ratio: float, options: FitOptions, workers: int = 1,
                   progress: bool = False) -> dict:
    """Fit on the other ratios, predict the held-out ones; errors per format."""
    check_holdout(runs, ratio, options)
    held, rest = split_by_ratio(runs, ratio)
    result = fit_runs(law, rest, options=options, workers=workers, progress=progress,
                      **law_inputs(law, rest.format_names()))
    test = runs.subset(held)
    rows = []
    for spec in test.format_names():
        mask = test.formats == spec
        row = {"spec": spec, "runs": int(mask.sum())}
        try:
            eff = efficiency(result, spec)
        except ValueError as e:
            row.update(error=str(e), mean_rel_error=None, max_abs_rel_error=None, rmse_log=None)
            rows.append(row)
            continue
        pred = law_loss(result, test.N[mask], test.D[mask], eff)
        rel = pred / test.loss[mask] - 1.0
        row.update(error=None, mean_rel_error=float(np.mean(rel)),
                   max_abs_rel_error=float(np.max(np.abs(rel))),
                   rmse_log=float(np.sqrt(np.mean(np.log(pred / test.loss[mask]) ** 2))))
        rows.append(row)
    return {"ratio": ratio, "fitted_runs": len(rest), "heldout_runs": int(held.sum()),
            "fit_rmse_log": result.rmse_log, "formats": rows}


def format_holdout(h: dict) -> str:
    lines = ["", f"hold-out check: fitted on {h['fitted_runs']} runs at other tokens-per-parameter "
                 f"ratios, predicting the {h['heldout_runs']} runs at D/N ~ {h['ratio']:g} "
                 f"(fit RMSE(log) {h['fit_rmse_log']:.4g}):"]
    for r in h["formats"]:
        if r["error"]:
            lines.append(f"  {r['spec']}: {r['runs']} runs, not predicted: {r['error']}")
        else:
            lines.append(f"  {r['spec']}: {r['runs']} runs, mean error {100 * r['mean_rel_error']:+.2f}%, "
                         f"max |error| {100 * r['max_abs_rel_error']:.2f}%, RMSE(log) {r['rmse_log']:.4g}")
    return "\n".join(lines) + "\n"
