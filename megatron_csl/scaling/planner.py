"""Adaptive sweep planning: which runs to train next so the widest EPM intervals shrink most per
GPU-hour (``launch/sweep.py suggest``; docs/fitting.md, "Planning the next runs").

The finished runs are fitted (compression law) and bootstrapped (B resamples, each a re-weighting
of the runs with its own optimum). A candidate run (format, N, D) is valued by simulating it: its
outcome is the full fit's predicted loss (the expected outcome under the best estimate of the law),
every resample b is refitted with the candidate added (warm-started from its own optimum), and the
spread of the refitted EPMs over the resamples is the interval the sweep would have after training
the candidate: a run that carries information pulls the resamples' optima together. (Drawing the
outcome with noise independently per resample was tried: it adds variance the bootstrap of the
finished runs lacks, and every candidate then looks harmful.) Its value is the drop of the interval score (root mean square over formats of the
log-width of the 95% interval, so the widest dominate; widths as 3.92 standard deviations of log
EPM over the resamples) per GPU-hour.

To stay fast, every affordable candidate is first ranked by the linearised (Fisher) estimate of
the same drop -- a rank-one update of the parameter covariance, vectorised over candidates -- and
only the best ``top_k`` are simulated. Runs are then picked greedily until the budget is spent;
each pick joins the data with its simulated outcomes before the next is valued.

Formats (or dense) without any finished run cannot be simulated: their cheapest runs come first
("coverage"), and the planner says to refit once they have finished.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from statistics import NormalDist

import numpy as np
from tqdm import tqdm

from .bootstrap import resample_weights, warm_starts
from .fitting import FitOptions, fit_runs, minimize_from
from .laws import DENSE
from .parallel import single_threaded_blas
from .problem import FitProblem, RunTable

LEVEL = 0.95
MIN_NOISE = 1e-3      # the linearised prescreen assumes at least this log-loss noise
# The simulated refits start next to their optimum and only need EPMs to ~1e-4: looser tolerances
# than the fit's cut their cost ~3x.
SIM_OPTIONS = FitOptions(refine_top=16, maxiter=300, ftol=1e-10, gtol=1e-8)


@dataclass(frozen=True)
class Candidate:
    key: str          # e.g. the run name in the sweep
    N: float
    D: float
    spec: str         # canonical format
    cost: float       # GPU-hours


@dataclass
class Pick:
    candidate: Candidate
    reason: str                      # "coverage" or "interval"
    score_after: float | None = None  # predicted interval score after this pick (None: coverage)


@dataclass
class Plan:
    picks: list = field(default_factory=list)
    widths: dict = field(default_factory=dict)      # format -> log-width of its EPM interval now
    score: float | None = None                      # interval score now
    predicted_widths: dict = field(default_factory=dict)   # after every pick (simulated)
    budget: float = 0.0
    notes: list = field(default_factory=list)

    @property
    def cost(self) -> float:
        return sum(p.candidate.cost for p in self.picks)


def log_widths(epm_samples: np.ndarray, formats, level: float = LEVEL) -> dict:
    """{format: width of the ``level`` interval of log EPM}; ``epm_samples`` is [B, K] log EPMs.

    Estimated as 2 z sd over the resamples rather than by percentiles: with the few resamples
    the planner simulates (tens), percentile ends jump from one draw to the next and would
    drown the differences between candidates."""
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    sd = np.std(epm_samples, axis=0, ddof=1)
    return {f: float(2.0 * z * s) for f, s in zip(formats, sd) if f != DENSE}


def interval_score(widths: dict) -> float:
    """Root mean square of the log-widths: the widest intervals dominate."""
    return float(np.sqrt(np.mean(np.square(list(widths.values()))))) if widths else 0.0


def _table(rows) -> RunTable:
    return RunTable([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                    [r[3] for r in rows])


class _State:
    """Runs (finished + picked), bootstrap weights, per-resample log losses and optima."""

    def __init__(self, law, has_data_term, runs: RunTable, weights, ys, thetas, center):
        self.law, self.has_data_term = law, has_data_term
        self.center = center          # the full fit's optimum
        self.runs, self.weights, self.ys, self.thetas = runs, weights, ys, thetas
        self.problem = FitProblem(law, runs, has_data_term)
        self.n_base = self.problem.layout.n_base

    def log_epm(self, thetas) -> np.ndarray:
        return np.array([self.law.format_log_eff(t[self.n_base:])[0] for t in thetas])

    def widths(self) -> dict:
        return log_widths(self.log_epm(self.thetas), self.law.formats)

    def simulate(self, cand: Candidate, noise: np.ndarray, options: FitOptions):
        """(widths after adding ``cand``, the refitted thetas, its simulated log losses)."""
        runs = _table(list(zip(self.runs.N, self.runs.D, self.runs.loss, self.runs.formats))
                      + [(cand.N, cand.D, 1.0, cand.spec)])
        problem = FitProblem(self.law, runs, self.has_data_term)
        fmt = np.array([self.law.formats.index(cand.spec)])
        # the outcome sits at the full fit's prediction (``noise`` added per resample): a
        # resample whose optimum is off gets pulled back by it, which is how a run narrows the
        # spread (drawn around each resample's own law it would confirm every resample)
        y_new = problem.predict_log(self.center, np.log([cand.N]), np.log([cand.D]), fmt)[0] + noise
        thetas = np.empty_like(self.thetas)
        for b in range(len(self.thetas)):
            problem.y = np.append(self.ys[b], y_new[b])
            fits = minimize_from(problem, self.thetas[b][None, :], options,
                                 np.append(self.weights[b], 1.0))
            thetas[b] = fits[0][1]
        return log_widths(self.log_epm(thetas), self.law.formats), thetas, y_new

    def add(self, cand: Candidate, thetas, y_new) -> "_State":
        runs = _table(list(zip(self.runs.N, self.runs.D, self.runs.loss, self.runs.formats))
                      + [(cand.N, cand.D, float(np.exp(np.median(y_new))), cand.spec)])
        weights = np.hstack([self.weights, np.ones((len(self.weights), 1))])
        ys = np.hstack([self.ys, y_new[:, None]])
        return _State(self.law, self.has_data_term, runs, weights, ys, thetas, self.center)


def fisher_gain(state: _State, theta, cands: list[Candidate], noise: float) -> np.ndarray:
    """Linearised drop of the mean EPM log-variance from adding each candidate (vectorised)."""
    jac = state.problem.prediction_jacobian(theta)
    p = jac.shape[1]
    info = jac.T @ jac / noise ** 2
    cov = np.linalg.pinv(info + 1e-9 * np.trace(info) / p * np.eye(p))
    cand_runs = _table([(c.N, c.D, 1.0, c.spec) for c in cands])
    rows = FitProblem(state.law, cand_runs, state.has_data_term).prediction_jacobian(theta) / noise
    _, eff_jac = state.law.format_log_eff(theta[state.n_base:])
    g = np.zeros((len(state.law.formats), p))          # d log eff_f / d theta
    g[:, state.n_base:] = eff_jac
    g = g[[i for i, f in enumerate(state.law.formats) if f != DENSE]]
    cr = rows @ cov                                      # [C, p]
    denom = 1.0 + np.einsum("cp,cp->c", cr, rows)
    gc = g @ cr.T                                        # [F, C]
    return np.mean(gc ** 2, axis=0) / denom


def suggest_runs(runs: RunTable, candidates: list[Candidate], budget: float, *,
                 resamples: int = 30, top_k: int = 6, seed: int = 0,
                 options: FitOptions | None = None, progress: bool = False) -> Plan:
    """The runs to train next within ``budget`` GPU-hours (see the module docstring)."""
    if not (budget > 0 and math.isfinite(budget)):
        raise ValueError(f"--budget-gpu-hours must be a positive number, got {budget}")
    if resamples < 5:
        raise ValueError(f"the planner needs at least 5 bootstrap resamples, got {resamples}")
    if top_k < 1:
        raise ValueError(f"the planner needs at least 1 candidate to simulate, got {top_k}")
    options = options or FitOptions(refine_top=16)
    plan = Plan(budget=budget)
    left = list(candidates)
    spent = 0.0

    def take(cand, reason, score=None):
        nonlocal spent
        plan.picks.append(Pick(cand, reason, score))
        left.remove(cand)
        spent += cand.cost

    # 1. coverage: every format needs a run before its EPM exists; the fit needs dense at 2 sizes
    have = set(runs.formats.tolist()) if len(runs) else set()
    dense_sizes = len(set(runs.N[runs.formats == DENSE].tolist())) if len(runs) else 0
    needs = []
    if dense_sizes < 2 and any(c.spec == DENSE for c in left):
        dense = sorted((c for c in left if c.spec == DENSE), key=lambda c: c.cost)
        seen = set(runs.N[runs.formats == DENSE].tolist()) if len(runs) else set()
        for c in dense:
            if len(seen) >= 3:
                break
            if c.N not in seen:
                needs.append(c)
                seen.add(c.N)
    for spec in sorted({c.spec for c in left} - have - {DENSE}):
        needs.append(min((c for c in left if c.spec == spec), key=lambda c: c.cost))
    if needs:
        for c in needs:
            if spent + c.cost <= budget:
                take(c, "coverage")
        plan.notes.append("some formats (or dense sizes) have no finished runs, so their EPMs do "
                          "not exist yet: their cheapest runs come first; run suggest again once "
                          "they have finished")
        return plan

    # 2. fit and bootstrap the finished runs
    result = fit_runs("compression", runs, options=options)
    law, problem = result.problem.law, result.problem
    rng = np.random.default_rng(seed)
    weights = resample_weights(problem.fmt, resamples, rng)
    starts = np.array(warm_starts(result, 2))
    with single_threaded_blas():
        thetas = np.array([min(minimize_from(problem, starts, options, w),
                               key=lambda r: r[0] if np.isfinite(r[0]) else np.inf)[1]
                           for w in weights])
    state = _State(law, result.has_data_term, problem.runs, weights,
                   np.tile(problem.y, (resamples, 1)), thetas, result.theta)
    plan.widths = state.widths()
    plan.score = interval_score(plan.widths)
    plan.predicted_widths = dict(plan.widths)
    noise_sd = max(result.rmse_log, MIN_NOISE)           # for the linearised prescreen
    expected = np.zeros(resamples)                       # outcome = the fit's prediction
    left = [c for c in left if c.spec in law.formats]

    # 3. greedy picks within the budget
    bar = tqdm(total=budget, desc="suggest (GPU-h planned)", disable=not progress, unit="h",
               bar_format="{l_bar}{bar}| {n:.3g}/{total:.3g} GPU-h [{elapsed}<{remaining}]")
    score = plan.score
    try:
        with single_threaded_blas():
            while True:
                affordable = [c for c in left if spent + c.cost <= budget]
                if not affordable:
                    break
                gain = fisher_gain(state, result.theta, affordable, noise_sd)
                order = np.argsort(-gain / np.array([c.cost for c in affordable]))
                best = None
                for i in order[:top_k]:
                    cand = affordable[i]
                    widths, new_thetas, y_new = state.simulate(cand, expected, SIM_OPTIONS)
                    value = (score - interval_score(widths)) / cand.cost
                    if best is None or value > best[0]:
                        best = (value, cand, widths, new_thetas, y_new)
                value, cand, widths, new_thetas, y_new = best
                if value <= 0:
                    plan.notes.append("no affordable candidate narrows the intervals further")
                    break
                score = interval_score(widths)
                take(cand, "interval", score)
                bar.update(cand.cost)
                state = state.add(cand, new_thetas, y_new)
                plan.predicted_widths = widths
    finally:
        bar.close()
    return plan


def format_plan(plan: Plan) -> str:
    lines = []
    if plan.score is not None:
        lines.append("EPM interval log-widths now: " + ", ".join(
            f"{f} {w:.3g}" for f, w in sorted(plan.widths.items(), key=lambda x: -x[1]))
            + f" (score {plan.score:.3g})")
    lines.append(f"suggested {len(plan.picks)} run(s), {plan.cost:.3g} of {plan.budget:.3g} GPU-h:")
    for p in plan.picks:
        c = p.candidate
        after = "" if p.score_after is None else f", score after {p.score_after:.3g}"
        lines.append(f"  {c.key}: {c.spec} N={c.N:.3g} D={c.D:.3g}, {c.cost:.3g} GPU-h ({p.reason}{after})")
    if plan.picks and plan.score is not None:
        lines.append("predicted log-widths after them: " + ", ".join(
            f"{f} {w:.3g}" for f, w in sorted(plan.predicted_widths.items(), key=lambda x: -x[1])))
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines) + "\n"
