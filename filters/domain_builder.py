"""Collects names from many sources and compiles them into a table plus its classes."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from filters.classes import ClassTable, build_classes
from filters.domain_table import DomainTable, KeyCollision, build_domain_table

__all__ = ["DomainSetBuilder", "KeySource"]

KeySource = Callable[[], tuple[int, int]]

# A collision among a few million entries has probability ~2**-80 per build; needing more
# than a handful of keys means something else is wrong.
_MAX_KEY_ATTEMPTS = 8


class DomainSetBuilder:
    """Merge canonical names from sources (a name in several sources gets the union)."""

    def __init__(self) -> None:
        self._keys: dict[str, int] = {}

    def add(self, names: Iterable[str], source: int, subdomains_only: bool = False) -> None:
        bit = 1 << (2 * source + (1 if subdomains_only else 0))
        keys = self._keys
        get = keys.get
        for name in names:
            keys[name] = get(name, 0) | bit

    def __len__(self) -> int:
        return len(self._keys)

    def build_table(self, class_index: dict[int, int], new_key: KeySource) -> DomainTable:
        """Build the table; class ids come from ``class_index`` (class key -> id), which
        gains an id for every new key, so several tables can share one class table."""
        class_ids = np.fromiter(
            (class_index.setdefault(k, len(class_index)) for k in self._keys.values()),
            dtype=np.uint32, count=len(self._keys),
        )
        names = list(self._keys)
        for _ in range(_MAX_KEY_ATTEMPTS):
            try:
                return build_domain_table(names, class_ids, new_key())
            except KeyCollision:
                continue
        raise KeyCollision(f"{_MAX_KEY_ATTEMPTS} keys in a row collided: is the key source random?")

    def build(
        self, source_masks: list[int], source_allow: list[bool], new_key: KeySource
    ) -> tuple[DomainTable, ClassTable]:
        """Build the table and a class table of its own."""
        index: dict[int, int] = {}
        table = self.build_table(index, new_key)
        return table, build_classes(list(index), source_masks, source_allow)
