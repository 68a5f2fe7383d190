"""Command-line flags (Megatron names), YAML config files, and checks on the raw arguments.

``parse_args(argv)`` returns an ``argparse.Namespace``. A ``--config FILE.yaml`` supplies
defaults (keys are flag names with or without the leading dashes, ``-`` or ``_`` alike); flags
given on the command line win. Within the mutually exclusive groups (token budget, data source,
warm-up) a command-line flag replaces the YAML file's choice instead of conflicting with it.

Everything here is pure argument handling; turning arguments into a run plan (model shape,
parameter counts, iterations) lives in ``plan.py``.
"""
import argparse
import difflib
import math
from typing import Dict, List, Optional, Sequence

import yaml

from .errors import ConfigError

BUDGET_FLAGS = ("train_iters", "train_tokens", "tokens_per_param")
DATA_SOURCE_FLAGS = ("mock_data", "data_path")
WARMUP_FLAGS = ("lr_warmup_fraction", "lr_warmup_iters")
# A command-line flag from one of these groups replaces every YAML key of the same group.
OVERRIDE_GROUPS = (BUDGET_FLAGS, DATA_SOURCE_FLAGS, WARMUP_FLAGS)

DEFAULT_WARMUP_FRACTION = 0.01
DEFAULT_MIN_LR_RATIO = 0.1


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError (exit code 2) instead of exiting."""

    def error(self, message):
        raise ConfigError(f"{self.prog}: {message}")


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _nonnegative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive_float(text):
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _nonnegative_float(text):
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _fraction(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="pretrain.py", allow_abbrev=False,
                description="Pretrain one Llama-style GPT model with megatron-core; writes a run "
                            "directory (run.json, metrics.jsonl, checkpoints/, result.json).")
    bool_flag = argparse.BooleanOptionalAction
    p.add_argument("--config", metavar="YAML", help="YAML file with flag defaults "
                   "(command-line flags override it)")

    g = p.add_argument_group("model")
    g.add_argument("--model-size", metavar="NAME",
                   help="a ladder entry (megatron_csl.model.LADDER, e.g. 10m); explicit shape "
                        "flags override its fields")
    g.add_argument("--num-layers", type=_positive_int)
    g.add_argument("--hidden-size", type=_positive_int)
    g.add_argument("--num-attention-heads", type=_positive_int)
    g.add_argument("--num-query-groups", type=_positive_int,
                   help="key/value heads for grouped-query attention (default: one per head)")
    g.add_argument("--ffn-hidden-size", type=_positive_int)
    g.add_argument("--seq-length", type=_positive_int)
    g.add_argument("--vocab-size", type=_positive_int,
                   help="tokenizer vocabulary size (required with --mock-data; with "
                        "--tokenizer-model it must equal the model's vocabulary size)")
    g.add_argument("--make-vocab-size-divisible-by", type=_positive_int, default=128,
                   help="pad the embedding table to a multiple of this (and of the TP size)")
    g.add_argument("--init-method-std", type=_positive_float, default=0.02)
    g.add_argument("--compression", metavar="SPEC", default="dense",
                   help="compression format of the transformer linears, e.g. dense, w4, w4a4, "
                        "s50, s50+w4 (megatron_csl.compression.parse_spec)")
    g.add_argument("--transformer-impl", choices=("local", "te"), default="local")
    g.add_argument("--attention", choices=("megatron", "sdpa"), default="megatron",
                   help="core attention of the local implementation: megatron-core's own "
                        "(default; dense is then exactly megatron's local-spec model) or sdpa "
                        "(flash attention through torch's scaled_dot_product_attention, no "
                        "[b, h, s, s] scores; same numerics within fp32 rounding, no parameters, "
                        "so checkpoints are interchangeable)")
    g.add_argument("--use-cpu-initialization", action=bool_flag, default=None,
                   help="initialise weights on the CPU from one master weight, so any TP size "
                        "gives the same model (default: the model package's choice)")
    g.add_argument("--bf16", action=bool_flag, default=False,
                   help="bf16 parameters with fp32 main weights (GPU)")

    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=_positive_int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=_positive_int, default=1)
    g.add_argument("--use-distributed-optimizer", action=bool_flag, default=False,
                   help="shard optimizer state over data-parallel ranks")

    g = p.add_argument_group("batch and token budget (exactly one of --train-iters, "
                             "--train-tokens, --tokens-per-param)")
    g.add_argument("--micro-batch-size", type=_positive_int, default=1)
    g.add_argument("--global-batch-size", type=_positive_int,
                   help="sequences per optimizer step (default: micro-batch x data-parallel)")
    g.add_argument("--train-iters", type=_positive_int)
    g.add_argument("--train-tokens", type=_positive_int,
                   help="token budget D; iterations = ceil(D / (global batch x seq length))")
    g.add_argument("--tokens-per-param", type=_positive_float,
                   help="token budget D = ratio x N (N = non-embedding parameters)")

    g = p.add_argument_group("optimizer (AdamW) and schedule")
    g.add_argument("--lr", type=_positive_float, help="peak learning rate (required)")
    g.add_argument("--min-lr", type=_nonnegative_float,
                   help=f"final learning rate (default: {DEFAULT_MIN_LR_RATIO} x --lr)")
    g.add_argument("--lr-warmup-fraction", type=_fraction,
                   help=f"fraction of the iterations with linear warm-up "
                        f"(default {DEFAULT_WARMUP_FRACTION})")
    g.add_argument("--lr-warmup-iters", type=_nonnegative_int)
    g.add_argument("--lr-decay-style", choices=("cosine", "linear", "constant"), default="cosine")
    g.add_argument("--weight-decay", type=_nonnegative_float, default=0.1)
    g.add_argument("--adam-beta1", type=_fraction, default=0.9)
    g.add_argument("--adam-beta2", type=_fraction, default=0.95)
    g.add_argument("--adam-eps", type=_positive_float, default=1e-8)
    g.add_argument("--clip-grad", type=_nonnegative_float, default=1.0,
                   help="clip the global gradient norm to this (0 disables clipping)")
    g.add_argument("--seed", type=_nonnegative_int, default=1234)

    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="+", metavar="PREFIX",
                   help="Megatron indexed-dataset prefixes (PREFIX.bin/.idx), optionally "
                        "weighted: W1 PREFIX1 W2 PREFIX2 ...")
    g.add_argument("--valid-data-path", nargs="+", metavar="PREFIX",
                   help="separate validation prefixes (default: a split of --data-path)")
    g.add_argument("--split", default="99,1,0",
                   help="train,validation,test weights for splitting --data-path")
    g.add_argument("--tokenizer-model", metavar="SPM_MODEL",
                   help="SentencePiece model the data was tokenized with (checks the vocabulary)")
    g.add_argument("--mock-data", action=bool_flag, default=False,
                   help="megatron's deterministic MockGPTDataset (tests and smoke runs)")
    g.add_argument("--data-cache-path", metavar="DIR",
                   help="where GPTDataset index files are cached (default: RUN_DIR/data_cache)")
    g.add_argument("--num-workers", type=_nonnegative_int,
                   help="DataLoader workers (default: 2 with CUDA, 0 on CPU)")

    g = p.add_argument_group("evaluation, logging, checkpoints")
    g.add_argument("--eval-interval", type=_positive_int, default=1000,
                   help="validate every this many iterations (and always at the end)")
    g.add_argument("--eval-iters", type=_positive_int, default=20,
                   help="validation batches (of the global batch size) per evaluation; the same "
                        "batches every time")
    g.add_argument("--log-interval", type=_positive_int, default=10)
    g.add_argument("--save-interval", type=_positive_int,
                   help="checkpoint every this many iterations (default: only at the end and "
                        "on preemption)")
    g.add_argument("--keep-last-checkpoints", type=_nonnegative_int, default=0,
                   help="delete older checkpoints beyond this many (0 keeps all)")
    g.add_argument("--exit-interval", type=_positive_int,
                   help="stop with a checkpoint after this iteration, exit code 3 (requeue)")
    g.add_argument("--run-dir", metavar="DIR", help="the run directory (required)")
    g.add_argument("--name", help="run name recorded in run.json (default: the run dir's name)")
    g.add_argument("--load", action=bool_flag, default=False,
                   help="resume from the run dir's newest complete checkpoint (starts fresh "
                        "when there is none)")
    g.add_argument("--tensorboard", action=bool_flag, default=True,
                   help="write TensorBoard events to RUN_DIR/tensorboard")
    return p


def _dest_of(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Option string ('--hidden-size', '--no-bf16', ...) -> action."""
    return dict(parser._option_string_actions)  # noqa: SLF001 (argparse has no public mapping)


