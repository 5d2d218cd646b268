"""Compile list sources into bundle arrays (the publisher's side; runs on a fast machine).

Reads every source named in SOURCES.yaml, parses it with its format's parser, merges names
that several sources list (a name gets the union of their categories), and builds the
domain table, the CIDR table, the keyword table and their shared class table. Nothing here
writes files: see bundle.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from filters.catalog import ALL_CATEGORIES, Catalog
from filters.cidr_table import build_cidr_table
from filters.classes import ClassTable, build_classes
from filters.domain_builder import DomainSetBuilder, KeySource
from filters.domain_matcher import DomainMatcher
from filters.errors import ConfigError, ListFormatError, Where
from filters.keyword_scanner import build_keyword_table
from filters.lists import get_format
from filters.lists._result import Network, ParsedList, Rejection
from signatures.sources import SourceSpec, SourcesSpec

__all__ = ["BUNDLE_FORMAT", "SourceReport", "CompiledBundle", "compile_sources", "rfc3339"]

BUNDLE_FORMAT = 1


@dataclass
class SourceReport:
    """What one source contributed, and every line it lost."""

    label: str
    path: str
    lines: int = 0
    entries: int = 0
    unsupported: int = 0
    ignored: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    sha256: str = ""
    seconds: float = 0.0


@dataclass
class CompiledBundle:
    arrays: dict[str, np.ndarray]
    manifest: dict
    reports: list[SourceReport]
    catalog: Catalog
    classes: ClassTable


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_lines(spec: SourceSpec, sha: hashlib._Hash) -> Iterator[str]:
    path = spec.path
    member = get_format(spec.format).member
    if member:
        if not path.is_dir():
            raise ListFormatError(f"{spec.format} source must be a directory holding {member!r}", Where(spec.given))
        path = path / member
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ListFormatError("list file not found", Where(str(path))) from None
    except OSError as exc:
        raise ListFormatError(f"cannot read list: {exc.strerror}", Where(str(path))) from exc
    with f:
        if path.is_dir():
            raise ListFormatError("is a directory; give a file or use format ut1", Where(str(path)))
        for raw in f:
            sha.update(raw)
            # Undecodable bytes become U+FFFD, which no name may contain: the parser then
            # rejects that line with its number instead of the whole file failing.
            yield raw.decode("utf-8", "replace")


def compile_sources(
    spec: SourcesSpec,
    *,
    now: datetime,
    new_key: KeySource,
    progress: Callable[[SourceReport], None] | None = None,
) -> CompiledBundle:
    """Compile ``spec``. ``now`` and ``new_key`` are injected (clock and randomness)."""
    categories = [c.name for c in spec.categories]
    bit = {name: i for i, name in enumerate(categories)}
    labels: list[str] = []
    masks: list[int] = []
    allow_flags: list[bool] = []

    def new_source(label: str, mask: int, allow: bool) -> int:
        labels.append(label)
        masks.append(mask)
        allow_flags.append(allow)
        return len(labels) - 1

    domains = DomainSetBuilder()
    nets: dict[Network, int] = {}
    reports: list[SourceReport] = []
    source_meta: list[dict] = []
    for src in spec.all_sources:
        t0 = time.perf_counter()
        sha = hashlib.sha256()
        report = SourceReport(src.label, str(src.path))
        parsed: ParsedList = get_format(src.format).parse(_read_lines(src, sha), str(src.path))
        is_allow = src.category is None
        own = new_source(src.label, 0 if src.category is None else 1 << bit[src.category], is_allow)
        domains.add(parsed.block, own)
        domains.add(parsed.block_subdomains, own, subdomains_only=True)
        for net in parsed.networks:
            nets[net] = nets.get(net, 0) | 1 << (2 * own)
        if parsed.allow or parsed.allow_subdomains or parsed.allow_networks:
            # adblock "@@" exceptions inside a block list: an allow source of their own
            exc = own if is_allow else new_source(src.label + " (exceptions)", 0, True)
            domains.add(parsed.allow, exc)
            domains.add(parsed.allow_subdomains, exc, subdomains_only=True)
            for net in parsed.allow_networks:
                nets[net] = nets.get(net, 0) | 1 << (2 * exc)
        report.lines, report.entries = parsed.lines, parsed.entries
        report.unsupported, report.ignored = parsed.unsupported, parsed.ignored
        report.rejected, report.sha256 = parsed.rejected, sha.hexdigest()
        report.seconds = time.perf_counter() - t0
        reports.append(report)
        source_meta.append({
            "category": src.category, "allow": is_allow, "path": src.given,
            "format": src.format, "licence": src.licence, "attribution": src.attribution,
            "sha256": report.sha256, "lines": report.lines, "entries": report.entries,
            "rejected": len(report.rejected), "unsupported": report.unsupported,
            "ignored": report.ignored,
        })
        if progress:
            progress(report)

    # One class table for domains and CIDRs: a class is a combination of sources.
    index: dict[int, int] = {}
    domain_table = domains.build_table(index, new_key)
    net_list = list(nets)
    cidr_table = build_cidr_table([(n, index.setdefault(nets[n], len(index))) for n in net_list])
    classes = build_classes(list(index), masks, allow_flags)
    keywords = build_keyword_table(
        [(kw, 1 << bit[c.name]) for c in spec.categories for kw in c.keywords]
    )
    catalog = Catalog(tuple(categories), tuple(labels), tuple(masks), tuple(allow_flags))

    arrays: dict[str, np.ndarray] = {}
    arrays.update(domain_table.arrays())
    arrays.update({f"class_{k}": v for k, v in classes.arrays().items()})
    arrays.update(cidr_table.arrays())
    arrays.update(keywords.arrays())

    _check_canaries(spec, DomainMatcher(domain_table, classes, catalog))
    manifest = {
        "format": BUNDLE_FORMAT,
        "version": spec.version,
        "created": rfc3339(now),
        "expires": rfc3339(now + timedelta(days=spec.expires_days)),
        "categories": [
            {"id": i, "name": c.name, "description": c.description}
            for i, c in enumerate(spec.categories)
        ],
        "sources": source_meta,
        "source_labels": labels,
        "source_masks": [str(m) for m in masks],  # decimal strings: JSON readers lose 64-bit ints
        "source_allow": allow_flags,
        "counts": {
            "domains": len(domain_table),
            "cidrs": len(cidr_table),
            "keywords": len(keywords),
            "classes": len(classes),
            "rejected": sum(len(r.rejected) for r in reports),
        },
        "canaries": {k: list(v) for k, v in spec.canaries.items()},
    }
    if spec.demo:
        manifest["demo"] = True  # shown by run, lookup and status: never mistaken for real lists
    return CompiledBundle(arrays, manifest, reports, catalog, classes)


def _check_canaries(spec: SourcesSpec, matcher: DomainMatcher) -> None:
    """Canary names must come out as declared under a policy blocking every category;
    a bundle that fails its own canaries is never written."""
    for expect in ("block", "allow"):
        for name in spec.canaries.get(expect, []):
            v = matcher.match(name, ALL_CATEGORIES)
            if v.blocked != (expect == "block"):
                raise ConfigError(
                    f"canary {name!r} should be {expect}ed but is "
                    f"{'blocked' if v.blocked else 'allowed'}", Where(spec.file))
