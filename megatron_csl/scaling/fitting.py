"""Chinchilla approach 3 done right: multi-start L-BFGS-B on the summed Huber loss.

Protocol (Chinchilla approach 3 as replicated by Epoch AI, Besiroglu et al. 2024, arXiv 2404.10102): log-sum-exp parametrisation, Huber
delta = 1e-3 on log loss summed over runs, L-BFGS-B with the analytic gradient from Epoch's grid
of 4,500 starts, best optimum kept.

One deliberate shortcut, because L-BFGS-B from all 4,500 starts costs 3-30 ms each (15-150 s):
the objective is evaluated at every grid point in one vectorised pass, and L-BFGS-B runs from the
``refine_top`` best of them (default 64). ``refine_top=None`` runs from every start (Epoch's exact
protocol); on the Chinchilla data and on the synthetic sweeps both give the same optimum
(tests/scaling and docs/fitting.md).

After the fit the data are checked for what they cannot identify:
- before fitting: if log D is (nearly) an affine function of log N -- every run at one
  tokens-per-parameter ratio, or at one token count -- then ``c / D^d`` is a second power law in N
  and cannot be told apart from ``a / N^b``; the fitter says so and fits the reduced form
  ``L = a / (N eff)^b + e`` (the data term absorbed into the parameter term). EPMs still come out;
  they then compare formats along that D(N) rule (see the warning text and docs/fitting.md).
- after fitting: parameters on a bound, terms that are negligible at every run, and a
  (numerically) rank-deficient Jacobian of the predictions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

from .laws import DENSE, make_law
from .problem import FitProblem, RunTable


@dataclass
class FitOptions:
    refine_top: int | None = 64      # L-BFGS-B from the best k grid starts; None = all 4,500
    maxiter: int = 3000
    ftol: float = 1e-13              # relative; the summed Huber objective is ~1e-3, keep it tight
    gtol: float = 1e-11
    # log D counts as "a function of log N" when its residual about the best line spans less
    # than log(ratio_tolerance), i.e. every run's D is within this factor of k * N^m.
    ratio_tolerance: float = 1.25
    # Jacobian check: warn when the smallest singular value of the column-normalised Jacobian of
    # the predictions falls below this.
    rank_tolerance: float = 1e-7

    def scipy_options(self) -> dict:
        return {"maxiter": self.maxiter, "maxfun": 4 * self.maxiter, "ftol": self.ftol, "gtol": self.gtol}


@dataclass
class FitResult:
    law: str
    names: tuple                    # fitted-space parameter names
    theta: np.ndarray               # best optimum in fitted space
    objective: float
    rmse_log: float
    n_points: int
    has_data_term: bool
    formats: tuple
    epm: dict                       # format -> EPM (dense -> 1)
    params: dict                    # reported parameters (a, b, c, d, e / A, alpha, ...; Lc, F, C)
    warnings: list = field(default_factory=list)
    optima: list = field(default_factory=list)   # distinct local optima, best first (warm starts)
    optima_objective: list = field(default_factory=list)  # their objective values
    n_starts: int = 0
    tokens_per_param: float | None = None        # the one ratio, when the data term was dropped
    problem: FitProblem | None = field(default=None, repr=False)

    @property
    def form(self) -> str:
        return "full" if self.has_data_term else "reduced"


def decide_data_term(runs: RunTable, ratio_tolerance: float):
    """Whether the data can separate ``c / D^d`` from ``a / N^b``; returns (flag, note, ratio)."""
    log_n, log_d = np.log(runs.N), np.log(runs.D)
    if np.ptp(log_n) < 1e-9:
        raise ValueError(
            f"all {len(runs)} runs have one model size N={runs.N[0]:.4g}; the law needs runs at "
            "several sizes to fit the parameter term")
    slope, intercept = np.polyfit(log_n, log_d, 1)
    resid = log_d - (slope * log_n + intercept)
    if np.ptp(resid) >= math.log(ratio_tolerance):
        return True, None, None
    ratio = float(np.exp(np.median(log_d - log_n)))
    if abs(slope - 1.0) < 0.05:
        what = f"all runs at one tokens-per-parameter ratio (D/N ~ {ratio:.3g})"
    elif abs(slope) < 0.05:
        what = f"all runs at one token count (D ~ {float(np.exp(np.median(log_d))):.4g})"
    else:
        what = f"D a fixed power of N (D ~ N^{slope:.2f})"
    note = (f"the data cannot identify the data term c/D^d: {what}, so c/D^d is a power law in N "
            "indistinguishable from a/N^b. Fitted the reduced form L = a/(N*eff)^b + e (c and d not "
            "reported). Its EPMs are multipliers along this sweep: a compressed model of N "
            "parameters matches a dense one of N*EPM parameters trained on the same D(N) rule. "
            "They are closer to 1 than the full law's eff (the data term does not shrink with "
            "compression); add runs at a second tokens-per-parameter ratio (dense ones suffice) "
            "to fit the full law.")
    return False, note, ratio


def minimize_from(problem: FitProblem, starts: np.ndarray, options: FitOptions, weights=None,
                  scale: np.ndarray | None = None, with_status: bool = False):
    """L-BFGS-B from each start (fitted-space theta rows); [(objective, theta)] in start order
    (``with_status``: [(objective, theta, converged)], converged = L-BFGS-B reported success at a
    finite objective).

    The optimiser sees u = z * scale (``FitProblem.to_z`` centring, ``z_scale`` preconditioning);
    ``scale=None`` computes the scale at each start.
    """
    out = []
    lo, hi = np.array(problem.layout.bounds, dtype=float).T
    for theta0 in np.atleast_2d(starts):
        sc = problem.z_scale(theta0) if scale is None else scale
        u0 = np.clip(problem.to_z(theta0), lo, hi) * sc

        def fun(u):
            value, grad = problem.objective_z(u / sc, weights)
            return value, grad / sc

        res = minimize(fun, u0, jac=True, method="L-BFGS-B", bounds=list(zip(lo * sc, hi * sc)),
                       options=options.scipy_options())
        theta = problem.to_theta(np.clip(res.x / sc, lo, hi))
        if with_status:
            out.append((float(res.fun), theta, bool(res.success) and bool(np.isfinite(res.fun))))
        else:
            out.append((float(res.fun), theta))
    return out


def distinct_optima(results, atol: float = 1e-3, keep: int = 8):
    """Distinct local optima (by parameter vector), best first."""
    kept = []
    for value, theta in sorted(results, key=lambda r: r[0]):
        if not np.isfinite(value):
            continue
        if all(not np.allclose(theta, t, atol=atol, rtol=atol) for _, t in kept):
            kept.append((value, theta))
        if len(kept) >= keep:
            break
    return kept


def grid_starts(problem: FitProblem, refine_top: int | None) -> np.ndarray:
    """Epoch's grid; with ``refine_top`` only its best rows by objective value (one vectorised pass)."""
    grid = problem.law.grid(problem.layout.has_data_term)
    if refine_top is None or refine_top >= len(grid):
        return grid
    values = problem.grid_objective(grid)
    order = np.argsort(values, kind="stable")
    return grid[order[:refine_top]]


