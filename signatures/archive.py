"""A bundle as one file: the archive shipped as the TUF target (docs/matching.md).

**Format: a plain, uncompressed POSIX tar.** Compression would save little — the bulk of a
bundle is 64-bit random fingerprints, which do not compress (gzip -6 saves 23 % on a 525 k
domain UT1 bundle: 6.3 → 4.8 MB) — and it would add a decompression stage on the device,
the one place where a small signed file can turn into a huge one (a "decompression bomb").
In an uncompressed tar every member's size is in its header and the archive's own length
bounds the total, so the caps below are checked before a byte is written. The unpacker
refuses anything else (gzip, bzip2, xz), even when it is signed. (If bandwidth matters more
later, HTTP-level compression or delta bundles are the place for it, not the archive.)

**Deterministic packing**: the same bundle directory always gives the same bytes (sorted
names, zero times and owners, fixed modes), so the target hash identifies the content and a
re-publish of an unchanged bundle is visible as such.

**Safe unpacking** is a pure policy (:func:`check_member`) over tar headers plus one
extraction routine that never lets :mod:`tarfile` write anything: regular files only, flat
names from a small alphabet, no links, devices, fifos or sparse files, no duplicates, and
caps on member count, per-file size and total size. Files are created with ``O_EXCL |
O_NOFOLLOW`` inside a fresh staging directory, written, fsynced.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from filters.errors import BundleError, EnvironmentFault, Where
from signatures._atomic import fsync_dir

__all__ = [
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_TOTAL_BYTES",
    "MAX_ARCHIVE_BYTES",
    "MemberInfo",
    "check_member",
    "pack_bundle",
    "pack_bundle_bytes",
    "unpack_bundle",
]

# A bundle today has 26 files (arrays + manifest); 256 leaves room for new array kinds
# while keeping a flood of tiny members (inode exhaustion on the SD card) impossible.
MAX_MEMBERS = 256
# The largest array of a 10 M-domain bundle (the fingerprints, 8 B/domain) is ~80 MB;
# 256 MiB is 3x that and still well below the RAM of a Pi-class device.
MAX_MEMBER_BYTES = 256 << 20
# All files together: a 10 M-domain bundle is ~110 MB (~11 B/domain, docs/publishing.md); 512 MiB is
# ample headroom yet bounds the state partition to a few GiB with the last N bundles kept.
MAX_TOTAL_BYTES = 512 << 20
# Names of bundle files: flat, portable, and impossible to read as a path or option.
MAX_NAME_LENGTH = 100  # the ustar name field; longer names would need PAX headers
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# A tar adds one 512-byte header per member, pads each member to 512 bytes and ends with
# two zero blocks, padded to a 10 KiB record: this is the most a capped bundle can weigh.
MAX_ARCHIVE_BYTES = MAX_TOTAL_BYTES + MAX_MEMBERS * 1024 + 10240
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class MemberInfo:
    """What the policy needs from a tar header (also built by tests without a tar)."""

    name: str
    type: bytes  # a tarfile type flag: tarfile.REGTYPE, tarfile.SYMTYPE, ...
    size: int
    sparse: bool = False

    @classmethod
    def from_tarinfo(cls, ti: tarfile.TarInfo) -> MemberInfo:
        return cls(ti.name, ti.type, ti.size, ti.issparse())


_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo", tarfile.DIRTYPE: "a directory",
    tarfile.CONTTYPE: "a contiguous file",
}


def check_member(m: MemberInfo, seen: set[str], total: int) -> int:
    """Refuse ``m`` unless it is a small regular top-level file with a plain name.

    ``seen`` holds the names accepted so far (updated here) and ``total`` their byte
    count; returns the new total. Raises BundleError naming the member and the rule.
    """
    shown = repr(m.name[:200])
    if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or m.sparse:
        what = "a sparse file" if m.sparse else _TYPE_NAMES.get(m.type, f"of tar type {m.type!r}")
        raise BundleError(f"archive member {shown} is {what}; only regular files are allowed")
    if m.name.startswith("/"):
        raise BundleError(f"archive member {shown} has an absolute path")
    if ".." in m.name.split("/"):
        raise BundleError(f"archive member {shown} climbs out of the bundle ('..')")
    if "/" in m.name or "\\" in m.name:
        raise BundleError(f"archive member {shown} is not at the top level")
    if len(m.name) > MAX_NAME_LENGTH or not _NAME.fullmatch(m.name):
        raise BundleError(f"archive member {shown} has a name outside [A-Za-z0-9_.-]")
    if m.name in seen:
        raise BundleError(f"archive member {shown} appears twice")
    if len(seen) >= MAX_MEMBERS:
        raise BundleError(f"archive has more than {MAX_MEMBERS} members")
    if m.size < 0 or m.size > MAX_MEMBER_BYTES:
        raise BundleError(f"archive member {shown} is {m.size:,} bytes; the cap is {MAX_MEMBER_BYTES:,}")
    if total + m.size > MAX_TOTAL_BYTES:
        raise BundleError(f"archive members add up to more than {MAX_TOTAL_BYTES:,} bytes")
    seen.add(m.name)
    return total + m.size


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.type = size, 0o644, 0, tarfile.REGTYPE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def _pack(bundle_dir: Path, out: BinaryIO) -> None:
    names = sorted(p.name for p in bundle_dir.iterdir())
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        seen: set[str] = set()
        total = 0
        for name in names:
            path = bundle_dir / name
            st = path.lstat()
            if not path.is_file() or path.is_symlink():
                raise BundleError("bundle directories hold regular files only", Where(str(path)))
            # The packer obeys the unpacker's rules, so a publisher cannot ship a bundle
            # that every device would refuse.
            total = check_member(MemberInfo(name, tarfile.REGTYPE, st.st_size), seen, total)
            with open(path, "rb") as f:
                tar.addfile(_tarinfo(name, st.st_size), f)


def pack_bundle_bytes(bundle_dir: str | Path) -> bytes:
    """The archive of ``bundle_dir`` in memory (tests, small bundles)."""
    buf = io.BytesIO()
    _pack(Path(bundle_dir), buf)
    return buf.getvalue()


def pack_bundle(bundle_dir: str | Path, out_path: str | Path) -> Path:
    """Write the deterministic archive of ``bundle_dir`` to ``out_path`` atomically."""
    src, out = Path(bundle_dir), Path(out_path)
    if not (src / "manifest.json").is_file():
        raise BundleError("not a bundle (no manifest.json)", Where(str(src)))
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the archive from the web server
        with os.fdopen(fd, "wb") as f:
            _pack(src, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        _unlink(tmp)
        raise EnvironmentFault(f"cannot write archive: {exc}", Where(str(out))) from exc
    except BaseException:
        _unlink(tmp)
        raise
    return out


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def unpack_bundle(archive: str | Path, staging: str | Path) -> list[str]:
    """Extract ``archive`` into the new directory ``staging`` (which must not exist).

    Every member is checked before it is written; on any refusal the staging directory is
    left for the caller to remove (it never holds anything outside itself). Returns the
    names written.
    """
    src, dest = Path(archive), Path(staging)
    where = Where(str(src))
    try:
        size = src.stat().st_size
    except OSError as exc:
        raise EnvironmentFault(f"cannot read archive: {exc.strerror}", where) from exc
    if size > MAX_ARCHIVE_BYTES:
        raise BundleError(f"archive is {size:,} bytes; the cap is {MAX_ARCHIVE_BYTES:,}", where)
    try:
        dest.mkdir(mode=0o755)
    except OSError as exc:
        raise EnvironmentFault(f"cannot create staging directory: {exc}", Where(str(dest))) from exc
    written: list[str] = []
    try:
        # "r:" reads an uncompressed tar only: a compressed archive is refused, never inflated.
        tar = tarfile.open(src, mode="r:")
    except tarfile.ReadError as exc:
        raise BundleError(f"not an uncompressed tar archive ({exc})", where) from exc
    except OSError as exc:
        raise EnvironmentFault(f"cannot read archive: {exc}", where) from exc
    try:
        with tar:
            seen: set[str] = set()
            total = 0
            # Header by header (not getmembers()), so a flood of members stops at the cap.
            while (ti := tar.next()) is not None:
                try:
                    total = check_member(MemberInfo.from_tarinfo(ti), seen, total)
                    _extract_one(tar, ti, dest)
                except BundleError as exc:
                    raise BundleError(exc.message, where) from None
                written.append(ti.name)
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"damaged tar archive: {exc}", where) from exc
    except OSError as exc:
        raise EnvironmentFault(f"cannot unpack: {exc}", Where(str(dest))) from exc
    if not written:
        raise BundleError("archive is empty", where)
    fsync_dir(dest)
    return written


def _extract_one(tar: tarfile.TarFile, ti: tarfile.TarInfo, dest: Path) -> None:
    src = tar.extractfile(ti)
    if src is None:  # cannot happen for a regular file; be explicit rather than trusting it
        raise BundleError(f"archive member {ti.name!r} has no data")
    # O_EXCL: never reuse or follow anything already in the staging directory.
    fd = os.open(dest / ti.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        left = ti.size
        while left:
            chunk = src.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise BundleError(f"archive member {ti.name!r} is truncated")
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
