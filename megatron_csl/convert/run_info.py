"""Find the run directory and checkpoint behind a --load path, and read what run.json says.

`--load` may name a run directory (``RUN_DIR``), its checkpoint directory (``RUN_DIR/checkpoints``,
or the ``--save`` directory run.json names; with ``--save DIR`` alone the run directory is the
checkpoint directory), or one checkpoint ``.../iter_0000100``. Everything the converter needs about
the model comes from ``RUN_DIR/run.json`` (docs/interfaces.md) and its configuration (any
``config_version`` this code reads, including run directories written before the typed
configuration); anything that does not look like a complete megatron-csl dist checkpoint is
refused with an error that says what was found instead.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from megatron_csl.convert.errors import ConversionError
from megatron_csl.runfiles import (CHECKPOINT_FORMAT_VERSIONS, CHECKPOINTS_DIR, ITER_RE,
                                   LATEST_FILES, RUN_JSON, checkpoint_dirname)
SUPPORTED_SHARDED_BACKENDS = {"torch_dist": (1,)}
# megatron_csl.training.checkpointing.FORMAT_VERSION values this converter reads.
SUPPORTED_FORMAT_VERSIONS = CHECKPOINT_FORMAT_VERSIONS


@dataclass(frozen=True)
class RunInfo:
    """The parts of run.json the converter uses (the whole document is in `raw`)."""

    run_dir: Path
    raw: dict
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: Optional[int]
    ffn_hidden_size: int
    seq_length: int
    vocab_size: int
    padded_vocab_size: int
    compression: str
    tp: int
    pp: int
    precision: str
    tokenizer_model: Optional[str]

    @property
    def config(self):
        """The run's training configuration (megatron_csl.training.config.PretrainConfig)."""
        from megatron_csl.training.config import config_from_run_json
        from megatron_csl.training.errors import ConfigError

        try:
            return config_from_run_json(self.raw)
        except ConfigError as err:
            raise ConversionError(f"{self.run_dir / RUN_JSON}: {err}") from None

    @property
    def args(self) -> dict:
        """The configuration as {flag name with underscores: value} ({} when run.json has none)."""
        if not (self.raw.get("config") or self.raw.get("args")):
            return {}
        return self.config.flat()

    @property
    def checkpoint_root(self) -> Path:
        """Where the run's checkpoints are: RUN_DIR/checkpoints, else the run directory itself
        (--save and the run directory are one), else the --save directory run.json names (looked
        at last: a copied or moved run directory must not read the original's checkpoints)."""
        own = self.run_dir / CHECKPOINTS_DIR
        if own.is_dir():
            return own
        if any(ITER_RE.match(p.name) for p in self.run_dir.iterdir()) or any(
                (self.run_dir / n).is_file() for n in LATEST_FILES):
            return self.run_dir
        saved = (self.raw.get("checkpoint") or {}).get("save")
        return Path(saved) if saved and Path(saved).is_dir() else own

    def model_shape(self):
        from megatron_csl.model import ModelShape

        return ModelShape(num_layers=self.num_layers, hidden_size=self.hidden_size,
                          num_attention_heads=self.num_attention_heads,
                          ffn_hidden_size=self.ffn_hidden_size, num_query_groups=self.num_query_groups)


@dataclass(frozen=True)
class CheckpointLocation:
    run: RunInfo
    checkpoint_dir: Path
    iteration: int


def _require(doc: dict, path: str, kind, where: Path):
    node = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConversionError(f"{where} has no '{path}'; it is not a megatron-csl run.json "
                                  "(docs/interfaces.md lists the keys) or comes from an older version")
        node = node[part]
    if kind is not None and not isinstance(node, kind):
        raise ConversionError(f"{where}: '{path}' is {node!r}, expected {kind.__name__}")
    return node


def read_run_info(run_dir: Path) -> RunInfo:
    path = Path(run_dir) / RUN_JSON
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConversionError(f"{path} not found: --load must be a megatron-csl run directory (with "
                              "run.json), its checkpoints/ folder or one checkpoints/iter_XXXXXXX") from None
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path} is not valid JSON ({err})") from None
    return run_info_from_dict(doc, Path(run_dir))


