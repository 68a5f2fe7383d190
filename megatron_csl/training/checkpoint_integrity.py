"""Is a saved dist_checkpointing directory whole? Names the first damage found, or None.

A complete checkpoint has megatron's ``metadata.json`` (written last), our ``common.pt``, and
torch.distributed.checkpoint's ``.metadata``, whose storage index says which ``__R_W.distcp``
shard files exist and how many bytes of each are used. A missing shard, or one shorter than the
index says (a copy that stopped, a disk that filled up), makes the checkpoint unusable, so
discovery falls back to the previous one instead of failing at --load.
"""
from pathlib import Path
from typing import List, Optional, Tuple

from .errors import ConfigError

REQUIRED_FILES = ("metadata.json", "common.pt", ".metadata")


def damage(path) -> Optional[str]:
    """What is wrong with checkpoint directory ``path`` (None: it is whole)."""
    path = Path(path)
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        from torch.distributed.checkpoint import FileSystemReader

        metadata = FileSystemReader(str(path)).read_metadata()
    except Exception as e:  # a truncated or garbled pickle: any unpickling error
        return f"unreadable .metadata ({type(e).__name__}: {e})"
    needed = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, size in sorted(needed.items()):
        shard = path / name
        if not shard.is_file():
            return f"missing shard {name}"
        actual = shard.stat().st_size
        if actual < size:
            return f"shard {name} is truncated ({actual} bytes, the index needs {size})"
    return None


class DamagedCheckpointError(ConfigError):
    """Checkpoints exist but none is whole: resuming would silently start over. Exit code 2."""


def first_whole(candidates: List[Tuple[int, Path]], warn=print) -> Optional[Tuple[int, Path]]:
    """The first whole (step, path) of ``candidates`` (best first), warning about each damaged
    one; None when there are none; DamagedCheckpointError when all are damaged."""
    damaged = []
    for step, path in candidates:
        problem = damage(path)
        if problem is None:
            if damaged:
                warn(f"[pretrain] falling back to {path} (step {step})")
            return step, path
        damaged.append(f"{path.name}: {problem}")
        warn(f"[pretrain] checkpoint {path} is damaged ({problem}); trying the previous one")
    if damaged:
        raise DamagedCheckpointError(
            f"every checkpoint under {candidates[0][1].parent} is damaged ("
            + "; ".join(damaged) + "); restore the files, or move the checkpoints folder away "
            "to start the run over")
    return None
