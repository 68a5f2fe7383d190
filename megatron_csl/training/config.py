"""The run configuration: one typed, versioned schema from which everything else is generated.

``PretrainConfig`` groups dataclasses (model, parallel, precision, budget, optimizer, data,
checkpoint, logging, compression) as megatron-core's ``TransformerConfig`` and torchtitan's job
config do. Each field's metadata names its command-line flag (Megatron-LM's name wherever
Megatron-LM has one), its help, aliases and whether Megatron-LM has the flag. From that one
schema come:

* the argparse parser of ``launch/pretrain.py`` (``build_parser``),
* the ``--config FILE.yaml`` keys (flag names, flat, or grouped as ``model: {num_layers: 2}``),
* the YAML schema (``yaml_schema``), the flag table of docs/pretrain.md (``flags_table.py``),
* run.json's ``config`` document (``to_dict`` / ``from_dict``, with ``CONFIG_VERSION``).

``parse_args(argv)`` returns a checked ``PretrainConfig``; no argparse Namespace leaves this
module. Megatron-LM flags this project cannot honour (``REFUSED``) fail with a message naming the
flag (exit code 2) instead of argparse's bare "unrecognized arguments".

Everything here is pure argument handling; turning a configuration into a run plan (model shape,
parameter counts, iterations) lives in ``plan.py``.
"""
import argparse
import dataclasses
import difflib
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from .errors import ConfigError

# run.json "config_version". 1: the flat argparse dict under "args" (before the typed config);
# 2: the grouped document under "config".
CONFIG_VERSION = 2

DEFAULT_WARMUP_FRACTION = 0.01
DEFAULT_MIN_LR_RATIO = 0.1

MEGATRON = "megatron"      # the flag exists in Megatron-LM with the same meaning
EXTENSION = "extension"    # this project's own flag

_UNSET = object()


# ---------------------------------------------------------------------------- value types
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


