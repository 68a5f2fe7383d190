"""Post-training quantization of a finished dense run: quantize, evaluate, write a run directory.

    ptq_run(load, compression, method, output)

1. `load` must be a finished dense run (result.json status "finished", compression "dense"),
   and its newest checkpoint the one it finished with; `output` must not exist.
2. The model is built at TP=1 on this process and the checkpoint loaded into it
   (megatron_csl.convert.loading: any saved layout reshards).
3. Calibration (GPTQ): the first `calibration_samples` samples of the run's *training* dataset,
   in the order the run trained on them (never validation). The transformer layers are quantized
   in order; each layer's Hessians come from a forward pass of the model whose earlier layers are
   already quantized (as the GPTQ paper does), its four linears from the same pass.
   RTN: `CompressionSpec.compress_weight` applied once to every block linear's weight, the
   function quantization-aware training applies in each forward.
4. Validation loss on exactly the run's own validation samples (the first eval_iters x
   global_batch_size of its validation split, mean of per-micro-batch token means, as the
   trainer's evaluate), so the PTQ loss is comparable with the run's and with QAT runs.
5. The run directory is written under a temporary name next to `output` and renamed at the end:
   run.json (the source run's, with the format key and a "ptq" record), metrics.jsonl (one eval
   row) and result.json, which tools/fit_laws.py reads as format "<spec>@ptq-<method>".

Only the four block linears are quantized (as in QAT runs: embeddings and the output layer stay
bf16/fp32), with weight-only formats.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from megatron_csl.ptq.gptq import check_gptq_quantizer, gptq_quantize
from megatron_csl.runfiles import RESULT_JSON

METHODS = ("rtn", "gptq")
BLOCK_LINEARS = ("self_attention.linear_qkv", "self_attention.linear_proj", "mlp.linear_fc1",
                 "mlp.linear_fc2")
DEFAULT_CALIBRATION_SAMPLES = 128


class PTQError(ValueError):
    """Bad input to post-training quantization; the message names the value and what is valid."""


# ---- checks (before any work) ----------------------------------------------------------------
def check_request(load, compression: str, method: str, output, calibration_samples: int):
    """(CheckpointLocation, CompressionSpec, result.json of the source) or PTQError."""
    from megatron_csl.compression import SpecError, parse_spec
    from megatron_csl.convert.errors import ConversionError
    from megatron_csl.convert.run_info import locate_checkpoint

    if method not in METHODS:
        raise PTQError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if not isinstance(calibration_samples, int) or calibration_samples < 1:
        raise PTQError(f"--calibration-samples must be a positive integer, got "
                       f"{calibration_samples!r}")
    output = Path(output)
    if output.exists() or output.is_symlink():
        raise PTQError(f"--output {output} already exists; choose a new directory (PTQ never "
                       f"overwrites a run)")
    if not output.absolute().parent.is_dir():
        raise PTQError(f"--output {output}: its parent directory does not exist")
    try:
        spec = parse_spec(compression)
    except SpecError as err:
        raise PTQError(f"--compression: {err}") from None
    if spec.is_dense or spec.activation is not None or spec.weight is None and \
            spec.sparsity_format is None:
        raise PTQError(f"--compression {compression!r}: post-training quantization compresses "
                       f"weights only; give a weight format such as w4, w3:g128, fp4 or s50+w4")
    if spec.learned:
        raise PTQError(f"--compression {compression!r}: a learned step (lsq) exists only in "
                       f"training; use the fixed-rule format (e.g. w4)")
    if method == "gptq":
        try:
            check_gptq_quantizer(spec)
        except ValueError as err:
            raise PTQError(f"--compression {compression!r}: {err}") from None
    try:
        location = locate_checkpoint(load)
    except ConversionError as err:
        raise PTQError(f"--load: {err}") from None
    run_dir = location.run.run_dir
    result_path = run_dir / RESULT_JSON
    try:
        result = json.loads(result_path.read_text())
    except FileNotFoundError:
        raise PTQError(f"--load {run_dir} is not finished (no result.json): PTQ quantizes the "
                       f"model a run finished with") from None
    except json.JSONDecodeError as err:
        raise PTQError(f"{result_path} is not valid JSON ({err})") from None
    if result.get("status") != "finished":
        raise PTQError(f"--load {run_dir}: status {result.get('status')!r}, not 'finished'")
    if location.run.compression.strip() != "dense":
        raise PTQError(f"--load {run_dir} was trained with compression "
                       f"{location.run.compression!r}; PTQ starts from a dense run")
    if result.get("steps") is not None and location.iteration != result["steps"]:
        raise PTQError(f"--load {location.checkpoint_dir} is iteration {location.iteration}, but "
                       f"the run finished at step {result['steps']}: load the run directory (or "
                       f"its final checkpoint)")
    return location, spec, result


# ---- data --------------------------------------------------------------------------------------
def run_datasets(location):
    """(plan, train dataset, validation dataset) exactly as the run built them (same seed, same
    requested sample counts, so the same shuffles)."""
    from megatron_csl.convert.megatron_export import plan_for_layout
    from megatron_csl.training import data as data_mod

    plan = plan_for_layout(location.run, 1, 1, location.run.run_dir)
    train_n, valid_n = data_mod.samples_needed(plan)
    train, valid = data_mod.build_datasets(plan, train_n, valid_n)
    return plan, train, valid


def _micro_batches(dataset, first: int, count: int, micro_batch_size: int):
    from megatron_csl.training import data as data_mod

    sampler = data_mod.BatchSampler(first, 1, count, micro_batch_size, 1, 0)
    return list(data_mod.make_loader(dataset, sampler, 0, pin_memory=False))


def calibration_batches(plan, train_dataset, samples: int):
    """The first `samples` training samples, in micro-batches of the run's size."""
    mbs = plan.micro_batch_size
    count = -(-samples // mbs) * mbs
    return _micro_batches(train_dataset, 0, count, mbs)


def _forward_loss(model, batch) -> float:
    tokens, labels = batch["tokens"], batch["labels"]
    position_ids = batch["position_ids"]
    losses = model(tokens, position_ids, None, labels=labels).float()
    mask = batch["loss_mask"].float()
    return float((losses * mask).sum() / mask.sum().clamp(min=1.0))


@torch.no_grad()
def validation_loss(model, plan, valid_dataset) -> float:
    """The trainer's evaluate at DP=1: eval_iters global batches from validation sample 0, each
    the mean of its micro-batches' token-mean losses; the mean over the global batches."""
    model.eval()
    gbs, mbs = plan.global_batch_size, plan.micro_batch_size
    eval_iters = plan.config.logging.eval_iters   # the trainer's validation batches
    total = 0.0
    for k in range(eval_iters):
        batches = _micro_batches(valid_dataset, k * gbs, gbs, mbs)
        total += sum(_forward_loss(model, b) for b in batches) / len(batches)
    return total / eval_iters


# ---- quantization -------------------------------------------------------------------------------
def block_linears(model):
    """[(layer index, name, module)] of the compressible linears, in forward order."""
    out = []
    for i, layer in enumerate(model.decoder.layers):
        for name in BLOCK_LINEARS:
            module = layer.get_submodule(name)
            out.append((i, f"decoder.layers.{i}.{name}", module))
    return out


@torch.no_grad()
def quantize_rtn(model, spec, progress=None) -> None:
    for _, _, module in block_linears(model):
        module.weight.copy_(spec.compress_weight(module.weight))
        if progress is not None:
            progress.update(1)


@torch.no_grad()
def layer_hessians(model, modules, batches) -> dict:
    """{module: 2 X^T X / n} over the calibration tokens entering each module (float64)."""
    sums = {m: None for m in modules}
    counts = {m: 0 for m in modules}

    def hook(module, args):
        x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        h = 2.0 * x.T @ x
        sums[module] = h if sums[module] is None else sums[module] + h
        counts[module] += x.shape[0]

    handles = [m.register_forward_pre_hook(hook) for m in modules]
    try:
        for batch in batches:
            model(batch["tokens"], batch["position_ids"], None)
    finally:
        for h in handles:
            h.remove()
    return {m: sums[m] / counts[m] for m in modules}


@torch.no_grad()
def quantize_gptq(model, spec, batches, progress=None) -> None:
    quantizer = check_gptq_quantizer(spec)
    linears = block_linears(model)
    model.eval()
    for layer in range(len(model.decoder.layers)):
        modules = [m for i, _, m in linears if i == layer]
        hessians = layer_hessians(model, modules, batches)
        for module in modules:
            module.weight.copy_(gptq_quantize(module.weight, hessians[module], quantizer))
            if progress is not None:
                progress.update(1)


# ---- the run directory ----------------------------------------------------------------------------
def format_key_of(spec, method: str) -> str:
    from megatron_csl.scaling.formats import format_key

    return format_key(spec.canonical, f"ptq-{method}")


def _write_run_dir(staging: Path, name: str, location, source_result: dict, key: str,
                   record: dict, val_loss: float, wall_s: float) -> None:
    from megatron_csl.training.rundir import (METRICS_JSONL, RESULT_JSON, RUN_JSON,
                                              atomic_write_json)
    from megatron_csl.atomic import atomic_write_text

    run = dict(location.run.raw)
    run.update(name=name, compression=key, ptq=record)
    atomic_write_json(staging / RUN_JSON, run)
    steps = source_result.get("steps")
    D = source_result.get("D", run.get("D"))
    atomic_write_text(staging / METRICS_JSONL,
                      json.dumps({"step": steps, "tokens": D, "val_loss": val_loss}) + "\n")
    atomic_write_json(staging / RESULT_JSON, {
        "val_loss": val_loss, "N": source_result.get("N", run.get("N")), "D": D,
        "compression": key, "status": "finished", "train_loss": None, "steps": steps,
        "wall_s": wall_s, "ptq": record,
    })


def ptq_run(load, compression: str, method: str, output, *,
            calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES, show_progress: bool = True,
            log=print) -> dict:
    """Quantize a finished dense run after training and write its run directory (see module
    docstring); returns result.json's content. PTQError on bad input, nothing written then."""
    t0 = time.time()
    location, spec, source_result = check_request(load, compression, method, output,
                                                  calibration_samples)
    output = Path(output).absolute()
    from megatron_csl.convert.loading import load_model

    loaded = load_model(location)
    model = loaded.model
    plan, train_ds, valid_ds = run_datasets(location)
    linears = block_linears(model)
    from tqdm import tqdm

    with tqdm(total=len(linears), desc=f"ptq {method} {spec.canonical}", unit="linear",
              disable=not show_progress) as progress:
        if method == "rtn":
            quantize_rtn(model, spec, progress)
            calibration = 0
        else:
            batches = calibration_batches(plan, train_ds, calibration_samples)
            calibration = sum(int(b["tokens"].shape[0]) for b in batches)
            quantize_gptq(model, spec, batches, progress)
    val_loss = validation_loss(model, plan, valid_ds)
    key = format_key_of(spec, method)
    record = {"method": method, "spec": spec.canonical, "source_run": str(location.run.run_dir),
              "source_checkpoint": str(location.checkpoint_dir),
              "source_val_loss": source_result.get("val_loss"),
              "calibration_samples": calibration, "calibration_split": "train",
              "quantized": [name for _, name, _ in linears]}
    staging = output.parent / f".{output.name}.ptq-tmp-{os.getpid()}"
    try:
        staging.mkdir()
        _write_run_dir(staging, output.name, location, source_result, key, record, val_loss,
                       time.time() - t0)
        if output.exists():
            raise PTQError(f"--output {output} appeared while PTQ ran; left it alone")
        os.rename(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    dense_loss = source_result.get("val_loss")
    log(f"[ptq] {key}: validation loss {val_loss:.4f} (the dense run: "
        f"{'?' if dense_loss is None else f'{dense_loss:.4f}'}); wrote {output}")
    return json.loads((output / RESULT_JSON).read_text())
