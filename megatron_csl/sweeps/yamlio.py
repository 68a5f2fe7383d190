"""Reading YAML documents with errors that name the file (shared by sweep files and profiles)."""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import SweepError


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key repeated in one mapping (plain YAML keeps the last one
    silently, e.g. a second `formats:` would replace the first)."""


def _unique_mapping(loader, node, deep=False):
    if any(k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value):
        return loader.construct_mapping(node, deep=deep)   # `<<:` merges may override keys
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.get(key)
        except TypeError:   # an unhashable key: the constructor below names it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {first + 1}, again on line "
                f"{key_node.start_mark.line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml_mapping(path: Path, what: str) -> dict:
    """The top-level mapping of the YAML file `path`; SweepError when missing, unparsable or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
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
