"""Turn a checked configuration into a run plan: model shape, parameter counts, parallel layout,
budget, and where the run records and checkpoints go.

Everything in the plan is decided before any process group or model exists, so a bad layout or
budget fails at once (ConfigError, exit code 2) with the values involved. The plan is what
run.json records (with the configuration and its version).
"""
import dataclasses
import math
import os
from pathlib import Path
from typing import List, Optional, Tuple

from megatron_csl.runfiles import CHECKPOINTS_DIR, DATA_CACHE_DIR, TENSORBOARD_DIR

from . import budget as budget_rules
from . import config as cfg
from .config import CONFIG_VERSION, PretrainConfig
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
    config: PretrainConfig
    name: str
    run_dir: Path                # run.json, metrics.jsonl, result.json
    save_dir: Path               # checkpoints (Megatron-LM layout)
    load_dir: Optional[Path]     # where to resume or fine-tune from (None: start fresh)
    tensorboard_dir: Optional[Path]
    precision: str               # what the run trains in: fp32, bf16 or fp16
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
    lr_decay_iters: int
    data: DataPlan
    notices: Tuple[str, ...] = ()   # one line each, printed at start-up

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


def _shape(m: cfg.ModelConfig):
    from megatron_csl.model import ModelShape, get_shape

    base = None
    if m.model_size is not None:
        try:
            base = get_shape(m.model_size)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"--model-size {m.model_size!r}: {e}") from None
    fields = {}
    for field in ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                  "num_query_groups"):
        explicit = getattr(m, field)
        fields[field] = explicit if explicit is not None else (
            getattr(base, field) if base is not None else None)
    if m.group_query_attention and m.num_query_groups is None:
        fields["num_query_groups"] = 1      # Megatron-LM's default with --group-query-attention
    try:
        shape = ModelShape(**fields)
    except ValueError as e:
        raise ConfigError(f"model shape: {e}") from None
    if m.kv_channels is not None and m.kv_channels != shape.head_dim:
        raise ConfigError(f"--kv-channels {m.kv_channels}: this project's models use "
                          f"--hidden-size / --num-attention-heads = {shape.head_dim} channels per "
                          f"head; drop --kv-channels or set it to {shape.head_dim}")
    return shape


def _data_plan(d: cfg.DataConfig, run_dir: Path) -> DataPlan:
    prefixes, weights = parse_data_path(d.data_path, "--data-path")
    valid_prefixes, valid_weights = parse_data_path(d.valid_data_path, "--valid-data-path")
    if d.data_path:
        from .data import check_split

        check_split(d.split, separate_validation=bool(valid_prefixes))
    cache = d.data_cache_path or str(run_dir / DATA_CACHE_DIR)
    return DataPlan(mock=bool(d.mock_data), prefixes=prefixes, weights=weights,
                    valid_prefixes=valid_prefixes, valid_weights=valid_weights, split=d.split,
                    tokenizer_model=d.tokenizer_model, cache_path=cache)


def _vocab_size(config: PretrainConfig) -> int:
    vocab, spm = config.model.vocab_size, config.data.tokenizer_model
    if spm is None:
        return vocab
    from .data import sentencepiece_vocab_size

    spm_size = sentencepiece_vocab_size(spm)
    if vocab is not None and vocab != spm_size:
        raise ConfigError(f"--vocab-size {vocab} does not match the SentencePiece model "
                          f"{spm!r}, whose vocabulary has {spm_size} pieces; "
                          f"drop --vocab-size or set it to {spm_size}")
    return spm_size


def _directories(c: cfg.CheckpointConfig, logging: cfg.LoggingConfig):
    """(run_dir, save_dir, load_dir, tensorboard_dir) from --run-dir/--save/--load."""
    run_dir = Path(c.run_dir if c.run_dir is not None else c.save).resolve()
    save_dir = Path(c.save).resolve() if c.save is not None else run_dir / CHECKPOINTS_DIR
    if c.load is not None:
        load_dir = Path(c.load).resolve()
    else:
        load_dir = save_dir if c.resume else None
    tensorboard = None
    if logging.tensorboard:
        tensorboard = (Path(logging.tensorboard_dir).resolve() if logging.tensorboard_dir
                       else run_dir / TENSORBOARD_DIR)
    return run_dir, save_dir, load_dir, tensorboard


def _precision(config: PretrainConfig, notices: list) -> str:
    """The precision the run trains in; a GPU-only precision on a CPU falls back to fp32 with a
    notice (the flag is valid Megatron-LM, it just cannot take effect here)."""
    p = config.precision
    requested = p.name
    if p.fp8_format is not None:
        if not _cuda_available():
            raise ConfigError(f"--fp8-format {p.fp8_format} needs a GPU with Transformer Engine; "
                              f"this machine has no CUDA device")
        if config.model.impl != "te":
            raise ConfigError(f"--fp8-format {p.fp8_format} needs --transformer-impl "
                              f"transformer_engine (FP8 GEMMs are Transformer Engine's)")
    if requested != "fp32" and not _cuda_available():
        notices.append(f"--{requested}: needs a GPU (megatron-core's mixed-precision optimizer "
                       f"does not run on a CPU); this CPU run trains in fp32")
        return "fp32"
    return requested


