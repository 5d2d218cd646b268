"""The documentation stays true to the code: docs/configuration.md is what the generator makes
of config/schema.json, and every link and section reference in the docs and code comments
points at a file and a heading that exist."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from appliance.config.reference import property_paths, reference_markdown
from appliance.config.schema import load_schema

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "configuration.md"
REGENERATE = "regenerate with python -m appliance.config.reference > docs/configuration.md"


def test_the_configuration_reference_is_generated_from_the_schema() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == reference_markdown(load_schema()), REGENERATE


def _property_names(node: object) -> Iterator[str]:
    """Every key of every ``properties`` mapping in the schema, $defs included."""
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            yield from props
        for v in node.values():
            yield from _property_names(v)
    elif isinstance(node, list):
        for v in node:
            yield from _property_names(v)


def test_every_schema_property_is_in_the_reference() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([^`]+)` \|", text, re.M))
    paths = property_paths(load_schema())
    assert paths and set(paths) <= listed, f"{sorted(set(paths) - listed)}: {REGENERATE}"
    last = {p.rsplit(".", 1)[-1].removesuffix("[]") for p in listed}
    missing = sorted(set(_property_names(load_schema())) - last)
    assert not missing, f"schema properties missing from docs/configuration.md: {missing}; {REGENERATE}"


# -- links and section references ---------------------------------------------------------------

def _headings(md: Path) -> list[str]:
    """The file's headings as written (outside code fences), backticks dropped."""
    out, fence = [], False
    for line in md.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (m := re.match(r"#{1,6} (.+?)\s*#*$", line)):
            out.append(m.group(1).replace("`", "").strip())
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def _anchors(md: Path) -> set[str]:
    """The anchors of the file's headings (-1, -2 ... after repeats, as GitHub makes them)."""
    seen: dict[str, int] = {}
    out = set()
    for h in _headings(md):
        slug = _slug(h)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]


def test_every_markdown_link_points_at_a_file_and_heading_that_exist() -> None:
    bad = []
    for md in _markdown_files():
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # http(s), mailto
            path, _, anchor = target.partition("#")
            dest = (md.parent / path).resolve() if path else md
            if not dest.exists():
                bad.append(f"{md.relative_to(ROOT)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{md.relative_to(ROOT)}: {target}: no such heading")
    assert not bad, "\n".join(bad)


# `docs/dns.md, "Fast path"`, `docs/dns.md ("Fast path")`, `README.md "What works today"`.
# The heading may itself hold quotes (`The "why"`): headings are compared by their anchors.
_SECTION_REF = re.compile(r"\b((?:docs/)?[\w-]+\.md|README)(?:[,:]\s*|\s+)\(?\"([^\"\n]{3,80})\"")
_SOURCES = ("appliance", "signatures", "filters", "tests", "benchmarks", "docs", "config", "image")
_SKIP = ("config/demo/repo", "image/out", "tests/artifacts")


def test_every_section_reference_names_a_heading_that_exists() -> None:
    bad = []
    files = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for top in _SOURCES:
        files += [p for p in sorted((ROOT / top).rglob("*")) if p.is_file()
                  and p.suffix in (".py", ".sh", ".md", ".yaml", ".txt", "")
                  and "__pycache__" not in p.parts]
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        if rel.startswith(_SKIP) or f.resolve() == Path(__file__).resolve():
            continue
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for m in _SECTION_REF.finditer(text):
            doc, heading = m.group(1), m.group(2).replace("`", "").strip()
            if doc == "README":
                doc = "README.md"
            target = ROOT / doc if "/" in doc or doc == "README.md" else ROOT / "docs" / doc
            if not target.is_file():
                bad.append(f"{rel}: {m.group(0)!r}: no such document")
            elif _slug(heading) not in _anchors(target):
                bad.append(f"{rel}: {m.group(0)!r}: no such heading in {doc}")
    assert not bad, "\n".join(bad)
