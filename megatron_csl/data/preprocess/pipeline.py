"""Preprocess C4-format shards into one Megatron indexed dataset, with K worker processes.

Flow: resolve inputs -> plan units (saved in the work dir) -> tokenize the units not yet done,
K at a time -> merge all units in plan order -> ``{prefix}_{key}_document.bin/.idx`` and a
``.stats.json`` summary. Interrupt it at any point and rerun the same command: finished units
are kept and only the rest are redone; the final files appear only when everything is done.
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import queue as queue_module
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Union

from megatron_csl.atomic import atomic_write_json, read_json, remove_if_exists
from megatron_csl.data.c4_shards import count_lines, expand_inputs
from megatron_csl.data.preprocess import output as out
from megatron_csl.data.preprocess.plan import (
    Unit, build_plan, describe_difference, job_fingerprint, plan_from_json, plan_to_json,
)
from megatron_csl.data.preprocess.worker import (
    UnitSettings, UnitStats, UnitWorker, count_lines_in_pool, done_marker, forget_prefork,
    init_pool_process, prepare_for_fork, run_unit_in_pool, unit_prefix,
)
from megatron_csl.data.tokenizer import load_tokenizer

PLAN_FILE = "plan.json"
LOCK_FILE = ".lock"


class PreprocessStateError(RuntimeError):
    """Existing outputs or work files conflict with this job (names them and what to do)."""


@dataclass(frozen=True)
class PreprocessConfig:
    inputs: Sequence[str]  # glob patterns or paths of .json.gz / .jsonl shards, in order
    tokenizer_model: str
    output_prefix: str  # writes {output_prefix}_{json_key}_document.bin/.idx
    workers: int = 1
    append_eod: bool = False
    max_docs: Optional[int] = None  # only the first N input lines (documents), in input order
    strict: bool = False  # malformed lines are fatal instead of counted
    json_key: str = "text"
    work_dir: Optional[str] = None  # default: {dataset prefix}.work
    keep_work_dir: bool = False
    overwrite: bool = False
    batch_lines: int = 1024
    progress: bool = True

    def validate(self) -> None:
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if self.max_docs is not None and (not isinstance(self.max_docs, int) or self.max_docs < 1):
            raise ValueError(f"max_docs must be a positive integer or None, got {self.max_docs!r}")
        if self.batch_lines < 1:
            raise ValueError(f"batch_lines must be positive, got {self.batch_lines}")
        if not self.json_key:
            raise ValueError("json_key must name the JSON field holding the text, e.g. 'text'")


@dataclass
class PreprocessReport:
    dataset_prefix: str
    documents: int
    tokens: int
    dtype: str
    vocab_size: int
    units: int
    units_resumed: int
    lines: int
    malformed: int
    empty_documents: int
    blank_lines: int
    malformed_by_shard: Dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    already_complete: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


def preprocess(config: PreprocessConfig) -> PreprocessReport:
    """Run (or resume) a preprocessing job; see the module docstring."""
    started = time.perf_counter()
    config.validate()
    paths = expand_inputs(config.inputs)
    sp = load_tokenizer(config.tokenizer_model)
    if config.append_eod and sp.eos_id() < 0:
        raise ValueError(
            f"--append-eod needs an eos piece, but {config.tokenizer_model} has none (eos_id=-1)"
        )
    dtype = out.token_dtype(sp.vocab_size())
    prefix = out.dataset_prefix(config.output_prefix, config.json_key)
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    fingerprint = job_fingerprint(
        paths, config.tokenizer_model, config.append_eod, config.max_docs, config.json_key,
        dtype.name,
    )

    finished = _existing_result(prefix, fingerprint, config.overwrite)
    if finished is not None:
        return finished

    work_dir = config.work_dir or prefix + ".work"
    os.makedirs(work_dir, exist_ok=True)
    settings = UnitSettings(
        tokenizer_model=config.tokenizer_model, work_dir=work_dir, dtype=dtype.name,
        json_key=config.json_key, append_eod=config.append_eod, strict=config.strict,
        batch_lines=config.batch_lines,
    )
    with _locked(work_dir):
        with _runner(settings, config.workers) as runner:
            units = _load_or_make_plan(work_dir, paths, fingerprint, config, runner)
            _remove_partials(work_dir)
            pending = [u for u in units if not os.path.exists(done_marker(work_dir, u))]
            runner.run(pending, progress=config.progress, total_units=len(units))
        stats = [UnitStats(**read_json(done_marker(work_dir, u))) for u in units]
        report = _report(prefix, stats, dtype.name, sp.vocab_size(), len(units) - len(pending))
        if report.documents == 0:
            raise ValueError(
                f"the input produced no documents ({report.lines} lines, {report.malformed} "
                f"malformed, {report.empty_documents} empty); nothing to write to {prefix}"
            )
        report.seconds = time.perf_counter() - started
        summary = {"fingerprint": fingerprint, "report": report.as_dict()}
        out.merge_partials(
            [unit_prefix(work_dir, u) for u in units], prefix, dtype,
            write_stats=lambda: atomic_write_json(out.stats_path(prefix), summary),
        )
    if not config.keep_work_dir:
        _remove_work_dir(work_dir, units)
    report.seconds = time.perf_counter() - started
    return report


# --- state on disk ---------------------------------------------------------------------------


def _existing_result(prefix: str, fingerprint: dict, overwrite: bool) -> Optional[PreprocessReport]:
    """The report of an identical finished job; None when there is none or ``overwrite`` is set;
    an error when a different job's output is in the way."""
    if not out.dataset_exists(prefix):
        return None
    summary = None
    if os.path.exists(out.stats_path(prefix)):
        summary = read_json(out.stats_path(prefix))
    if overwrite:
        return None  # replaced by the merge, only once the new dataset is complete
    if summary is not None and summary.get("fingerprint") == fingerprint:
        report = PreprocessReport(**summary["report"])
        report.already_complete = True
        return report
    why = (
        "was made from different " + describe_difference(summary["fingerprint"], fingerprint)
        if summary is not None else "has no .stats.json saying how it was made"
    )
    raise PreprocessStateError(
        f"{prefix}.bin/.idx already exist and {why}; pass --overwrite to replace it or choose "
        f"another --output-prefix"
    )