def _cli_dests(parser, argv: Sequence[str]) -> set:
    actions = _dest_of(parser)
    dests = set()
    for token in argv:
        if token.startswith("--"):
            action = actions.get(token.split("=", 1)[0])
            if action is not None:
                dests.add(action.dest)
    return dests


def yaml_to_argv(parser, config_path: str, drop_dests: set = frozenset()) -> List[str]:
    """Turn a YAML mapping of flag names to values into command-line tokens."""
    try:
        with open(config_path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {config_path!r}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {config_path!r}: not valid YAML: {e}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise ConfigError(f"--config {config_path!r}: expected a mapping of flag names to values, "
                          f"got {type(data).__name__}")
    actions = _dest_of(parser)
    valid = sorted(o[2:] for o, a in actions.items()
                   if o.startswith("--") and not o.startswith("--no-") and a.dest not in
                   ("help", "config"))
    tokens: List[str] = []
    for raw_key, value in data.items():
        key = str(raw_key).lstrip("-").replace("_", "-")
        option = f"--{key}"
        action = actions.get(option)
        if action is None or key.startswith("no-") or action.dest in ("help", "config"):
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"--config {config_path!r}: unknown key {raw_key!r}{hint}; valid keys "
                              f"are the flag names: {', '.join(valid)}")
        if action.dest in drop_dests or value is None:
            continue
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ConfigError(f"--config {config_path!r}: {raw_key!r} must be true or false, "
                                  f"got {value!r}")
            tokens.append(option if value else f"--no-{key}")
        elif action.nargs in ("+", "*"):
            values = value if isinstance(value, list) else [value]
            if not values:
                raise ConfigError(f"--config {config_path!r}: {raw_key!r} is an empty list")
            tokens.append(option)
            tokens.extend(str(v) for v in values)
        else:
            if isinstance(value, (list, dict)):
                raise ConfigError(f"--config {config_path!r}: {raw_key!r} takes a single value, "
                                  f"got {value!r}")
            tokens.extend([option, str(value)])
    return tokens


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse flags (after merging ``--config`` YAML defaults) and check them (ConfigError)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    pre = _Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    merged = argv
    if known.config:
        cli = _cli_dests(parser, argv)
        drop = set()
        for group in OVERRIDE_GROUPS:
            if cli & set(group):
                drop |= set(group)
        merged = yaml_to_argv(parser, known.config, drop) + argv
    args = parser.parse_args(merged)
    check_args(args)
    return args


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_args(args: argparse.Namespace) -> None:
    """Checks that need only the flags themselves (no world size, model package or files)."""
    _require(args.run_dir is not None, "--run-dir is required (the run directory to write)")
    _require(args.lr is not None, "--lr is required (the peak learning rate, e.g. 3e-4)")

    budget = [f"--{f.replace('_', '-')}" for f in BUDGET_FLAGS if getattr(args, f) is not None]
    _require(len(budget) == 1,
             "give exactly one token budget: --train-iters N, --train-tokens D or "
             f"--tokens-per-param R (got {', '.join(budget) if budget else 'none'})")

    _require(not (args.mock_data and args.data_path),
             "--mock-data and --data-path are exclusive: use one data source")
    _require(args.mock_data or args.data_path,
             "no training data: give --data-path PREFIX [PREFIX ...] or --mock-data")
    _require(not (args.mock_data and args.valid_data_path),
             "--valid-data-path needs --data-path (it cannot be combined with --mock-data)")
    _require(args.vocab_size is not None or args.tokenizer_model is not None,
             "the vocabulary size is unknown: give --vocab-size N or --tokenizer-model SPM_MODEL")
    _require(args.seq_length is not None, "--seq-length is required (tokens per sequence)")

    _require(not (args.lr_warmup_fraction is not None and args.lr_warmup_iters is not None),
             "--lr-warmup-fraction and --lr-warmup-iters are exclusive: give one")
    if args.min_lr is not None:
        _require(args.min_lr <= args.lr, f"--min-lr {args.min_lr} must not exceed --lr {args.lr}")

    shape_flags = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size")
    if args.model_size is None:
        missing = [f"--{f.replace('_', '-')}" for f in shape_flags if getattr(args, f) is None]
        _require(not missing, f"no model shape: give --model-size NAME or all of "
                              f"{', '.join(missing)}")


def warmup_iters(args: argparse.Namespace, train_iters: int) -> int:
    """Warm-up iterations from --lr-warmup-iters or --lr-warmup-fraction (default 1%)."""
    if args.lr_warmup_iters is not None:
        warm = args.lr_warmup_iters
    else:
        fraction = (DEFAULT_WARMUP_FRACTION if args.lr_warmup_fraction is None
                    else args.lr_warmup_fraction)
        warm = int(round(fraction * train_iters))
    if warm >= train_iters:
        raise ConfigError(f"warm-up of {warm} iterations must be shorter than the {train_iters} "
                          f"training iterations: lower --lr-warmup-iters/--lr-warmup-fraction")
    return warm


def min_lr(args: argparse.Namespace) -> float:
    return args.lr * DEFAULT_MIN_LR_RATIO if args.min_lr is None else args.min_lr
