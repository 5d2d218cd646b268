"""Naive pure-Python reference for the keyword scanner's numba kernels.

This is the oracle that ``tests/unit/test_keyword_scanner.py`` compares
``filters._scan_kernels`` (through ``filters.keyword_scanner``) against. It restates the
matching contract as directly as possible and shares no code with the scanner: no automaton,
just ``bytes.find`` for every pattern at every position.

Contract restated: ASCII-only case folding (``bytes.lower``); patterns de-duplicated under
folding with masks OR-ed, ids in order of first appearance; a match is ``(id, end)`` with an
exclusive end offset; matches ordered by end, then longest pattern first; ``scan`` returns the
OR of the masks of all matched patterns and the id of the first match (or -1).
"""

from __future__ import annotations

from collections.abc import Iterable


class ReferenceScanner:
    def __init__(self, patterns: Iterable[tuple[str | bytes, int]]) -> None:
        self.folded: list[bytes] = []
        self.masks: list[int] = []
        seen: dict[bytes, int] = {}
        for pat, mask in patterns:
            raw = pat.encode("utf-8") if isinstance(pat, str) else bytes(pat)
            key = raw.lower()
            if key in seen:
                self.masks[seen[key]] |= mask
            else:
                seen[key] = len(self.folded)
                self.folded.append(key)
                self.masks.append(mask)

    def find_all(self, text: bytes | str) -> list[tuple[int, int]]:
        data = (text.encode("utf-8") if isinstance(text, str) else bytes(text)).lower()
        found = []
        for pid, pat in enumerate(self.folded):
            pos = data.find(pat)
            while pos >= 0:
                found.append((pid, pos + len(pat)))
                pos = data.find(pat, pos + 1)
        found.sort(key=lambda m: (m[1], -len(self.folded[m[0]])))
        return found

    def scan(self, text: bytes | str) -> tuple[int, int]:
        matches = self.find_all(text)
        mask = 0
        for pid, _ in matches:
            mask |= self.masks[pid]
        return mask, (matches[0][0] if matches else -1)