def run_info_from_dict(doc: dict, run_dir: Path) -> RunInfo:
    """RunInfo from a parsed run.json document (ConversionError naming a missing key)."""
    path = Path(run_dir) / RUN_JSON
    if not isinstance(doc, dict):
        raise ConversionError(f"{path} is not a JSON object")
    model = _require(doc, "model", dict, path)
    padded = model.get("padded_vocab_size") or _require(doc, "model.vocab_size", int, path)
    return RunInfo(
        run_dir=Path(run_dir), raw=doc,
        num_layers=_require(doc, "model.num_layers", int, path),
        hidden_size=_require(doc, "model.hidden_size", int, path),
        num_attention_heads=_require(doc, "model.num_attention_heads", int, path),
        num_query_groups=model.get("num_query_groups"),
        ffn_hidden_size=_require(doc, "model.ffn_hidden_size", int, path),
        seq_length=_require(doc, "model.seq_length", int, path),
        vocab_size=_require(doc, "model.vocab_size", int, path),
        padded_vocab_size=int(padded),
        compression=_require(doc, "compression", str, path),
        tp=_require(doc, "parallel.tp", int, path),
        pp=_require(doc, "parallel.pp", int, path),
        precision=doc.get("precision", "fp32"),
        tokenizer_model=(doc.get("data") or {}).get("tokenizer_model"),
    )


def _describe_foreign(path: Path) -> Optional[str]:
    """A name for what a directory holds when it is not a dist checkpoint (None: nothing known)."""
    if _looks_like_dist_checkpoint(path):
        return None     # a (possibly damaged or interrupted) dist checkpoint: not foreign
    if (path / "config.json").is_file() and (any(path.glob("*.safetensors")) or any(path.glob("*.bin"))):
        return "a Hugging Face model directory (config.json + weights)"
    if (path / "manifest.json").is_file() and (path / "packed.safetensors").is_file():
        return "a packed export written by convert_checkpoint.py --to packed"
    if any(path.glob("mp_rank_*")) or (path / "model_optim_rng.pt").is_file():
        return "a legacy Megatron-LM torch checkpoint (mp_rank_XX/model_optim_rng.pt)"
    if any(path.glob("*.pt")) or any(path.glob("*.pth")):
        return "a plain torch checkpoint (*.pt)"
    return None


def _looks_like_dist_checkpoint(path: Path) -> bool:
    return ((path / "common.pt").is_file() or (path / ".metadata").is_file()
            or any(path.glob("__*_*.distcp")))


def check_dist_checkpoint(ckpt: Path) -> None:
    """Raise ConversionError unless `ckpt` is a complete dist checkpoint of a supported format."""
    if ckpt.name.endswith(".tmp"):
        raise ConversionError(f"{ckpt} is an interrupted save (a .tmp directory), not a complete "
                              f"checkpoint; use a complete iter_XXXXXXX directory next to it")
    foreign = None if (ckpt / "metadata.json").is_file() else _describe_foreign(ckpt)
    if foreign:
        raise ConversionError(f"{ckpt} is {foreign}, not a megatron.core.dist_checkpointing "
                              "checkpoint; convert_checkpoint.py reads RUN_DIR/checkpoints/iter_XXXXXXX")
    missing = [name for name in ("metadata.json", "common.pt", ".metadata") if not (ckpt / name).is_file()]
    if missing:
        raise ConversionError(f"checkpoint {ckpt} is incomplete (missing {', '.join(missing)}): a save "
                              "was interrupted or files were lost; use an earlier complete iter_ directory")
    try:
        meta = json.loads((ckpt / "metadata.json").read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"{ckpt / 'metadata.json'} is not valid JSON ({err})") from None
    backend, version = meta.get("sharded_backend"), meta.get("sharded_backend_version")
    if backend not in SUPPORTED_SHARDED_BACKENDS or version not in SUPPORTED_SHARDED_BACKENDS[backend]:
        raise ConversionError(
            f"checkpoint {ckpt} uses sharded backend {backend!r} version {version!r}; this converter "
            f"reads {', '.join(f'{b} v{v}' for b, vs in SUPPORTED_SHARDED_BACKENDS.items() for v in vs)}")
    from megatron_csl.training.checkpoint_integrity import damage

    problem = damage(ckpt)
    if problem:
        raise ConversionError(f"checkpoint {ckpt} is damaged ({problem}); use an earlier complete "
                              f"iter_ directory")


