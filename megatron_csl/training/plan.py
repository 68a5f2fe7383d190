"""Turn checked arguments into a run plan: model shape, parameter counts, parallel layout, budget.

Everything in the plan is decided before any process group or model exists, so a bad layout or
budget fails at once (ConfigError, exit code 2) with the values involved. The plan is what
run.json records.
"""
import argparse
import dataclasses
import math
import os
from pathlib import Path
from typing import List, Optional, Tuple

from . import config as cfg
from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DataPlan:
    mock: bool
    prefixes: Tuple[str, ...] = ()
    weights: Optional[Tuple[float, ...]] = None
    valid_prefixes: Tuple[str, ...] = ()
    valid_weights: Optional[Tuple[float, ...]] = None
    split: str = "99,1,0"
    tokenizer_model: Optional[str] = None
    cache_path: Optional[str] = None

    def to_json(self) -> dict:
        return {
            "mock": self.mock,
            "data_path": list(self.prefixes),
            "weights": None if self.weights is None else list(self.weights),
            "valid_data_path": list(self.valid_prefixes) or None,
            "valid_weights": None if self.valid_weights is None else list(self.valid_weights),
            "split": None if self.valid_prefixes or self.mock else self.split,
            "tokenizer_model": self.tokenizer_model,
        }


@dataclasses.dataclass(frozen=True)
class RunPlan:
    args: argparse.Namespace
    name: str
    run_dir: Path
    shape: object                # megatron_csl.model.ModelShape
    model_size: Optional[str]
    seq_length: int
    vocab_size: int
    padded_vocab_size: int
    compression: str             # canonical spec string
    n_params: int                # N: non-embedding parameters
    n_params_total: int
    tp: int
    pp: int
    dp: int
    world_size: int
    micro_batch_size: int
    global_batch_size: int
    num_microbatches: int
    train_iters: int
    train_tokens: int            # D: tokens the run trains on
    lr: float
    min_lr: float
    warmup_iters: int
    data: DataPlan

    @property
    def tokens_per_iter(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def tokens_per_param(self) -> float:
        return self.train_tokens / self.n_params


def parse_data_path(tokens: Optional[List[str]], flag: str) -> Tuple[Tuple[str, ...], Optional[Tuple[float, ...]]]:
    """Megatron-style prefixes: ``P1 P2 ...`` or ``W1 P1 W2 P2 ...`` (weights need not sum to 1)."""
    if not tokens:
        return (), None

    def as_float(text):
        try:
            return float(text)
        except ValueError:
            return None

    if len(tokens) == 1 or as_float(tokens[0]) is None:
        numeric = [t for t in tokens if as_float(t) is not None]
        if numeric:
            raise ConfigError(f"{flag}: {numeric[0]!r} looks like a weight but the list does not "
                              f"start with one; use either PREFIX ... or W1 PREFIX1 W2 PREFIX2 ...")
        return tuple(tokens), None
    if len(tokens) % 2:
        raise ConfigError(f"{flag}: weighted prefixes come in pairs W1 PREFIX1 W2 PREFIX2 ..., got "
                          f"{len(tokens)} values: {' '.join(tokens)}")
    weights, prefixes = [], []
    for weight_text, prefix in zip(tokens[0::2], tokens[1::2]):
        weight = as_float(weight_text)
        if weight is None or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"{flag}: weight {weight_text!r} (for {prefix!r}) must be a number "
                              f">= 0")
        weights.append(weight)
        prefixes.append(prefix)
    if sum(weights) <= 0:
        raise ConfigError(f"{flag}: the weights {weights} sum to 0; at least one must be positive")
    return tuple(prefixes), tuple(weights)


def _shape(args):
    from megatron_csl.model import ModelShape, get_shape

    base = None
    if args.model_size is not None:
        try:
            base = get_shape(args.model_size)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"--model-size {args.model_size!r}: {e}") from None
    fields = {}
    for field in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                  "num_query_groups"):
        explicit = getattr(args, field)
        fields[field] = explicit if explicit is not None else (
            getattr(base, field) if base is not None else None)
    try:
        return ModelShape(**fields)
    except ValueError as e:
        raise ConfigError(f"model shape: {e}") from None


def _data_plan(args, run_dir: Path) -> DataPlan:
    prefixes, weights = parse_data_path(args.data_path, "--data-path")
    valid_prefixes, valid_weights = parse_data_path(args.valid_data_path, "--valid-data-path")
    if args.data_path:
        from .data import check_split

        check_split(args.split, separate_validation=bool(valid_prefixes))
    cache = args.data_cache_path or str(run_dir / "data_cache")
    return DataPlan(mock=bool(args.mock_data), prefixes=prefixes, weights=weights,
                    valid_prefixes=valid_prefixes, valid_weights=valid_weights, split=args.split,
                    tokenizer_model=args.tokenizer_model, cache_path=cache)


def _vocab_size(args) -> int:
    if args.tokenizer_model is None:
        return args.vocab_size
    from .data import sentencepiece_vocab_size

    spm_size = sentencepiece_vocab_size(args.tokenizer_model)
    if args.vocab_size is not None and args.vocab_size != spm_size:
        raise ConfigError(f"--vocab-size {args.vocab_size} does not match the SentencePiece model "
                          f"{args.tokenizer_model!r}, whose vocabulary has {spm_size} pieces; "
                          f"drop --vocab-size or set it to {spm_size}")
    return spm_size