def _load_or_make_plan(work_dir, paths, fingerprint, config, runner) -> List[Unit]:
    plan_path = os.path.join(work_dir, PLAN_FILE)
    if os.path.exists(plan_path):
        old_fingerprint, units = plan_from_json(read_json(plan_path))
        if old_fingerprint == fingerprint:
            return units
        if not config.overwrite:
            raise PreprocessStateError(
                f"work dir {work_dir} holds an unfinished job with different "
                f"{describe_difference(old_fingerprint, fingerprint)}; pass --overwrite to discard "
                f"it, or use another --work-dir"
            )
        _remove_work_files(work_dir, units)
    units, counts = build_plan(paths, config.workers, config.max_docs, runner.count_lines_many)
    atomic_write_json(plan_path, plan_to_json(fingerprint, units, counts))
    return units


def _remove_partials(work_dir: str) -> None:
    # leftovers of units that were interrupted; those units are redone from their first line
    for name in os.listdir(work_dir):
        if ".partial." in name or name.endswith(".tmp"):
            remove_if_exists(os.path.join(work_dir, name))


def _remove_work_files(work_dir: str, units: Sequence[Unit]) -> None:
    for unit in units:
        for suffix in (".bin", ".idx", ".done.json"):
            remove_if_exists(unit_prefix(work_dir, unit) + suffix)
    _remove_partials(work_dir)
    remove_if_exists(os.path.join(work_dir, PLAN_FILE))


def _remove_work_dir(work_dir: str, units: Sequence[Unit]) -> None:
    _remove_work_files(work_dir, units)
    remove_if_exists(os.path.join(work_dir, LOCK_FILE))
    try:
        os.rmdir(work_dir)  # only if nothing else (not ours) is in it
    except OSError:
        pass


