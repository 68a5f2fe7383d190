"""The run directory contract (docs/interfaces.md): run.json, metrics.jsonl, result.json, TensorBoard.

Only global rank 0 writes these files. JSON documents are written to a temporary name in the same
directory and renamed, so a reader never sees a half-written run.json or result.json.
"""
import json
import math
from pathlib import Path
from typing import Iterable, List, Optional

from megatron_csl.atomic import atomic_write_text
from megatron_csl.runfiles import METRICS_JSONL, RESULT_JSON, RUN_JSON, TENSORBOARD_DIR  # noqa: F401

TRAIN_ROW_KEYS = ("step", "tokens", "loss", "lr", "grad_norm", "tokens_per_s")
EVAL_ROW_KEYS = ("step", "tokens", "val_loss")


def _json_safe(value):
    """NaN/inf are not valid JSON: write them as null rather than a token other readers reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, sort_keys=False) + "\n")


def read_json(path) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def read_jsonl(path) -> List[dict]:
    """All complete JSON-object lines of a JSON Lines file (a torn last line from a crash, or a
    foreign line, is skipped; a missing file has no rows). Also read by the sweep tracker."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except FileNotFoundError:
        pass
    return rows


def read_metrics(path) -> List[dict]:
    """All complete rows of a metrics.jsonl."""
    return read_jsonl(path)


class MetricsLog:
    """Appends train and eval rows to metrics.jsonl and mirrors them to TensorBoard."""

    def __init__(self, run_dir, resume_step: Optional[int] = None, tensorboard=True):
        """tensorboard: True (RUN_DIR/tensorboard), a directory (--tensorboard-dir), or
        False/None (no events)."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_JSONL
        if resume_step is None:
            resume_step = 0
        # Rows after the checkpoint we resume from were produced by the interrupted attempt and
        # will be produced again: drop them so the file holds each step once.
        self.truncate_after(resume_step)
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events an interrupted attempt logged after the checkpoint (all of
            # them when a run without a checkpoint starts over).
            log_dir = self.run_dir / TENSORBOARD_DIR if tensorboard is True else Path(tensorboard)
            self._tb = SummaryWriter(log_dir=str(log_dir), purge_step=resume_step + 1)

    def truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        # Rewritten even when nothing is dropped: that also removes a line torn by a crash.
        kept = [r for r in read_metrics(self.path)
                if isinstance(r.get("step"), int) and r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def _write(self, row: dict) -> None:
        self._file.write(json.dumps(_json_safe(row)) + "\n")
        self._file.flush()

    def log_train(self, step: int, tokens: int, loss: float, lr: float, grad_norm: Optional[float],
                  tokens_per_s: float) -> dict:
        row = {"step": step, "tokens": tokens, "loss": loss, "lr": lr, "grad_norm": grad_norm,
               "tokens_per_s": tokens_per_s}
        self._write(row)
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, step)
            self._tb.add_scalar("train/lr", lr, step)
            if grad_norm is not None:
                self._tb.add_scalar("train/grad_norm", grad_norm, step)
            self._tb.add_scalar("train/tokens_per_s", tokens_per_s, step)
            self._tb.add_scalar("train/loss_vs_tokens", loss, tokens)
        return row

    def log_eval(self, step: int, tokens: int, val_loss: float) -> dict:
        row = {"step": step, "tokens": tokens, "val_loss": val_loss}
        self._write(row)
        if self._tb is not None:
            self._tb.add_scalar("val/loss", val_loss, step)
            self._tb.add_scalar("val/loss_vs_tokens", val_loss, tokens)
        return row

    def flush(self) -> None:
        self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def progress_line(step: int, total: int, loss: float, lr: float, grad_norm: Optional[float],
                  tokens_per_s: float, eta_s: float) -> str:
    """The concise per-log-interval line rank 0 prints to stdout."""
    width = len(str(total))
    grad = "n/a" if grad_norm is None else f"{grad_norm:.3f}"
    return (f"step {step:>{width}d}/{total} | loss {loss:.4f} | lr {lr:.3e} | grad {grad} | "
            f"{tokens_per_s:,.0f} tok/s | ETA {format_duration(eta_s)}")