def resolve_plan(config: PretrainConfig, world_size: int) -> RunPlan:
    """Decide everything about the run from its configuration and the number of ranks."""
    from megatron_csl.compression import SpecError, parse_spec
    from megatron_csl.model import LayoutError, count_parameters, padded_vocab_size, \
        validate_parallel_layout

    m, par, b, o = config.model, config.parallel, config.budget, config.optimizer
    notices = list(config.notices)
    run_dir, save_dir, load_dir, tensorboard_dir = _directories(config.checkpoint,
                                                                config.logging)
    shape = _shape(m)
    try:
        compression = parse_spec(config.compression.compression).canonical
    except SpecError as e:
        raise ConfigError(f"--compression {config.compression.compression!r}: {e}") from None

    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    vocab_size = _vocab_size(config)
    padded = padded_vocab_size(vocab_size, tp, m.make_vocab_size_divisible_by)
    try:
        validate_parallel_layout(shape, tp, pp, world_size, compression=compression,
                                 vocab_size=padded)
    except LayoutError as e:
        raise ConfigError(f"parallel layout: {e}") from None
    dp = world_size // (tp * pp)

    mbs = b.micro_batch_size
    try:
        gbs = budget_rules.global_batch_size(b.global_batch_size, mbs, dp,
                                             names=("--global-batch-size", "--micro-batch-size"))
    except budget_rules.BudgetError as e:
        raise ConfigError(f"{e} (world {world_size} / TP {tp} / PP {pp})") from None

    counts = count_parameters(shape, vocab_size)
    n = counts.non_embedding
    tokens_per_iter = gbs * m.seq_length
    train_iters = budget_rules.train_iters(
        n_params=n, global_batch=gbs, seq_length=m.seq_length, train_iters=b.train_iters,
        train_samples=b.train_samples, train_tokens=b.train_tokens,
        tokens_per_param=b.tokens_per_param)
    warm = cfg.warmup_iters(config, train_iters)
    decay_iters = o.lr_decay_iters or train_iters
    if warm >= decay_iters:
        raise ConfigError(f"warm-up of {warm} iterations must be shorter than --lr-decay-iters "
                          f"{decay_iters}")
    if o.lr_decay_style != "constant" and train_iters < 2:
        raise ConfigError(f"{train_iters} training iteration is too few for a decaying learning "
                          f"rate; train longer or use --lr-decay-style constant")

    precision = _precision(config, notices)
    if m.impl == "te":
        try:
            import transformer_engine  # noqa: F401
        except ImportError:
            raise ConfigError(f"--transformer-impl {m.transformer_impl} needs Transformer Engine, "
                              f"which is not installed; use --transformer-impl local") from None
    if m.fused_kernels != "none":
        from megatron_csl.layers.fused import FusedKernelsUnavailable, check_fused_kernels

        if m.impl != "local":
            raise ConfigError(f"--fused-kernels {m.fused_kernels} works on the local layers; "
                              f"--transformer-impl {m.transformer_impl} has its own fused norms")
        try:
            check_fused_kernels(m.fused_kernels)
        except FusedKernelsUnavailable as err:
            raise ConfigError(f"--fused-kernels {m.fused_kernels}: {err}") from None
    if par.sequence_parallel and tp == 1:
        notices.append("--sequence-parallel: no effect with --tensor-model-parallel-size 1")
    elif par.sequence_parallel:
        raise ConfigError(f"--sequence-parallel with --tensor-model-parallel-size {tp}: not "
                          f"supported by megatron-csl yet (the compressed layers are not tested "
                          f"with sequence parallelism); drop --sequence-parallel")
    if config.logging.wandb_project is not None:
        notices.append(f"--wandb-project {config.logging.wandb_project}: Weights & Biases "
                       f"logging is not part of megatron-csl; metrics go to metrics.jsonl and "
                       f"TensorBoard")

    return RunPlan(
        config=config, name=config.checkpoint.name or run_dir.name, run_dir=run_dir,
        save_dir=save_dir, load_dir=load_dir, tensorboard_dir=tensorboard_dir,
        precision=precision, shape=shape,
        model_size=m.model_size, seq_length=m.seq_length, vocab_size=vocab_size,
        padded_vocab_size=padded, compression=compression, n_params=n,
        n_params_total=count_parameters(shape, padded).total, tp=tp, pp=pp, dp=dp,
        world_size=world_size, micro_batch_size=mbs, global_batch_size=gbs,
        num_microbatches=gbs // (mbs * dp), train_iters=train_iters,
        train_tokens=train_iters * tokens_per_iter, lr=o.lr, min_lr=cfg.min_lr(config),
        warmup_iters=warm, lr_decay_iters=decay_iters,
        data=_data_plan(config.data, run_dir), notices=tuple(notices))


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
    c = plan.config
    return {
        "config_version": CONFIG_VERSION,
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
                     "use_distributed_optimizer": bool(c.parallel.use_distributed_optimizer)},
        "train_iters": plan.train_iters,
        "global_batch_size": plan.global_batch_size,
        "micro_batch_size": plan.micro_batch_size,
        "num_microbatches": plan.num_microbatches,
        "lr": plan.lr,
        "min_lr": plan.min_lr,
        "lr_warmup_iters": plan.warmup_iters,
        "seed": c.optimizer.seed,
        "precision": plan.precision,
        "checkpoint": {"save": str(plan.save_dir), "format": c.checkpoint.ckpt_format},
        "data": plan.data.to_json(),
        "versions": versions(),
        "restarts": restarts,
        "hostname": os.uname().nodename,
        "config": c.to_dict(),
    }
