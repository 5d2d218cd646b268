"""The bundle on disk (docs/matching.md): a directory of ``.npy`` arrays and ``manifest.json``.

Writing is atomic: everything goes to a temporary sibling directory, each file is fsynced,
and the directory is renamed into place, so a reader sees the old bundle or the new one,
never half of one. Reading maps every array with ``mmap_mode="r"``: activation parses
nothing, and all processes that map the same bundle share its pages in the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from filters.catalog import ALL_CATEGORIES, Catalog
from filters.cidr_matcher import CidrMatcher
from filters.cidr_table import CidrTable
from filters.classes import WILDCARD_ONLY, ClassTable
from filters.domain_matcher import DomainMatcher
from filters.domain_table import DomainTable
from filters.errors import BadNameError, BundleError, EnvironmentFault, SignatureError, Where
from filters.keyword_scanner import KeywordScanner, KeywordTable
from signatures._atomic import fsync_dir

__all__ = ["MANIFEST", "Bundle", "write_bundle", "open_bundle", "file_digest", "canary_problem"]

MANIFEST = "manifest.json"
SUPPORTED_FORMATS = (1,)
# A manifest is a few KiB; anything far larger is not one of ours.
MAX_MANIFEST_BYTES = 4 << 20


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_bundle(out_dir: str | Path, arrays: dict[str, np.ndarray], manifest: dict) -> Path:
    """Write arrays and manifest (with per-file sha256 and size added) atomically."""
    out = Path(out_dir)
    if out.exists() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise BundleError("output directory exists and is not a bundle; refusing to replace it", Where(str(out)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = {}
        for name, arr in sorted(arrays.items()):
            fname = f"{name}.npy"
            with open(tmp / fname, "wb") as f:
                np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            files[fname] = {"sha256": file_digest(tmp / fname), "size": (tmp / fname).stat().st_size}
        full = dict(manifest, files=files)
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(full, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EnvironmentFault(f"cannot write bundle: {exc}", Where(str(out))) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass(frozen=True)
class Bundle:
    """An opened bundle: the manifest and read-only memory maps of its arrays."""

    path: Path
    manifest: dict
    arrays: dict[str, np.ndarray]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def demo(self) -> bool:
        """A demonstration bundle (SOURCES.yaml ``demo: true``): never real filtering."""
        return self.manifest.get("demo") is True

    @cached_property
    def catalog(self) -> Catalog:
        cats = sorted(self.manifest["categories"], key=lambda c: c["id"])
        labels = tuple(self.manifest["source_labels"])
        masks = tuple(int(m) for m in self.manifest.get("source_masks", ()))
        allow = tuple(bool(a) for a in self.manifest.get("source_allow", ()))
        if not (len(masks) == len(allow) == len(labels)):
            masks, allow = (), ()  # roles unknown: "why" names every listing source
        return Catalog(tuple(c["name"] for c in cats), labels, masks, allow)

    @cached_property
    def classes(self) -> ClassTable:
        try:
            ct = ClassTable(**{k: self.arrays[f"class_{k}"] for k in
                               ("mask", "apex_mask", "allow", "src_offsets", "src_ids")})
        except KeyError as exc:
            raise BundleError(f"bundle lacks {exc.args[0]}.npy", Where(str(self.path))) from None
        n = len(ct.mask)
        off = ct.src_offsets
        if not (len(ct.apex_mask) == len(ct.allow) == n and len(off) == n + 1):
            raise BundleError("class arrays disagree on the class count", Where(str(self.path)))
        if int(off[0]) != 0 or int(off[-1]) != len(ct.src_ids) or bool((off[1:] < off[:-1]).any()):
            raise BundleError("class_src_offsets is inconsistent", Where(str(self.path)))
        if (len(ct.src_ids)
                and int((ct.src_ids & ~np.uint32(WILDCARD_ONLY)).max()) >= len(self.manifest["source_labels"])):
            raise BundleError("class_src_ids names a source the manifest lacks", Where(str(self.path)))
        return ct

    def domain_matcher(self) -> DomainMatcher:
        table = DomainTable.from_arrays(self.arrays, len(self.classes))
        return DomainMatcher(table, self.classes, self.catalog)

    def cidr_matcher(self) -> CidrMatcher:
        return CidrMatcher(CidrTable.from_arrays(self.arrays), self.classes)

    def keyword_scanner(self) -> KeywordScanner:
        table = KeywordTable.from_arrays(self.arrays)
        table.check_values()  # the scan kernels do not bounds-check; a few ms, once
        return KeywordScanner(table)

    def verify_files(self, exact: bool = False) -> None:
        """Check every file against the manifest's sha256 and size (SignatureError).

        With ``exact``, the directory must also hold nothing but those files and the
        manifest: an unpacked download may not smuggle in files the manifest does not vouch for.
        """
        for fname, meta in self.manifest["files"].items():
            p = self.path / fname
            if p.stat().st_size != meta["size"] or file_digest(p) != meta["sha256"]:
                raise SignatureError("file does not match the manifest's hash", Where(str(p)))
        if exact:
            extra = sorted({p.name for p in self.path.iterdir()} - set(self.manifest["files"]) - {MANIFEST})
            if extra:
                raise BundleError(f"files not listed in the manifest: {', '.join(extra)}", Where(str(self.path)))

    def self_test(self, require_block_canary: bool = True) -> None:
        """Map every table and check the manifest's canaries (BundleError on a failure).

        Canary names must come out as declared under a policy that blocks every category.
        A bundle with no block canary cannot show that it blocks anything (an empty or
        mis-built bundle would pass), so by default it is refused.
        """
        where = Where(str(self.path / MANIFEST))
        matcher = self.domain_matcher()
        self.cidr_matcher()
        self.keyword_scanner()
        canaries = self.manifest.get("canaries") or {}
        problem = canary_problem(canaries, require_block_canary)
        if problem:
            raise BundleError(f"manifest: {problem}", where)
        failed = []
        for expect in ("block", "allow"):
            for name in canaries.get(expect, []):
                try:
                    blocked = matcher.match(str(name), ALL_CATEGORIES).blocked
                except BadNameError as exc:
                    failed.append(f"{name!r}: {exc.reason}")
                    continue
                if blocked != (expect == "block"):
                    failed.append(f"{name} should be {expect}ed")
        if failed:
            raise BundleError(f"canary self-test failed: {'; '.join(failed)}", where)


def canary_problem(canaries: object, require_block: bool = True) -> str | None:
    """Why ``canaries`` cannot self-test a bundle, or None. The one rule for publish, the
    device's self-test and `signatures build` (which refuses up front what publish would)."""
    if not isinstance(canaries, dict) or not all(isinstance(canaries.get(k, []), list) for k in ("block", "allow")):
        return "canaries must be {block: [names], allow: [names]}"
    if require_block and not canaries.get("block"):
        return ("no block canaries: the bundle cannot show that it blocks anything (an empty or mis-built "
                "one would pass its self-test), so publish and devices refuse it; add canaries: "
                "{block: [names it lists]} to SOURCES.yaml")
    return None


