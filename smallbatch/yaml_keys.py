"""YAML read as the suite's files mean it: a key given twice in one mapping is an error naming
both lines (PyYAML and jsonargparse keep the last silently: ``model.norm`` twice would run the
second without a word). Imports nothing of the package but :mod:`smallbatch.errors`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError


class RepeatedKeyError(UserError, ValueError):
    """A YAML mapping gives one key twice; the message names the file, the key and both lines."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key repeated in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise RepeatedKeyError(
                    f"{self.name}:{line}: key {key!r} is given twice in one mapping (first at "
                    f"line {seen[key]}); YAML would keep only the last: remove one"
                )
            if isinstance(key, str | int | float | bool):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, name: str = "<yaml>") -> Any:
    """``yaml.safe_load`` that refuses repeated keys (:class:`RepeatedKeyError`)."""
    loader = _UniqueKeyLoader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def check_yaml_file(path: str | os.PathLike) -> None:
    """Raise :class:`RepeatedKeyError` if the YAML file at ``path`` repeats a key (a file that
    cannot be read or parsed is left to the caller's own error)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return
    try:
        load_yaml(text, str(path))
    except yaml.YAMLError:
        return
