"""Derived artefacts (KV caches, LoRA adapters) and the memories they were built from.

An artefact records a :class:`SourceRef` for every memory it was built from. It is *stale* when any source
was updated (new version), deleted, purged or forgotten since: :func:`stale_sources` says which and why.
Staleness is computed against the system of record each time it matters, so a forget or an update marks
every artefact built from that memory stale without the artefact having to be touched.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable

from pydantic import BaseModel, ConfigDict

from .items import LifecycleState, MemoryItem

__all__ = ["SourceRef", "source_ref", "stale_sources", "ItemLookup"]

#: Returns the current item (any state) for an id, or ``None`` when the id is unknown or erased.
ItemLookup = Callable[[str], "MemoryItem | None"]

_GONE = {LifecycleState.DELETED, LifecycleState.PURGED}


class SourceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str
    version: int
    content_sha256: str


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def source_ref(item: MemoryItem) -> SourceRef:
    return SourceRef(item_id=item.id, version=item.version, content_sha256=content_hash(item.content))


def stale_sources(refs: Iterable[SourceRef], lookup: ItemLookup) -> dict[str, str]:
    """Map item id -> reason for every source that no longer matches the records. Empty means fresh."""
    out: dict[str, str] = {}
    for ref in refs:
        item = lookup(ref.item_id)
        if item is None:
            out[ref.item_id] = "forgotten (no longer in the records)"
        elif item.state in _GONE:
            out[ref.item_id] = f"{item.state.value}"
        elif item.version != ref.version or content_hash(item.content) != ref.content_sha256:
            out[ref.item_id] = f"updated (built from v{ref.version}, now v{item.version})"
    return out
