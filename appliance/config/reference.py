"""docs/configuration.md, generated from config/schema.json: every key with its type, default,
allowed values or range and the schema's description, one section per nested mapping.

    python -m appliance.config.reference > docs/configuration.md

The schema is the one place a key is declared (appliance/config/schema.py applies it to every
config load), so the reference is made from it rather than written beside it; a unit test
(tests/unit/test_docs.py) fails when the committed file and this output differ.
``reference_markdown`` is a pure function of the schema: no file is read but the one ``main``
passes it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["reference_markdown", "property_paths", "main"]

# The guide that explains each top-level section in prose (paths relative to docs/).
_GUIDES = {
    "dns": "dns.md",
    "networks": "dns.md",
    "policies": "dns.md",
    "local": "dns.md",
    "no_bundle": "dns.md",
    "timezone": "dns.md",
    "updates": "publishing.md",
    "web": "deployment.md",
    "flows": "flows.md",
    "log": "observability.md",
}
_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean",
          "array": "list", "object": "mapping", "null": "null"}
_DURATIONS = ("duration", "duration_ms")

_INTRO = """\
# Configuration reference

<!-- Generated from config/schema.json by `python -m appliance.config.reference`: do not
edit by hand; change the schema's "description" fields and regenerate. -->

This page lists every key of the appliance's YAML config file, made from the JSON Schema
(Draft 2020-12) in `config/schema.json` that every config load and `schoolgate check-config`
apply. Regenerate it with
`python -m appliance.config.reference > docs/configuration.md`; a unit test fails when the two
disagree.

How a config is used:

- `schoolgate run --config PATH` serves it; without `--config` the embedded default
  `config/default.yaml` is used (DNS on 127.0.0.1:5353, the status page on
  127.0.0.1:8080, state in a per-user directory). A commented example for a school with
  students, staff and guest networks is `config/examples/school.yaml`; the disk image's
  template is `image/boot/schoolgate.yaml` ([deployment.md](deployment.md)).
- `schoolgate check-config PATH [--json]` exits 0, or 2 printing every error as
  `file:line:col` led by the key path (`site.yaml:4:26: dns.upstreams[1] must be a string`,
  `site.yaml:9:5: unknown key dns.colour (known: ...)`), in file order. After the schema,
  the loader checks what a schema cannot say: addresses and CIDRs parse, files exist,
  policy and category names exist (categories against the bundle), time zones, password
  hashes.
- A running appliance reloads the file on SIGHUP; a file with errors is refused as a whole
  and the running config stays. Listen addresses change only at a restart.
- Editors with a YAML language server show these descriptions and mark errors as you type:
  the shipped configs start with `# yaml-language-server: $schema=schema.json` (a path
  relative to the file).

