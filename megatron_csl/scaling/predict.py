"""Predictions from a fitted law: loss at (N, D, format) and the Chinchilla-optimal token count.

A compressed model of N parameters behaves like a dense one of N * eff(C) parameters, so its
Chinchilla-optimal D is the dense optimum for N * eff(C) (Frantar et al. 2025, arXiv 2502.16440). With the full law that
optimum comes from the law itself: at fixed compute 6ND the loss is minimal where
b a / N^b = d c / D^d, i.e. D* = (d c (N eff)^b / (b a))^(1/d). With the reduced form (every run at
one tokens-per-parameter ratio r, data term not identified) it is r * N * eff.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .fitting import FitResult
from .laws import CapacityLaw, PrecisionLaw


@dataclass(frozen=True)
class Prediction:
    N: float
    D: float
    spec: str
    eff: float
    loss: float
    optimal_D: float | None
    loss_at_optimal_D: float | None
    note: str = ""

    def as_dict(self):
        return dict(self.__dict__)


def parse_predict_arg(text: str) -> tuple[float, float, str]:
    """``N,D,SPEC`` (e.g. ``1e8,2e9,w4a4``) -> (N, D, spec)."""
    parts = text.split(",", 2)
    if len(parts) != 3:
        raise ValueError(f"--predict takes N,D,SPEC (e.g. 1e8,2e9,w4), got {text!r}")
    values = []
    for name, raw in zip(("N", "D"), parts[:2]):
        try:
            x = float(raw)
        except ValueError:
            raise ValueError(f"--predict {text!r}: {name} {raw!r} is not a number") from None
        if not (math.isfinite(x) and x > 0):
            raise ValueError(f"--predict {text!r}: {name} must be finite and positive, got {raw}")
        values.append(x)
    return values[0], values[1], parts[2].strip()


def efficiency(result: FitResult, spec: str, gmse_parts=None) -> float:
    """eff of a canonical spec under the fit; the capacity law also predicts unfitted formats."""
    if spec in result.epm:
        return result.epm[spec]
    if result.law == "capacity":
        if gmse_parts is None:
            from .formats import gmse_parts as lookup
            gmse_parts = lookup(spec)
        law = CapacityLaw([spec], {spec: gmse_parts})
        log_eff, _ = law.format_log_eff(result.theta[result.problem.layout.n_base:])
        return float(math.exp(log_eff[0]))
    if result.law == "precision":
        from .formats import precision_bits

        law = PrecisionLaw([spec], {spec: precision_bits(spec)})
        log_eff, _ = law.format_log_eff(result.theta[result.problem.layout.n_base:])
        return float(math.exp(log_eff[0]))
    fitted = ", ".join(result.formats)
    if result.law == "chinchilla":
        raise ValueError(f"the chinchilla fit covers only {fitted}; cannot predict {spec!r}")
    raise ValueError(not_fitted_message(spec, result.formats))


def not_fitted_message(spec: str, fitted) -> str:
    return (f"format {spec!r} was not fitted (fitted: {', '.join(fitted)}); --law capacity or "
            "--law precision predict formats without runs from their Gaussian MSE or bits")


def law_loss(result: FitResult, N, D, eff):
    """Loss of the fitted law at N, D (arrays ok) for a format of efficiency ``eff``."""
    p = result.params
    if result.law == "chinchilla":
        a, b, e = p["A"], p["alpha"], p["E"]
        c, d = p.get("B"), p.get("beta")
    else:
        a, b, e = p["a"], p["b"], p["e"]
        c, d = p.get("c"), p.get("d")
    loss = a / (np.asarray(N, dtype=float) * eff) ** b + e
    if c is not None:
        loss = loss + c / np.asarray(D, dtype=float) ** d
    return loss


def optimal_tokens(result: FitResult, N: float, eff: float) -> float | None:
    """Chinchilla-optimal D for N parameters of efficiency eff (the dense optimum at N * eff)."""
    p = result.params
    chin = result.law == "chinchilla"
    a, b = (p["A"], p["alpha"]) if chin else (p["a"], p["b"])
    if not result.has_data_term:
        return result.tokens_per_param * N * eff
    c, d = (p["B"], p["beta"]) if chin else (p["c"], p["d"])
    if b <= 0 or d <= 0:
        return None  # a flat term has no optimum
    return (d * c * (N * eff) ** b / (b * a)) ** (1.0 / d)


def predict(result: FitResult, N: float, D: float, spec: str, gmse_parts=None) -> Prediction:
    eff = efficiency(result, spec, gmse_parts)
    note = ""
    if not result.has_data_term:
        ratio = result.tokens_per_param
        if not math.isclose(D / N, ratio, rel_tol=0.25):
            note = (f"reduced form (no data term): predicts at the sweep ratio D/N ~ {ratio:.3g} "
                    f"only; the given D/N = {D / N:.3g} does not enter")
    d_opt = optimal_tokens(result, N, eff)
    return Prediction(
        N=N, D=D, spec=spec, eff=eff,
        loss=float(law_loss(result, N, D, eff)),
        optimal_D=d_opt,
        loss_at_optimal_D=None if d_opt is None else float(law_loss(result, N, d_opt, eff)),
        note=note,
    )
