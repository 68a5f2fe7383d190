"""Build the model a run describes and load a checkpoint's weights into it (one process, CPU).

`load_model(location)` reads run.json (through `run_info`), builds the GPTModel with
megatron_csl.model at TP=1 / PP=1 on this process and loads the model part of the dist checkpoint
into it: dist checkpoints store every tensor by its global shape, so any saved layout reshards to
the single-process one. The optimizer state is not read.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.hf_llama import LlamaDims
from megatron_csl.convert.run_info import CheckpointLocation, RunInfo, check_format_version


@dataclass
class LoadedModel:
    model: torch.nn.Module        # megatron GPTModel at TP=1, PP=1, eval mode
    location: CheckpointLocation
    common: dict                  # the checkpoint's common state (iteration, scheduler, ...)

    @property
    def run(self) -> RunInfo:
        return self.location.run

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full state dict (local-spec names), without megatron's `_extra_state` entries."""
        return full_state_dict(self.model)

    def dims(self) -> LlamaDims:
        return dims_of(self.run)


def dims_of(run: RunInfo) -> LlamaDims:
    shape = run.model_shape()
    return LlamaDims(num_layers=shape.num_layers, hidden_size=shape.hidden_size,
                     num_attention_heads=shape.num_attention_heads, num_query_groups=shape.kv_heads,
                     ffn_hidden_size=shape.ffn_hidden_size, vocab_size=run.padded_vocab_size,
                     head_dim=shape.head_dim)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach() for name, t in model.state_dict().items()
            if torch.is_tensor(t) and not name.endswith("_extra_state")}


def params_dtype(run: RunInfo) -> torch.dtype:
    """The dtype the checkpoint stores model weights in (bf16 runs keep bf16 parameters)."""
    return torch.bfloat16 if run.precision == "bf16" else torch.float32


def init_single_process(seed: int = 0) -> None:
    """A world of one (gloo) with megatron's parallel state at TP=1, PP=1 and the CPU patches."""
    from megatron_csl.compat import initialize_cpu_parallel

    initialize_cpu_parallel(1, 1, seed=seed)


def build_model(run: RunInfo, *, compression: str | None = None, dtype: torch.dtype | None = None,
                tp: int = 1, pp: int = 1):
    """The run's GPTModel at the current parallel state (`tp`/`pp` must match it)."""
    from megatron_csl.model import build_gpt_model, llama_transformer_config

    args = run.args
    config = llama_transformer_config(
        run.model_shape(), tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        init_method_std=args.get("init_method_std", 0.02), use_cpu_initialization=True,
        params_dtype=dtype or params_dtype(run), pipeline_dtype=dtype or params_dtype(run))
    return build_gpt_model(config, vocab_size=run.padded_vocab_size, seq_length=run.seq_length,
                           compression=compression or run.compression, impl="local")


# A probe tensor every GPT checkpoint has, whichever pipeline stage saved it.
_PROBE_KEY = "decoder.final_layernorm.weight"


def model_key_prefix(ckpt: Path) -> str:
    """The prefix of model tensor keys in the checkpoint: "module." when the trainer saved its
    DistributedDataParallel wrapper (launch/pretrain.py does), "" for a bare GPTModel."""
    from megatron.core import dist_checkpointing

    keys = dist_checkpointing.load_tensors_metadata(str(ckpt)).keys()
    for key in keys:
        if key.endswith(_PROBE_KEY):
            return key[: -len(_PROBE_KEY)]
    raise ConversionError(f"checkpoint {ckpt} holds no GPT model (no '{_PROBE_KEY}' among "
                          f"{len(keys)} tensors); it is not a megatron-csl training checkpoint")


def load_into(model: torch.nn.Module, location: CheckpointLocation) -> dict:
    """Load the model part of the checkpoint into `model` (any layout); returns the common state."""
    from megatron.core import dist_checkpointing

    from megatron_csl.training.checkpointing import sharded_state_metadata

    ckpt = Path(location.checkpoint_dir)
    common = dist_checkpointing.load_common_state_dict(str(ckpt))
    check_format_version(common, ckpt)
    use_distopt = bool(location.run.args.get("use_distributed_optimizer", False))
    metadata = sharded_state_metadata(use_distopt)
    prefix = model_key_prefix(ckpt)
    request = {"model": model.sharded_state_dict(prefix=prefix, metadata=metadata)}
    try:
        loaded = dist_checkpointing.load(request, str(ckpt))
    except Exception as err:  # megatron raises several types for mismatched or damaged shards
        raise ConversionError(f"cannot load the model from {ckpt}: {type(err).__name__}: {err}. "
                              "The checkpoint does not match the model in run.json, or it is damaged") from err
    state = {k[len(prefix):]: v for k, v in loaded["model"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing:
        raise ConversionError(f"checkpoint {ckpt} lacks model tensors: {missing[:5]}"
                              f"{' ...' if len(missing) > 5 else ''}")
    return common


def load_model(location: CheckpointLocation, *, seed: int = 0) -> LoadedModel:
    """Build the run's model on this process (TP=1, PP=1) and load the checkpoint into it."""
    init_single_process(seed)
    model = build_model(location.run)
    common = load_into(model, location)
    model.eval()
    return LoadedModel(model=model, location=location, common=common)
