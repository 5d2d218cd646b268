"""Multi-pattern keyword / URL-substring scanner (HTTP paths, payloads).

A keyword rule is a byte string and a category mask (uint64, the same bits as
:mod:`filters.classes`). Scanning a text yields the OR of the categories of every rule that
occurs in it as a substring, plus the first rule found, so the policy layer can block on
categories and still answer "why?".

Matching semantics (the contract tests rely on):

- **ASCII case-insensitive.** ``A``-``Z`` equal ``a``-``z``; every other byte, including
  bytes >= 0x80, is compared exactly. ``str`` patterns and texts are UTF-8 encoded first, so
  non-ASCII letters are *not* case-folded (``É`` does not match ``é``): URLs carry such
  text percent-encoded anyway, and a full Unicode fold would change byte lengths.
- Patterns are de-duplicated under that folding (``Casino`` and ``casino`` are one rule,
  their masks OR-ed). Pattern ids are indices in order of first appearance;
  :meth:`KeywordScanner.pattern` returns the spelling first given. Empty patterns are
  rejected (they would match everywhere).
- Matches may overlap: ``"sex"`` and ``"sexy"`` both match in ``"sexy"``.
- The *first* match of a text is the one with the smallest end offset; among patterns
  ending at the same offset, the longest. End offsets are exclusive
  (``text[end - len(p):end]`` is the match), as in hyperscan.

The tables are flat numpy arrays (see :mod:`filters._scan_kernels` for the layout), saved
in a bundle as ``kw_*.npy`` and used straight from ``np.load(..., mmap_mode="r")``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from filters import _scan_kernels as _k
from filters.errors import BundleError, InputError

__all__ = [
    "KEYWORD_FORMAT_VERSION",
    "MAX_DFA_CELLS",
    "KeywordTable",
    "KeywordScanner",
    "build_keyword_table",
]

KEYWORD_FORMAT_VERSION = 1

# Upper bound on states x byte classes of the DFA, checked before anything is allocated.
# 2**26 cells is 256 MiB as int32: far above a real keyword list (5k UT1-derived keywords
# build ~30k states x ~40 classes = 1.2M cells, 2.4 MiB as uint16) yet small enough to stay
# loadable on a 1-2 GiB Pi, and it keeps every cell index well inside int32.
MAX_DFA_CELLS = 2**26

# States fit uint16 transitions up to this count; larger automata use int32.
_U16_STATES = 2**16

# version, n_classes, n_states, acc0 (first accepting state), n_patterns, longest pattern
_HEADER_LEN = 6

# (.npy stem, dtype) of every array of a keyword table, in KeywordTable field order.
_ARRAYS: tuple[tuple[str, type], ...] = (
    ("kw_header", np.int64),
    ("kw_cmap", np.int32),
    ("kw_delta", np.int32),  # or uint16 when n_states <= 65536
    ("kw_acc_mask", np.uint64),
    ("kw_acc_own", np.int32),
    ("kw_acc_dict", np.int32),
    ("kw_pat_bytes", np.uint8),
    ("kw_pat_offsets", np.int64),
    ("kw_pat_mask", np.uint64),
)


@dataclass(frozen=True)
class KeywordTable:
    """The compiled automaton and the pattern store; every field may be a read-only mmap."""

    header: np.ndarray  # int64[6]: see _HEADER_LEN
    cmap: np.ndarray  # int32[256]: byte -> class (ASCII case-folded)
    delta: np.ndarray  # uint16 or int32 [n_states * n_classes]: next state
    acc_mask: np.ndarray  # uint64[n_accepting]: OR of masks of patterns ending there
    acc_own: np.ndarray  # int32[n_accepting]: pattern ending exactly there, or -1
    acc_dict: np.ndarray  # int32[n_accepting]: next accepting state with an own pattern
    pat_bytes: np.ndarray  # uint8: every pattern, as first spelled, concatenated
    pat_offsets: np.ndarray  # int64[n_patterns + 1]
    pat_mask: np.ndarray  # uint64[n_patterns]: category mask per pattern

    @property
    def n_classes(self) -> int:
        return int(self.header[1])

    @property
    def n_states(self) -> int:
        return int(self.header[2])

    @property
    def acc0(self) -> int:
        return int(self.header[3])

    @property
    def n_patterns(self) -> int:
        return int(self.header[4])

    @property
    def max_len(self) -> int:
        return int(self.header[5])

    def __len__(self) -> int:
        return self.n_patterns

    @property
    def nbytes(self) -> int:
        """Total size of the arrays (what the bundle ships and the page cache holds)."""
        return sum(a.nbytes for a in self.arrays().values())

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays keyed by their ``.npy`` stem, ready for ``np.save``."""
        return {
            name: getattr(self, name[3:]) for name, _ in _ARRAYS
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> KeywordTable:
        """Wrap arrays loaded from a bundle, without copying them.

        Checks names, dtypes, shapes and the header in O(1) (plus the 256-entry class map);
        raises :class:`BundleError`. Values inside ``delta`` and the link arrays are not
        scanned here: call :meth:`check_values` once when a bundle is activated.
        """
        got = []
        for name, dtype in _ARRAYS:
            a = arrays.get(name)
            if a is None:
                raise BundleError(f"keyword table: missing array {name}")
            ok = isinstance(a, np.ndarray) and (
                a.dtype == dtype or (name == "kw_delta" and a.dtype == np.uint16))
            if not ok or a.ndim != 1:
                want = "uint16 or int32" if name == "kw_delta" else np.dtype(dtype).name
                have = getattr(a, "dtype", type(a).__name__)
                raise BundleError(f"keyword table: {name} must be a 1-D {want} array, got "
                                  f"{have} with shape {getattr(a, 'shape', '?')}")
            if not a.flags.c_contiguous:
                raise BundleError(f"keyword table: {name} is not contiguous")
            got.append(a)
        table = cls(*got)
        h = table.header
        if len(h) != _HEADER_LEN or int(h[0]) != KEYWORD_FORMAT_VERSION:
            raise BundleError(f"keyword table: unsupported header {h.tolist()!r}")
        k, n, acc0, npat = table.n_classes, table.n_states, table.acc0, table.n_patterns
        if not (1 <= k <= 256 and 1 <= n and 1 <= acc0 <= n and npat >= 0
                and table.max_len >= 0):
            raise BundleError(f"keyword table: inconsistent header {h.tolist()!r}")
        if n * k > MAX_DFA_CELLS:
            raise BundleError(f"keyword table: {n} states x {k} classes exceeds MAX_DFA_CELLS")
        if table.delta.dtype == np.uint16 and n > _U16_STATES:
            raise BundleError(f"keyword table: {n} states do not fit uint16 transitions")
        sizes = {
            "kw_cmap": (len(table.cmap), 256),
            "kw_delta": (len(table.delta), n * k),
            "kw_acc_mask": (len(table.acc_mask), n - acc0),
            "kw_acc_own": (len(table.acc_own), n - acc0),
            "kw_acc_dict": (len(table.acc_dict), n - acc0),
            "kw_pat_offsets": (len(table.pat_offsets), npat + 1),
            "kw_pat_mask": (len(table.pat_mask), npat),
        }
        for name, (entries, expected) in sizes.items():
            if entries != expected:
                raise BundleError(f"keyword table: {name} has {entries} entries, expected {expected}")
        if int(table.cmap.min()) < 0 or int(table.cmap.max()) >= k:
            raise BundleError("keyword table: byte class out of range")
        if int(table.pat_offsets[0]) != 0 or int(table.pat_offsets[-1]) != len(table.pat_bytes):
            raise BundleError("keyword table: pattern offsets do not cover the pattern bytes")
        return table

    def check_values(self) -> None:
        """Full O(size) consistency check of every index the kernels follow.

        The kernels do no bounds checks (that is what makes them fast), so a corrupt table
        could read outside its arrays. A signed bundle has passed its hashes before this
        point; this is the belt-and-braces pass done once per activation, not per load.
        """
        n, acc0 = self.n_states, self.acc0
        d = self.delta
        if len(d) and (int(d.min()) < 0 or int(d.max()) >= n):
            raise BundleError("keyword table: transition out of range")
        n_acc = n - acc0
        npat = self.n_patterns
        own, link = self.acc_own, self.acc_dict
        if n_acc and (int(own.min()) < -1 or int(own.max()) >= npat):
            raise BundleError("keyword table: accepting state names an unknown pattern")
        if n_acc and (int(link.min()) < -1 or int(link.max()) >= n_acc):
            raise BundleError("keyword table: output link out of range")
        if n_acc and np.any(own[link[link >= 0]] < 0):
            raise BundleError("keyword table: output link to a state without a pattern")
        if n_acc and np.any((own < 0) & (link < 0)):
            raise BundleError("keyword table: accepting state without output")
        lengths = np.diff(self.pat_offsets)
        if np.any(lengths <= 0):
            raise BundleError("keyword table: empty or unordered pattern")
        if self.max_len != (int(lengths.max()) if npat else 0):
            raise BundleError("keyword table: wrong longest-pattern length in header")


def _as_bytes(text: bytes | bytearray | memoryview | str, what: str) -> bytes:
    if isinstance(text, str):
        return text.encode("utf-8")
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise InputError(f"{what} must be str or bytes, not {type(text).__name__}")


def build_keyword_table(patterns: Sequence[tuple[str | bytes, int]]) -> KeywordTable:
    """Compile ``(pattern, category mask)`` pairs into a :class:`KeywordTable`.

    See the module docstring for the semantics (ASCII case folding, de-duplication by OR of
    masks, ids in order of first appearance). Raises :class:`InputError` for an empty
    pattern, a mask outside uint64, or a set too large for :data:`MAX_DFA_CELLS`.
    """
    index: dict[bytes, int] = {}
    spelled: list[bytes] = []
    folded: list[bytes] = []
    masks: list[int] = []
    for i, item in enumerate(patterns):
        try:
            pat, mask = item
        except (TypeError, ValueError):
            raise InputError(f"keyword {i}: expected a (pattern, mask) pair") from None
        raw = _as_bytes(pat, f"keyword {i}")
        if not raw:
            raise InputError(f"keyword {i}: empty pattern")
        if isinstance(mask, bool) or not isinstance(mask, (int, np.integer)):
            raise InputError(f"keyword {i}: mask must be an int")
        mask = int(mask)
        if not 0 <= mask < 2**64:
            raise InputError(f"keyword {i}: mask {mask} outside uint64")
        key = raw.lower()  # bytes.lower() folds ASCII only: exactly the kernels' folding
        j = index.get(key)
        if j is None:
            index[key] = len(folded)
            spelled.append(raw)
            folded.append(key)
            masks.append(mask)
        else:
            masks[j] |= mask

    alphabet = sorted(set(b"".join(folded)))
    n_classes = 1 + len(alphabet)  # class 0: every byte no pattern uses
    cmap = np.zeros(256, dtype=np.int32)
    for c, b in enumerate(alphabet, start=1):
        cmap[b] = c
        if 0x61 <= b <= 0x7A:  # a-z: the upper-case letter shares the class
            cmap[b - 0x20] = c
    total = sum(map(len, folded))
    if (total + 1) * n_classes > MAX_DFA_CELLS:
        raise InputError(
            f"keyword set too large: {len(folded)} patterns, {total} bytes, {n_classes} byte "
            f"classes could need {(total + 1) * n_classes} DFA cells (limit {MAX_DFA_CELLS})"
        )

    pat_offsets = np.zeros(len(folded) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in folded], out=pat_offsets[1:])
    pbuf = np.frombuffer(b"".join(folded), dtype=np.uint8)
    pmask = np.array(masks, dtype=np.uint64)
    goto, term, n_states = _k.build_trie(pbuf, pat_offsets, cmap, n_classes)
    goto = goto[: n_states * n_classes]
    term = term[:n_states]
    delta, acc0, acc_mask, acc_own, acc_dict = _k.build_dfa(goto, term, n_states, n_classes,
                                                            pmask)
    if n_states <= _U16_STATES:
        delta = delta.astype(np.uint16)
    max_len = max(map(len, folded), default=0)
    header = np.array([KEYWORD_FORMAT_VERSION, n_classes, n_states, acc0, len(folded), max_len],
                      dtype=np.int64)
    return KeywordTable(
        header=header,
        cmap=cmap,
        delta=delta,
        acc_mask=acc_mask,
        acc_own=acc_own,
        acc_dict=acc_dict,
        pat_bytes=np.frombuffer(b"".join(spelled), dtype=np.uint8).copy(),
        pat_offsets=pat_offsets,
        pat_mask=pmask,
    )


