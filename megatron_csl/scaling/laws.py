"""The three laws ``tools/fit_laws.py`` fits, as parameter layouts over one shared objective.

All of them are ``L = a / (N * eff(C))^b + c / D^d + e`` (Frantar et al. 2025, arXiv 2502.16440), fitted in log space as
``LSE(log a - b*(log N + log eff), log c - d*log D, log e)``:

- ``chinchilla``: one format, eff = 1 (Hoffmann et al.'s ``E + A/N^alpha + B/D^beta``).
- ``compression``: one free ``log eff`` per non-dense format, eff(dense) = 1 (Frantar et al. 2025).
- ``capacity``: eff(C) = prod over the compressed parts (weights, activations) of
  ``Lc * tanh(F * log_{1/4} GMSE)^C`` with (Lc, F, C) fitted (Panferov et al. 2025), the same
  composition as ``megatron_csl.compression.predicted_epm``.

A law only says how the per-format ``log eff`` and its Jacobian depend on its extra parameters; the
objective (``objective.py``) does the rest. The *reduced* form drops the data term ``c / D^d``: used
when every run has the same tokens-per-parameter ratio, where ``c / D^d = c r^-d / N^d`` is a second
power law in N that the data cannot tell apart from the first (see ``fitting.py``).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LAW_NAMES = ("compression", "chinchilla", "capacity", "precision")
DENSE = "dense"
LN4 = math.log(4.0)

# Bounds of the coordinates the optimiser sees (``FitProblem.to_z``). Wide enough that a sensible
# fit never touches them; a fit that does is reported (``FitResult.warnings``). The intercepts are
# centred: log a - b * mean(log N) is the log of the parameter term at the geometric-mean size, so
# +-60 (a term of e^60 or e^-60 in loss units) is far outside anything a loss curve can show.
CENTRED_LOG_COEF_BOUNDS = (-60.0, 60.0)
EXPONENT_BOUNDS = (0.0, 4.0)
LOG_E_BOUNDS = (-15.0, 5.0)
LOG_EFF_BOUNDS = (math.log(1e-4), math.log(1e2))
LOG_LC_BOUNDS = (math.log(1e-2), math.log(1e2))
F_BOUNDS = (1e-3, 20.0)
C_BOUNDS = (1e-3, 20.0)
LOG_GAMMA_BOUNDS = (math.log(0.05), math.log(100.0))
# Kumar et al. 2024 fit gamma_w ~ 2.7 bits; the precision law starts there.
GAMMA_START = 2.7
REFERENCE_BITS = 16.0   # bf16: the dense reference of the precision law

# Epoch AI's replication grid for Chinchilla approach 3 (Besiroglu et al. 2024, arXiv 2404.10102): 6*5*6*5*5 = 4,500 starts.
GRID_LOG_COEF = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
GRID_EXPONENT = (0.0, 0.5, 1.0, 1.5, 2.0)
GRID_LOG_E = (-1.0, -0.5, 0.0, 0.5, 1.0)

# Reference capacity parameters (Llama/C4 fit of Panferov et al.), the start of capacity fits.
CAPACITY_START = (0.0, 0.41, 1.39)  # log Lc, F, C


@dataclass(frozen=True)
class Layout:
    """Where each parameter lives in the flat vector the optimiser sees."""

    names: tuple[str, ...]          # fitted-space names, e.g. ("log_a", "b", "log_c", "d", "log_e", ...)
    bounds: tuple[tuple[float, float], ...]   # of the optimiser's (centred) coordinates
    has_data_term: bool
    n_base: int                     # 5 with the data term, 3 without

    @property
    def n(self) -> int:
        return len(self.names)


def base_layout(has_data_term: bool):
    if has_data_term:
        names = ("log_a", "b", "log_c", "d", "log_e")
        bounds = (CENTRED_LOG_COEF_BOUNDS, EXPONENT_BOUNDS, CENTRED_LOG_COEF_BOUNDS, EXPONENT_BOUNDS, LOG_E_BOUNDS)
    else:
        names = ("log_a", "b", "log_e")
        bounds = (CENTRED_LOG_COEF_BOUNDS, EXPONENT_BOUNDS, LOG_E_BOUNDS)
    return names, bounds


def base_grid(has_data_term: bool) -> np.ndarray:
    """Epoch's start grid over the base parameters, in layout order (4,500 rows; 150 reduced)."""
    if has_data_term:
        rows = itertools.product(GRID_LOG_COEF, GRID_EXPONENT, GRID_LOG_COEF, GRID_EXPONENT, GRID_LOG_E)
    else:
        rows = itertools.product(GRID_LOG_COEF, GRID_EXPONENT, GRID_LOG_E)
    return np.array(list(rows), dtype=float)