@contextmanager
def _locked(work_dir: str) -> Iterator[None]:
    """Refuse to run two jobs on one work dir at once (they would overwrite each other's units)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    with open(os.path.join(work_dir, LOCK_FILE), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PreprocessStateError(
                f"another preprocessing job is running on work dir {work_dir}"
            ) from None
        yield


def _report(prefix, stats: List[UnitStats], dtype, vocab_size, resumed) -> PreprocessReport:
    by_shard: Dict[str, dict] = {}
    for s in stats:
        if s.malformed:
            entry = by_shard.setdefault(s.path, {"malformed": 0, "examples": []})
            entry["malformed"] += s.malformed
            entry["examples"] += s.malformed_examples[: 20 - len(entry["examples"])]
    return PreprocessReport(
        dataset_prefix=prefix,
        documents=sum(s.documents for s in stats),
        tokens=sum(s.tokens for s in stats),
        dtype=dtype,
        vocab_size=vocab_size,
        units=len(stats),
        units_resumed=resumed,
        lines=sum(s.lines for s in stats),
        malformed=sum(s.malformed for s in stats),
        empty_documents=sum(s.empty_documents for s in stats),
        blank_lines=sum(s.blank_lines for s in stats),
        malformed_by_shard=by_shard,
    )


# --- running units: in this process (K=1) or in a pool of K processes ------------------------


class _ProgressBar:
    """tqdm over compressed input bytes (for the ETA), showing documents/s and tokens/s."""

    def __init__(self, units: Sequence[Unit], total_units: int, enabled: bool):
        from tqdm import tqdm

        self.share = {u.name: max(u.estimated_bytes, 1) for u in units}
        self.seen = dict.fromkeys(self.share, 0)
        self.done_units = total_units - len(units)
        self.total_units = total_units
        self.documents = self.tokens = self.malformed = 0
        self.started = time.perf_counter()
        self.last_postfix = 0.0
        self.bar = tqdm(
            total=sum(self.share.values()), unit="B", unit_scale=True, unit_divisor=1024,
            desc="tokenizing", disable=not enabled, smoothing=0.1,
        )
        self._postfix(force=True)

    def update(self, name: str, documents: int, tokens: int, position: int) -> None:
        self.documents += documents
        self.tokens += tokens
        self._advance(name, min(position, self.share[name]))
        self._postfix()

    def unit_done(self, stats: dict) -> None:
        self.done_units += 1
        self.malformed += stats["malformed"]
        self._advance(stats["name"], self.share[stats["name"]])
        self._postfix(force=True)

    def _advance(self, name: str, position: int) -> None:
        if position > self.seen[name]:
            self.bar.update(position - self.seen[name])
            self.seen[name] = position

    def _postfix(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self.last_postfix < 0.5:
            return
        self.last_postfix = now
        elapsed = max(now - self.started, 1e-9)
        self.bar.set_postfix_str(
            f"{self.documents / elapsed:,.0f} docs/s, {self.tokens / elapsed:,.0f} tokens/s, "
            f"units {self.done_units}/{self.total_units}, malformed {self.malformed}",
            refresh=False,
        )

    def close(self) -> None:
        self.bar.close()


class _InlineRunner:
    """K=1: everything in this process (no pool to start, easiest to debug)."""

    def __init__(self, settings: UnitSettings):
        self.worker = UnitWorker(settings)

    def count_lines_many(self, jobs):
        return [count_lines(path, limit) for path, limit in jobs]

    def run(self, units: Sequence[Unit], progress: bool, total_units: int) -> None:
        bar = _ProgressBar(units, total_units, progress)
        try:
            for unit in _largest_first(units):
                bar.unit_done(self.worker.run(unit, bar.update).as_dict())
        finally:
            bar.close()


class _PoolRunner:
    """K>1: a pool of K processes, each tokenizing whole units into its own partial dataset."""

    def __init__(self, settings: UnitSettings, workers: int):
        # fork shares the already imported megatron-core with the workers (importing it again
        # would cost seconds per process); spawn where fork does not exist
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self.progress_queue = self.context.Queue()
        if self.context.get_start_method() == "fork":
            prepare_for_fork(settings)
        # frozen objects are never visited by the workers' garbage collector, so the parent's
        # heap (torch, megatron-core) stays shared copy-on-write instead of being copied
        gc.freeze()
        try:
            self.pool = self.context.Pool(
                workers, initializer=init_pool_process, initargs=(settings, self.progress_queue)
            )
        finally:
            gc.unfreeze()

    def count_lines_many(self, jobs):
        return self.pool.map(count_lines_in_pool, jobs, chunksize=1)

    def run(self, units: Sequence[Unit], progress: bool, total_units: int) -> None:
        finished: "queue_module.Queue" = queue_module.Queue()

        def on_result(ok: bool, payload) -> None:
            # runs in the pool's result thread; the None wakes the loop below at once
            finished.put((ok, payload))
            self.progress_queue.put(None)

        for unit in _largest_first(units):
            self.pool.apply_async(
                run_unit_in_pool, (unit,),
                callback=lambda stats: on_result(True, stats),
                error_callback=lambda error: on_result(False, error),
            )
        bar = _ProgressBar(units, total_units, progress)
        try:
            remaining = len(units)
            while remaining:
                try:
                    message = self.progress_queue.get(timeout=1.0)
                except queue_module.Empty:
                    continue
                if message is not None:
                    bar.update(*message)
                    continue
                ok, payload = finished.get_nowait()
                if not ok:
                    raise payload
                bar.unit_done(payload)
                remaining -= 1
        finally:
            bar.close()

    def close(self, failed: bool) -> None:
        if failed:
            self.pool.terminate()
        else:
            self.pool.close()
        self.pool.join()
        forget_prefork()
        self.progress_queue.close()
        self.progress_queue.join_thread()


@contextmanager
def _runner(settings: UnitSettings, workers: int) -> Iterator[Union[_InlineRunner, _PoolRunner]]:
    if workers == 1:
        yield _InlineRunner(settings)
        return
    runner = _PoolRunner(settings, workers)
    failed = True
    try:
        yield runner
        failed = False
    finally:
        runner.close(failed)


def _largest_first(units: Sequence[Unit]) -> List[Unit]:
    # longest-processing-time-first scheduling keeps the workers' finishing times close
    return sorted(units, key=lambda u: -u.estimated_bytes)
