"""YAML documents that remember where each value came from.

Config and SOURCES.yaml errors must name file:line:col. PyYAML's composer
keeps marks on nodes; this module builds plain Python values from the node tree and keeps a
map from each value's path (a tuple of keys and indexes) to its position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from filters.errors import ConfigError, Where

__all__ = ["YamlDoc", "load_yaml"]


class YamlDoc:
    def __init__(self, data: Any, file: str, marks: dict[tuple, Where],
                 key_marks: dict[tuple, Where] | None = None) -> None:
        self.data = data
        self.file = file
        self._marks = marks
        self._key_marks = key_marks or {}

    def where(self, *path: Any) -> Where:
        """Position of the value at ``path``, or of its nearest ancestor we know."""
        p = tuple(path)
        while p not in self._marks and p:
            p = p[:-1]
        return self._marks.get(p, Where(self.file))

    def error(self, message: str, *path: Any) -> ConfigError:
        return ConfigError(message, self.where(*path))

    def key_error(self, message: str, *path: Any) -> ConfigError:
        """An error about the key at ``path`` itself (unknown or badly named key)."""
        return ConfigError(message, self._key_marks.get(tuple(path)) or self.where(*path))


def load_yaml(path: str | Path, text: str | None = None) -> YamlDoc:
    """Parse one YAML document; syntax errors become ConfigError with the position."""
    file = str(path)
    try:
        if text is None:
            text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", Where(file)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", Where(file)) from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Where(file, mark.line + 1, mark.column + 1) if mark else Where(file)
        raise ConfigError(f"YAML syntax: {exc.problem or exc.context}", where) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML: {exc}", Where(file)) from exc
    marks: dict[tuple, Where] = {}
    key_marks: dict[tuple, Where] = {}
    data = _build(node, (), file, marks, key_marks) if node is not None else None
    return YamlDoc(data, file, marks, key_marks)


def _build(node: yaml.Node, path: tuple, file: str, marks: dict[tuple, Where],
           key_marks: dict[tuple, Where]) -> Any:
    marks[path] = Where(file, node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node, file)
            w = Where(file, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in out:
                raise ConfigError(f"duplicate key {key!r}", w)
            key_marks[path + (key,)] = w
            out[key] = _build(value_node, path + (key,), file, marks, key_marks)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(v, path + (i,), file, marks, key_marks) for i, v in enumerate(node.value)]
    return _scalar(node, file)


def _scalar(node: yaml.Node, file: str) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        w = Where(file, node.start_mark.line + 1, node.start_mark.column + 1)
        raise ConfigError("a mapping key must be a plain value", w)
    try:
        return yaml.SafeLoader(node.value).construct_object(node, deep=True)
    except yaml.YAMLError as exc:
        w = Where(file, node.start_mark.line + 1, node.start_mark.column + 1)
        raise ConfigError(f"bad value: {exc}", w) from exc