def resolve_plan(args: argparse.Namespace, world_size: int) -> RunPlan:
    """Decide everything about the run from its arguments and the number of ranks."""
    from megatron_csl.compression import SpecError, parse_spec
    from megatron_csl.model import LayoutError, count_parameters, padded_vocab_size, \
        validate_parallel_layout

    run_dir = Path(args.run_dir).resolve()
    shape = _shape(args)
    try:
        compression = parse_spec(args.compression).canonical
    except SpecError as e:
        raise ConfigError(f"--compression {args.compression!r}: {e}") from None

    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    vocab_size = _vocab_size(args)
    padded = padded_vocab_size(vocab_size, tp, args.make_vocab_size_divisible_by)
    try:
        validate_parallel_layout(shape, tp, pp, world_size, compression=compression,
                                 vocab_size=padded)
    except LayoutError as e:
        raise ConfigError(f"parallel layout: {e}") from None
    dp = world_size // (tp * pp)

    mbs = args.micro_batch_size
    gbs = args.global_batch_size if args.global_batch_size is not None else mbs * dp
    if gbs % (mbs * dp):
        valid = [mbs * dp * k for k in range(1, 5)]
        raise ConfigError(
            f"--global-batch-size {gbs} is not divisible by --micro-batch-size {mbs} x "
            f"data-parallel size {dp} (= {mbs * dp}; world {world_size} / TP {tp} / PP {pp}); "
            f"use a multiple of {mbs * dp}, e.g. {', '.join(map(str, valid))}")

    counts = count_parameters(shape, vocab_size)
    n = counts.non_embedding
    tokens_per_iter = gbs * args.seq_length
    if args.train_iters is not None:
        train_iters = args.train_iters
    else:
        target = args.train_tokens if args.train_tokens is not None else args.tokens_per_param * n
        # Round up: the run trains on at least the requested budget; run.json records the exact D.
        train_iters = max(1, math.ceil(target / tokens_per_iter))
    warm = cfg.warmup_iters(args, train_iters)
    if args.lr_decay_style != "constant" and train_iters < 2:
        raise ConfigError(f"{train_iters} training iteration is too few for a decaying learning "
                          f"rate; train longer or use --lr-decay-style constant")

    if args.bf16 and not _cuda_available():
        raise ConfigError("--bf16 needs a GPU: megatron-core 0.16.1's mixed-precision optimizer "
                          "does not run on a CPU; drop --bf16 (fp32) on this machine")
    if args.transformer_impl == "te":
        try:
            import transformer_engine  # noqa: F401
        except ImportError:
            raise ConfigError("--transformer-impl te needs Transformer Engine, which is not "
                              "installed; use --transformer-impl local") from None

    return RunPlan(
        args=args, name=args.name or run_dir.name, run_dir=run_dir, shape=shape,
        model_size=args.model_size, seq_length=args.seq_length, vocab_size=vocab_size,
        padded_vocab_size=padded, compression=compression, n_params=n,
        n_params_total=count_parameters(shape, padded).total, tp=tp, pp=pp, dp=dp,
        world_size=world_size, micro_batch_size=mbs, global_batch_size=gbs,
        num_microbatches=gbs // (mbs * dp), train_iters=train_iters,
        train_tokens=train_iters * tokens_per_iter, lr=args.lr, min_lr=cfg.min_lr(args),
        warmup_iters=warm, data=_data_plan(args, run_dir))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def versions() -> dict:
    import platform
    import subprocess

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    try:
        from megatron.core import package_info

        out["megatron_core"] = package_info.__version__
    except Exception:  # pragma: no cover - megatron is a hard dependency
        out["megatron_core"] = None
    try:
        from importlib.metadata import version

        out["megatron_csl"] = version("megatron_csl")
    except Exception:
        out["megatron_csl"] = None
    try:
        repo = Path(__file__).resolve().parents[2]
        out["git_commit"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
            timeout=10).stdout.strip() or None
    except Exception:
        out["git_commit"] = None
    return out


def run_json(plan: RunPlan, restarts: int = 0) -> dict:
    """The run.json document (docs/interfaces.md)."""
    s = plan.shape
    args = {k: v for k, v in vars(plan.args).items()}
    return {
        "name": plan.name,
        "model": {
            "num_layers": s.num_layers, "hidden_size": s.hidden_size,
            "num_attention_heads": s.num_attention_heads, "ffn_hidden_size": s.ffn_hidden_size,
            "num_query_groups": s.num_query_groups, "seq_length": plan.seq_length,
            "vocab_size": plan.vocab_size, "padded_vocab_size": plan.padded_vocab_size,
            "model_size": plan.model_size,
        },
        "N": plan.n_params,
        "N_total": plan.n_params_total,
        "D": plan.train_tokens,
        "tokens_per_param": plan.tokens_per_param,
        "compression": plan.compression,
        "parallel": {"tp": plan.tp, "pp": plan.pp, "dp": plan.dp, "world_size": plan.world_size,
                     "use_distributed_optimizer": bool(plan.args.use_distributed_optimizer)},
        "train_iters": plan.train_iters,
        "global_batch_size": plan.global_batch_size,
        "micro_batch_size": plan.micro_batch_size,
        "num_microbatches": plan.num_microbatches,
        "lr": plan.lr,
        "min_lr": plan.min_lr,
        "lr_warmup_iters": plan.warmup_iters,
        "seed": plan.args.seed,
        "precision": "bf16" if plan.args.bf16 else "fp32",
        "data": plan.data.to_json(),
        "versions": versions(),
        "restarts": restarts,
        "hostname": os.uname().nodename,
        "args": args,
    }
