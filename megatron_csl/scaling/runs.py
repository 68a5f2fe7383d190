"""Reading finished runs: run directories (run.json + result.json) and N,D,loss CSV tables.

Every run that cannot be used is kept as a ``Skipped(source, reason)`` so the fitter can list it:
no result.json (unfinished), no run.json, status other than "finished", a non-finite or
non-positive loss/N/D, a compression spec the parser rejects, run.json and result.json
disagreeing, and duplicates (the same directory reached twice, or a run with the same N, D,
format and loss as one already read -- a copied directory or a CSV row exported from a run that
is also given as a directory).
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .laws import DENSE
from .problem import RunTable

from megatron_csl.runfiles import RESULT_JSON as RESULT_FILE, RUN_JSON as RUN_FILE  # noqa: E402


@dataclass(frozen=True)
class Skipped:
    source: str
    reason: str

    def as_dict(self):
        return {"source": self.source, "reason": self.reason}


@dataclass(frozen=True)
class Run:
    N: float
    D: float
    loss: float
    compression: str        # canonical spec
    source: str


def canonical_spec(spec) -> str:
    """Canonical form of a compression spec or format key ("w4@ptq-gptq", see
    formats.split_format_key); raises SpecError (a ValueError) when invalid."""
    if spec is None or (isinstance(spec, str) and spec.strip() in ("", DENSE)):
        return DENSE
    if not isinstance(spec, str):
        raise ValueError(f"compression must be a string, got {spec!r}")
    from megatron_csl.compression import parse_spec  # imports torch: only for compressed specs

    from .formats import format_key, split_format_key

    base, method = split_format_key(spec.strip())
    return format_key(parse_spec(base).canonical, method)


def _positive_finite(name, value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is {value!r}, not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"non-finite {name} ({value})")
    if x <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return x


def find_run_dirs(root: Path) -> list[Path]:
    """Directories under ``root`` (itself included) holding run.json or result.json, sorted.

    A run directory's own subdirectories (checkpoints, tensorboard) are not searched.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"run directory or root {str(root)!r} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{str(root)!r} is not a directory (pass CSV tables with --table)")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if RUN_FILE in filenames or RESULT_FILE in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
        else:
            dirnames.sort()
    return sorted(found)


def _read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def read_run_dir(path: Path) -> Run:
    """One run directory as a Run; raises ValueError with the reason it cannot be used."""
    result_path, run_path = path / RESULT_FILE, path / RUN_FILE
    if not result_path.exists():
        raise ValueError("unfinished: no result.json")
    if not run_path.exists():
        raise ValueError("no run.json next to result.json")
    try:
        result, run = _read_json(result_path), _read_json(run_path)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"unreadable JSON: {e}") from None
    for name, doc in ((RESULT_FILE, result), (RUN_FILE, run)):
        if not isinstance(doc, dict):
            raise ValueError(f"{name} holds a JSON {type(doc).__name__}, not an object")
    status = result.get("status")
    if status != "finished":
        raise ValueError(f"status {status!r} (only 'finished' runs are fitted)")
    loss = result.get("val_loss")
    try:
        loss = float(loss)
    except (TypeError, ValueError):
        raise ValueError(f"val_loss is {loss!r}, not a number") from None
    if not math.isfinite(loss):
        raise ValueError(f"non-finite val_loss ({loss})")
    N = _positive_finite("N", result.get("N", run.get("N")))
    D = _positive_finite("D", result.get("D", run.get("D")))
    loss = _positive_finite("val_loss", loss)
    spec = result.get("compression", run.get("compression"))
    try:
        canonical = canonical_spec(spec)
    except ValueError as e:
        raise ValueError(f"unparseable compression {spec!r}: {e}") from None
    for key, value in (("N", N), ("D", D)):
        if key in run and run[key] is not None and not math.isclose(float(run[key]), value, rel_tol=1e-9):
            raise ValueError(f"run.json and result.json disagree on {key} ({run[key]} vs {value})")
    if run.get("compression") is not None:
        try:
            if canonical_spec(run["compression"]) != canonical:
                raise ValueError(f"run.json and result.json disagree on compression "
                                 f"({run['compression']!r} vs {spec!r})")
        except ValueError as e:
            if "disagree" in str(e):
                raise
            raise ValueError(f"unparseable compression {run['compression']!r} in run.json: {e}") from None
    return Run(N, D, loss, canonical, str(path))


def read_table(path: Path) -> tuple[list[Run], list[Skipped]]:
    """CSV with columns N, D, loss and optional compression (absent or empty = dense)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"table {str(path)!r} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("N", "D", "loss") if c not in columns]
        if missing:
            raise ValueError(f"table {str(path)!r} lacks column(s) {', '.join(missing)}; it has "
                             f"{', '.join(columns) or 'no header'} (needed: N,D,loss[,compression])")
        runs, skipped = [], []
        for i, row in enumerate(reader, start=2):  # line 1 is the header
            row = {(k or "").strip(): v for k, v in row.items()}
            source = f"{path}:{i}"
            try:
                N = _positive_finite("N", row["N"])
                D = _positive_finite("D", row["D"])
                loss = _positive_finite("loss", row["loss"])
                spec = row.get("compression")
                try:
                    canonical = canonical_spec(spec)
                except ValueError as e:
                    raise ValueError(f"unparseable compression {spec!r}: {e}") from None
            except ValueError as e:
                skipped.append(Skipped(source, str(e)))
                continue
            runs.append(Run(N, D, loss, canonical, source))
    return runs, skipped


def read_epoch_chinchilla(path: Path, drop_highest: int = 5) -> RunTable:
    """Epoch AI's digitised Chinchilla runs: N = 'Model Size', D = 'Training FLOP' / (6 N).

    Epoch dropped the ``drop_highest`` highest losses (5 of 245) before fitting.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    N = np.array([float(r["Model Size"]) for r in rows])
    flops = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    keep = np.sort(np.argsort(loss, kind="stable")[: len(loss) - drop_highest])
    return RunTable(N[keep], flops[keep] / (6.0 * N[keep]), loss[keep],
                    [DENSE] * len(keep), [f"{path}:{i + 2}" for i in keep])


def collect_runs(paths=(), tables=()) -> tuple[RunTable, list[Skipped]]:
    """All usable runs from run directories/roots and CSV tables, and the skipped ones."""
    runs: list[Run] = []
    skipped: list[Skipped] = []
    seen_dirs: dict = {}
    seen_keys: dict = {}

    def add(run: Run):
        key = (run.N, run.D, run.compression, run.loss)
        if key in seen_keys:
            skipped.append(Skipped(run.source, f"duplicate of {seen_keys[key]} (same N, D, "
                                               "compression and loss)"))
            return
        seen_keys[key] = run.source
        runs.append(run)

    for root in paths:
        for d in find_run_dirs(Path(root)):
            real = d.resolve()
            if real in seen_dirs:
                skipped.append(Skipped(str(d), f"duplicate: same directory as {seen_dirs[real]}"))
                continue
            seen_dirs[real] = str(d)
            try:
                add(read_run_dir(d))
            except ValueError as e:
                skipped.append(Skipped(str(d), str(e)))
    for table in tables:
        table_runs, table_skipped = read_table(Path(table))
        skipped.extend(table_skipped)
        for run in table_runs:
            add(run)
    table = RunTable([r.N for r in runs], [r.D for r in runs], [r.loss for r in runs],
                     [r.compression for r in runs], [r.source for r in runs])
    return table, skipped
