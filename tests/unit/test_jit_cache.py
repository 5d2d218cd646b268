"""numba's cache is stamped with every kernel source (filters/_jit.py): a changed callee's
file must invalidate its callers' cached code, which numba alone does not do."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.dns import fastpath
from filters import _dns_kernels
from filters._jit import _PackageStamped, sources_stamp


def test_the_stamp_changes_with_any_file_of_the_package(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not a source\n")
    before = sources_stamp(tmp_path)
    assert [name for name, _, _ in before] == ["a.py", "b.py"]
    st = os.stat(tmp_path / "b.py")
    os.utime(tmp_path / "b.py", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert sources_stamp(tmp_path) != before  # a newer b.py
    (tmp_path / "b.py").write_text("y = 22\n")
    after = sources_stamp(tmp_path)
    assert after != before
    (tmp_path / "notes.txt").write_text("changed\n")  # not a source: no new stamp
    assert sources_stamp(tmp_path) == after


def test_kernels_in_and_outside_the_package_use_the_stamped_locators() -> None:
    for kernel in (fastpath._serve, _dns_kernels.process_batch):
        locator = kernel._cache._impl.locator
        assert isinstance(locator, _PackageStamped), type(locator)
        own, package = locator.get_source_stamp()
        assert package == sources_stamp(Path(_dns_kernels.__file__).parent)
        assert own  # numba's own stamp of the function's file stays part of it
