"""`make demo`: the whole study in miniature, each step the command a user would run.

The steps (each skipped when its output is already complete, so a second `make demo` takes seconds):

1. synthetic C4-format shards            tools/make_synthetic_c4.py
2. a SentencePiece tokenizer on them     tools/train_tokenizer.py
3. the Megatron indexed dataset          tools/preprocess_c4.py
4. a local sweep of tiny Llama models    launch/sweep.py submit launch/sweeps/demo.yaml --executor local
5. the compression scaling-law fit       tools/fit_laws.py  (EPM table with intervals, plots)
6. capacity predictions beside it        tools/capacity.py

On a cluster the same steps run on real C4 shards with the Slurm executor (README, "From the demo
to a cluster"). Everything lands in one output folder, printed last.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from megatron_csl.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the miniature study; the sweep file carries the model shapes and formats."""

    sweep_file: str
    train_shards: int
    docs_per_shard: int
    vocab_size: int
    tokenizer_sample_docs: int
    parallel_runs: int
    bootstrap: int
    # SentencePiece's BPE trainer gives a different model for a different thread count, so the demo
    # fixes it (2: what the README's figures were made with, on a 2-core machine) rather than
    # taking the machine's core count.
    tokenizer_threads: int = 2


CPU = DemoSettings(sweep_file="launch/sweeps/demo.yaml", train_shards=2, docs_per_shard=6000,
                   vocab_size=512, tokenizer_sample_docs=3000, parallel_runs=2, bootstrap=1000)
GPU = DemoSettings(sweep_file="launch/sweeps/demo_gpu.yaml", train_shards=8, docs_per_shard=40000,
                   vocab_size=4096, tokenizer_sample_docs=20000, parallel_runs=1, bootstrap=1000)


def _say(text: str) -> None:
    print(text, flush=True)


