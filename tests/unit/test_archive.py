"""The bundle archive: deterministic packing and a safe unpacker."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import pytest

from filters.errors import BundleError
from signatures import archive
from signatures.archive import MemberInfo, check_member, pack_bundle, pack_bundle_bytes, unpack_bundle
from signatures.bundle import open_bundle
from tests.bundles import make_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "bundle", 3)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _reg(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = kind, linkname
    return ti, None


def test_packing_is_deterministic_and_round_trips(bundle: Path, tmp_path: Path) -> None:
    first = pack_bundle_bytes(bundle)
    os.utime(bundle / "manifest.json", (1, 1))
    assert pack_bundle_bytes(bundle) == first
    out = pack_bundle(bundle, tmp_path / "bundle.tar")
    assert out.read_bytes() == first
    names = unpack_bundle(out, tmp_path / "staging")
    assert names == sorted(p.name for p in bundle.iterdir())
    b = open_bundle(tmp_path / "staging")
    b.verify_files()
    assert b.version == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_tar_headers_carry_no_owner_or_time(bundle: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(pack_bundle_bytes(bundle))) as t:
        for ti in t.getmembers():
            assert (ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode) == (0, 0, 0, "", "", 0o644)


@pytest.mark.parametrize("member, message", [
    (MemberInfo("a.npy", tarfile.SYMTYPE, 0), "symbolic link"),
    (MemberInfo("a.npy", tarfile.LNKTYPE, 0), "hard link"),
    (MemberInfo("a.npy", tarfile.CHRTYPE, 0), "character device"),
    (MemberInfo("a.npy", tarfile.BLKTYPE, 0), "block device"),
    (MemberInfo("a.npy", tarfile.FIFOTYPE, 0), "fifo"),
    (MemberInfo("d", tarfile.DIRTYPE, 0), "directory"),
    (MemberInfo("a.npy", tarfile.REGTYPE, 10, sparse=True), "sparse"),
    (MemberInfo("/etc/passwd", tarfile.REGTYPE, 1), "absolute path"),
    (MemberInfo("../x.npy", tarfile.REGTYPE, 1), "climbs out"),
    (MemberInfo("a/../../x", tarfile.REGTYPE, 1), "climbs out"),
    (MemberInfo("sub/x.npy", tarfile.REGTYPE, 1), "not at the top level"),
    (MemberInfo("..", tarfile.REGTYPE, 1), "climbs out"),
    (MemberInfo(".hidden", tarfile.REGTYPE, 1), "name outside"),
    (MemberInfo("-rf", tarfile.REGTYPE, 1), "name outside"),
    (MemberInfo("a b", tarfile.REGTYPE, 1), "name outside"),
    (MemberInfo("", tarfile.REGTYPE, 1), "name outside"),
    (MemberInfo("x" * 101, tarfile.REGTYPE, 1), "name outside"),
    (MemberInfo("big.npy", tarfile.REGTYPE, archive.MAX_MEMBER_BYTES + 1), "the cap is"),
])
def test_policy_refuses(member: MemberInfo, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        check_member(member, set(), 0)


def test_policy_counts_duplicates_members_and_total() -> None:
    seen: set[str] = set()
    total = check_member(MemberInfo("a.npy", tarfile.REGTYPE, 5), seen, 0)
    assert total == 5 and seen == {"a.npy"}
    with pytest.raises(BundleError, match="appears twice"):
        check_member(MemberInfo("a.npy", tarfile.REGTYPE, 5), seen, total)
    with pytest.raises(BundleError, match="add up to more than"):
        check_member(MemberInfo("b.npy", tarfile.REGTYPE, 2), seen, archive.MAX_TOTAL_BYTES - 1)
    many = {f"f{i}" for i in range(archive.MAX_MEMBERS)}
    with pytest.raises(BundleError, match="more than 256 members"):
        check_member(MemberInfo("one-more", tarfile.REGTYPE, 0), many, 0)


@pytest.mark.parametrize("members, message", [
    ([_reg("manifest.json"), _reg("../escaped.txt")], "climbs out"),
    ([_reg("/tmp/absolute.txt")], "absolute path"),
    ([_reg("ok.npy"), _special("link.npy", tarfile.SYMTYPE, "/etc/passwd")], "symbolic link"),
    ([_reg("ok.npy"), _special("hard.npy", tarfile.LNKTYPE, "ok.npy")], "hard link"),
    ([_special("dev", tarfile.CHRTYPE)], "character device"),
    ([_special("pipe", tarfile.FIFOTYPE)], "fifo"),
    ([_reg("a.npy"), _reg("a.npy", b"again")], "appears twice"),
    ([], "archive is empty"),
])
def test_unpack_refuses_malicious_members(tmp_path: Path, members, message: str) -> None:
    (tmp_path / "a.tar").write_bytes(_tar(members))
    (tmp_path / "stage").mkdir()
    with pytest.raises(BundleError, match=message):
        unpack_bundle(tmp_path / "a.tar", tmp_path / "stage" / "s")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar", "stage"]
    assert [p.name for p in (tmp_path / "stage").iterdir()] == ["s"]


def test_unpack_refuses_a_symlink_then_a_write_through_it(tmp_path: Path) -> None:
    """The classic tar attack: a link to outside, then a file of the same name."""
    outside = tmp_path / "outside"
    outside.mkdir()
    data = _tar([_special("x", tarfile.SYMTYPE, str(outside)), _reg("x", b"pwned")])
    (tmp_path / "a.tar").write_bytes(data)
    with pytest.raises(BundleError, match="symbolic link"):
        unpack_bundle(tmp_path / "a.tar", tmp_path / "s")
    assert list(outside.iterdir()) == [] and list((tmp_path / "s").iterdir()) == []


def test_unpack_refuses_compressed_archives_without_inflating(bundle: Path, tmp_path: Path) -> None:
    # A gzip "bomb": 64 MiB of zeros in a 64 KiB file. It must be refused as gzip, unread.
    bomb = io.BytesIO()
    with gzip.GzipFile(fileobj=bomb, mode="wb") as g:
        g.write(_tar([_reg("zeros.npy", bytes(64 << 20))]))
    (tmp_path / "bomb.tar").write_bytes(bomb.getvalue())
    assert (tmp_path / "bomb.tar").stat().st_size < 1 << 20
    with pytest.raises(BundleError, match="not an uncompressed tar"):
        unpack_bundle(tmp_path / "bomb.tar", tmp_path / "s1")
    assert list((tmp_path / "s1").iterdir()) == []


def test_unpack_refuses_a_header_claiming_a_huge_member(tmp_path: Path) -> None:
    """An oversize member is refused from its header, before any data is read or written."""
    ti = tarfile.TarInfo("huge.npy")
    ti.size = archive.MAX_MEMBER_BYTES + 1
    header = ti.tobuf(tarfile.GNU_FORMAT)
    (tmp_path / "a.tar").write_bytes(header + b"\0" * 4096)
    with pytest.raises(BundleError, match="the cap is"):
        unpack_bundle(tmp_path / "a.tar", tmp_path / "s")
    assert list((tmp_path / "s").iterdir()) == []


def test_unpack_refuses_a_member_flood(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(_tar([_reg(f"f{i}", b"") for i in range(archive.MAX_MEMBERS + 5)]))
    with pytest.raises(BundleError, match="more than 256 members"):
        unpack_bundle(tmp_path / "a.tar", tmp_path / "s")
    assert len(list((tmp_path / "s").iterdir())) == archive.MAX_MEMBERS


def test_unpack_refuses_truncated_and_garbage_archives(bundle: Path, tmp_path: Path) -> None:
    data = pack_bundle_bytes(bundle)
    (tmp_path / "t.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="truncated|damaged"):
        unpack_bundle(tmp_path / "t.tar", tmp_path / "s1")
    (tmp_path / "g.tar").write_bytes(os.urandom(4096))
    with pytest.raises(BundleError, match="not an uncompressed tar"):
        unpack_bundle(tmp_path / "g.tar", tmp_path / "s2")


def test_unpack_into_an_existing_directory_is_refused(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(pack_bundle_bytes(bundle))
    (tmp_path / "s").mkdir()
    with pytest.raises(Exception, match="staging directory"):
        unpack_bundle(tmp_path / "a.tar", tmp_path / "s")


def test_pack_refuses_links_and_subdirectories(bundle: Path, tmp_path: Path) -> None:
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    (b / "evil.npy").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="regular files only"):
        pack_bundle_bytes(b)
    (b / "evil.npy").unlink()
    (b / "sub").mkdir()
    with pytest.raises(BundleError, match="regular files only"):
        pack_bundle_bytes(b)
    with pytest.raises(BundleError, match="not a bundle"):
        pack_bundle(tmp_path, tmp_path / "x.tar")
