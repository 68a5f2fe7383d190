"""Export a megatron GPTModel (Llama recipe) as a Hugging Face ``LlamaForCausalLM`` directory.

Writes ``config.json``, ``model.safetensors`` (sharded with an index above `max_shard_size`),
``generation_config.json`` and, when the run was tokenized with a SentencePiece model, the
tokenizer (``tokenizer.model`` plus a ``tokenizer.json`` that encodes exactly like it).

Weights: ``compressed`` exports every compressed linear as the forward pass saw it
(``spec.compress_weight``: pruned, quantized, dequantized), so evaluating the export matches the
trained model; ``master`` exports the latent (uncompressed) weights. Activation quantization has
no place in a plain Llama: the export says so in config.json (``megatron_csl`` block) and in the
returned notes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping, Optional

import torch
from tqdm import tqdm

from megatron_csl.convert.errors import ConversionError
from megatron_csl.convert.hf_llama import LlamaDims, compressed_linear_names, hf_llama_config, megatron_to_hf

WEIGHT_CHOICES = ("compressed", "master")
DEFAULT_MAX_SHARD_SIZE = "5GB"
# Probe strings for checking the exported tokenizer against SentencePiece itself: leading, repeated
# and trailing whitespace (where Llama's Metaspace pre-tokenizer and SentencePiece's dummy prefix
# part), newlines, tabs, digits, accents and byte fallback.
TOKENIZER_PROBES = ("Hello world, this is a test.", "The quick brown fox jumps over the lazy dog 1234.",
                    "Zürich, naïve café — déjà vu", " one", "  two  spaces  ", "\nline\n\n after",
                    "\ttab", " ", "中文 ✓ 🚀")


def compressed_state(state: Mapping[str, torch.Tensor], dims: LlamaDims, compression: str,
                     *, progress: bool = True) -> dict[str, torch.Tensor]:
    """`state` with every compressed linear replaced by its forward-pass weight."""
    from megatron_csl.compression import parse_spec

    spec = parse_spec(compression)
    out = dict(state)
    if not spec.compresses_weights:
        return out
    with torch.no_grad():
        for name in tqdm(compressed_linear_names(dims), desc=f"compress {spec.canonical}",
                         disable=not progress, leave=False):
            out[name] = spec.compress_weight(state[name])
    return out


def activation_note(compression: str) -> Optional[str]:
    from megatron_csl.compression import parse_spec

    spec = parse_spec(compression)
    if not spec.compresses_activations:
        return None
    return (f"compression {spec.canonical!r} quantizes the inputs of every transformer linear layer "
            f"({spec.a_bits:g} bits per activation) during training; a plain Hugging Face Llama cannot "
            "express activation quantization, so this export computes with full-precision "
            "activations and its outputs differ from the trained model's")


def export_config(run, dims: LlamaDims, *, weights: str, dtype: torch.dtype, iteration: int,
                  tokenizer_ids: dict, rms_norm_eps: float = 1e-5):
    """The LlamaConfig for `run`, with a ``megatron_csl`` block describing the export."""
    from megatron_csl.compression import parse_spec

    spec = parse_spec(run.compression)
    info = {
        "compression": spec.canonical,
        "weights": weights,
        "weights_note": ("compressed linears as the forward pass saw them (pruned/quantized, then "
                         "dequantized)" if weights == "compressed" and spec.compresses_weights
                         else "latent (master) weights, no weight compression applied"),
        "activation_quantization": None,
        "source_run": run.raw.get("name"),
        "source_iteration": iteration,
        "vocab_size_unpadded": run.vocab_size,
    }
    note = activation_note(run.compression)
    if note:
        info["activation_quantization"] = {"a_bits": spec.a_bits, "applied_in_this_export": False,
                                           "note": note}
    rope_base = run.args.get("rotary_base", 10000)
    return hf_llama_config(
        dims, max_position_embeddings=run.seq_length, rms_norm_eps=rms_norm_eps, rope_theta=rope_base,
        dtype=dtype, megatron_csl=info, **tokenizer_ids)


def write_safetensors(state: Mapping[str, torch.Tensor], directory: Path,
                      max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """model.safetensors, or model-0000X-of-0000N.safetensors + index when larger than a shard."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(dict(state), max_shard_size=max_shard_size)
    for filename, names in tqdm(split.filename_to_tensors.items(), desc="write safetensors",
                                disable=len(split.filename_to_tensors) < 2, leave=False):
        save_file({n: state[n].contiguous() for n in names}, str(directory / filename),
                  metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return sorted(split.filename_to_tensors)


def export_tokenizer(spm_path: Optional[str], directory: Path) -> tuple[dict, list[str]]:
    """Copy the SentencePiece model and write a transformers tokenizer that encodes like it.

    Not ``LlamaTokenizer``: transformers rebuilds that class with a ``Metaspace`` pre-tokenizer, which
    adds the dummy-prefix "▁" only when the text does not already start with a space, so ``" one"``
    loses a token (SentencePiece's ``add_dummy_prefix`` always adds it: ``["▁", "▁one"]``).
    transformers' generic fast tokenizer (``PreTrainedTokenizerFast``) converts the model following
    its own normalizer spec instead; it is saved with that class in ``tokenizer_config.json`` so
    ``AutoTokenizer`` loads ``tokenizer.json`` as written. No BOS or EOS is added to encoded text:
    the training data had none at the start of a document (EOS only between documents).

    Returns (token ids for the config, notes). No tokenizer is written when the run had none.
    """
    if not spm_path:
        return {}, ["the run has no SentencePiece tokenizer (--tokenizer-model); no tokenizer exported"]
    src = Path(spm_path)
    if not src.is_file():
        return {}, [f"the run's tokenizer {src} no longer exists; no tokenizer exported"]
    import sentencepiece as spm
    from transformers import PreTrainedTokenizerFast

    proc = spm.SentencePieceProcessor(model_file=str(src))
    ids = {"bos_token_id": proc.bos_id() if proc.bos_id() >= 0 else None,
           "eos_token_id": proc.eos_id() if proc.eos_id() >= 0 else None,
           "pad_token_id": proc.pad_id() if proc.pad_id() >= 0 else None}
    shutil.copyfile(src, directory / "tokenizer.model")
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(directory), add_bos_token=False,
                                                            add_eos_token=False)
    except (ValueError, OSError, ImportError) as err:  # a transformers without the SentencePiece converter
        import transformers

        return ids, [f"transformers {transformers.__version__} cannot convert the SentencePiece model "
                     f"to a fast tokenizer ({err}); only tokenizer.model is exported: encode with "
                     "sentencepiece"]
    tokenizer.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the name every transformers version knows
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    notes = []
    mismatched = [p for p in TOKENIZER_PROBES
                  if tokenizer.encode(p, add_special_tokens=False) != proc.encode(p)]
    if mismatched:
        notes.append(f"the exported Hugging Face tokenizer encodes {len(mismatched)} of "
                     f"{len(TOKENIZER_PROBES)} probe strings differently from SentencePiece (first: "
                     f"{mismatched[0]!r}); use tokenizer.model with sentencepiece for exact token ids")
    return ids, notes