class KeywordScanner:
    """Scans texts against a :class:`KeywordTable` (thin typed front of the kernels)."""

    __slots__ = ("_table", "_args", "_full_mask")

    def __init__(self, table: KeywordTable) -> None:
        self._table = table
        # OR of every pattern's mask: once a text has reached it, nothing can add to it.
        full = np.bitwise_or.reduce(table.pat_mask) if table.n_patterns else np.uint64(0)
        self._full_mask = np.uint64(full)
        # np.int64 scalars: keeps uint16 state arithmetic 64-bit when the kernels run as
        # plain Python (NUMBA_DISABLE_JIT); compiled code sees plain int64 either way.
        self._args = (table.cmap, table.delta, np.int64(table.acc0), np.int64(table.n_classes),
                      table.acc_mask, table.acc_own, table.acc_dict, self._full_mask,
                      np.int64(table.max_len))

    @classmethod
    def from_patterns(cls, patterns: Sequence[tuple[str | bytes, int]]) -> KeywordScanner:
        return cls(build_keyword_table(patterns))

    @property
    def table(self) -> KeywordTable:
        return self._table

    @property
    def kernel_tables(self) -> tuple:
        """Arguments for njit callers: ``_scan_kernels.scan_range(*tables, buf, start, end)``
        and ``scan_batch(*tables, buf, offsets, out_mask, out_first)``."""
        return self._args

    def __len__(self) -> int:
        return self._table.n_patterns

    def pattern(self, i: int) -> bytes:
        """Pattern ``i`` as first spelled (for "why?" output)."""
        t = self._table
        if not 0 <= i < t.n_patterns:
            raise IndexError(f"keyword pattern id {i} out of range")
        return t.pat_bytes[int(t.pat_offsets[i]) : int(t.pat_offsets[i + 1])].tobytes()

    def pattern_mask(self, i: int) -> int:
        """Category mask of pattern ``i`` (OR over its merged duplicates)."""
        if not 0 <= i < self._table.n_patterns:
            raise IndexError(f"keyword pattern id {i} out of range")
        return int(self._table.pat_mask[i])

    def scan(self, text: bytes | str) -> tuple[int, int]:
        """``(category mask, first pattern id or -1)`` for one text."""
        buf = np.frombuffer(_as_bytes(text, "text"), dtype=np.uint8)
        mask, first = _k.scan_range(*self._args, buf, 0, len(buf))
        return int(mask), int(first)

    def scan_batch(self, texts: Sequence[bytes | str]) -> tuple[np.ndarray, np.ndarray]:
        """Scan many texts independently: ``(uint64 masks, int64 first ids)``, one each."""
        n = len(texts)
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        if n and int(lengths.sum()) >= _k.SPLIT_MIN * n:
            # Few long texts: scan each where it lies (the kernel splits it into lanes)
            # instead of first copying them all into one buffer; measured ~1.4x on 1 MiB texts.
            masks = np.zeros(n, dtype=np.uint64)
            first = np.full(n, -1, dtype=np.int64)
            for j, text in enumerate(texts):
                buf = np.frombuffer(_as_bytes(text, "text"), dtype=np.uint8)
                masks[j], first[j] = _k.scan_range(*self._args, buf, 0, len(buf))
            return masks, first
        try:
            joined = b"".join(texts)  # type: ignore[arg-type]
        except TypeError:  # str items
            joined = None
        if joined is None or len(joined) != int(lengths.sum()):
            # str items, or buffers whose len() is not their size in bytes: normalise, so the
            # offsets handed to the kernel are exact (it does no bounds checks).
            exact = [_as_bytes(t, "text") for t in texts]
            joined = b"".join(exact)
            lengths = np.fromiter(map(len, exact), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return self._scan(np.frombuffer(joined, dtype=np.uint8), offsets)

    def scan_flat(self, buf: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`scan_batch` for texts already in one uint8 buffer: text j is
        ``buf[offsets[j]:offsets[j+1]]``. Raises :class:`InputError` on bad offsets."""
        if not isinstance(buf, np.ndarray) or buf.dtype != np.uint8 or buf.ndim != 1:
            raise InputError("scan_flat: buf must be a 1-D uint8 array")
        offsets = np.asarray(offsets)
        if offsets.ndim != 1 or len(offsets) < 1 or offsets.dtype.kind not in "iu":
            raise InputError("scan_flat: offsets must be a non-empty 1-D integer array")
        offsets = offsets.astype(np.int64, copy=False)
        if offsets[0] < 0 or offsets[-1] > len(buf) or np.any(np.diff(offsets) < 0):
            raise InputError("scan_flat: offsets must be non-decreasing within the buffer")
        return self._scan(np.ascontiguousarray(buf), offsets)

    def _scan(self, buf: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(offsets) - 1
        masks = np.zeros(n, dtype=np.uint64)
        first = np.full(n, -1, dtype=np.int64)
        _k.scan_batch(*self._args, buf, offsets, masks, first)
        return masks, first

    def find_all(self, text: bytes | str) -> list[tuple[int, int]]:
        """Every ``(pattern id, exclusive end offset)`` in ``text``, by end offset then
        longest first (overlaps included)."""
        buf = np.frombuffer(_as_bytes(text, "text"), dtype=np.uint8)
        a = self._args
        ids, ends = _k.find_all(a[0], a[1], a[2], a[3], a[5], a[6], buf, 0, len(buf))
        return list(zip(ids.tolist(), ends.tolist()))
