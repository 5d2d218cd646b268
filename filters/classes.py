"""Entry classes: what a matched entry means, shared by the domain and CIDR tables.

An entry in a table stores only a small class id. A class is one distinct combination of
list sources that listed the entry; from it come the category bitmask, whether the entry is
an allow entry, and the sources to name when an admin asks "why?". Real bundles have a few
hundred classes for millions of entries, which is what keeps entries at a few bytes.

A class key is a Python int used as a bit set over sources: bit ``2*s`` means source ``s``
lists the name itself (the name and everything below it), bit ``2*s+1`` means it lists
``*.name`` (only what is below). CIDR classes use only the even bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MAX_CATEGORIES",
    "LOCAL_CATEGORY_BIT",
    "ALLOW_BELOW",
    "ALLOW_APEX",
    "WILDCARD_ONLY",
    "ClassTable",
    "build_classes",
]

# Categories are bits of a uint64. Bit 63 is the config's local block list, which every
# policy blocks (docs/matching.md), so a bundle may declare at most 63 categories.
LOCAL_CATEGORY_BIT = 63
MAX_CATEGORIES = 63

# Bits of ClassTable.allow.
ALLOW_BELOW = 1  # an allow entry covering names below the entry's name
ALLOW_APEX = 2  # an allow entry covering the entry's name itself
# Set in src_ids for a source that lists only ``*.name``: it is no reason for a verdict on
# the name itself, so "why" leaves it out for apex matches.
WILDCARD_ONLY = 1 << 31


@dataclass(frozen=True)
class ClassTable:
    """Flat arrays indexed by class id (all may be read-only memory maps)."""

    mask: np.ndarray  # uint64: categories for names strictly below the entry's name
    apex_mask: np.ndarray  # uint64: categories for the entry's name itself
    allow: np.ndarray  # uint8: ALLOW_BELOW | ALLOW_APEX
    src_offsets: np.ndarray  # uint32, len C+1: class c's sources are src_ids[off[c]:off[c+1]]
    src_ids: np.ndarray  # uint32, WILDCARD_ONLY set for sources that list only *.name

    def __len__(self) -> int:
        return len(self.mask)

    def sources(self, cls: int, apex: bool = False) -> list[int]:
        """Source ids of class ``cls``; for a match on the entry's name itself (``apex``)
        only the sources that list the name, not just ``*.name``."""
        ids = self.src_ids[self.src_offsets[cls] : self.src_offsets[cls + 1]]
        return [int(s) & ~WILDCARD_ONLY for s in ids if not (apex and int(s) & WILDCARD_ONLY)]

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "mask": self.mask,
            "apex_mask": self.apex_mask,
            "allow": self.allow,
            "src_offsets": self.src_offsets,
            "src_ids": self.src_ids,
        }


def build_classes(
    keys: list[int], source_masks: list[int], source_allow: list[bool]
) -> ClassTable:
    """Build the class arrays for ``keys`` (see module doc) given each source's category
    mask and whether the source is an allow list. Class id = index in ``keys``."""
    n = len(keys)
    mask = np.zeros(n, dtype=np.uint64)
    apex = np.zeros(n, dtype=np.uint64)
    allow = np.zeros(n, dtype=np.uint8)
    offsets = np.zeros(n + 1, dtype=np.uint32)
    ids: list[int] = []
    for c, key in enumerate(keys):
        m_below = m_apex = 0
        a = 0
        srcs: dict[int, int] = {}  # source -> WILDCARD_ONLY unless it lists the name itself
        bit = 0
        k = key
        while k:
            if k & 1:
                s, wildcard = divmod(bit, 2)
                srcs[s] = srcs.get(s, WILDCARD_ONLY) & (WILDCARD_ONLY if wildcard else 0)
                if source_allow[s]:
                    a |= ALLOW_BELOW if wildcard else ALLOW_BELOW | ALLOW_APEX
                else:
                    m_below |= source_masks[s]
                    if not wildcard:
                        m_apex |= source_masks[s]
            k >>= 1
            bit += 1
        mask[c] = m_below
        apex[c] = m_apex
        allow[c] = a
        ids.extend(s | flag for s, flag in sorted(srcs.items()))
        offsets[c + 1] = len(ids)
    return ClassTable(mask, apex, allow, offsets, np.asarray(ids, dtype=np.uint32))