def _probability(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return value


for _fn, _name in ((_positive_int, "int"), (_nonnegative_int, "int"), (_positive_float, "float"),
                   (_nonnegative_float, "float"), (_fraction, "float"), (_probability, "float")):
    _fn.__name__ = _name   # argparse says "invalid int value", not "invalid _positive_int value"


@dataclasses.dataclass(frozen=True)
class Alias:
    """Another spelling of a flag. ``deprecated``: today's name kept working, with a note."""

    option: str
    note: str
    deprecated: bool = True


def option(default=None, help="", *, type=None, choices=None, nargs=None, metavar=None,
           origin=MEGATRON, aliases: Tuple[Alias, ...] = (), megatron_default=_UNSET,
           supported=None, gpu_only=False, note=None, flag=None):
    """A configuration field and everything the parser, YAML and docs need to know about it.

    supported: values Megatron-LM accepts but this project refuses: a predicate ``value -> bool``
    paired with the reason, ``(predicate, reason)``.
    """
    meta = dict(help=help, type=type, choices=choices, nargs=nargs, metavar=metavar,
                origin=origin, aliases=tuple(aliases), megatron_default=megatron_default,
                supported=supported, gpu_only=gpu_only, note=note, flag=flag)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type_copy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def type_copy(value):
    return list(value) if isinstance(value, list) else dict(value)


# ---------------------------------------------------------------------------- the schema
@dataclasses.dataclass
class ModelConfig:
    model_size: Optional[str] = option(
        None, "a ladder entry (megatron_csl.model.LADDER, e.g. 10m); explicit shape flags "
        "override its fields", metavar="NAME", origin=EXTENSION)
    use_mcore_models: bool = option(
        True, "use megatron-core's GPTModel (always the case here; accepted for Megatron-LM "
        "scripts)", supported=(lambda v: v, "only megatron-core models exist here (no legacy "
                                             "Megatron-LM models)"))
    num_layers: Optional[int] = option(None, "transformer layers", type=_positive_int)
    hidden_size: Optional[int] = option(None, "model width", type=_positive_int)
    ffn_hidden_size: Optional[int] = option(None, "SwiGLU inner width", type=_positive_int)
    num_attention_heads: Optional[int] = option(None, "attention heads", type=_positive_int)
    group_query_attention: bool = option(
        False, "grouped-query attention with --num-query-groups key/value heads")
    num_query_groups: Optional[int] = option(
        None, "key/value heads for grouped-query attention (Megatron-LM uses it only with "
        "--group-query-attention; here it is also taken alone, as before)", type=_positive_int)
    kv_channels: Optional[int] = option(
        None, "channels per attention head; must be --hidden-size / --num-attention-heads here",
        type=_positive_int)
    seq_length: Optional[int] = option(None, "tokens per training sequence", type=_positive_int)
    max_position_embeddings: Optional[int] = option(
        None, "longest sequence the model supports (RoPE: at least --seq-length)",
        type=_positive_int)
    position_embedding_type: str = option(
        "rope", "position embedding", choices=("learned_absolute", "rope", "mrope", "relative",
                                               "none"),
        megatron_default="learned_absolute",
        supported=(lambda v: v == "rope", "this project trains Llama-style models with rotary "
                                          "position embeddings only"))
    rotary_base: int = option(10000, "RoPE base (theta)", type=_positive_int)
    rotary_percent: float = option(
        1.0, "fraction of each head's channels that RoPE rotates", type=_probability,
        supported=(lambda v: v == 1.0, "the compressed layers and exports assume RoPE over the "
                                       "whole head (1.0)"))
    swiglu: bool = option(True, "SwiGLU MLP (always on here)", megatron_default=False,
                          supported=(lambda v: v, "the model is Llama-style: SwiGLU only"))
    normalization: str = option(
        "RMSNorm", "normalization layer", choices=("LayerNorm", "RMSNorm"),
        megatron_default="LayerNorm",
        supported=(lambda v: v == "RMSNorm", "the model is Llama-style: RMSNorm only"))
    untie_embeddings_and_output_weights: bool = option(
        True, "separate input embedding and output layer (always untied here)",
        megatron_default=False,
        supported=(lambda v: v, "tied embeddings are not supported; the model is Llama-style"))
    disable_bias_linear: bool = option(
        True, "no biases in linear layers (always here)", megatron_default=False,
        supported=(lambda v: v, "the compressed linear layers have no bias"))
    attention_dropout: float = option(0.0, "dropout on attention probabilities",
                                      type=_probability, megatron_default=0.1)
    hidden_dropout: float = option(0.0, "dropout on hidden states", type=_probability,
                                   megatron_default=0.1)
    init_method_std: float = option(0.02, "standard deviation of the weight initialisation",
                                    type=_positive_float)
    vocab_size: Optional[int] = option(
        None, "tokenizer vocabulary size (required with --mock-data and no --tokenizer-model; "
        "with --tokenizer-model it must equal the model's vocabulary size)", type=_positive_int)
    make_vocab_size_divisible_by: int = option(
        128, "pad the embedding table to a multiple of this (and of the TP size)",
        type=_positive_int)
    transformer_impl: str = option(
        "local", "layer implementation: local (megatron-core's own layers, CPU or GPU) or te / "
        "transformer_engine (Transformer Engine, GPU)",
        choices=("local", "te", "transformer_engine"), megatron_default="transformer_engine")
    attention: str = option(
        "megatron", "core attention of the local implementation: megatron-core's own (default; "
        "dense is then exactly megatron's local-spec model) or sdpa (torch's "
        "scaled_dot_product_attention; same numerics within fp32 rounding, no parameters)",
        choices=("megatron", "sdpa"), origin=EXTENSION)
    fused_kernels: str = option(
        "none", "fused kernels for the dense parts of the local layers: none (megatron-core's "
        "modules) or liger (liger-kernel's Triton RMSNorm, SwiGLU and cross-entropy at TP=1; "
        "needs CUDA and pip install liger-kernel)", choices=("none", "liger"), origin=EXTENSION,
        gpu_only=True)
    torch_compile: bool = option(
        False, "torch.compile (inductor) the parts of each transformer layer that compile "
        "without graph breaks: the RMSNorms and the SwiGLU activation (linears stay eager)",
        origin=EXTENSION)
    use_cpu_initialization: Optional[bool] = option(
        None, "initialise weights on the CPU from one master weight, so any TP size gives the "
        "same model (default: the model package's choice)")

    @property
    def impl(self) -> str:
        """``local`` or ``te`` (Megatron-LM's ``transformer_engine`` is the same thing)."""
        return "te" if self.transformer_impl in ("te", "transformer_engine") else "local"


@dataclasses.dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = option(1, "tensor-parallel ranks", type=_positive_int)
    pipeline_model_parallel_size: int = option(1, "pipeline stages", type=_positive_int)
    context_parallel_size: int = option(
        1, "context-parallel ranks", type=_positive_int,
        supported=(lambda v: v == 1, "context parallelism is not supported here; use 1"))
    sequence_parallel: bool = option(
        False, "sequence parallelism over the tensor-parallel ranks: accepted with TP=1 (no "
        "effect, says so), refused with TP>1", note="with TP>1 refused (exit 2): not tested "
        "with the compressed layers")
    use_distributed_optimizer: bool = option(
        False, "shard optimizer state over data-parallel ranks")
    recompute_activations: bool = option(
        False, "selective activation recomputation (same as --recompute-granularity selective)")
    recompute_granularity: Optional[str] = option(
        None, "recompute activations in the backward pass to save memory",
        choices=("full", "selective"))
    recompute_method: Optional[str] = option(
        None, "with --recompute-granularity full: uniform or block", choices=("uniform", "block"))
    recompute_num_layers: Optional[int] = option(
        None, "with --recompute-granularity full: layers per recomputed chunk",
        type=_positive_int)

    @property
    def recompute(self) -> Optional[str]:
        return self.recompute_granularity or ("selective" if self.recompute_activations else None)


@dataclasses.dataclass
class PrecisionConfig:
    bf16: bool = option(False, "bf16 parameters with fp32 main weights (GPU; a CPU run trains "
                               "in fp32 and says so)", gpu_only=True)
    fp16: bool = option(False, "fp16 parameters with fp32 main weights and loss scaling (GPU; a "
                               "CPU run trains in fp32 and says so)", gpu_only=True)
    fp8_format: Optional[str] = option(
        None, "FP8 GEMMs through Transformer Engine (needs --transformer-impl te and a GPU)",
        choices=("e4m3", "hybrid"), gpu_only=True)
    fp8_recipe: str = option(
        "delayed", "FP8 scaling recipe (with --fp8-format)",
        choices=("delayed", "tensorwise", "mxfp8", "blockwise"), megatron_default="delayed")

    @property
    def name(self) -> str:
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


@dataclasses.dataclass
class BudgetConfig:
    micro_batch_size: int = option(1, "sequences per micro-batch and data-parallel rank",
                                   type=_positive_int)
    global_batch_size: Optional[int] = option(
        None, "sequences per optimizer step (default: micro-batch x data-parallel)",
        type=_positive_int)
    train_iters: Optional[int] = option(None, "optimizer steps", type=_positive_int)
    train_samples: Optional[int] = option(
        None, "sequences to train on; iterations = ceil(samples / global batch)",
        type=_positive_int)
    train_tokens: Optional[int] = option(
        None, "token budget D; iterations = ceil(D / (global batch x seq length))",
        type=_positive_int, origin=EXTENSION)
    tokens_per_param: Optional[float] = option(
        None, "token budget D = ratio x N (N = non-embedding parameters)",
        type=_positive_float, origin=EXTENSION)


@dataclasses.dataclass
class OptimizerConfig:
    lr: Optional[float] = option(None, "peak learning rate (required)", type=_positive_float)
    min_lr: Optional[float] = option(
        None, f"final learning rate (default here: {DEFAULT_MIN_LR_RATIO} x --lr)",
        type=_nonnegative_float, megatron_default=0.0)
    lr_warmup_fraction: Optional[float] = option(
        None, f"fraction of the decay iterations with linear warm-up (default here "
              f"{DEFAULT_WARMUP_FRACTION} unless --lr-warmup-iters is given)", type=_fraction)
    lr_warmup_iters: Optional[int] = option(None, "iterations of linear warm-up",
                                            type=_nonnegative_int, megatron_default=0)
    lr_decay_iters: Optional[int] = option(
        None, "iterations over which the learning rate decays (default: all of them)",
        type=_positive_int)
    lr_decay_style: str = option("cosine", "learning-rate decay",
                                 choices=("cosine", "linear", "constant"),
                                 megatron_default="linear")
    weight_decay: float = option(0.1, "AdamW weight decay", type=_nonnegative_float,
                                 megatron_default=0.01)
    adam_beta1: float = option(0.9, "Adam beta1", type=_fraction)
    adam_beta2: float = option(0.95, "Adam beta2", type=_fraction, megatron_default=0.999)
    adam_eps: float = option(1e-8, "Adam epsilon", type=_positive_float)
    clip_grad: float = option(1.0, "clip the global gradient norm to this (0 disables)",
                              type=_nonnegative_float)
    seed: int = option(1234, "random seed (initialisation, data order, dropout)",
                       type=_nonnegative_int)


@dataclasses.dataclass
class DataConfig:
    data_path: Optional[List[str]] = option(
        None, "Megatron indexed-dataset prefixes (PREFIX.bin/.idx), optionally weighted: W1 "
        "PREFIX1 W2 PREFIX2 ...", nargs="+", metavar="PREFIX")
    valid_data_path: Optional[List[str]] = option(
        None, "separate validation prefixes (default: a split of --data-path)", nargs="+",
        metavar="PREFIX")
    split: str = option("99,1,0", "train,validation,test weights for splitting --data-path")
    tokenizer_type: Optional[str] = option(
        None, "tokenizer kind: a SentencePiece model (--tokenizer-model) or NullTokenizer "
        "(--vocab-size, with --mock-data)",
        choices=("SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer",
                 "NullTokenizer", "HuggingFaceTokenizer", "GPT2BPETokenizer", "TikTokenizer"),
        supported=(lambda v: v is None or v in ("SentencePieceTokenizer",
                                                 "GPTSentencePieceTokenizer", "Llama2Tokenizer",
                                                 "NullTokenizer"),
                   "the data here is tokenized with SentencePiece (or mock data with "
                   "NullTokenizer)"))
    tokenizer_model: Optional[str] = option(
        None, "SentencePiece model the data was tokenized with (checks the vocabulary)",
        metavar="SPM_MODEL")
    mock_data: bool = option(False, "megatron's deterministic MockGPTDataset (tests and smoke "
                                    "runs)")
    eod_mask_loss: bool = option(False, "no loss on end-of-document tokens")
    data_cache_path: Optional[str] = option(
        None, "where GPTDataset index files are cached (default: RUN_DIR/data_cache)",
        metavar="DIR")
    num_workers: Optional[int] = option(None, "DataLoader workers (default: 2 with CUDA, 0 on "
                                              "CPU)", type=_nonnegative_int, megatron_default=2)


@dataclasses.dataclass
class CheckpointConfig:
    save: Optional[str] = option(
        None, "checkpoint directory (Megatron-LM layout: DIR/iter_0000100/, "
        "DIR/latest_checkpointed_iteration.txt); default: RUN_DIR/checkpoints", metavar="DIR",
        note="Megatron-LM layout; the run records go there too unless --run-dir is given")
    load: Optional[str] = option(
        None, "resume from this checkpoint directory's newest checkpoint; starts fresh when it "
        "holds none (so --save DIR --load DIR resumes a requeued job)", metavar="DIR",
        note="also reads checkpoints written by Megatron-LM (with --finetune: model weights)",
        aliases=(Alias("--load", "`--load` without a directory (a switch before): resume from "
                                 "the run's own checkpoints; use --load DIR"),
                 Alias("--no-load", "the default: do not resume")))
    resume: bool = option(False, "resume from the run's own checkpoint directory (what the "
                                 "bare --load switch did)", origin=EXTENSION, flag=False)
    run_dir: Optional[str] = option(
        None, "where run.json, metrics.jsonl and result.json go (default: --save)",
        metavar="DIR", origin=EXTENSION)
    name: Optional[str] = option(None, "run name recorded in run.json (default: the run "
                                       "directory's name)", origin=EXTENSION)
    save_interval: Optional[int] = option(
        None, "checkpoint every this many iterations (default: only at the end and on "
        "preemption)", type=_positive_int)
    ckpt_format: str = option(
        "torch_dist", "checkpoint format", choices=("torch_dist", "torch", "zarr", "fsdp_dtensor"),
        supported=(lambda v: v == "torch_dist", "checkpoints are megatron-core "
                                                "dist_checkpointing (torch_dist) only"))
    no_load_optim: bool = option(False, "do not load the optimizer state when loading")
    no_load_rng: bool = option(False, "do not load the RNG states when loading")
    finetune: bool = option(
        False, "load only the model weights from --load and start at iteration 0 (e.g. "
        "compressed training from a dense checkpoint)")
    keep_last_checkpoints: int = option(0, "delete older checkpoints beyond this many (0 keeps "
                                           "all)", type=_nonnegative_int, origin=EXTENSION)
    exit_interval: Optional[int] = option(
        None, "stop with a checkpoint after this iteration, exit code 3 (requeue)",
        type=_positive_int)
    exit_duration_in_mins: Optional[float] = option(
        None, "stop with a checkpoint once the run has trained this many minutes, exit code 3",
        type=_positive_float)


@dataclasses.dataclass
class LoggingConfig:
    log_interval: int = option(10, "print and log the training loss every this many "
                                   "iterations", type=_positive_int, megatron_default=100)
    eval_interval: int = option(1000, "validate every this many iterations (and at the end)",
                                type=_positive_int)
    eval_iters: int = option(20, "validation batches (of the global batch size) per "
                                 "evaluation; the same batches every time", type=_positive_int,
                             megatron_default=100)
    tensorboard_dir: Optional[str] = option(
        None, "TensorBoard event directory (default: RUN_DIR/tensorboard)", metavar="DIR")
    tensorboard: bool = option(True, "write TensorBoard events", origin=EXTENSION)
    log_throughput: bool = option(False, "log tokens/s (always logged here)",
                                  note="tokens/s is always logged here")
    wandb_project: Optional[str] = option(
        None, "Weights & Biases project (wandb is not installed here: a notice says metrics go "
        "to metrics.jsonl and TensorBoard only)",
        note="accepted; no Weights & Biases logging here (a start-up note says so)")
    wandb_exp_name: Optional[str] = option(None, "Weights & Biases run name",
                                           note="accepted with --wandb-project (no effect)")
    verbose: bool = option(False, "show every start-up warning of the libraries (hidden by "
                                  "default)", origin=EXTENSION)


@dataclasses.dataclass
class CompressionConfig:
    compression: str = option(
        "dense", "compression format of the transformer linears, e.g. dense, w4, w4a4, s50, "
        "s50+w4 (megatron_csl.compression.parse_spec)", metavar="SPEC", origin=EXTENSION)


GROUPS = (("model", ModelConfig), ("parallel", ParallelConfig), ("precision", PrecisionConfig),
          ("budget", BudgetConfig), ("optimizer", OptimizerConfig), ("data", DataConfig),
          ("checkpoint", CheckpointConfig), ("logging", LoggingConfig),
          ("compression", CompressionConfig))


@dataclasses.dataclass
class PretrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    precision: PrecisionConfig = dataclasses.field(default_factory=PrecisionConfig)
    budget: BudgetConfig = dataclasses.field(default_factory=BudgetConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    logging: LoggingConfig = dataclasses.field(default_factory=LoggingConfig)
    compression: CompressionConfig = dataclasses.field(default_factory=CompressionConfig)
    # Deprecation notes and "no effect here" notices from parsing (printed at start-up; not part
    # of the configuration itself).
    notices: List[str] = dataclasses.field(default_factory=list, compare=False, repr=False)

    def to_dict(self) -> dict:
        """The grouped document run.json stores under "config" (with ``CONFIG_VERSION``)."""
        return {group: dataclasses.asdict(getattr(self, group)) for group, _ in GROUPS}

    @classmethod
    def from_dict(cls, doc: dict) -> "PretrainConfig":
        """The inverse of ``to_dict``; unknown groups or keys are a ConfigError."""
        if not isinstance(doc, dict):
            raise ConfigError(f"a configuration must be a mapping of groups, got {doc!r}")
        unknown = sorted(set(doc) - {g for g, _ in GROUPS})
        if unknown:
            raise ConfigError(f"unknown configuration group(s) {unknown}; valid: "
                              f"{[g for g, _ in GROUPS]}")
        flat = {}
        for group, values in doc.items():
            if not isinstance(values, dict):
                raise ConfigError(f"configuration group {group!r} must be a mapping")
            flat.update(values)
        return cls.from_flat(flat)

    def flat(self) -> Dict[str, Any]:
        """{field name: value} over every group (field names are unique across groups)."""
        out = {}
        for group, _ in GROUPS:
            out.update(dataclasses.asdict(getattr(self, group)))
        return out

    @classmethod
    def from_flat(cls, values: dict) -> "PretrainConfig":
        """A configuration from {field name: value}; fields not given keep their defaults."""
        cfg = cls()
        for key, value in values.items():
            if key not in FIELD_GROUP:
                close = difflib.get_close_matches(key, list(FIELD_GROUP), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(f"unknown configuration key {key!r}{hint}")
            setattr(getattr(cfg, FIELD_GROUP[key]), key, value)
        return cfg

    def replace(self, **values) -> "PretrainConfig":
        """A copy with some fields (by flat name) changed."""
        flat = self.flat()
        flat.update(values)
        out = PretrainConfig.from_flat(flat)
        out.notices = list(self.notices)
        return out


def _fields():
    """(group, dataclasses.Field) of every configuration field, in schema order."""
    for group, cls in GROUPS:
        for f in dataclasses.fields(cls):
            yield group, f


FIELD_GROUP: Dict[str, str] = {f.name: group for group, f in _fields()}


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _is_bool(f) -> bool:
    return f.type in (bool, Optional[bool], "bool", "Optional[bool]")


def _is_negative_switch(f) -> bool:
    """A switch whose name already says "no" (no_load_optim, no_load_rng): it only turns on."""
    return f.name.startswith("no_")


# ---------------------------------------------------------------------------- refused flags
@dataclasses.dataclass(frozen=True)
class Refused:
    """A Megatron-LM flag this project does not support, and why."""

    option: str
    reason: str
    takes_value: bool = True
    allowed_value: Optional[str] = None   # a value that is harmless (e.g. "1"), if any


REFUSED = (
    Refused("--num-experts", "mixture-of-experts models are not supported here (dense "
                             "Llama-style GPT only)"),
    Refused("--moe-router-topk", "mixture-of-experts models are not supported here"),
    Refused("--moe-grouped-gemm", "mixture-of-experts models are not supported here", False),
    Refused("--expert-model-parallel-size", "expert parallelism needs mixture-of-experts "
                                            "models, which are not supported here",
            allowed_value="1"),
    Refused("--expert-tensor-parallel-size", "mixture-of-experts models are not supported here",
            allowed_value="1"),
    Refused("--virtual-pipeline-model-parallel-size", "interleaved (virtual) pipeline stages "
                                                      "are not supported here"),
    Refused("--num-layers-per-virtual-pipeline-stage", "interleaved (virtual) pipeline stages "
                                                       "are not supported here"),
    Refused("--use-legacy-models", "only megatron-core models exist here", False),
    Refused("--multi-latent-attention", "multi-latent attention (DeepSeek) is not supported "
                                        "here", False),
    Refused("--mtp-num-layers", "multi-token prediction is not supported here"),
    Refused("--qk-layernorm", "the model is Llama-style: no QK layer norm", False),
    Refused("--add-qkv-bias", "the compressed linear layers have no bias", False),
    Refused("--apply-layernorm-1p", "the model uses RMSNorm (no LayerNorm-1p)", False),
    Refused("--squared-relu", "the model is Llama-style: SwiGLU only", False),
    Refused("--vocab-file", "GPT-2 BPE tokenizers are not supported here; use "
                            "--tokenizer-model SPM_MODEL"),
    Refused("--merge-file", "GPT-2 BPE tokenizers are not supported here; use "
                            "--tokenizer-model SPM_MODEL"),
    Refused("--use-flash-attn", "needs Transformer Engine on a GPU; the local implementation "
                                "has flash attention through --attention sdpa", False),
    Refused("--tp-comm-overlap", "needs Transformer Engine userbuffers on a GPU; not supported "
                                 "here", False),
    Refused("--overlap-grad-reduce", "gradient-reduce overlap is not supported here", False),
    Refused("--overlap-param-gather", "parameter-gather overlap is not supported here", False),
    Refused("--use-torch-fsdp2", "FSDP is not supported here; use --use-distributed-optimizer",
            False),
    Refused("--use-custom-fsdp", "FSDP is not supported here; use --use-distributed-optimizer",
            False),
    Refused("--pretrained-checkpoint", "give the checkpoint as --load DIR with --finetune"),
    Refused("--use-checkpoint-args", "this project's run.json and --config hold the arguments",
            False),
    Refused("--lr-decay-samples", "give --lr-decay-iters (sample-based schedules are not "
                                  "supported here)"),
    Refused("--lr-warmup-samples", "give --lr-warmup-iters (sample-based schedules are not "
                                   "supported here)"),
    Refused("--optimizer", "AdamW is the only optimizer here", allowed_value="adam"),
)
REFUSED_BY_OPTION = {r.option: r for r in REFUSED}


class _RefusedAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        refused = REFUSED_BY_OPTION[option_string]
        if refused.allowed_value is not None and values == refused.allowed_value:
            return   # e.g. --expert-model-parallel-size 1: the same as not giving it
        shown = option_string if values in (None, []) else f"{option_string} {values}"
        raise ConfigError(f"{shown}: a Megatron-LM flag that megatron-csl does not support "
                          f"({refused.reason})")


class _LoadAction(argparse.Action):
    """``--load DIR`` (Megatron-LM) and today's bare ``--load`` switch (deprecated)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string == "--no-load":
            namespace.load, namespace.resume = None, False
        elif values is None:
            namespace.resume = True
            _notes(namespace).append(
                "--load without a directory is deprecated (it was a switch): resuming from the "
                "run's own checkpoints; Megatron-LM's form is --load DIR")
        else:
            namespace.load = values


def _notes(namespace) -> list:
    if getattr(namespace, "_notices", None) is None:
        namespace._notices = []
    return namespace._notices


# ---------------------------------------------------------------------------- the parser
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError (exit code 2) instead of exiting."""

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            unknown = [t for t in message.split(":", 1)[1].split() if t.startswith("--")]
            hints = []
            for token in unknown:
                close = difflib.get_close_matches(token.split("=", 1)[0], list(OPTIONS), n=2)
                if close:
                    hints.append(f"{token}: did you mean {' or '.join(close)}?")
            message += ("; these are neither launch/pretrain.py flags nor Megatron-LM flags it "
                        "knows (docs/pretrain.md lists them all)")
            if hints:
                message += "; " + "; ".join(hints)
        raise ConfigError(f"{self.prog}: {message}")


def _add_field(group, f) -> None:
    meta = f.metadata
    if meta.get("flag") is False:
        return
    name = flag_name(f.name)
    kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=meta["help"] or None)
    if f.name == "load":
        group.add_argument(name, "--no-load", action=_LoadAction, nargs="?", metavar="DIR",
                           **kwargs)
        return
    if _is_bool(f) and _is_negative_switch(f):
        # Megatron-LM's --no-load-optim style switches: no "--no-no-load-optim" counterpart.
        group.add_argument(name, action="store_const", const=True, **kwargs)
        return
    if _is_bool(f):
        group.add_argument(name, action=argparse.BooleanOptionalAction, **kwargs)
        return
    for key in ("type", "choices", "nargs", "metavar"):
        if meta.get(key) is not None:
            kwargs[key] = meta[key]
    group.add_argument(name, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """launch/pretrain.py's parser, generated from the schema. Every default is SUPPRESS: the
    parsed namespace holds only what the command line gave, the dataclasses hold the defaults."""
    p = _Parser(prog="pretrain.py", allow_abbrev=False,
                description="Pretrain one Llama-style GPT model with megatron-core. Megatron-LM's "
                            "flags keep Megatron-LM's meaning; docs/pretrain.md has the table.")
    p.add_argument("--config", metavar="YAML", default=argparse.SUPPRESS,
                   help="YAML file with flag defaults (command-line flags override it)")
    for group_name, cls in GROUPS:
        g = p.add_argument_group(group_name)
        for f in dataclasses.fields(cls):
            _add_field(g, f)
    g = p.add_argument_group("Megatron-LM flags refused here (exit code 2, with the reason)")
    for r in REFUSED:
        g.add_argument(r.option, action=_RefusedAction, nargs="?" if r.takes_value else 0,
                       default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def _option_table() -> Dict[str, Tuple[str, bool]]:
    """Option string -> (field name, is_negative) for every flag the schema generates."""
    table = {}
    for _, f in _fields():
        if f.metadata.get("flag") is False:
            continue
        name = flag_name(f.name)
        table[name] = (f.name, False)
        if (_is_bool(f) and not _is_negative_switch(f)) or f.name == "load":
            table["--no-" + name[2:]] = (f.name, True)
    return table


OPTIONS = _option_table()
FIELDS = {f.name: f for _, f in _fields()}

BUDGET_FIELDS = ("train_iters", "train_samples", "train_tokens", "tokens_per_param")
DATA_SOURCE_FIELDS = ("mock_data", "data_path")
WARMUP_FIELDS = ("lr_warmup_fraction", "lr_warmup_iters")
# A command-line flag from one of these groups replaces every YAML key of the same group.
OVERRIDE_GROUPS = (BUDGET_FIELDS, DATA_SOURCE_FIELDS, WARMUP_FIELDS)


# ---------------------------------------------------------------------------- YAML
def read_yaml_config(config_path: str) -> Dict[str, Any]:
    """A ``--config`` file as {field name: value}: keys are flag names (with or without dashes,
    ``-`` or ``_`` alike), flat or grouped under the configuration's group names."""
    try:
        with open(config_path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {config_path!r}: file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {config_path!r}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {config_path!r}: expected a mapping of flag names to values, "
                          f"got {type(data).__name__}")
    items = []
    for key, value in data.items():
        if str(key) in dict(GROUPS) and isinstance(value, dict):
            items.extend(value.items())
        else:
            items.append((key, value))
    valid = sorted(n[2:] for n, (_, neg) in OPTIONS.items() if not neg)
    out = {}
    for raw_key, value in items:
        key = str(raw_key).lstrip("-").replace("_", "-")
        entry = OPTIONS.get("--" + key)
        if entry is None or entry[1]:
            close = difflib.get_close_matches(key, valid, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"--config {config_path!r}: unknown key {raw_key!r}{hint}; valid keys "
                              f"are the flag names: {', '.join(valid)}")
        name = entry[0]
        out[name] = _yaml_value(FIELDS[name], value, raw_key, config_path)
    # Today's `load: true` (the switch) is `resume` now; `load: DIR` is Megatron-LM's --load.
    if isinstance(out.get("load"), bool):
        out["resume"] = out.pop("load")
    return out


def _yaml_value(f, value, raw_key, config_path):
    """Check and convert one YAML value with the same rules as the command line."""
    where = (f"--config {config_path!r}: {raw_key!r}" if not str(config_path).startswith("sweep")
             else f"{config_path}: {raw_key!r}")
    if value is None:
        return None
    if _is_bool(f) or (f.name == "load" and isinstance(value, bool)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    meta = f.metadata
    if meta.get("nargs") in ("+", "*"):
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(f"{where} is an empty list")
        return [str(v) for v in values]
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where} takes a single value, got {value!r}")
    convert = meta.get("type") or str
    try:
        value = convert(str(value) if not isinstance(value, (int, float)) or convert is str
                        else repr(value) if isinstance(value, float) else str(value))
    except (argparse.ArgumentTypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{where}: invalid choice {value!r} (choose from "
                          f"{', '.join(map(str, meta['choices']))})")
    return value


def coerce_values(values: dict, where: str) -> Dict[str, Any]:
    """{field name or flag name: YAML value} checked and converted as a ``--config`` file's
    values are (used by the sweeps, which fill the configuration directly)."""
    out = {}
    for raw_key, value in values.items():
        name = str(raw_key).lstrip("-").replace("-", "_")
        if name not in FIELDS:
            raise ConfigError(f"{where}: unknown key {raw_key!r}")
        out[name] = _yaml_value(FIELDS[name], value, raw_key, where)
    if isinstance(out.get("load"), bool):
        out["resume"] = out.pop("load")
    return out


def yaml_schema() -> dict:
    """A JSON-Schema document of the grouped configuration (generated, never written by hand)."""
    def prop(f):
        meta = f.metadata
        if _is_bool(f):
            kind = {"type": "boolean"}
        elif meta.get("nargs"):
            kind = {"type": "array", "items": {"type": "string"}}
        elif meta.get("type") and meta["type"].__name__ == "int":
            kind = {"type": "integer"}
        elif meta.get("type") and meta["type"].__name__ == "float":
            kind = {"type": "number"}
        else:
            kind = {"type": "string"}
        if meta.get("choices"):
            kind["enum"] = list(meta["choices"])
        kind["description"] = meta.get("help") or ""
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is not None:
            kind["default"] = default
        return kind

    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"megatron-csl pretraining configuration v{CONFIG_VERSION}",
            "type": "object", "additionalProperties": False,
            "properties": {group: {"type": "object", "additionalProperties": False,
                                   "properties": {f.name: prop(f)
                                                  for f in dataclasses.fields(cls)}}
                           for group, cls in GROUPS}}


# ---------------------------------------------------------------------------- parse + check
def _cli_fields(argv: Sequence[str]) -> set:
    names = set()
    for token in argv:
        if token.startswith("--"):
            entry = OPTIONS.get(token.split("=", 1)[0])
            if entry is not None:
                names.add(entry[0])
    return names


def parse_args(argv: Optional[Sequence[str]] = None) -> "PretrainConfig":
    """Parse flags (over ``--config`` YAML defaults) into a checked PretrainConfig (ConfigError)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    namespace = parser.parse_args(argv)
    given = {k: v for k, v in vars(namespace).items() if not k.startswith("_")}
    notices = list(getattr(namespace, "_notices", None) or [])
    values: Dict[str, Any] = {}
    config_file = given.pop("config", None)
    if config_file:
        from_file = read_yaml_config(config_file)
        cli = _cli_fields(argv)
        for group in OVERRIDE_GROUPS:
            if cli & set(group):
                for name in group:
                    from_file.pop(name, None)
        values.update({k: v for k, v in from_file.items() if v is not None})
    values.update(given)
    cfg = PretrainConfig.from_flat(values)
    cfg.notices = notices
    check_config(cfg)
    return cfg


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_config(cfg: PretrainConfig) -> None:
    """Checks that need only the configuration itself (no world size, model package or files)."""
    m, b, o, d, c = cfg.model, cfg.budget, cfg.optimizer, cfg.data, cfg.checkpoint
    _require(c.run_dir is not None or c.save is not None,
             "--run-dir is required (the run directory to write), or --save DIR (checkpoints and "
             "run records go there)")
    _require(o.lr is not None, "--lr is required (the peak learning rate, e.g. 3e-4)")

    for group, f in _fields():
        rule = f.metadata.get("supported")
        value = getattr(getattr(cfg, group), f.name)
        if rule is not None and not rule[0](value):
            shown = flag_name(f.name) if value is True else (
                "--no-" + f.name.replace("_", "-") if value is False
                else f"{flag_name(f.name)} {value}")
            raise ConfigError(f"{shown}: not supported by megatron-csl ({rule[1]})")

    budget = [flag_name(f) for f in BUDGET_FIELDS if getattr(b, f) is not None]
    _require(len(budget) == 1,
             "give exactly one token budget: --train-iters N, --train-samples S, --train-tokens D "
             f"or --tokens-per-param R (got {', '.join(budget) if budget else 'none'})")

    _require(not (d.mock_data and d.data_path),
             "--mock-data and --data-path are exclusive: use one data source")
    _require(d.mock_data or d.data_path,
             "no training data: give --data-path PREFIX [PREFIX ...] or --mock-data")
    _require(not (d.mock_data and d.valid_data_path),
             "--valid-data-path needs --data-path (it cannot be combined with --mock-data)")
    _require(m.vocab_size is not None or d.tokenizer_model is not None,
             "the vocabulary size is unknown: give --vocab-size N or --tokenizer-model SPM_MODEL")
    _require(m.seq_length is not None, "--seq-length is required (tokens per sequence)")
    _require(not (o.lr_warmup_fraction is not None and o.lr_warmup_iters is not None),
             "--lr-warmup-fraction and --lr-warmup-iters are exclusive: give one")
    if o.min_lr is not None:
        _require(o.min_lr <= o.lr, f"--min-lr {o.min_lr} must not exceed --lr {o.lr}")
    _require(not (cfg.precision.bf16 and cfg.precision.fp16),
             "--bf16 and --fp16 are exclusive: give one")
    _require(not (c.finetune and c.load is None),
             "--finetune needs --load DIR (the checkpoint whose weights to start from)")
    if m.max_position_embeddings is not None and m.seq_length is not None:
        _require(m.max_position_embeddings >= m.seq_length,
                 f"--max-position-embeddings {m.max_position_embeddings} is shorter than "
                 f"--seq-length {m.seq_length}")

    shape_fields = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size")
    if m.model_size is None:
        missing = [flag_name(f) for f in shape_fields if getattr(m, f) is None]
        _require(not missing, f"no model shape: give --model-size NAME or all of "
                              f"{', '.join(missing)}")


def warmup_iters(cfg: PretrainConfig, train_iters: int) -> int:
    """Warm-up iterations from --lr-warmup-iters or --lr-warmup-fraction (default 1%) of the
    decay iterations."""
    o = cfg.optimizer
    if o.lr_warmup_iters is not None:
        warm = o.lr_warmup_iters
    else:
        fraction = (DEFAULT_WARMUP_FRACTION if o.lr_warmup_fraction is None
                    else o.lr_warmup_fraction)
        warm = int(round(fraction * (o.lr_decay_iters or train_iters)))
    if warm >= train_iters:
        raise ConfigError(f"warm-up of {warm} iterations must be shorter than the {train_iters} "
                          f"training iterations: lower --lr-warmup-iters/--lr-warmup-fraction")
    return warm


def min_lr(cfg: PretrainConfig) -> float:
    o = cfg.optimizer
    return o.lr * DEFAULT_MIN_LR_RATIO if o.min_lr is None else o.min_lr


def to_argv(cfg: PretrainConfig) -> List[str]:
    """Command-line tokens that reproduce ``cfg`` (fields equal to their default are left out)."""
    default = PretrainConfig().flat()
    out: List[str] = []
    for name, value in cfg.flat().items():
        f = FIELDS[name]
        if value == default[name] or value is None or f.metadata.get("flag") is False:
            if name == "resume" and value:
                out.append("--load")
            continue
        flag = flag_name(name)
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            out += [flag] + [str(v) for v in value]
        else:
            out += [flag, repr(value) if isinstance(value, float) else str(value)]
    return out


def config_from_run_json(doc: dict) -> PretrainConfig:
    """The configuration a run.json records: version 2 ("config"), or version 1 (today's flat
    argparse dict under "args", written before the typed configuration)."""
    version = doc.get("config_version", 1)
    if version == CONFIG_VERSION and isinstance(doc.get("config"), dict):
        return PretrainConfig.from_dict(doc["config"])
    if version == 1 and isinstance(doc.get("args"), dict):
        flat = dict(doc["args"])
        flat.pop("config", None)
        if isinstance(flat.get("load"), bool) or flat.get("load") is None:
            flat["resume"] = bool(flat.pop("load", False))
        return PretrainConfig.from_flat({k: v for k, v in flat.items() if k in FIELD_GROUP})
    raise ConfigError(f"run.json config_version {version!r} is not one this code reads "
                      f"(1 or {CONFIG_VERSION})")
