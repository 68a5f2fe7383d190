"""Size `make demo GPU=1` from a measured training speed, so that it fits a time budget.

The GPU demo (launch/sweeps/demo_gpu.yaml) trains every model of its ladder in every format at
`tokens_per_param` tokens per non-embedding parameter. tools/gpu_check.sh measures the training
tokens/s of the ladder's largest model at the demo's settings (tools/bench_step.py, bf16,
sequence 512, micro-batch 32) and prints what this module derives from it: the largest
tokens_per_param (at most the sweep's 20) for which the sweep, at that speed plus a fixed start-up
cost per run, fits the budget. The largest model's speed is the slowest per token, so the estimate
errs on the safe side. Until that figure is measured on the GPU, the demo's size is unmeasured.

    python -m megatron_csl.demo_sizing --tokens-per-s 450000 [--budget-s 480]
    python -m megatron_csl.demo_sizing --from-json demo_rate.json   # bench_step's --json
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Sequence

DEMO_MODELS = ("1m", "3m", "10m")
DEMO_FORMATS = 4            # dense, w4, w2, s50
DEMO_VOCAB = 4096
# Seconds of the 9-minute target left to training: data, tokenizer, fit and plots take the rest.
DEFAULT_BUDGET_S = 8 * 60
STARTUP_S_PER_RUN = 12.0    # process start, model build, checkpoint: a guess until measured


@dataclass(frozen=True)
class DemoSize:
    tokens_per_param: float
    train_tokens: int
    seconds: float


def demo_size(tokens_per_s: float, budget_s: float = DEFAULT_BUDGET_S,
              models: Sequence[str] = DEMO_MODELS, formats: int = DEMO_FORMATS,
              startup_s: float = STARTUP_S_PER_RUN, max_tokens_per_param: float = 20.0
              ) -> DemoSize:
    """The largest tokens_per_param (one decimal, <= max) whose sweep fits `budget_s`."""
    from megatron_csl.model import count_parameters, get_shape

    if tokens_per_s <= 0 or budget_s <= 0:
        raise ValueError(f"tokens_per_s and budget_s must be positive, got {tokens_per_s}, "
                         f"{budget_s}")
    params = sum(count_parameters(get_shape(m), DEMO_VOCAB).non_embedding for m in models)
    runs = len(models) * formats
    training_s = budget_s - runs * startup_s
    if training_s <= 0:
        raise ValueError(f"{runs} runs of {startup_s} s start-up do not fit {budget_s} s")
    tpp = min(max_tokens_per_param, training_s * tokens_per_s / (formats * params))
    tpp = math.floor(tpp * 10) / 10
    tokens = int(tpp * params * formats)
    return DemoSize(tpp, tokens, runs * startup_s + tokens / tokens_per_s)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokens-per-s", type=float,
                        help="measured training tokens/s of the largest demo model")
    source.add_argument("--from-json", metavar="PATH",
                        help="tools/bench_step.py --json output: its first measured row")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S)
    args = p.parse_args(argv)
    if args.from_json:
        import json

        with open(args.from_json) as f:
            rows = [r for r in json.load(f)["results"] if r.get("tokens_per_s")]
        if not rows:
            p.error(f"{args.from_json} has no measured row")
        args.tokens_per_s = rows[0]["tokens_per_s"]
    try:
        size = demo_size(args.tokens_per_s, args.budget_s)
    except ValueError as err:
        p.error(str(err))
    if size.tokens_per_param < 1:
        print(f"GPU demo at {args.tokens_per_s:,.0f} tokens/s: too slow, not even 1 token per "
              f"parameter fits {args.budget_s / 60:.1f} min")
        return 0
    print(f"GPU demo at {args.tokens_per_s:,.0f} tokens/s: tokens_per_param "
          f"{size.tokens_per_param:g} ({size.train_tokens:,} training tokens, about "
          f"{size.seconds / 60:.1f} min of training) fits {args.budget_s / 60:.1f} min; set it in "
          "launch/sweeps/demo_gpu.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