Writing values: durations are whole seconds or a number with a unit (`500ms`, `90s`,
`30m`, `1h`, `2d`; see [`duration`](#duration) for which keys take milliseconds); relative
paths are relative to the config file; quote `"null"` where it is meant as the word (a bare
`null` in YAML means no value). `<name>` in a key path stands for a name you choose (a
network's, a policy's), `[]` for each entry of a list. A key marked "required" must be
present whenever its section is.
"""


def _ref_name(s: dict) -> str | None:
    ref = s.get("$ref", "")
    return ref[len("#/$defs/"):] if isinstance(ref, str) and ref.startswith("#/$defs/") else None


def _resolve(schema: dict, s: Any) -> dict:
    """``s`` with its ``$ref`` merged in (the referring schema's own keys win)."""
    if not isinstance(s, dict):
        return {}
    name = _ref_name(s)
    if name is None:
        return s
    target = _resolve(schema, schema.get("$defs", {}).get(name, {}))
    return {**target, **{k: v for k, v in s.items() if k != "$ref"}}


def _value(v: Any) -> str:
    return f"`{v}`" if isinstance(v, str) else f"`{json.dumps(v)}`"


def _prose(text: str) -> str:
    """Schema text as Markdown: ``<`` and ``*`` outside code spans would be read as HTML or
    emphasis (``<state_dir>`` would vanish)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace("*", "\\*")
    return "`".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _seconds(v: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if v >= size and v % size == 0:
            return f"{int(v // size)} {unit}"
    if 0 < v < 1:
        return f"{v * 1000:g} ms"
    return f"{v:g} s"


def _type_of(schema: dict, s: dict) -> str:
    """A short name for the shape of value ``s`` takes, refs linked to "Value types"."""
    name = _ref_name(s)
    r = _resolve(schema, s)
    if name is not None:
        return f"[`{name}`](#{name})"
    if "anyOf" in r or "oneOf" in r:
        branches = [_resolve(schema, b) for b in r.get("anyOf", r.get("oneOf", []))]
        return " or ".join(" / ".join(_value(v) for v in b["enum"]) if "enum" in b and "type" not in b
                           else _type_of(schema, b) for b in branches)
    if "enum" in r and "type" not in r:
        kinds: list[str] = []
        for v in r["enum"]:
            kind = "null" if v is None else "boolean" if isinstance(v, bool) else \
                "string" if isinstance(v, str) else "number"
            if kind not in kinds:
                kinds.append(kind)
        return " or ".join(kinds)
    types = r.get("type", [])
    out = []
    for t in [types] if isinstance(types, str) else types:
        if t == "array" and isinstance(r.get("items"), dict):
            out.append(f"list of {_type_of(schema, r['items'])}")
        elif t == "object" and isinstance(r.get("additionalProperties"), dict):
            out.append(f"mapping of names to {_type_of(schema, r['additionalProperties'])}")
        elif t == "string" and isinstance(r.get("then"), dict) and _ref_name(r["then"]):
            out.append(_type_of(schema, r["then"]))
        else:
            out.append(_TYPES.get(t, t))
    return " or ".join(out) or "any"


def _number(v: float) -> str:
    return f"{int(v):,}" if float(v).is_integer() else f"{v:g}"


def _values(schema: dict, s: dict, required: bool, patterns: bool = True) -> str:
    """Allowed values, range, sizes and patterns of ``s``."""
    r = _resolve(schema, s)
    parts = ["required"] if required else []
    if "enum" in r:
        parts.append("one of " + ", ".join(_value(v) for v in r["enum"]))
    fmt = _seconds if _ref_name(s) in _DURATIONS else _number
    lo, hi = r.get("minimum"), r.get("maximum")
    if lo is not None and hi is not None:
        parts.append(f"{fmt(lo)} to {fmt(hi)}")
    elif lo is not None:
        parts.append(f"at least {fmt(lo)}")
    elif hi is not None:
        parts.append(f"at most {fmt(hi)}")
    if "minItems" in r:
        parts.append(f"at least {r['minItems']} {'entry' if r['minItems'] == 1 else 'entries'}")
    if "maxItems" in r:
        parts.append(f"at most {r['maxItems']} entries")
    if patterns and "pattern" in s and isinstance(s.get("patternErrorMessage"), str):
        parts.append(s["patternErrorMessage"].removeprefix("must be ").removeprefix("not "))
    return "; ".join(parts)


def _members(schema: dict, s: Any, path: str) -> list[tuple[str, dict, bool]]:
    """(key path, schema, required) of every key directly inside the mapping ``s`` at ``path``:
    its properties, or those of each named entry (``path.<name>``) or list entry (``path[]``)."""
    r = _resolve(schema, s)
    if isinstance(r.get("properties"), dict):
        req = set(r.get("required", []))
        return [(f"{path}.{k}" if path else k, v, k in req) for k, v in r["properties"].items()]
    if isinstance(r.get("additionalProperties"), dict):
        return _members(schema, r["additionalProperties"], f"{path}.<name>")
    if isinstance(r.get("items"), dict):
        return _members(schema, r["items"], f"{path}[]")
    found: list[tuple[str, dict, bool]] = []
    for branch in r.get("anyOf", []) + r.get("oneOf", []):
        found += _members(schema, branch, path)
    return found


def property_paths(schema: dict) -> list[str]:
    """Every key path the reference lists, in order (``dns.listen``, ``networks.<name>.cidrs``)."""
    out: list[str] = []

    def walk(s: Any, path: str) -> None:
        for p, sub, _ in _members(schema, s, path):
            out.append(p)
            walk(sub, p)

    walk(schema, "")
    return out


def _table(schema: dict, members: list[tuple[str, dict, bool]]) -> Iterator[str]:
    yield "| key | type | default | values | description |"
    yield "|---|---|---|---|---|"
    for path, s, required in members:
        r = _resolve(schema, s)
        default = _value(r["default"]) if "default" in r else ""
        yield (f"| `{path}` | {_cell(_type_of(schema, s))} | {_cell(default)} | "
               f"{_cell(_prose(_values(schema, s, required)))} | {_cell(_prose(str(r.get('description', ''))))} |")


def _section(schema: dict, path: str, s: dict, level: int) -> Iterator[str]:
    members = _members(schema, s, path)
    if not members:
        return
    yield ""
    yield f"{'#' * min(level, 6)} `{path}`"
    yield ""
    r = _resolve(schema, s)
    text = _prose(str(r.get("description", "")))
    inner = members[0][0].rpartition(".")[0]
    if inner != path:  # the keys of each named or listed entry
        entry = _resolve(schema, r.get("additionalProperties") or r.get("items") or {})
        text += f" Each entry, `{inner}`: {_prose(str(entry.get('description', '')))}".rstrip()
    top = path.split(".")[0]
    if level == 2 and top in _GUIDES:
        text += f" Explained in [{_GUIDES[top]}]({_GUIDES[top]})."
    if text.strip():
        yield text.strip()
        yield ""
    yield from _table(schema, members)
    for p, sub, _ in members:
        yield from _section(schema, p, sub, level + 1)


def _value_types(schema: dict) -> Iterator[str]:
    defs = schema.get("$defs", {})
    if not defs:
        return
    yield ""
    yield "## Value types"
    yield ""
    yield "The shapes several keys share (`$defs` in the schema)."
    for name, d in defs.items():
        yield ""
        yield f"### `{name}`"
        yield ""
        line = _prose(str(d.get("description", "")))
        values = _values(schema, d, False, patterns=False)
        if values and "properties" not in d:
            line += f" Values: {values}."
        yield line.strip()


def reference_markdown(schema: dict) -> str:
    """The whole of docs/configuration.md for ``schema`` (a JSON Schema as a dict)."""
    lines = [_INTRO.rstrip("\n"), ""]
    if schema.get("description"):
        lines += [_prose(str(schema["description"])), ""]
    lines += ["## Top level", ""]
    lines += _table(schema, _members(schema, schema, ""))
    scalars: dict[str, list[str]] = {}
    for path, s, _ in _members(schema, schema, ""):
        if path in _GUIDES and not _members(schema, s, path):
            scalars.setdefault(_GUIDES[path], []).append(f"`{path}`")
    for guide, keys in scalars.items():
        lines += ["", f"{' and '.join(keys)} {'is' if len(keys) == 1 else 'are'} explained in [{guide}]({guide})."]
    for path, s, _ in _members(schema, schema, ""):
        lines += _section(schema, path, s, 2)
    lines += _value_types(schema)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    from appliance.config.schema import load_schema

    sys.stdout.write(reference_markdown(load_schema()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