def reported_params(problem: FitProblem, theta) -> dict:
    log_a, b, log_c, d, log_e, extra = problem.split(theta)
    chin = problem.law.name == "chinchilla"
    names = ("A", "alpha", "B", "beta", "E") if chin else ("a", "b", "c", "d", "e")
    out = {names[0]: math.exp(log_a), names[1]: float(b)}
    if log_c is not None:
        out[names[2]] = math.exp(log_c)
        out[names[3]] = float(d)
    out[names[4]] = math.exp(log_e)
    if problem.law.name == "capacity":
        out.update(Lc=math.exp(extra[0]), F=float(extra[1]), C=float(extra[2]))
    if problem.law.name == "precision":
        out["gamma"] = math.exp(extra[0])
    return out


def diagnose(problem: FitProblem, theta, options: FitOptions) -> list[str]:
    """Warnings about the optimum: bounds hit, negligible terms, unidentifiable directions."""
    warnings = []
    names = problem.layout.names
    z_names = list(names)
    z_names[0] = "log a - b*mean(log N)"
    if problem.layout.has_data_term:
        z_names[2] = "log c - d*mean(log D)"
    for name, value, (lo, hi) in zip(z_names, problem.to_z(theta), problem.layout.bounds):
        span = hi - lo
        if value <= lo + 1e-6 * span or value >= hi - 1e-6 * span:
            side = "lower" if value <= lo + 1e-6 * span else "upper"
            warnings.append(f"best fit sits on the {side} bound of {name} ({value:.6g}, bounds "
                            f"[{lo:.6g}, {hi:.6g}]): that parameter is not determined by the data")
    shares = problem.term_shares(theta)
    labels = ["parameter term a/(N eff)^b", "data term c/D^d", "irreducible loss e"]
    for j, label in enumerate(labels):
        if j == 1 and not problem.layout.has_data_term:
            continue
        if shares[:, j].max() < 1e-3:
            warnings.append(f"the {label} is below 0.1% of the predicted loss at every run, so "
                            "the data cannot identify it")
    jac = problem.prediction_jacobian(theta)
    norms = np.linalg.norm(jac, axis=0)
    live = norms > 0
    if np.any(~live):
        dead = [n for n, ok in zip(names, live) if not ok]
        warnings.append(f"the predictions do not depend on {', '.join(dead)}: not identified")
    if live.sum() > 1:
        _, sv, vt = np.linalg.svd(jac[:, live] / norms[live], full_matrices=False)
        if sv[-1] < options.rank_tolerance * sv[0]:
            live_names = [n for n, ok in zip(names, live) if ok]
            null = vt[-1]
            involved = [live_names[i] for i in np.argsort(-np.abs(null))[:3] if abs(null[i]) > 0.1]
            warnings.append("the data cannot separate " + ", ".join(involved) +
                            f" (Jacobian singular value ratio {sv[-1] / sv[0]:.2g})")
    return warnings