class Demo:
    def __init__(self, output: Path, settings: DemoSettings, python: str = sys.executable):
        self.out = output.resolve()
        self.s = settings
        self.python = python
        self.step_no = 0
        self.n_steps = 6
        # megatron-core warns at import that TE/apex are absent; expected on a CPU, so keep the
        # demo's output readable.
        self.env = dict(os.environ)
        self.env.setdefault("PYTHONWARNINGS",
                            "ignore:Transformer Engine and Apex are not installed")
        # Losses depend on torch's intra-op thread count (reductions split differently): one thread
        # per training run, whatever the caller's environment says (the README's figures did so).
        self.env["OMP_NUM_THREADS"] = "1"

    # -- helpers -------------------------------------------------------------------------
    def _header(self, title: str) -> None:
        self.step_no += 1
        _say(f"\n=== [{self.step_no}/{self.n_steps}] {title}")

    def _run(self, argv: List[str], cwd: Optional[Path] = None, capture: bool = False) -> str:
        shown = " ".join(shlex.quote(str(a)) for a in argv)
        _say(f"$ {shown}")
        t0 = time.time()
        proc = subprocess.run([str(a) for a in argv], cwd=cwd or REPO, text=True, env=self.env,
                              stdout=subprocess.PIPE if capture else None)
        if proc.returncode != 0:
            raise SystemExit(f"demo: step failed (exit {proc.returncode}): {shown}")
        _say(f"  ({time.time() - t0:.0f} s)")
        return proc.stdout or ""

    def _tool(self, name: str) -> List[str]:
        return [self.python, str(REPO / name)]

    # -- steps ---------------------------------------------------------------------------
    @property
    def shard_dir(self) -> Path:
        return self.out / "c4"

    @property
    def tokenizer_prefix(self) -> Path:
        return self.out / "tokenizer" / "demo_spm"

    @property
    def data_prefix(self) -> Path:
        return self.out / "data" / "demo_train"

    def make_shards(self) -> None:
        self._header("synthetic C4-format shards")
        last = self.shard_dir / f"c4-train.{self.s.train_shards - 1:05d}-of-{self.s.train_shards:05d}.json.gz"
        if last.exists():
            _say(f"  done already: {self.shard_dir}")
            return
        self._run(self._tool("tools/make_synthetic_c4.py") + [
            "--output-dir", self.shard_dir, "--num-shards", self.s.train_shards,
            "--docs-per-shard", self.s.docs_per_shard, "--seed", 0])

    def train_tokenizer(self) -> None:
        self._header("SentencePiece tokenizer")
        model = self.tokenizer_prefix.with_suffix(".model")
        if model.exists():
            _say(f"  done already: {model}")
            return
        self._run(self._tool("tools/train_tokenizer.py") + [
            "--input", str(self.shard_dir / "c4-train.*.json.gz"), "--vocab-size", self.s.vocab_size,
            "--model-type", "bpe", "--sample-docs", self.s.tokenizer_sample_docs,
            "--threads", self.s.tokenizer_threads, "--output-prefix", self.tokenizer_prefix])

    def preprocess(self) -> None:
        self._header("Megatron indexed dataset")
        idx = Path(f"{self.data_prefix}_text_document.idx")
        if idx.exists():
            _say(f"  done already: {idx}")
            return
        self._run(self._tool("tools/preprocess_c4.py") + [
            "--input", str(self.shard_dir / "c4-train.*.json.gz"),
            "--tokenizer-model", self.tokenizer_prefix.with_suffix(".model"),
            "--output-prefix", self.data_prefix, "--workers", 2, "--append-eod"])

    def sweep(self) -> None:
        self._header("local sweep of tiny Llama models at 20 tokens per parameter")
        # sweep.py resolves the sweep file's relative data paths from its working directory,
        # so it runs inside the output folder and the runs land in OUTPUT/runs.
        sweep_file = REPO / self.s.sweep_file
        self._run(self._tool("launch/sweep.py") + ["plan", sweep_file], cwd=self.out)
        self._run(self._tool("launch/sweep.py") + [
            "submit", sweep_file, "--executor", "local", "--parallel", self.s.parallel_runs],
            cwd=self.out)

    def fit(self) -> dict:
        self._header("compression scaling law: L = a/(N*eff(C))^b + c/D^d + e")
        fit_dir = self.out / "fit"
        fit_dir.mkdir(parents=True, exist_ok=True)
        fit_json = fit_dir / "fit.json"
        results = list((self.out / "runs").glob("*/result.json"))
        if fit_json.exists() and results and \
                fit_json.stat().st_mtime > max(r.stat().st_mtime for r in results):
            _say(f"  done already: {fit_json} (no run finished since; the table is in "
                 f"{fit_dir / 'report.md'})")
            return json.loads(fit_json.read_text())
        self._run(self._tool("tools/fit_laws.py") + [
            self.out / "runs", "--bootstrap", self.s.bootstrap, "--bootstrap-unit", "size", "--seed", 0,
            "--json", fit_json, "--markdown", fit_dir / "report.md", "--plot-dir", fit_dir])
        return json.loads(fit_json.read_text())

    def capacity(self, fit: dict) -> None:
        self._header("capacity (Gaussian MSE) predictions beside the fitted EPMs")
        specs = list(fit["epm"])
        out = self._run(self._tool("tools/capacity.py") + specs + ["--json"], capture=True)
        predictions = {row["canonical"]: row for row in json.loads(out)}
        atomic_write_text(self.out / "fit" / "capacity.json",
                          json.dumps(list(predictions.values()), indent=2) + "\n")
        _say(f"{'format':<10} {'fitted EPM':>10} {'95% interval':>18} {'GMSE':>10} {'predicted EPM':>14}")
        for spec, e in fit["epm"].items():
            p = predictions.get(spec, {})
            lo, hi = e.get("lo"), e.get("hi")
            interval = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "-"
            gmse = p.get("gmse")
            _say(f"{spec:<10} {e['value']:>10.3f} {interval:>18} "
                 f"{(f'{gmse:.4g}' if gmse else '-'):>10} {p.get('predicted_epm', float('nan')):>14.3f}")

    def run(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        self.make_shards()
        self.train_tokenizer()
        self.preprocess()
        self.sweep()
        fit = self.fit()
        self.capacity(fit)
        _say(f"\nDemo finished in {time.time() - t0:.0f} s. Plots: {self.out / 'fit'}/*.png")
        _say(f"Output folder: {self.out}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=REPO / "demo_out",
                        help="output folder (default: demo_out/ in the checkout)")
    parser.add_argument("--gpu", action="store_true",
                        help="the larger version for a CUDA machine (launch/sweeps/demo_gpu.yaml)")
    args = parser.parse_args(argv)
    if args.gpu:
        import torch
        if not torch.cuda.is_available():
            parser.error("--gpu (make demo GPU=1) needs a CUDA device; torch sees none here")
    Demo(args.output, GPU if args.gpu else CPU).run()
    return 0
