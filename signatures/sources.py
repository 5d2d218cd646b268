"""SOURCES.yaml: what a publisher compiles into a bundle (docs/publishing.md, "SOURCES.yaml").

    version: 42              # bundle version, an integer that only ever increases
    expires_days: 30
    categories:
      gambling:
        description: "Gambling"
        sources: [{path: lists/ut1/gambling, format: ut1, licence: CC-BY-SA-4.0,
                   attribution: "UT1, Université Toulouse Capitole"}]
        keywords: ["casino"]  # optional: URL/payload substrings for the keyword scanner
    allow: [{path: allow.txt, format: domains}]
    demo: true               # optional: a demo bundle, labelled so wherever it shows

Paths are relative to the SOURCES.yaml file. Every problem is reported with file:line:col.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from filters.catalog import LOCAL_CATEGORY
from filters.classes import MAX_CATEGORIES
from filters.lists import FORMATS
from signatures.yamldoc import YamlDoc, load_yaml

__all__ = ["SourceSpec", "CategorySpec", "SourcesSpec", "load_sources"]

_CATEGORY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_MAX_EXPIRES_DAYS = 3660


@dataclass(frozen=True)
class SourceSpec:
    path: Path  # resolved against the SOURCES.yaml directory
    given: str  # the path as written in SOURCES.yaml
    format: str
    category: str | None  # None for allow sources
    licence: str = ""
    attribution: str = ""

    @property
    def label(self) -> str:
        """How admins see this source in a "why" answer: ``category: path``."""
        return f"{self.category or 'allow'}: {self.given}"


@dataclass(frozen=True)
class CategorySpec:
    name: str
    description: str
    sources: tuple[SourceSpec, ...]
    keywords: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourcesSpec:
    file: str
    version: int
    expires_days: int
    categories: tuple[CategorySpec, ...]
    allow: tuple[SourceSpec, ...]
    canaries: dict = field(default_factory=dict)
    demo: bool = False  # a demonstration bundle: the manifest says so and every view shows it

    @property
    def all_sources(self) -> list[SourceSpec]:
        return [s for c in self.categories for s in c.sources] + list(self.allow)


def load_sources(path: str | Path, text: str | None = None) -> SourcesSpec:
    doc = load_yaml(path, text)
    base = Path(path).resolve().parent
    d = doc.data
    if not isinstance(d, dict):
        raise doc.error("SOURCES file must be a mapping with version, categories, allow")
    _known_keys(doc, d, (), {"version", "expires_days", "categories", "allow", "canaries", "demo"})
    version = d.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise doc.error("version must be a positive integer", "version")
    expires = d.get("expires_days", 30)
    if not isinstance(expires, int) or isinstance(expires, bool) or not 1 <= expires <= _MAX_EXPIRES_DAYS:
        raise doc.error(f"expires_days must be an integer from 1 to {_MAX_EXPIRES_DAYS}", "expires_days")
    cats_in = d.get("categories")
    if not isinstance(cats_in, dict) or not cats_in:
        raise doc.error("categories must be a non-empty mapping of name -> {sources: [...]}", "categories")
    if len(cats_in) > MAX_CATEGORIES:
        raise doc.error(f"at most {MAX_CATEGORIES} categories", "categories")
    cats = []
    for name, body in cats_in.items():
        p = ("categories", name)
        if not isinstance(name, str) or not _CATEGORY_NAME.fullmatch(name) or name == LOCAL_CATEGORY:
            raise doc.key_error(f"bad category name {name!r} (lower-case letters, digits, - and _; "
                            f"{LOCAL_CATEGORY!r} is reserved)", *p)
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise doc.error("a category is a mapping with description and sources", *p)
        _known_keys(doc, body, p, {"description", "sources", "keywords"})
        sources = _source_list(doc, body.get("sources", []), p + ("sources",), base, name)
        kws = body.get("keywords", [])
        if not isinstance(kws, list) or not all(isinstance(k, str) and k for k in kws):
            raise doc.error("keywords must be a list of non-empty strings", *p, "keywords")
        desc = body.get("description", "")
        if not isinstance(desc, str):
            raise doc.error("description must be a string", *p, "description")
        cats.append(CategorySpec(name, desc, tuple(sources), tuple(kws)))
    allow = _source_list(doc, d.get("allow", []), ("allow",), base, None)
    canaries = d.get("canaries", {}) or {}
    if not isinstance(canaries, dict) or not all(
        k in ("block", "allow") and isinstance(v, list) and all(isinstance(x, str) for x in v)
        for k, v in canaries.items()
    ):
        raise doc.error("canaries must be {block: [names], allow: [names]}", "canaries")
    demo = d.get("demo", False)
    if not isinstance(demo, bool):
        raise doc.error("demo must be true or false", "demo")
    return SourcesSpec(doc.file, version, expires, tuple(cats), tuple(allow), canaries, demo)


def _known_keys(doc: YamlDoc, d: dict, path: tuple, known: set[str]) -> None:
    for k in d:
        if k not in known:
            raise doc.key_error(f"unknown key {k!r} (expected one of: {', '.join(sorted(known))})", *path, k)


def _source_list(doc: YamlDoc, items, path: tuple, base: Path, category: str | None) -> list[SourceSpec]:
    if not isinstance(items, list):
        raise doc.error("sources must be a list of {path, format}", *path)
    out = []
    for i, item in enumerate(items):
        p = path + (i,)
        if not isinstance(item, dict):
            raise doc.error("a source is a mapping {path, format, licence, attribution}", *p)
        _known_keys(doc, item, p, {"path", "format", "licence", "license", "attribution"})
        src = item.get("path")
        if not isinstance(src, str) or not src:
            raise doc.error("source needs a path", *p)
        fmt = item.get("format")
        if fmt not in FORMATS:
            raise doc.error(f"unknown format {fmt!r} (known: {', '.join(sorted(FORMATS))})", *p, "format")
        licence = item.get("licence", item.get("license", ""))
        attribution = item.get("attribution", "")
        if not isinstance(licence, str) or not isinstance(attribution, str):
            raise doc.error("licence and attribution must be strings", *p)
        out.append(SourceSpec((base / src).resolve(), src, fmt, category, licence, attribution))
    return out