def open_bundle(path: str | Path) -> Bundle:
    """Open a bundle directory: parse the manifest, map the arrays it lists read-only."""
    root = Path(path)
    mpath = root / MANIFEST
    try:
        raw = mpath.read_bytes()
    except FileNotFoundError:
        raise BundleError("not a bundle (no manifest.json)", Where(str(root))) from None
    except OSError as exc:
        raise BundleError(f"cannot read manifest: {exc.strerror}", Where(str(mpath))) from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError("manifest too large", Where(str(mpath)))
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"manifest is not JSON: {exc}", Where(str(mpath))) from exc
    if not isinstance(manifest, dict) or manifest.get("format") not in SUPPORTED_FORMATS:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"unsupported bundle format {fmt!r}", Where(str(mpath)))
    for key in ("version", "categories", "source_labels", "files"):
        if key not in manifest:
            raise BundleError(f"manifest lacks {key!r}", Where(str(mpath)))
    arrays = {}
    for fname in manifest["files"]:
        if "/" in fname or not fname.endswith(".npy"):
            raise BundleError(f"manifest names a bad file {fname!r}", Where(str(mpath)))
        try:
            arrays[fname[:-4]] = np.load(root / fname, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise BundleError("array file missing", Where(str(root / fname))) from None
        except (OSError, ValueError) as exc:
            raise BundleError(f"unreadable array: {exc}", Where(str(root / fname))) from exc
    return Bundle(root, manifest, arrays)
