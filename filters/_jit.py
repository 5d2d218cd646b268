"""``njit`` for the kernels, with numba's on-disk cache invalidated when any kernel changes.

numba stamps a cached function with its own source file (mtime and size) only. A kernel
that calls kernels of other files — ``process_batch`` in _dns_kernels.py calls the parser,
the matcher and the cache of five other modules; ``_serve`` in appliance/dns/fastpath.py
calls ``process_batch`` — has those callees compiled into its own cached code, so after an
edit or an upgrade that changes only a callee's file, the caller's cache still loads and
runs the old callee: wrong answers with no error. Every kernel module imports ``njit``
from here, which first puts cache locators in front of numba's own whose stamp is the
function's own file *and* every module of this package (the kernels and the tables they
read): a change to any of them recompiles every kernel on the next start (the
background compile of appliance/dns/startup.py), never serves a stale one.
"""

from __future__ import annotations

import os
from pathlib import Path

from numba import njit
from numba.core import caching

__all__ = ["njit", "sources_stamp"]

_PACKAGE = Path(__file__).resolve().parent


def sources_stamp(directory: Path = _PACKAGE) -> tuple[tuple[str, int, int], ...]:
    """(name, mtime in ns, size) of every ``*.py`` file in ``directory``, in name order."""
    out = []
    for p in sorted(directory.glob("*.py")):
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.append((p.name, st.st_mtime_ns, st.st_size))
    return tuple(out)


_STAMP = sources_stamp()


class _PackageStamped:
    """Mixed in before a numba locator: its stamp, plus this package's sources."""

    def get_source_stamp(self):
        return (super().get_source_stamp(), _STAMP)  # type: ignore[misc]


class _UserProvided(_PackageStamped, caching.UserProvidedCacheLocator):
    """NUMBA_CACHE_DIR (the image keeps it on the data partition)."""


class _InTree(_PackageStamped, caching.InTreeCacheLocator):
    """__pycache__ beside the source (a checkout)."""


class _UserWide(_PackageStamped, caching.UserWideCacheLocator):
    """The per-user cache directory, when __pycache__ is not writable."""


_ours = (_UserProvided, _InTree, _UserWide)
if not any(isinstance(c, type) and issubclass(c, _PackageStamped) for c in caching.CacheImpl._locator_classes):
    caching.CacheImpl._locator_classes[:0] = list(_ours)
