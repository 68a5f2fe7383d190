"""Reading YAML documents with errors that name the file (shared by sweep files and profiles)."""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import SweepError


def load_yaml_mapping(path: Path, what: str) -> dict:
    """The top-level mapping of the YAML file `path`; SweepError when missing, unparsable or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{what} {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SweepError(f"{what} {str(path)!r} must be a YAML mapping (key: value lines), "
                         f"got {type(data).__name__}")
    return data


def check_keys(mapping: dict, allowed, where: str) -> None:
    """SweepError naming the first unknown key of `mapping` and the valid ones."""
    unknown = [k for k in mapping if k not in allowed]
    if unknown:
        raise SweepError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(allowed))}")
