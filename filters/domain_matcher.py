"""The domain matcher's Python API: single names, wire QNAMEs and batches.

Semantics are docs/matching.md; the work happens in _domain_kernels.py. A matcher is immutable
(its arrays may be read-only memory maps shared by every worker). The local overlay (the
config's block and allow lists) is a second, small table hashed with the bundle's key, so a
lookup hashes each suffix once and probes both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numba
import numpy as np

from filters import _domain_kernels as K
from filters.catalog import Catalog
from filters.classes import LOCAL_CATEGORY_BIT, ClassTable
from filters.domain_builder import DomainSetBuilder
from filters.domain_table import DomainTable, build_domain_table, pack_names
from filters.errors import BadNameError
from filters.names import name_to_wire, normalise_domain, normalise_pattern

__all__ = ["Verdict", "BatchResult", "DomainMatcher", "LOCAL_SOURCES", "DIVERT_SOURCE"]

LOCAL_SOURCES = ("config: local block list", "config: local allow list")
DIVERT_SOURCE = "policy: SafeSearch or temporary allow"
_LOCAL_BLOCK, _LOCAL_ALLOW = 0, 1
_LOCAL_MASK = 1 << LOCAL_CATEGORY_BIT
_LOCAL_CATALOG = Catalog((), LOCAL_SOURCES, (_LOCAL_MASK, 0), (False, True))


@dataclass(frozen=True)
class Verdict:
    """The answer for one name, with the "why"."""

    name: str
    blocked: bool
    categories: tuple[str, ...]  # every category of every matching block entry
    rule: str | None  # the deciding suffix: the block rule, or the allow rule that won
    sources: tuple[str, ...]  # the lists the deciding rule came from

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "verdict": "block" if self.blocked else "allow",
            "categories": list(self.categories),
            "rule": self.rule,
            "source": self.sources[0] if self.sources else None,
            "sources": list(self.sources),
        }


@dataclass(frozen=True)
class BatchResult:
    """Raw per-name results of a batch: a uint64 row per name (see _domain_kernels R_*)."""

    rows: np.ndarray

    @property
    def blocked(self) -> np.ndarray:
        return self.rows[:, K.R_STATUS] == K.ST_BLOCK

    @property
    def categories(self) -> np.ndarray:
        return self.rows[:, K.R_UNION]

    @property
    def malformed(self) -> np.ndarray:
        return self.rows[:, K.R_STATUS] == K.ST_MALFORMED


def _empty_table(key: tuple[int, int]) -> tuple[DomainTable, ClassTable]:
    table = build_domain_table([], np.zeros(0, dtype=np.uint32), key)
    z64 = np.zeros(0, dtype=np.uint64)
    return table, ClassTable(z64, z64, np.zeros(0, np.uint8), np.zeros(1, np.uint32), np.zeros(0, np.uint32))


class DomainMatcher:
    def __init__(
        self,
        table: DomainTable,
        classes: ClassTable,
        catalog: Catalog,
        local: tuple[DomainTable, ClassTable] | None = None,
    ) -> None:
        self.table = table
        self.classes = classes
        self.catalog = catalog
        self._local = local or _empty_table(table.key)
        self._local_catalog = _LOCAL_CATALOG  # with_local adds divert sources
        self._k0, self._k1 = np.uint64(table.key[0]), np.uint64(table.key[1])
        self._main_t = table.kernel_tuple(classes)
        self._local_t = self._local[0].kernel_tuple(self._local[1])
        # Scratch for the single-name paths: reused so a lookup allocates nothing. The
        # kernels hold the GIL, so one matcher may be shared by threads.
        self._labels = np.empty(2 * K.MAX_LABELS, dtype=np.int64)
        self._scratch = K.new_scratch()
        self._row = np.zeros(K.RESULT_WIDTH, dtype=np.uint64)
        self._wire_entry = self._resolve_wire_entry()

    def _resolve_wire_entry(self):
        """The compiled match_wire for a ``bytes`` buffer (numba reads bytes objects in
        place, read-only). Calling it directly skips numba's per-call type dispatch, ~0.7 µs
        of a ~1.5 µs lookup; match_wire uses it only for exactly these argument types."""
        if not hasattr(K.match_wire, "overloads"):  # NUMBA_DISABLE_JIT=1: plain Python
            return K.match_wire
        args = (b"\x00", 0, self._labels, self._scratch, self._k0, self._k1, np.uint64(0),
                self._row, self._main_t, self._local_t)
        K.match_wire(*args)
        sig = tuple(numba.typeof(a) for a in args)
        return K.match_wire.overloads[sig].entry_point  # type: ignore[attr-defined]  # a namedtuple of runtime fields

    # -- building the local overlay ------------------------------------------------------
    def with_local(self, block: Iterable[str] = (), allow: Iterable[str] = (),
                   divert: Mapping[int, Iterable[str]] | None = None) -> DomainMatcher:
        """A matcher with the config's local lists (entries in list syntax: ``*.x``, ``.x``)
        and ``divert`` entries (category mask of reserved bits -> domain names).
        Raises BadNameError for an entry that is not a domain name."""
        builder = DomainSetBuilder()
        for source, entries in ((_LOCAL_BLOCK, block), (_LOCAL_ALLOW, allow)):
            for entry in entries:
                name, sub = normalise_pattern(entry)
                builder.add((name,), source, sub)
        masks, allows, labels = [_LOCAL_MASK, 0], [False, True], list(LOCAL_SOURCES)
        # Divert entries (filters/policy.py): reserved category bits no policy blocks, so
        # they decide nothing and only mark the names in a lookup's category union — which
        # is how the DNS fast path knows to hand SafeSearch and temporarily allowed names
        # to Python. Each mask is one source; a name covers the names below it.
        for bits, names in (divert or {}).items():
            source = len(masks)
            builder.add((normalise_domain(n) for n in names), source)
            masks.append(int(bits))
            allows.append(False)
            labels.append(DIVERT_SOURCE)
        local = builder.build(masks, allows, lambda: self.table.key)
        m = DomainMatcher(self.table, self.classes, self.catalog, local)
        m._local_catalog = Catalog((), tuple(labels), tuple(masks), tuple(allows))
        return m

    # -- lookups ---------------------------------------------------------------------------
    @staticmethod
    def policy_mask(mask: int) -> np.uint64:
        # Local block entries are blocked under every policy (docs/matching.md).
        return np.uint64((mask | _LOCAL_MASK) & ((1 << 64) - 1))

    def match_wire(self, buf: bytes | np.ndarray, start: int, policy: np.uint64) -> int:
        """Hot path: look up the wire QNAME at ``buf[start]`` without building a string.
        Returns ST_BLOCK, ST_ALLOW or ST_MALFORMED; details stay in :attr:`last_row`."""
        if type(buf) is bytes and type(policy) is np.uint64:
            return self._wire_entry(buf, start, self._labels, self._scratch, self._k0, self._k1,
                                    policy, self._row, self._main_t, self._local_t)
        if not isinstance(buf, (bytes, np.ndarray)):
            buf = np.frombuffer(buf, dtype=np.uint8)
        return K.match_wire(buf, start, self._labels, self._scratch, self._k0, self._k1,
                            np.uint64(policy), self._row, self._main_t, self._local_t)

    @property
    def kernel_args(self) -> tuple:
        """(k0, k1, main table tuple, local table tuple): what the kernels take to look a
        name up here, for other njit code (the DNS fast path) calling them directly."""
        return (self._k0, self._k1, self._main_t, self._local_t)

    @property
    def last_row(self) -> np.ndarray:
        return self._row

    def match(self, name: str, policy: int) -> Verdict:
        """Look up one name (any spelling: case, trailing dot, Unicode)."""
        canonical = normalise_domain(name)
        pm = self.policy_mask(policy)
        status = self.match_wire(name_to_wire(canonical), 0, pm)
        if status == K.ST_MALFORMED:
            raise BadNameError(f"cannot look up {name!r}")
        return self.explain(canonical, self._row, int(pm))

    def match_batch(self, names: Sequence[str], policy: int) -> BatchResult:
        """Look up many names in one kernel call. Names with non-ASCII characters are
        IDNA-mapped first; names that are not domain names come back malformed."""
        buf, starts, stops = pack_names(names)
        rows = np.zeros((len(names), K.RESULT_WIDTH), dtype=np.uint64)
        pm = self.policy_mask(policy)
        K.match_text_batch(buf, starts, stops, self._k0, self._k1, pm, rows,
                           self._main_t, self._local_t)
        redo = np.flatnonzero(rows[:, K.R_STATUS] == K.ST_NEEDS_PYTHON)
        for i in redo:  # rare: Unicode names; map them and look up one by one
            try:
                wire = np.frombuffer(name_to_wire(normalise_domain(names[int(i)])), dtype=np.uint8)
            except BadNameError:
                rows[i, K.R_STATUS] = K.ST_MALFORMED
                continue
            K.match_wire(wire, 0, self._labels, self._scratch, self._k0, self._k1, pm, rows[i],
                         self._main_t, self._local_t)
        return BatchResult(rows)

    def match_wire_batch(self, buf: np.ndarray, starts: np.ndarray, policy: int) -> BatchResult:
        rows = np.zeros((len(starts), K.RESULT_WIDTH), dtype=np.uint64)
        K.match_wire_batch(buf, starts, self._k0, self._k1, self.policy_mask(policy), rows,
                           self._main_t, self._local_t)
        return BatchResult(rows)

    # -- the why -----------------------------------------------------------------------------
    def explain(self, canonical: str, row: np.ndarray, policy: int) -> Verdict:
        """Turn a result row for ``canonical`` (looked up under ``policy``) into a Verdict.

        The rule is the deciding suffix: the blocking one, or else the longest allow entry
        (which answers "why allowed?" even when nothing would have blocked). Its sources
        are the lists, bundle and local, whose entries at that suffix decided: for a block
        the lists of categories the policy blocks, for an allow the allow lists."""
        blocked = int(row[K.R_STATUS]) == K.ST_BLOCK
        if blocked:
            depth, main, local = (int(row[K.R_BLOCK_DEPTH]), int(row[K.R_BLOCK_CLS]),
                                  int(row[K.R_BLOCK_LCLS]))
        else:
            depth, main, local = (int(row[K.R_ALLOW_DEPTH]), int(row[K.R_ALLOW_CLS]),
                                  int(row[K.R_ALLOW_LCLS]))
        labels = canonical.split(".")
        rule = ".".join(labels[len(labels) - depth:]) if depth else None
        apex = depth == len(labels)
        sources: list[str] = []
        policy = int(self.policy_mask(policy))
        if main:
            ids = self.classes.sources(main - 1, apex)
            sources += self.catalog.deciding(ids, blocked, policy)
        if local:
            ids = self._local[1].sources(local - 1, apex)
            sources += self._local_catalog.deciding(ids, blocked, policy)
        cats = tuple(self.catalog.names(int(row[K.R_UNION])))
        return Verdict(canonical, blocked, cats, rule, tuple(sources))

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + sum(a.nbytes for a in self.classes.arrays().values())