def check_format_version(common: dict, ckpt: Path) -> None:
    """The training checkpoint's format_version (from common.pt) must be one this code reads."""
    version = common.get("format_version")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        raise ConversionError(
            f"checkpoint {ckpt} has format_version {version!r}; this converter reads "
            f"{list(SUPPORTED_FORMAT_VERSIONS)} (written by megatron_csl.training.checkpointing); "
            "a checkpoint without one was not written by launch/pretrain.py")


def _newest_complete(ckpt_root: Path) -> Optional[tuple[int, Path]]:
    found = []
    for entry in ckpt_root.iterdir():
        m = ITER_RE.match(entry.name)
        if m and entry.is_dir() and (entry / "metadata.json").is_file() and (entry / "common.pt").is_file():
            found.append((int(m.group(1)), entry))
    return max(found) if found else None


def _find_run_dir(ckpt: Path) -> Optional[Path]:
    """The run directory of one iter_ checkpoint: the folder above its checkpoint directory
    (RUN_DIR/checkpoints/iter_...) or the checkpoint directory itself (--save DIR = run dir)."""
    for candidate in (ckpt.parent.parent, ckpt.parent):
        if (candidate / RUN_JSON).is_file():
            return candidate
    return None


def locate_checkpoint(load: str | Path) -> CheckpointLocation:
    """Resolve --load to the run's info and one complete checkpoint directory."""
    path = Path(load).absolute()
    if not path.exists():
        raise ConversionError(f"--load {path} does not exist")
    if not path.is_dir():
        raise ConversionError(f"--load {path} is a file; give a run directory, its checkpoints/ "
                              "folder or one checkpoints/iter_XXXXXXX directory")
    m = ITER_RE.match(path.name)
    if path.name.endswith(".tmp") and _looks_like_dist_checkpoint(path):
        check_dist_checkpoint(path)    # names it as an interrupted save
    if m:
        run_dir = _find_run_dir(path)
        if run_dir is not None:
            run = read_run_info(run_dir)
            check_dist_checkpoint(path)
            return CheckpointLocation(run, path, int(m.group(1)))
    if path.name == CHECKPOINTS_DIR and (path.parent / RUN_JSON).is_file():
        path = path.parent
    if not (path / RUN_JSON).is_file():
        foreign = _describe_foreign(path)
        if foreign:
            raise ConversionError(f"--load {path} is {foreign}, not a megatron-csl run directory")
        if (path / "metadata.json").is_file():
            raise ConversionError(f"--load {path} is a dist checkpoint outside a run directory (no "
                                  f"run.json at {path.parent.parent}); the model shape is unknown")
        raise ConversionError(f"--load {path} is not a megatron-csl run directory (no run.json)")
    run = read_run_info(path)
    root = run.checkpoint_root
    if not root.is_dir():
        raise ConversionError(f"run {path} has no checkpoints/ directory: the run saved no checkpoint")
    tracker = next((root / n for n in LATEST_FILES if (root / n).is_file()), None)
    if tracker is not None:
        text = tracker.read_text().strip()
        if not text.isdigit():
            raise ConversionError(f"{tracker} holds {text!r}, not an iteration number")
        ckpt = root / checkpoint_dirname(int(text))
        if not ckpt.is_dir():
            raise ConversionError(f"{tracker} names iteration {int(text)} but {ckpt} does not exist")
        check_dist_checkpoint(ckpt)
        return CheckpointLocation(run, ckpt, int(text))
    newest = _newest_complete(root)
    partial = sorted(p.name for p in root.iterdir() if p.is_dir())
    if newest is None:
        raise ConversionError(f"run {path} has no complete checkpoint (no checkpoints/latest; "
                              f"directories found: {partial or 'none'})")
    raise ConversionError(f"run {path} has no checkpoints/latest (the last save did not finish); "
                          f"the newest complete checkpoint is {newest[1]} - pass it to --load explicitly")