def summarize(problem: FitProblem, results, options: FitOptions, extra_warnings=(),
              tokens_per_param=None) -> FitResult:
    optima = distinct_optima(results)
    if not optima:
        raise RuntimeError("every L-BFGS-B start ended at a non-finite objective")
    value, theta = optima[0]
    resid = problem.y - problem.predict_log(theta)
    return FitResult(
        law=problem.law.name,
        names=problem.layout.names,
        theta=theta,
        objective=value,
        rmse_log=float(np.sqrt(np.mean(resid ** 2))),
        n_points=len(problem.y),
        has_data_term=problem.layout.has_data_term,
        formats=problem.law.formats,
        epm=problem.law.epm(theta[problem.layout.n_base:]),
        params=reported_params(problem, theta),
        warnings=list(extra_warnings) + diagnose(problem, theta, options),
        optima=[t for _, t in optima],
        optima_objective=[v for v, _ in optima],
        n_starts=len(results),
        tokens_per_param=tokens_per_param,
        problem=problem,
    )


def build_problem(law_name: str, runs: RunTable, gmse_parts=None, options: FitOptions | None = None,
                  bits=None):
    """The law for these runs, with the data term decided from the data; returns (problem, note, ratio).

    ``gmse_parts`` (capacity law) and ``bits`` (precision law): {format: per-part values}."""
    options = options or FitOptions()
    if len(runs) == 0:
        raise ValueError("no usable runs to fit")
    formats = runs.format_names()
    law = make_law(law_name, formats, gmse_parts, bits)
    has_data_term, note, ratio = decide_data_term(runs, options.ratio_tolerance)
    return FitProblem(law, runs, has_data_term), note, ratio


def fit_runs(law_name: str, runs: RunTable, gmse_parts=None, options: FitOptions | None = None,
             workers: int = 1, progress: bool = False, bits=None) -> FitResult:
    """Fit ``law_name`` to ``runs``: grid starts, L-BFGS-B from each (over ``workers`` processes),
    best optimum kept, then the identifiability checks."""
    from .parallel import FitPool

    options = options or FitOptions()
    problem, note, ratio = build_problem(law_name, runs, gmse_parts, options, bits)
    starts = grid_starts(problem, options.refine_top)
    # a pool only pays for itself with a few starts per worker
    with FitPool(problem, options, workers if len(starts) >= 8 * workers else 1, progress) as pool:
        results = pool.minimize_starts(starts)
    n_params = problem.layout.n
    warnings = [note] if note else []
    if len(runs) <= n_params:
        warnings.append(f"{len(runs)} runs for {n_params} parameters: the fit interpolates the data")
    return summarize(problem, results, options, warnings, ratio)


def epm_names(result: FitResult) -> list[str]:
    """Formats in report order: dense first, then by EPM descending."""
    rest = sorted((f for f in result.formats if f != DENSE), key=lambda f: -result.epm[f])
    return ([DENSE] if DENSE in result.formats else []) + rest
