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
    "ClassTable",
    "build_classes",
]

# Categories are bits of a uint64. Bit 63 is the config's local block list, which every
# policy blocks (DESIGN.md §3), so a bundle may declare at most 63 categories.
LOCAL_CATEGORY_BIT = 63
MAX_CATEGORIES = 63

# Bits of ClassTable.allow.
ALLOW_BELOW = 1  # an allow entry covering names below the entry's name
ALLOW_APEX = 2  # an allow entry covering the entry's name itself


@dataclass(frozen=True)
class ClassTable:
    """Flat arrays indexed by class id (all may be read-only memory maps)."""

    mask: np.ndarray  # uint64: categories for names strictly below the entry's name
    apex_mask: np.ndarray  # uint64: categories for the entry's name itself
    allow: np.ndarray  # uint8: ALLOW_BELOW | ALLOW_APEX
    src_offsets: np.ndarray  # uint32, len C+1: class c's sources are src_ids[off[c]:off[c+1]]
    src_ids: np.ndarray  # uint32

    def __len__(self) -> int:
        return len(self.mask)

    def sources(self, cls: int) -> list[int]:
        return [int(s) for s in self.src_ids[self.src_offsets[cls] : self.src_offsets[cls + 1]]]

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
        srcs = set()
        bit = 0
        k = key
        while k:
            if k & 1:
                s, wildcard = divmod(bit, 2)
                srcs.add(s)
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
        ids.extend(sorted(srcs))
        offsets[c + 1] = len(ids)
    return ClassTable(mask, apex, allow, offsets, np.asarray(ids, dtype=np.uint32))