class Law:
    """A law = how the per-format log eff depends on the extra parameters."""

    name: str = ""

    def __init__(self, formats: Sequence[str]):
        self.formats = tuple(formats)

    # --- to override -------------------------------------------------------------------------
    def extra_names(self) -> tuple[str, ...]:
        return ()

    def extra_bounds(self) -> tuple[tuple[float, float], ...]:
        return ()

    def extra_start(self) -> np.ndarray:
        return np.zeros(0)

    def format_log_eff(self, extra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log eff per format [K], d log eff / d extra [K, n_extra])."""
        k = len(self.formats)
        return np.zeros(k), np.zeros((k, 0))

    # --- shared ------------------------------------------------------------------------------
    def layout(self, has_data_term: bool) -> Layout:
        names, bounds = base_layout(has_data_term)
        return Layout(
            names=names + self.extra_names(),
            bounds=bounds + self.extra_bounds(),
            has_data_term=has_data_term,
            n_base=len(names),
        )

    def grid(self, has_data_term: bool) -> np.ndarray:
        base = base_grid(has_data_term)
        extra = np.broadcast_to(self.extra_start(), (len(base), len(self.extra_start())))
        return np.hstack([base, extra])

    def epm(self, extra: np.ndarray) -> dict[str, float]:
        """EPM of every format the law was built with."""
        log_eff, _ = self.format_log_eff(np.asarray(extra, dtype=float))
        return {f: float(math.exp(v)) for f, v in zip(self.formats, log_eff)}


class ChinchillaLaw(Law):
    """``E + A/N^alpha + B/D^beta`` on a single format."""

    name = "chinchilla"

    def __init__(self, formats: Sequence[str]):
        if len(formats) != 1:
            raise ValueError(
                f"--law chinchilla fits one format, got {len(formats)}: {', '.join(formats)}; "
                "filter the runs or use --law compression")
        super().__init__(formats)


class CompressionLaw(Law):
    """One free log eff per non-dense format; the dense format is the reference (eff = 1)."""

    name = "compression"

    def __init__(self, formats: Sequence[str]):
        formats = list(formats)
        if DENSE not in formats:
            raise ValueError(
                "the compression law needs dense runs: eff(dense) = 1 anchors every EPM, and "
                f"the runs only have formats {', '.join(formats)}")
        # dense first, so that extra[i] is the log eff of formats[i + 1]
        super().__init__([DENSE] + sorted(f for f in formats if f != DENSE))

    def extra_names(self):
        return tuple(f"log_eff[{f}]" for f in self.formats[1:])

    def extra_bounds(self):
        return (LOG_EFF_BOUNDS,) * (len(self.formats) - 1)

    def extra_start(self):
        return np.zeros(len(self.formats) - 1)

    def format_log_eff(self, extra):
        log_eff = np.empty(len(self.formats))
        log_eff[0] = 0.0
        log_eff[1:] = extra
        return log_eff, self._jac

    @property
    def _jac(self):
        # constant: [0; I], built once
        if not hasattr(self, "_jac_cache"):
            k = len(self.formats) - 1
            self._jac_cache = np.vstack([np.zeros((1, k)), np.eye(k)])
        return self._jac_cache


class CapacityLaw(Law):
    """eff = prod over compressed parts p of Lc * tanh(F * log_{1/4} GMSE_p)^C.

    ``gmse_parts`` maps each format to its (weight GMSE or None, activation GMSE or None), as
    ``megatron_csl.compression.gaussian_mse_parts`` returns; dense is (None, None) -> eff = 1.
    """

    name = "capacity"

    def __init__(self, formats: Sequence[str], gmse_parts: dict):
        formats = list(formats)
        super().__init__(formats)
        u = []
        for f in formats:
            parts = [g for g in gmse_parts[f] if g is not None]
            for g in parts:
                if not (0.0 <= g < 1.0) or math.isnan(g):
                    raise ValueError(
                        f"format {f!r} has Gaussian MSE {g}; the capacity law needs 0 <= GMSE < 1 "
                        "(a format at GMSE >= 1 keeps no information about the Gaussian)")
            # log_{1/4}(g) = -ln g / ln 4; a lossless part (g = 0) has tanh(inf) = 1.
            u.append([math.inf if g == 0 else -math.log(g) / LN4 for g in parts])
        width = max([len(x) for x in u] + [1])
        # padded [K, P] table of log_{1/4} GMSE; NaN marks "no such part"
        self.u = np.full((len(formats), width), np.nan)
        for i, row in enumerate(u):
            self.u[i, : len(row)] = row
        self.n_parts = np.sum(~np.isnan(self.u), axis=1).astype(float)

    def extra_names(self):
        return ("log_Lc", "F", "C")

    def extra_bounds(self):
        return (LOG_LC_BOUNDS, F_BOUNDS, C_BOUNDS)

    def extra_start(self):
        return np.array(CAPACITY_START)

    def format_log_eff(self, extra):
        log_lc, f, c = extra
        present = ~np.isnan(self.u)
        u = np.where(present, self.u, 1.0)
        finite = np.isfinite(u)
        fu = f * np.where(finite, u, 1.0)
        th = np.where(finite, np.tanh(fu), 1.0)
        log_th = np.log(th)
        # d/dF log tanh(F u) = u (1 - tanh^2) / tanh;  0 where u is infinite (tanh pinned at 1)
        dlog_th_df = np.where(finite, np.where(finite, u, 0.0) * (1.0 - th * th) / th, 0.0)
        log_eff = np.sum(np.where(present, log_lc + c * log_th, 0.0), axis=1)
        jac = np.stack([
            self.n_parts,
            np.sum(np.where(present, c * dlog_th_df, 0.0), axis=1),
            np.sum(np.where(present, log_th, 0.0), axis=1),
        ], axis=1)
        return log_eff, jac


class PrecisionLaw(Law):
    """Kumar et al. 2024: ``L = A [N (1 - e^{-P/gamma})]^{-alpha} + B D^{-beta} + E``.

    eff(C) = prod over the format's parts (weights, activations) of
    ``(1 - e^{-P/gamma}) / (1 - e^{-16/gamma})`` with P the part's bits (weights: effective bits,
    w_bits * (1 - sparsity)) and one fitted gamma. The division by the bf16 value makes eff(dense)
    = 1, so EPMs compare with dense as in the other laws; Kumar's A is ``a * (1 - e^{-16/gamma})^-b``
    per compressed part. ``bits`` maps each format to (weight bits, activation bits).
    """

    name = "precision"

    def __init__(self, formats: Sequence[str], bits: dict):
        super().__init__(list(formats))
        table = []
        for f in self.formats:
            parts = [float(b) for b in bits[f]]
            for b in parts:
                if not (b > 0 and math.isfinite(b)):
                    raise ValueError(f"format {f!r} has {b} bits; the precision law needs positive bits")
            table.append(parts)
        self.bits = np.array(table, dtype=float)     # [K, 2]

    def extra_names(self):
        return ("log_gamma",)

    def extra_bounds(self):
        return (LOG_GAMMA_BOUNDS,)

    def extra_start(self):
        return np.array([math.log(GAMMA_START)])

    @staticmethod
    def _log_part(bits, gamma):
        """log(1 - e^{-P/gamma}) and its derivative by log gamma, -u/(e^u - 1) with u = P/gamma."""
        u = bits / gamma
        return np.log(-np.expm1(-u)), -u / np.expm1(u)

    def format_log_eff(self, extra):
        gamma = math.exp(extra[0])
        value, grad = self._log_part(self.bits, gamma)
        ref_value, ref_grad = self._log_part(np.array(REFERENCE_BITS), gamma)
        log_eff = np.sum(value - ref_value, axis=1)
        jac = np.sum(grad - ref_grad, axis=1)[:, None]
        return log_eff, jac


def make_law(name: str, formats: Sequence[str], gmse_parts: dict | None = None,
             bits: dict | None = None) -> Law:
    if name == "compression":
        return CompressionLaw(formats)
    if name == "chinchilla":
        return ChinchillaLaw(formats)
    if name == "capacity":
        if gmse_parts is None:
            raise ValueError("the capacity law needs the Gaussian MSE of every format")
        return CapacityLaw(formats, gmse_parts)
    if name == "precision":
        if bits is None:
            raise ValueError("the precision law needs the bits of every format")
        return PrecisionLaw(formats, bits)
    raise ValueError(f"unknown law {name!r}; valid: {', '.join(LAW_NAMES)}")