def export_hf(loaded, output_dir: Path, *, weights: str = "compressed",
              max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE, progress: bool = True) -> dict:
    """Write the Hugging Face export of `loaded` (a `loading.LoadedModel`) into `output_dir`
    (an existing, empty staging directory). Returns a summary (files, notes)."""
    if weights not in WEIGHT_CHOICES:
        raise ConversionError(f"--weights {weights!r}: choose one of {', '.join(WEIGHT_CHOICES)}")
    run, dims = loaded.run, loaded.dims()
    state = loaded.state_dict()
    if weights == "compressed":
        state = compressed_state(state, dims, run.compression, progress=progress)
    hf_state = megatron_to_hf(state, dims)
    dtype = next(iter(hf_state.values())).dtype
    output_dir = Path(output_dir)
    tokenizer_ids, notes = export_tokenizer(run.tokenizer_model, output_dir)
    config = export_config(run, dims, weights=weights, dtype=dtype, iteration=loaded.location.iteration,
                           tokenizer_ids=tokenizer_ids, rms_norm_eps=loaded.model.config.layernorm_epsilon)
    config.save_pretrained(str(output_dir))
    from transformers import GenerationConfig

    GenerationConfig.from_model_config(config).save_pretrained(str(output_dir))
    files = write_safetensors(hf_state, output_dir, max_shard_size)
    note = activation_note(run.compression)
    if note:
        notes.insert(0, note)
    if run.padded_vocab_size != run.vocab_size:
        notes.append(f"the embedding and output layer keep megatron's padded vocabulary "
                     f"({run.padded_vocab_size} rows for {run.vocab_size} tokens) so logits match "
                     "training exactly; ids >= the tokenizer's size never occur")
    return {"files": files, "notes": notes, "weights": weights, "compression": run.compression,
            "dtype": str(dtype).replace("torch.", "")}
