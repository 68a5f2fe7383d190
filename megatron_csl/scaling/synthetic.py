"""Runs drawn from a known compression law, for recovery tests and the fitting benchmark."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import numpy as np

from .outputs import write_text

from .problem import RunTable

# Epoch AI's grid fit of the Chinchilla runs (Besiroglu et al. 2024, arXiv 2404.10102), as (a, b, c, d, e).
CHINCHILLA_LAW = (477.8, 0.3473, 2143.9, 0.3672, 1.8172)
# Reported EPMs of Frantar et al. 2025 (arXiv 2502.16440) for a few formats.
PAPER_EPMS = {"dense": 1.0, "w4": 0.923, "w2": 0.702, "w1": 0.466, "w4a4": 0.747, "s50": 0.871}


@dataclass(frozen=True)
class SyntheticSweep:
    law: tuple = CHINCHILLA_LAW
    epm: tuple = tuple(PAPER_EPMS.items())
    sizes: tuple = (2e7, 6e7, 2e8, 6e8, 2e9)     # N, five per format
    ratios: tuple = (10.0, 20.0, 40.0)           # tokens per parameter at every size
    noise: float = 0.005                          # relative (log-normal) noise on the loss

    def true_loss(self, N, D, eff):
        a, b, c, d, e = self.law
        return a / (np.asarray(N) * eff) ** b + c / np.asarray(D) ** d + e

    def draw(self, rng: np.random.Generator) -> RunTable:
        """One run per (format, size, ratio), loss times exp(noise * standard normal)."""
        rows = [(f, n, n * r, eff) for f, eff in self.epm for n in self.sizes for r in self.ratios]
        fmt = [r[0] for r in rows]
        N = np.array([r[1] for r in rows])
        D = np.array([r[2] for r in rows])
        eff = np.array([r[3] for r in rows])
        loss = self.true_loss(N, D, eff) * np.exp(self.noise * rng.standard_normal(len(rows)))
        return RunTable(N, D, loss, fmt, [f"{f} N={n:.3g} D={d:.3g}" for f, n, d in zip(fmt, N, D)])


def random_sweep(n_per_format: int, rng: np.random.Generator, epm=PAPER_EPMS,
                 law=CHINCHILLA_LAW, noise: float = 0.005) -> RunTable:
    """``n_per_format`` runs per format at random sizes (1e7..1e10) and ratios (5..100)."""
    k = len(epm)
    fmt = np.repeat(np.array(list(epm), dtype=object), n_per_format)
    eff = np.repeat(np.array(list(epm.values())), n_per_format)
    N = np.exp(rng.uniform(np.log(1e7), np.log(1e10), k * n_per_format))
    D = N * np.exp(rng.uniform(np.log(5.0), np.log(100.0), k * n_per_format))
    a, b, c, d, e = law
    loss = (a / (N * eff) ** b + c / D ** d + e) * np.exp(noise * rng.standard_normal(len(N)))
    return RunTable(N, D, loss, fmt)


def write_table_csv(runs: RunTable, path) -> None:
    """Runs as the CSV fit_laws.py --table reads (N,D,loss,compression; dense left empty)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["N", "D", "loss", "compression"])
    for n, d, loss, f in zip(runs.N, runs.D, runs.loss, runs.formats):
        w.writerow([repr(float(n)), repr(float(d)), repr(float(loss)), "" if f == "dense" else f])
    write_text(path, buf.getvalue())
