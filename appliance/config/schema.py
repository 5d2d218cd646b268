"""config/schema.json applied to a loaded config: every error with file:line:col and its key path.

The schema declares the config's shape once: its keys, their types, enums, ranges and value
patterns (host:port, durations, CIDRs), with a description for each key that editors show
(``# yaml-language-server: $schema=...`` at the top of config/default.yaml). Here it is run
with jsonschema (Draft 2020-12, every error through iter_errors); each error becomes a
ConfigError at the value's YAML position (the key's, for an unknown key), its message led by
the key path (``dns.upstreams[1] must be a string``).

The values that fail are then left out of the document the section parsers read (ConfigDoc):
they see only values of the right shape, so they check what a schema cannot (addresses and
CIDRs parse, files exist, names are known, rules across keys) and never report a value twice.
A list item left out keeps its own index in messages and positions.

The file is read as ``schema.json`` next to this module: a link to config/schema.json, so it
is package data in the wheel (pyproject's package-data takes ``*.json``) and one file in the
repository.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from appliance.config.values import keypath, seconds
from filters.errors import ConfigError, Where
from signatures.yamldoc import YamlDoc

__all__ = ["SCHEMA_FILE", "ConfigDoc", "load_schema", "validate", "subschema", "say"]

SCHEMA_FILE = Path(__file__).with_name("schema.json")
_TYPES = {"string": "a string", "integer": "a whole number", "number": "a number", "boolean": "true or false",
          "array": "a list", "object": "a mapping"}
_SHOW = 60  # characters of a bad value quoted in a message


@lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator() -> Any:
    # Imported on the first config load, not with this module: ~70 ms that commands needing
    # only the Config type (status, lookup) do not pay.
    from jsonschema import Draft202012Validator, validators

    # A whole number is an int: YAML's 5.0 is a float, and the code downstream indexes with it.
    checker = Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, v: isinstance(v, int) and not isinstance(v, bool))
    return validators.extend(Draft202012Validator, type_checker=checker)(load_schema())


def say(path: tuple, message: str) -> str:
    """The message led by the key path: ``dns.cache_size must ...``, ``dns.listen[0]: not ...``."""
    return f"{keypath(path)}{' ' if message.startswith(('must ', 'needs ')) else ': '}{message}"


class ConfigDoc:
    """The config after the schema. ``data`` holds only the values that passed it (None when
    the document is no mapping at all); ``raw`` is the document as written. Paths given to
    the methods are paths into ``data``; messages and positions name the place in the file."""

    def __init__(self, doc: YamlDoc, data: Any, origin: dict[tuple, tuple] | None = None) -> None:
        self.yaml = doc
        self.file = doc.file
        self.data = data
        self._origin = origin  # path in data -> path in raw (None: the same)

    @property
    def raw(self) -> Any:
        return self.yaml.data

    def origin(self, *path: Any) -> tuple:
        p = tuple(path)
        if self._origin is None:
            return p
        n = len(p)
        while n and p[:n] not in self._origin:
            n -= 1
        return self._origin.get(p[:n], ()) + p[n:]

    def where(self, *path: Any) -> Where:
        return self.yaml.where(*self.origin(*path))

    def error(self, message: str, *path: Any) -> ConfigError:
        """``message`` about the value at ``path``, led by its key path."""
        return ConfigError(say(self.origin(*path), message), self.where(*path))

    def given(self, *path: Any) -> bool:
        """Is there a value at ``path`` in the file, good or not?"""
        v = self.raw
        for k in self.origin(*path):
            if (isinstance(v, dict) and k in v) or (isinstance(v, list) and isinstance(k, int) and 0 <= k < len(v)):
                v = v[k]
            else:
                return False
        return True

    def duration(self, value: Any, errors: list[ConfigError], *path: Any) -> float | None:
        """Seconds in a duration that passed the schema (its pattern says which forms the key
        takes); the schema's minimum and maximum hold for ``1h`` as for 3600."""
        secs = seconds(value)
        if secs is None:
            return None
        s = subschema(*path)
        if secs < s.get("minimum", secs) or secs > s.get("maximum", secs):
            errors.append(self.error(_range(s), *path))
            return None
        return secs


def validate(doc: YamlDoc) -> tuple[ConfigDoc, list[ConfigError]]:
    """Every schema error of ``doc``, and the document without the values at fault."""
    data = {} if doc.data is None else doc.data
    errors: list[ConfigError] = []
    seen: set[tuple[tuple, str]] = set()
    bad: set[tuple] = set()
    for err in _validator().iter_errors(data):
        for path, message, of_key, prune in _explain(err):
            if (path, message) in seen:
                continue
            seen.add((path, message))
            where = (doc.key_error("", *path).where if of_key else None) or doc.where(*path)
            errors.append(ConfigError(message, where))
            if prune is not None:
                bad.add(prune)
    if () in bad:
        return ConfigDoc(doc, None), errors
    if not bad:
        return ConfigDoc(doc, data), errors
    clean, origin = _prune(data, bad)
    return ConfigDoc(doc, clean, origin), errors


