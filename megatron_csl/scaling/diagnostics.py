"""What a reviewer would ask of a fit before trusting its EPMs, as machine-readable diagnostics.

Each ``Diagnostic`` has a code, the format and/or model size it concerns (None: the whole fit) and
one sentence saying what was found and what it means for the EPMs. ``fit_laws.py`` prints them,
writes them to the JSON (``diagnostics``), exits 4 on any with ``--strict``, and
``capacity.py --calibrate`` refuses EPMs they concern (docs/fitting.md, "Diagnostics").

Codes:

- ``param-on-bound``: the best fit sits on a bound of a parameter (the data do not determine it);
- ``interval-on-bound``: a bootstrap interval reaches a bound (the parameter or EPM is not
  identified on a sizeable share of resamples);
- ``non-monotone``: a format's losses at one tokens-per-parameter ratio do not fall with N;
- ``few-sizes``: a format has fewer model sizes than the parameters of its curve along N (a, b, e,
  and its own EPM in the compression law);
- ``residual-structure``: a format's residuals, ordered by N, form fewer runs of one sign than
  chance allows (exact runs test, p < 0.01): the law's shape misses a trend;
- ``bootstrap-failures``: L-BFGS-B did not converge on more than 10% of the resamples;
- ``leave-one-size-out``: leaving out one model size moves an EPM by more than the width of its
  bootstrap interval (that size alone decides the EPM).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .laws import DENSE

PARAM_ON_BOUND = "param-on-bound"
INTERVAL_ON_BOUND = "interval-on-bound"
NON_MONOTONE = "non-monotone"
FEW_SIZES = "few-sizes"
RESIDUAL_STRUCTURE = "residual-structure"
BOOTSTRAP_FAILURES = "bootstrap-failures"
LOSO_SHIFT = "leave-one-size-out"
CODES = (PARAM_ON_BOUND, INTERVAL_ON_BOUND, NON_MONOTONE, FEW_SIZES, RESIDUAL_STRUCTURE,
         BOOTSTRAP_FAILURES, LOSO_SHIFT)

BOUND_FRACTION = 1e-6          # within this share of a bound's span counts as on it
RUNS_TEST_P = 0.01             # residual-structure threshold (one-sided, too few sign runs)
RUNS_TEST_MIN_POINTS = 6       # below this the runs test cannot reach p < 0.01
FAILED_RESAMPLES = 0.10        # bootstrap-failures threshold
RATIO_GROUP = 1.1              # runs whose D/N agree within this factor share a ratio group


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    format: str | None = None      # the format concerned; None = the whole fit
    N: float | None = None         # the model size concerned, if one

    def as_dict(self) -> dict:
        return {"code": self.code, "format": self.format, "N": self.N, "message": self.message}

    def line(self) -> str:
        where = [x for x in (self.format, None if self.N is None else f"N={self.N:.4g}") if x]
        return f"[{self.code}]" + (f" {' '.join(where)}" if where else "") + f": {self.message}"


def concerns_epm(diag: dict, spec: str) -> bool:
    """Whether a diagnostic (as in the JSON) puts the EPM of ``spec`` in doubt: it names that
    format, the dense reference every EPM is measured against, or the whole fit."""
    return diag.get("format") in (None, spec, DENSE)


# -- the fit itself ---------------------------------------------------------------------------

def _param_meaning(name: str, law: str) -> tuple[str | None, str]:
    """(format, what a pinned parameter means for the EPMs)."""
    if name.startswith("log_eff["):
        spec = name[len("log_eff["):-1]
        return spec, (f"the EPM of {spec} is not determined by the data (its bound, 1e-4 or 100, "
                      "is not an estimate)")
    if name == "log_e":
        return None, ("the data do not show where the loss levels off; e trades off against a "
                      "and b, so every EPM and its interval hold only with e pinned there "
                      "(intervals come out narrower or skewed); add larger models")
    if name == "b":
        return None, ("an EPM is a ratio of sizes at equal parameter term, which needs the "
                      "exponent b; with b pinned every EPM is unreliable")
    if name in ("d",):
        return None, "the data term's shape is not determined; EPMs absorb part of it"
    return None, "that parameter is not determined by the data, and the EPMs depend on it"


def _display_name(name: str) -> str:
    return {"log_a": "log a - b*mean(log N)", "log_c": "log c - d*mean(log D)"}.get(name, name)


def _on_bound(z: np.ndarray, lo: float, hi: float):
    span = hi - lo
    at_lo = z <= lo + BOUND_FRACTION * span
    at_hi = z >= hi - BOUND_FRACTION * span
    return at_lo, at_hi


def bound_diagnostics(result) -> list[Diagnostic]:
    problem = result.problem
    out = []
    for name, value, (lo, hi) in zip(problem.layout.names, problem.to_z(result.theta),
                                     problem.layout.bounds):
        at_lo, at_hi = _on_bound(np.array([value]), lo, hi)
        if at_lo[0] or at_hi[0]:
            spec, meaning = _param_meaning(name, result.law)
            side = "lower" if at_lo[0] else "upper"
            out.append(Diagnostic(PARAM_ON_BOUND, f"{_display_name(name)} sits on its {side} bound "
                                  f"({value:.4g}, bounds [{lo:.4g}, {hi:.4g}]): {meaning}.", spec))
    return out


def ratio_groups(N: np.ndarray, D: np.ndarray) -> np.ndarray:
    """Group label per run: runs whose tokens-per-parameter ratios agree within RATIO_GROUP."""
    log_r = np.log(D / N)
    order = np.argsort(log_r)
    labels = np.empty(len(N), dtype=int)
    group, start = 0, None
    for i in order:
        if start is not None and log_r[i] - start > math.log(RATIO_GROUP):
            group += 1
            start = None
        if start is None:
            start = log_r[i]
        labels[i] = group
    return labels


def monotone_diagnostics(runs) -> list[Diagnostic]:
    """Per format and ratio group, mean loss per size must fall as N grows."""
    out = []
    groups = ratio_groups(runs.N, runs.D)
    for spec in runs.format_names():
        for g in np.unique(groups):
            mask = (runs.formats == spec) & (groups == g)
            sizes = np.unique(runs.N[mask])
            if len(sizes) < 2:
                continue
            losses = np.array([runs.loss[mask & (runs.N == n)].mean() for n in sizes])
            rises = np.flatnonzero(np.diff(losses) > 0)
            if len(rises) == 0:
                continue
            ratio = float(np.median(runs.D[mask] / runs.N[mask]))
            seq = ", ".join(f"{l:.4g} (N={n:.3g})" for n, l in zip(sizes, losses))
            first = rises[0]
            out.append(Diagnostic(
                NON_MONOTONE,
                f"losses of {spec} at D/N ~ {ratio:.3g} do not fall with N: {seq}; the loss rises "
                f"from N={sizes[first]:.3g} to N={sizes[first + 1]:.3g}, which no power law in N "
                f"can follow, so the fit averages over it (check those runs: diverged, "
                f"undertrained, different settings) and {'every EPM' if spec == DENSE else 'its EPM'} "
                "is unreliable.",
                spec, float(sizes[first + 1])))
    return out


# parameters of a format's curve along N: a, b and e (c and d describe the D direction and are
# identified by the ratios, shared by every format)
N_DIRECTION_PARAMS = 3


def per_format_params(result, spec: str) -> int:
    """Parameters that shape one format's loss curve along N: a, b, e, plus its own EPM in the
    compression law (the other laws share their EPM parameters across formats)."""
    own = 1 if result.law == "compression" and spec != DENSE else 0
    return N_DIRECTION_PARAMS + own


def few_sizes_diagnostics(result) -> list[Diagnostic]:
    runs = result.problem.runs
    out = []
    for spec in runs.format_names():
        sizes = len(set(runs.N[runs.formats == spec].tolist()))
        k = per_format_params(result, spec)
        if sizes < k:
            out.append(Diagnostic(
                FEW_SIZES,
                f"{spec} has {sizes} model size(s) for the {k} parameters that shape its loss "
                f"curve along N (a, b, e{', its EPM' if k > N_DIRECTION_PARAMS else ''}): its "
                f"curve's shape comes from the other formats' runs and the law's form, not from "
                f"its own data, so {'every EPM' if spec == DENSE else 'its EPM'} holds only if "
                f"they share that shape; add sizes of {spec}.", spec))
    return out


def runs_test_p(signs: np.ndarray) -> float:
    """One-sided exact p-value of the Wald-Wolfowitz runs test: P(R <= observed runs) given the
    counts of each sign (small R = signs clustered = structure)."""
    signs = np.asarray(signs)
    n1, n2 = int(np.sum(signs > 0)), int(np.sum(signs < 0))
    if n1 == 0 or n2 == 0:
        return 1.0 if n1 + n2 < RUNS_TEST_MIN_POINTS else 0.5 ** (n1 + n2 - 1)
    observed = 1 + int(np.sum(signs[1:] != signs[:-1]))
    total = math.comb(n1 + n2, n1)
    p = 0.0
    for r in range(2, observed + 1):
        if r % 2 == 0:
            k = r // 2
            ways = 2 * math.comb(n1 - 1, k - 1) * math.comb(n2 - 1, k - 1)
        else:
            k = (r - 1) // 2
            ways = (math.comb(n1 - 1, k) * math.comb(n2 - 1, k - 1)
                    + math.comb(n1 - 1, k - 1) * math.comb(n2 - 1, k))
        p += ways / total
    return min(1.0, p)


def residual_diagnostics(result) -> list[Diagnostic]:
    problem = result.problem
    runs = problem.runs
    resid = problem.y - problem.predict_log(result.theta)
    out = []
    for spec in runs.format_names():
        idx = np.flatnonzero(runs.formats == spec)
        order = idx[np.lexsort((runs.D[idx], runs.N[idx]))]
        signs = np.sign(resid[order])
        signs = signs[signs != 0]
        if len(signs) < RUNS_TEST_MIN_POINTS:
            continue
        p = runs_test_p(signs)
        if p < RUNS_TEST_P:
            n_runs = 1 + int(np.sum(signs[1:] != signs[:-1]))
            out.append(Diagnostic(
                RESIDUAL_STRUCTURE,
                f"the {len(signs)} residuals of {spec}, ordered by N, form only {n_runs} runs of "
                f"one sign (runs test p = {p:.2g}): the law's shape misses a trend in these runs "
                "(a step, a change of slope, or sizes outside the power-law range), so "
                f"{'every EPM' if spec == DENSE else 'its EPM'} extrapolates a misfit.", spec))
    return out


def fit_diagnostics(result) -> list[Diagnostic]:
    """Checks that need only the fit."""
    return (bound_diagnostics(result) + monotone_diagnostics(result.problem.runs)
            + few_sizes_diagnostics(result) + residual_diagnostics(result))


# -- the bootstrap ----------------------------------------------------------------------------

def bootstrap_diagnostics(result, boot) -> list[Diagnostic]:
    problem = result.problem
    out = []
    if boot.n_failed > FAILED_RESAMPLES * boot.n_resamples:
        out.append(Diagnostic(
            BOOTSTRAP_FAILURES,
            f"L-BFGS-B did not converge on {boot.n_failed} of {boot.n_resamples} bootstrap "
            f"resamples ({100 * boot.n_failed / boot.n_resamples:.0f}%): the objective is flat or "
            "ill-conditioned on those resamples, and every interval includes their unconverged "
            "fits."))
    z = problem.to_z(boot.thetas)
    tail = (1.0 - boot.level) / 2.0
    for j, (name, (lo, hi)) in enumerate(zip(problem.layout.names, problem.layout.bounds)):
        at_lo, at_hi = _on_bound(z[:, j], lo, hi)
        share = max(at_lo.mean(), at_hi.mean())
        if share <= tail:
            continue
        spec, meaning = _param_meaning(name, result.law)
        side = "lower" if at_lo.mean() >= at_hi.mean() else "upper"
        what = f"EPM of {spec}" if spec else _display_name(name)
        out.append(Diagnostic(
            INTERVAL_ON_BOUND,
            f"the {100 * boot.level:g}% interval of the {what} reaches its {side} bound "
            f"({100 * share:.0f}% of resamples end there): {meaning}.", spec))
    return out


def loso_diagnostics(result, boot, loso_fits) -> list[Diagnostic]:
    """Sizes whose removal moves an EPM by more than the width of its bootstrap interval."""
    if boot is None:
        return []
    out = []
    for fit in loso_fits:
        for spec in result.formats:
            if spec == DENSE or spec not in fit.formats_present:
                continue
            iv = boot.epm[spec]
            width = iv.hi - iv.lo
            shift = fit.epm[spec] - result.epm[spec]
            if abs(shift) > width:
                out.append(Diagnostic(
                    LOSO_SHIFT,
                    f"leaving out the runs at N={fit.N:.4g} moves the EPM of {spec} from "
                    f"{result.epm[spec]:.4g} to {fit.epm[spec]:.4g}, more than the width of its "
                    f"{100 * boot.level:g}% interval ({width:.3g}): that one size decides the "
                    "estimate; the interval understates the uncertainty.", spec, fit.N))
    return out


def diagnose_fit(result, boot=None, loso_fits=()) -> list[Diagnostic]:
    """Every diagnostic of a fit, its bootstrap and its leave-one-size-out refits."""
    out = fit_diagnostics(result)
    if boot is not None:
        out += bootstrap_diagnostics(result, boot)
        out += loso_diagnostics(result, boot, loso_fits)
    return out


# codes that mean a value is not determined at all (the others: determined, but in doubt)
UNIDENTIFIED_CODES = (PARAM_ON_BOUND, INTERVAL_ON_BOUND)


def unidentified_formats(report: dict) -> dict:
    """{spec: [codes]} of formats whose EPM a diagnostic of the report puts in doubt."""
    diags = report.get("diagnostics") or []
    out = {}
    for spec in report.get("epm", {}):
        if spec == DENSE:
            continue
        codes = sorted({d["code"] for d in diags if concerns_epm(d, spec)})
        if codes:
            out[spec] = codes
    return out
