"""Give back the pages only start-up needed, so a DNS worker's resident set is what it serves with.

numba needs LLVM (libllvmlite.so, ~40 MB of code and read-only data touched) to load the
compiled kernels from its cache; once they are loaded, serving never runs LLVM again. Those
pages stay mapped and resident, counted in RSS and PSS, until the kernel needs the memory.
:func:`release_file_pages` drops this process's page-table entries for every read-only file
mapping it has not modified (MADV_DONTNEED: the pages stay in the page cache, shared with
nobody, and come back on a minor fault if anything touches them again — the interpreter's
and numpy's hot code does at once, LLVM's does not). Mappings holding private copies of
pages (relocated data: ``Anonymous`` above zero in smaps) and writable ones are left
alone, since dropping those would lose their contents. Linux only; elsewhere a no-op.

Called after :func:`appliance.dns.fastpath.warm_up` has loaded every kernel, before workers
are forked (so they start without those pages) and in a single-process server at start.
"""

from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["release_file_pages", "resident_kib"]

log = logging.getLogger("schoolgate")

_MADV_DONTNEED = 4  # Linux <sys/mman.h>


def _mappings() -> list[tuple[int, int, str, str, int]]:
    """(start, end, perms, path, anonymous KiB) of every mapping, from /proc/self/smaps."""
    out: list[tuple[int, int, str, str, int]] = []
    current: list | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if len(head) >= 5 and "-" in head[0] and ":" in head[3]:
                start, end = (int(x, 16) for x in head[0].split("-"))
                current = [start, end, head[1], head[5].strip() if len(head) > 5 else "", 0]
                out.append(current)  # type: ignore[arg-type]
            elif current is not None and head and head[0] == "Anonymous:":
                current[4] = int(head[1])
    return [tuple(m) for m in out]  # type: ignore[misc]


def release_file_pages() -> int:
    """Drop resident pages of unmodified read-only file mappings; returns KiB released."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        before = resident_kib()
        for start, end, perms, path, anonymous in _mappings():
            if path.startswith("/") and "w" not in perms and anonymous == 0:
                madvise(start, end - start, _MADV_DONTNEED)
        return max(before - resident_kib(), 0)
    except (OSError, AttributeError, ValueError):  # no /proc, no libc symbol: keep the pages
        log.debug("could not release file pages", exc_info=True)
        return 0


def resident_kib() -> int:
    """This process's resident set (Rss of smaps_rollup), KiB; 0 when unknown."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
