"""Exact and near-duplicate detection for memories, and how duplicates merge.

* **Exact**: equal after :func:`normalize` (Unicode NFKC, case-folded, punctuation and extra spaces dropped),
  so ``"Ann likes tea."`` and ``"ann likes  TEA"`` are the same memory.
* **Near**: :func:`similarity` (a character-level ratio of the normalised texts, 0..1) at or above a threshold
  (0.92 by default): spelling variants such as *favourite colour* / *favorite color* merge, while
  *likes tea* / *likes green tea* do not.
* Episodes (conversation turns) are events: two are duplicates only when they are exact duplicates **and**
  happened at the same time ("Ann: ok" on two days are two memories).

Merging keeps one survivor (the oldest) and folds the others into it: the survivor's provenance gains the
others' source ids and their ids as ``parent_ids`` (a new version records this), and every other copy moves to
the ``merged`` lifecycle state (hidden from default search, kept with its history, restorable).
"""

from __future__ import annotations

import re
import unicodedata
from difflib import SequenceMatcher
from typing import Iterable, Sequence

from ..items import MemoryItem, MemoryKind, Provenance

__all__ = [
    "DEFAULT_NEAR_THRESHOLD",
    "normalize",
    "similarity",
    "is_duplicate",
    "merge_provenance",
    "plan_merges",
]

DEFAULT_NEAR_THRESHOLD = 0.92

_NON_WORD = re.compile(r"[^\w]+", re.UNICODE)


def normalize(text: str) -> str:
    """Canonical form used for exact-duplicate checks."""
    t = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'").replace("'", "")
    return " ".join(_NON_WORD.sub(" ", t).split())


def similarity(a: str, b: str) -> float:
    """0..1 similarity of two texts after normalisation (1.0 = exact duplicate)."""
    na, nb = normalize(a), normalize(b)
    if na == nb:
        return 1.0
    if not na or not nb:
        return 0.0
    m = SequenceMatcher(None, na, nb, autojunk=False)
    return m.ratio()


def _same_day_or_time(a: MemoryItem, b: MemoryItem) -> bool:
    return a.event_time == b.event_time


def is_duplicate(a: MemoryItem | str, b: MemoryItem | str, threshold: float = DEFAULT_NEAR_THRESHOLD) -> bool:
    """Whether ``b`` duplicates ``a`` (see the module docstring for the rules)."""
    ta = a if isinstance(a, str) else a.content
    tb = b if isinstance(b, str) else b.content
    if isinstance(a, MemoryItem) and isinstance(b, MemoryItem):
        if a.scope != b.scope:
            return False
        if MemoryKind.EPISODE in (a.kind, b.kind):
            return a.kind == b.kind and normalize(ta) == normalize(tb) and _same_day_or_time(a, b)
    na, nb = normalize(ta), normalize(tb)
    if na == nb:
        return True
    # cheap upper bounds first: SequenceMatcher is quadratic
    if min(len(na), len(nb)) / max(len(na), len(nb), 1) < threshold - 0.1:
        return False
    m = SequenceMatcher(None, na, nb, autojunk=False)
    return m.real_quick_ratio() >= threshold and m.quick_ratio() >= threshold and m.ratio() >= threshold


def _union(*lists: Iterable[str]) -> list[str]:
    out: list[str] = []
    for lst in lists:
        for x in lst:
            if x not in out:
                out.append(x)
    return out


def merge_provenance(keep: Provenance, *others: Provenance, parent_ids: Sequence[str] = (),
                     parent_versions: Sequence[str] = ()) -> Provenance:
    """The survivor's provenance extended with the others' source ids (order kept, no repeats)."""
    return keep.model_copy(update={
        "source_ids": _union(keep.source_ids, *(o.source_ids for o in others)),
        "parent_ids": _union(keep.parent_ids, *(o.parent_ids for o in others), parent_ids),
        "parent_versions": _union(keep.parent_versions, parent_versions),
        "redactions": _union(keep.redactions, *(o.redactions for o in others)),
    })


def plan_merges(items: Sequence[MemoryItem], threshold: float = DEFAULT_NEAR_THRESHOLD
                ) -> list[tuple[MemoryItem, list[MemoryItem]]]:
    """Group duplicates: ``[(survivor, [duplicates...])]``; the survivor is the oldest of its group.

    Pure (changes nothing). Quadratic in ``len(items)``: callers keep it cheap by passing the few candidates a
    search returned, not a whole cube.
    """
    ordered = sorted(items, key=lambda it: (it.created_at, it.id))
    taken: set[str] = set()
    groups: list[tuple[MemoryItem, list[MemoryItem]]] = []
    for i, a in enumerate(ordered):
        if a.id in taken:
            continue
        dups = [b for b in ordered[i + 1:] if b.id not in taken and b.id != a.id and is_duplicate(a, b, threshold)]
        if dups:
            taken.update(b.id for b in dups)
            taken.add(a.id)
            groups.append((a, dups))
    return groups
