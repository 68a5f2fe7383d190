"""Capacity of formats (GMSE -> predicted EPM) and calibration of (Lc, F, C) on measured EPMs.

``predicted EPM = prod over compressed parts of Lc * tanh(F * log_{1/4} GMSE)^C`` (Panferov et al.
2025; megatron_csl.compression.predicted_epm). ``calibrate`` refits (Lc, F, C) to EPMs measured by
a fit (``fit_laws.py --json``): weighted least squares on log EPM, each format weighted by its
bootstrap interval (sigma = width of the log interval / 3.92) when the JSON has one. With fewer
measured formats than parameters, the rest stay at the reference values: 2 formats fit (F, C) with
Lc = 1, 1 format fits F alone.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from .laws import C_BOUNDS, CapacityLaw, DENSE, F_BOUNDS, LOG_LC_BOUNDS

REFERENCE = (1.0, 0.41, 1.39)  # Lc, F, C (Llama/C4 fit of Panferov et al. 2025, arXiv 2506.01863)


@dataclass(frozen=True)
class Calibration:
    Lc: float
    F: float
    C: float
    fitted: tuple            # names of the parameters that were fitted
    formats: tuple           # the measured formats used
    rmse_log: float          # unweighted RMSE of log EPM over those formats

    def params(self):
        from megatron_csl.compression import CapacityParams

        return CapacityParams(Lc=self.Lc, F=self.F, C=self.C)


def describe(spec: str, params=None) -> dict:
    """Bits, GMSE and predicted EPM of one spec string (SpecError if it does not parse)."""
    from megatron_csl.compression import CapacityParams, gaussian_mse_parts, parse_spec, predicted_epm

    s = parse_spec(spec)
    gw, ga = gaussian_mse_parts(s)
    gmse = gw if gw is not None else (ga if ga is not None else 0.0)
    return {
        "spec": spec, "canonical": s.canonical, "w_bits": float(s.w_bits), "a_bits": float(s.a_bits),
        "sparsity": float(s.sparsity), "effective_w_bits": float(s.effective_w_bits),
        "gmse": float(gmse), "gmse_w": gw, "gmse_a": ga,
        "predicted_epm": float(predicted_epm(s, params or CapacityParams())),
    }


def measured_epms(fit_json_path) -> dict:
    """{canonical spec: {value, lo, hi}} of the non-dense formats in a fit_laws JSON."""
    try:
        with open(fit_json_path) as f:
            report = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"fit JSON {str(fit_json_path)!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(fit_json_path)!r} is not JSON: {e}") from None
    if not isinstance(report, dict) or not isinstance(report.get("epm"), dict):
        raise ValueError(f"{str(fit_json_path)!r} has no 'epm' object; pass the file fit_laws.py --json wrote")
    out = {}
    for spec, iv in report["epm"].items():
        if spec == DENSE:
            continue
        value = iv.get("value") if isinstance(iv, dict) else None
        if not isinstance(value, (int, float)) or not (0 < value < math.inf):
            raise ValueError(f"{str(fit_json_path)!r}: EPM of {spec!r} is {value!r}, not a positive number")
        out[spec] = {"value": float(value), "lo": iv.get("lo"), "hi": iv.get("hi")}
    return out


def _sigma(iv) -> float:
    lo, hi = iv.get("lo"), iv.get("hi")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo < hi:
        return max((math.log(hi) - math.log(lo)) / 3.92, 1e-3)
    return 1.0


def calibrate(measured: dict, gmse_parts: dict) -> Calibration:
    """Fit (Lc, F, C) to measured EPMs; ``gmse_parts`` maps each spec to (gmse_w, gmse_a)."""
    specs = sorted(measured)
    if not specs:
        raise ValueError("no measured non-dense EPMs to calibrate on")
    law = CapacityLaw(specs, {s: gmse_parts[s] for s in specs})
    target = np.log([measured[s]["value"] for s in specs])
    sigma = np.array([_sigma(measured[s]) for s in specs])
    names = ("log_Lc", "F", "C")
    free = names if len(specs) >= 3 else (("F", "C") if len(specs) == 2 else ("F",))
    bounds_all = {"log_Lc": LOG_LC_BOUNDS, "F": F_BOUNDS, "C": C_BOUNDS}
    ref = {"log_Lc": math.log(REFERENCE[0]), "F": REFERENCE[1], "C": REFERENCE[2]}

    def full(x):
        vals = dict(ref)
        vals.update(zip(free, x))
        return np.array([vals[n] for n in names])

    def residuals(x):
        log_eff, _ = law.format_log_eff(full(x))
        return (log_eff - target) / sigma

    def jacobian(x):
        _, jac = law.format_log_eff(full(x))
        cols = [names.index(n) for n in free]
        return jac[:, cols] / sigma[:, None]

    lo = [bounds_all[n][0] for n in free]
    hi = [bounds_all[n][1] for n in free]
    best = None
    for f0 in (0.2, 0.41, 1.0):
        for c0 in (0.7, 1.39, 3.0):
            start = {"log_Lc": 0.0, "F": f0, "C": c0}
            x0 = np.clip([start[n] for n in free], lo, hi)
            res = least_squares(residuals, x0, jac=jacobian, bounds=(lo, hi), method="trf")
            if best is None or res.cost < best.cost:
                best = res
    theta = full(best.x)
    log_eff, _ = law.format_log_eff(theta)
    return Calibration(Lc=float(math.exp(theta[0])), F=float(theta[1]), C=float(theta[2]),
                       fitted=tuple("Lc" if n == "log_Lc" else n for n in free),
                       formats=tuple(specs),
                       rmse_log=float(np.sqrt(np.mean((log_eff - target) ** 2))))