def subschema(*path: Any) -> dict:
    """The schema of the value at ``path`` (as written there: a ``$ref`` is not followed)."""
    defs = load_schema().get("$defs", {})
    s: dict = load_schema()
    for k in path:
        ref = s.get("$ref", "")
        if ref.startswith("#/$defs/"):
            s = {**defs[ref[len("#/$defs/"):]], **{a: b for a, b in s.items() if a != "$ref"}}
        props = s.get("properties", {})
        if isinstance(k, str) and k in props:
            s = props[k]
        elif isinstance(k, int) and isinstance(s.get("items"), dict):
            s = s["items"]
        elif isinstance(s.get("additionalProperties"), dict):
            s = s["additionalProperties"]
        else:
            return {}
    return s


# -- jsonschema's errors as ours ---------------------------------------------------------------

def _explain(err: Any) -> Iterator[tuple[tuple, str, bool, tuple | None]]:
    """(path, message, about the key itself, path to leave out or None) for one error."""
    path = tuple(err.absolute_path)
    s = err.schema if isinstance(err.schema, dict) else {}
    kw = err.validator
    if kw == "additionalProperties":
        known = s.get("properties", {})
        for k in err.instance:
            if k not in known:
                name = keypath(path + (k,)) if path else repr(k)
                yield path + (k,), f"unknown key {name} (known: {', '.join(sorted(known))})", True, path + (k,)
        return
    if kw == "required":  # one error per missing key from jsonschema; one message for them all here
        missing = [str(k) for k in err.validator_value if isinstance(err.instance, dict) and k not in err.instance]
        if missing:
            names = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else missing[0]
            yield path, say(path, f"needs {names}"), False, None
        return
    if kw in ("anyOf", "oneOf"):
        sub = _branch(err)
        if sub:
            for e in sub:
                yield from _explain(e)
            return
    yield path, say(path, _message(err, s)), False, path


def _branch(err: Any) -> list:
    """The errors of the one alternative whose type the value has (a mapping given to
    ``0 | {qps, burst}`` is wrong inside the mapping); [] when no or several have it."""
    v = _validator()
    fits = [i for i, b in enumerate(err.validator_value) if isinstance(b, dict) and "type" in b
            and any(v.is_type(err.instance, t) for t in ([b["type"]] if isinstance(b["type"], str) else b["type"]))]
    if len(fits) != 1:
        return []
    return [e for e in err.context if e.relative_schema_path and e.relative_schema_path[0] == fits[0]]


def _message(err: Any, s: dict) -> str:
    kw = err.validator
    custom = (s.get("patternErrorMessage") if kw == "pattern" else None) or s.get("errorMessage")
    if custom:
        return custom if custom.startswith(("must ", "needs ")) else f"{custom}: {_show(err.instance)}"
    if kw == "type":
        names = [err.validator_value] if isinstance(err.validator_value, str) else err.validator_value
        return "must be " + " or ".join(_TYPES[t] for t in names if t in _TYPES)
    if kw == "enum":
        words = [x for x in err.validator_value if isinstance(x, str)] or [json.dumps(x) for x in err.validator_value]
        if err.instance is None:  # a bare `key: null` (or `key:`) is YAML's no value, not the word
            quoted = '; write "null" in quotes for the null mode' if "null" in words else ""
            return (f"must be one of {', '.join(words)} (a bare null is no value: "
                    f"remove the key for the default{quoted})")
        return f"must be one of {', '.join(words)}"
    if kw in ("minimum", "maximum"):
        return _range(s)
    if kw == "minItems":
        n = err.validator_value
        return "needs at least one entry" if n == 1 else f"needs at least {n} entries"
    if kw == "maxItems":
        return f"at most {err.validator_value} entries (has {len(err.instance)})"
    if kw == "minLength":
        return "must not be empty"
    return err.message


def _range(s: dict) -> str:
    lo, hi = s.get("minimum"), s.get("maximum")
    ref = s.get("$ref", "")
    if ref.startswith("#/$defs/duration"):
        what, fmt = "a duration", _seconds_text
        tail = " (e.g. 500ms, 2s, 1h)" if ref.endswith("_ms") else " (e.g. 90s, 30m, 1h)"
    else:
        what, fmt, tail = ("a whole number" if s.get("type") == "integer" else "a number"), _number_text, ""
    if lo is not None and hi is not None:
        return f"must be {what} from {fmt(lo)} to {fmt(hi)}{tail}"
    if lo is not None:
        return f"must be {what} of at least {fmt(lo)}{tail}"
    return f"must be {what} of at most {fmt(hi)}{tail}" if hi is not None else f"must be {what}"


def _number_text(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _seconds_text(v: float) -> str:
    return f"{int(v) // 3600} h" if v >= 3600 and v % 3600 == 0 else f"{_number_text(v)} s"


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= _SHOW else text[:_SHOW - 3] + "..."


def _prune(data: Any, bad: set[tuple]) -> tuple[Any, dict[tuple, tuple]]:
    """``data`` without the values at ``bad`` paths, and each kept value's path in ``data``."""
    origin: dict[tuple, tuple] = {}

    def walk(v: Any, old: tuple, new: tuple) -> Any:
        origin[new] = old
        if isinstance(v, dict):
            return {k: walk(x, old + (k,), new + (k,)) for k, x in v.items() if old + (k,) not in bad}
        if isinstance(v, list):
            out: list = []
            for i, x in enumerate(v):
                if old + (i,) not in bad:
                    out.append(walk(x, old + (i,), new + (len(out),)))
            return out
        return v

    return walk(data, (), ()), origin
