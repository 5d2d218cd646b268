"""Names for the numbers in a table: category bits and list sources.

Tables store category bitmasks and source ids; admins read names. A Catalog translates
both ways and is what turns a verdict into the "why" of docs/matching.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from filters.classes import LOCAL_CATEGORY_BIT, MAX_CATEGORIES
from filters.errors import InputError

__all__ = ["Catalog", "LOCAL_CATEGORY", "ALL_CATEGORIES"]

LOCAL_CATEGORY = "local"
ALL_CATEGORIES = (1 << 64) - 1


@dataclass(frozen=True)
class Catalog:
    categories: tuple[str, ...]  # bit i is categories[i]
    sources: tuple[str, ...]  # source id -> label shown to admins (category: path)
    # Each source's role, so "why" names only the lists that decided: its category mask
    # (0 for allow lists) and whether it is an allow list. Empty when unknown.
    source_masks: tuple[int, ...] = ()
    source_allow: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        if len(self.categories) > MAX_CATEGORIES:
            raise InputError(f"at most {MAX_CATEGORIES} categories, got {len(self.categories)}")
        if LOCAL_CATEGORY in self.categories:
            raise InputError(f"category name {LOCAL_CATEGORY!r} is reserved for local lists")

    def deciding(self, ids: list[int], blocked: bool, policy: int) -> list[str]:
        """Labels of the sources among ``ids`` that took part in a verdict: for a block,
        those whose categories the policy blocks; for an allow, the allow lists."""
        if len(self.source_masks) != len(self.sources):
            return [self.sources[s] for s in ids]
        if blocked:
            return [self.sources[s] for s in ids if self.source_masks[s] & policy]
        return [self.sources[s] for s in ids if self.source_allow[s]]

    def names(self, mask: int) -> list[str]:
        out = [c for i, c in enumerate(self.categories) if mask >> i & 1]
        if mask >> LOCAL_CATEGORY_BIT & 1:
            out.append(LOCAL_CATEGORY)
        return out

    def mask(self, names: Iterable[str]) -> int:
        """Bitmask of the named categories; unknown names are an InputError."""
        index = {c: i for i, c in enumerate(self.categories)}
        index[LOCAL_CATEGORY] = LOCAL_CATEGORY_BIT
        m = 0
        for name in names:
            if name not in index:
                known = ", ".join(self.categories) or "none"
                raise InputError(f"unknown category {name!r} (known: {known})")
            m |= 1 << index[name]
        return m
