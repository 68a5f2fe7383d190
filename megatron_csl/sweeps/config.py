"""Sweep files (launch/sweeps/*.yaml): the schema and its validation.

A sweep names model sizes, compression formats, tokens-per-parameter ratios and seeds (the run
matrix is their product), the training flags all runs share, the data, the per-run layout, and a
cluster profile. Everything is checked here, before any job is rendered, so a typo fails on the
login node with the file, the key and the valid choices, not hours later on the cluster.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Optional

from .errors import SweepError
from .profile import ClusterProfile, load_profile, parse_time_limit
from .yamlio import check_keys, load_yaml_mapping

TOP_KEYS = ("name", "description", "output_dir", "cluster", "models", "formats", "tokens_per_param",
            "seeds", "data", "training", "layout", "per_model", "extra_args", "runs")
REQUIRED_TOP_KEYS = ("name", "cluster", "models", "formats", "tokens_per_param", "training", "data")
DATA_KEYS = ("paths", "mock", "tokenizer_model")
SHAPE_KEYS = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size")
LAYOUT_KEYS = ("nodes", "tasks_per_node", "tensor_model_parallel_size",
               "pipeline_model_parallel_size", "time_limit")

# Flags the sweep itself sets per run; where each belongs in the sweep file instead.
CONTROLLED_KEYS = {
    **{k: "models" for k in SHAPE_KEYS + ("model_size",)},
    "compression": "formats",
    "seed": "seeds",
    "train_iters": "tokens_per_param", "train_tokens": "tokens_per_param",
    "tokens_per_param": "tokens_per_param (top level)",
    "data_path": "data.paths", "tokenizer_model": "data.tokenizer_model", "mock_data": "data.mock",
    "run_dir": "output_dir", "name": "(set by the sweep: the run directory's name)",
    "load": "(set by the sweep: each run resumes from its own checkpoints)",
    "save": "(set by the sweep: RUN_DIR/checkpoints)",
    "tensor_model_parallel_size": "layout", "pipeline_model_parallel_size": "layout",
}
REQUIRED_TRAINING_KEYS = ("seq_length", "global_batch_size")


def pretrain_flags() -> dict:
    """launch/pretrain.py's flags: {key ("seq_length"): True for an on/off flag}, from the
    training configuration's schema, so a sweep accepts exactly the flags training accepts
    (and ``config``: pretrain.py's --config YAML of defaults)."""
    from megatron_csl.training.config import FIELDS, OPTIONS, _is_bool

    flags = {name: _is_bool(f) for name, f in FIELDS.items()
             if ("--" + name.replace("_", "-")) in OPTIONS}
    flags["config"] = False
    return flags


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of the sweep: a ladder rung ("100m") or an explicit shape with its own name."""

    name: str
    shape: "object"          # megatron_csl.model.ModelShape
    from_ladder: bool


@dataclasses.dataclass(frozen=True)
class DataConfig:
    paths: tuple[str, ...] = ()
    mock: bool = False
    tokenizer_model: Optional[str] = None


@dataclasses.dataclass
class SweepConfig:
    name: str
    source: Path                       # the sweep file
    output_dir: Path                   # run directories go here (absolute)
    cluster: ClusterProfile
    models: list[ModelEntry]
    formats: list[str]                 # canonical spec strings, in file order
    tokens_per_param: list[float]
    seeds: list[int]
    data: DataConfig
    training: dict                     # pretrain flags shared by all runs
    layout: dict                       # per-run resources/parallelism defaults (LAYOUT_KEYS)
    per_model: dict                    # model name -> overrides of training/layout keys
    extra_args: list[str]
    description: str = ""
    # names of the runs to train (`launch/sweep.py suggest` writes it); None = the whole product
    runs: Optional[tuple] = None

    def settings_for(self, model_name: str) -> tuple[dict, dict]:
        """(training flags, layout) for one model after its per_model overrides."""
        training, layout = dict(self.training), dict(self.layout)
        for key, value in self.per_model.get(model_name, {}).items():
            (layout if key in LAYOUT_KEYS else training)[key] = value
        return training, layout


def _as_list(value, where: str) -> list:
    if value is None:
        raise SweepError(f"{where} is required")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise SweepError(f"{where} must not be empty")
    return items


def _parse_models(value, where: str) -> list[ModelEntry]:
    from megatron_csl.model import ModelShape, get_shape

    entries, seen = [], set()
    for i, item in enumerate(_as_list(value, where)):
        at = f"{where}[{i}]"
        if isinstance(item, (str, int)) and not isinstance(item, bool):
            try:
                entry = ModelEntry(name=str(item).strip().lower(), shape=get_shape(str(item)),
                                   from_ladder=True)
            except ValueError as err:
                raise SweepError(f"{at}: {err}; or give an explicit shape: "
                                 f"{{name: tiny, num_layers: 2, hidden_size: 64, "
                                 f"num_attention_heads: 4, ffn_hidden_size: 192}}") from None
        elif isinstance(item, dict):
            check_keys(item, ("name",) + SHAPE_KEYS, at)
            name = item.get("name")
            if not isinstance(name, str) or not name.strip():
                raise SweepError(f"{at}: an explicit shape needs a 'name' (used in run names), got {name!r}")
            missing = [k for k in SHAPE_KEYS if k not in item]
            if missing:
                raise SweepError(f"{at} ({name!r}): missing {missing[0]!r}; an explicit shape needs "
                                 f"{', '.join(SHAPE_KEYS)}")
            try:
                shape = ModelShape(**{k: item[k] for k in SHAPE_KEYS})
            except ValueError as err:
                raise SweepError(f"{at} ({name!r}): {err}") from None
            entry = ModelEntry(name=name.strip(), shape=shape, from_ladder=False)
        else:
            raise SweepError(f"{at}: expected a ladder name (e.g. '100m') or a mapping with an "
                             f"explicit shape, got {item!r}")
        if entry.name in seen:
            raise SweepError(f"{at}: model {entry.name!r} is listed twice")
        seen.add(entry.name)
        entries.append(entry)
    return entries


def _parse_formats(value, where: str) -> list[str]:
    from megatron_csl.compression import SpecError, parse_spec

    formats, seen = [], {}
    for i, item in enumerate(_as_list(value, where)):
        try:
            canonical = parse_spec(str(item)).canonical
        except SpecError as err:
            raise SweepError(f"{where}[{i}]: bad compression spec {item!r}: {err}") from None
        if canonical in seen:
            raise SweepError(f"{where}[{i}]: {item!r} is the same format as {seen[canonical]!r} "
                             f"(both are {canonical!r})")
        seen[canonical] = item
        formats.append(canonical)
    return formats


def _parse_ratios(value, where: str) -> list[float]:
    ratios = []
    for i, item in enumerate(_as_list(value, where)):
        if isinstance(item, str):
            try:
                item = float(item)
            except ValueError:
                pass
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not (
                math.isfinite(item) and item > 0):
            raise SweepError(f"{where}[{i}]: tokens per parameter must be a positive number "
                             f"(e.g. 20 for Chinchilla), got {item!r}")
        ratios.append(float(item))
    if len(set(ratios)) != len(ratios):
        raise SweepError(f"{where}: a ratio is listed twice: {ratios}")
    return ratios


def _parse_seeds(value, where: str) -> list[int]:
    seeds = _as_list(1234 if value is None else value, where)
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise SweepError(f"{where}[{i}]: a seed must be a non-negative integer, got {s!r}")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"{where}: a seed is listed twice: {seeds}")
    return list(seeds)


def _parse_data(value, where: str, base: Path) -> DataConfig:
    if not isinstance(value, dict):
        raise SweepError(f"{where} must be a mapping with 'paths' (dataset prefixes) or 'mock: true', "
                         f"got {value!r}")
    check_keys(value, DATA_KEYS, where)
    paths = value.get("paths") or []
    if isinstance(paths, str):
        paths = paths.split()
    if not isinstance(paths, list):
        raise SweepError(f"{where}.paths must be a list of dataset prefixes (Megatron blend syntax "
                         f"'0.3 prefixA 0.7 prefixB' allowed), got {paths!r}")
    mock = value.get("mock", False)
    if not isinstance(mock, bool):
        raise SweepError(f"{where}.mock must be true or false, got {mock!r}")
    if not paths and not mock:
        raise SweepError(f"{where}: give dataset prefixes in 'paths' or set 'mock: true'")
    if paths and mock:
        raise SweepError(f"{where}: 'paths' and 'mock: true' exclude each other; choose one")
    resolved = []
    for p in paths:
        text = str(p)
        try:
            float(text)             # a blend weight stays as it is
            resolved.append(text)
        except ValueError:
            # Relative prefixes are taken from the folder `submit` runs in, made absolute so the
            # job finds them whatever its working directory.
            resolved.append(text if Path(text).is_absolute() else str(base / text))
    tok = value.get("tokenizer_model")
    if tok is not None and not Path(str(tok)).is_absolute():
        tok = str(base / str(tok))
    return DataConfig(paths=tuple(resolved), mock=mock, tokenizer_model=tok)


def _check_flag_value(value, where: str):
    ok = (str, int, float, bool)
    if isinstance(value, list) and all(isinstance(v, ok) for v in value):
        return value
    if isinstance(value, ok):
        return value
    raise SweepError(f"{where} must be a number, string, boolean or list of them, got {value!r}")


def _parse_settings(value, where: str, layout_allowed: bool) -> tuple[dict, dict]:
    """Split a mapping of flags into (training, layout); error on controlled or unknown keys."""
    if value is None:
        return {}, {}
    if not isinstance(value, dict):
        raise SweepError(f"{where} must be a mapping of flag: value, got {value!r}")
    training, layout = {}, {}
    flags = pretrain_flags()
    training_keys = [k for k in flags if k not in CONTROLLED_KEYS]
    allowed = training_keys + (list(LAYOUT_KEYS) if layout_allowed else [])
    for key, val in value.items():
        key = str(key).lstrip("-").replace("-", "_")
        if key in LAYOUT_KEYS and layout_allowed:
            layout[key] = val
        elif key in training_keys:
            val = _check_flag_value(val, f"{where}.{key}")
            if flags[key] and not isinstance(val, bool):
                raise SweepError(f"{where}.{key} must be true or false, got {val!r}")
            training[key] = val
        elif key in CONTROLLED_KEYS:
            raise SweepError(f"{where}.{key}: set by the sweep per run; put it in "
                             f"{CONTROLLED_KEYS[key]} instead")
        else:
            close = difflib.get_close_matches(key, allowed, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise SweepError(f"{where}: unknown key {key!r}{hint}; valid keys (launch/pretrain.py "
                             f"flags{' and layout keys' if layout_allowed else ''}): {', '.join(allowed)}")
    return training, layout


def _check_layout(layout: dict, where: str) -> None:
    for key, value in layout.items():
        if key == "time_limit":
            parse_time_limit(value, f"{where}.time_limit")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SweepError(f"{where}.{key} must be a positive integer, got {value!r}")


def load_sweep(path, *, output_dir=None, cluster=None, base_dir: Optional[Path] = None) -> SweepConfig:
    """Read and validate a sweep file. `output_dir`/`cluster` override the file's values;
    relative data paths and output_dir are taken from `base_dir` (default: the current folder)."""
    path = Path(path).resolve()
    data = load_yaml_mapping(path, "sweep file")
    where = str(path.name)
    check_keys(data, TOP_KEYS, f"sweep file {str(path)!r}")
    for key in REQUIRED_TOP_KEYS:
        if data.get(key) is None and not (key == "cluster" and cluster is not None):
            raise SweepError(f"{where}: missing required key {key!r}")
    base = (base_dir or Path.cwd()).resolve()
    name = data["name"]
    if not isinstance(name, str) or not name.strip() or any(c.isspace() or c == "/" for c in name):
        raise SweepError(f"{where}: name must be a word without spaces or '/', got {name!r}")

    profile = load_profile(cluster if cluster is not None else data["cluster"], base_dir=path.parent)
    models = _parse_models(data["models"], f"{where} models")
    formats = _parse_formats(data["formats"], f"{where} formats")
    ratios = _parse_ratios(data["tokens_per_param"], f"{where} tokens_per_param")
    seeds = _parse_seeds(data.get("seeds"), f"{where} seeds")
    data_cfg = _parse_data(data["data"], f"{where} data", base)
    training, _ = _parse_settings(data["training"], f"{where} training", layout_allowed=False)
    if isinstance(training.get("config"), str) and not Path(training["config"]).is_absolute():
        training["config"] = str(base / training["config"])
    missing = [k for k in REQUIRED_TRAINING_KEYS if k not in training]
    if missing:
        raise SweepError(f"{where} training: missing {missing[0]!r} (the plan turns tokens into steps "
                         f"with {', '.join(REQUIRED_TRAINING_KEYS)})")

    layout = data.get("layout") or {}
    if not isinstance(layout, dict):
        raise SweepError(f"{where} layout must be a mapping, got {layout!r}")
    check_keys(layout, LAYOUT_KEYS, f"{where} layout")
    _check_layout(layout, f"{where} layout")

    per_model = {}
    raw_per_model = data.get("per_model") or {}
    if not isinstance(raw_per_model, dict):
        raise SweepError(f"{where} per_model must map model names to overrides, got {raw_per_model!r}")
    names = [m.name for m in models]
    for model_name, overrides in raw_per_model.items():
        key = next((n for n in names if n in (str(model_name), str(model_name).strip().lower())), None)
        if key is None:
            raise SweepError(f"{where} per_model: {model_name!r} is not one of the sweep's models "
                             f"({', '.join(names)})")
        t, l = _parse_settings(overrides, f"{where} per_model.{model_name}", layout_allowed=True)
        _check_layout(l, f"{where} per_model.{model_name}")
        per_model[key] = {**t, **l}

    extra = data.get("extra_args") or []
    if isinstance(extra, str):
        extra = extra.split()
    if not isinstance(extra, list):
        raise SweepError(f"{where} extra_args must be a list of strings, got {extra!r}")

    out = Path(output_dir) if output_dir is not None else Path(data.get("output_dir") or f"runs/{name}")
    out = (out if out.is_absolute() else base / out).resolve()
    return SweepConfig(
        name=name, source=path, output_dir=out, cluster=profile, models=models, formats=formats,
        tokens_per_param=ratios, seeds=seeds, data=data_cfg, training=training, layout=layout,
        per_model=per_model, extra_args=[str(e) for e in extra],
        description=str(data.get("description") or ""),
        runs=_parse_run_names(data.get("runs"), f"{where} runs"),
    )


def _parse_run_names(value, where: str) -> Optional[tuple]:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SweepError(f"{where} must be a non-empty list of run names (as `plan` prints them), "
                         f"got {value!r}")
    return tuple(value)
