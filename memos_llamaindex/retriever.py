"""MemOSRetriever: MemOS search as a LlamaIndex ``BaseRetriever`` (sync and native async).

Each hit becomes a ``NodeWithScore`` whose node is a ``TextNode`` with ``id_`` = the memory id, ``text`` =
the memory content and ``score`` = the core's fused score. Its metadata (all JSON values):

=====================  ===============================================================================
``memory_id``          the item id (also ``node.id_``)
``cube_id``            the cube it lives in
``version``            its version number (``history``/``rollback`` take it)
``kind`` / ``state``   e.g. ``"episode"`` / ``"activated"``
``user_id`` ...        its scope: ``user_id``, ``agent_id``, ``session_id`` (when set)
``event_time``         when it happened (ISO-8601, UTC), else absent; ``created_at``, ``updated_at``
``source``             provenance: ``source``, ``source_ids``, ``extractor``, ``speaker`` (when set)
``retrievers``         per-retriever scores, e.g. ``{"dense": 0.71, "lexical": 3.2}``; ``ranks`` likewise
``tags`` / ``memory_metadata``  the item's tags and its own metadata
=====================  ===============================================================================

Only ``event_time`` and ``speaker`` are shown to the LLM (``excluded_llm_metadata_keys`` hides the rest) and
nothing is embedded, so a query engine's prompt stays clean.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from memos_core import MemOS, MemoryItem, SearchHit
from memos_core.os import UserRule

from ._common import USER_HOW, mount_cube

__all__ = ["MemOSRetriever", "hit_to_node"]

_LLM_VISIBLE = {"event_time", "speaker"}


def hit_to_node(hit: SearchHit) -> NodeWithScore:
    """Translate one core :class:`~memos_core.SearchHit` into a LlamaIndex ``NodeWithScore``."""
    item: MemoryItem = hit.item
    meta: Dict[str, Any] = {
        "memory_id": item.id,
        "cube_id": item.cube_id,
        "version": item.version,
        "kind": item.kind.value,
        "state": item.state.value,
    }
    for axis in ("user_id", "agent_id", "session_id"):
        val = getattr(item.scope, axis)
        if val is not None:
            meta[axis] = val
    if item.event_time is not None:
        meta["event_time"] = item.event_time.isoformat()
    meta["created_at"] = item.created_at.isoformat()
    meta["updated_at"] = item.updated_at.isoformat()
    if item.valid_until is not None:
        meta["valid_until"] = item.valid_until.isoformat()
    prov = item.provenance
    meta["source"] = prov.source.value
    meta["source_ids"] = list(prov.source_ids)
    if prov.extractor:
        meta["extractor"] = prov.extractor
    if prov.speaker:
        meta["speaker"] = prov.speaker
    if prov.session_id and "session_id" not in meta:
        meta["session_id"] = prov.session_id
    meta["retrievers"] = dict(hit.retrievers)
    meta["ranks"] = dict(hit.ranks)
    if item.tags:
        meta["tags"] = list(item.tags)
    if item.metadata:
        meta["memory_metadata"] = dict(item.metadata)
    hidden = [key for key in meta if key not in _LLM_VISIBLE]
    node = TextNode(id_=item.id, text=item.content, metadata=meta, excluded_llm_metadata_keys=hidden,
                    excluded_embed_metadata_keys=list(meta))
    return NodeWithScore(node=node, score=hit.score)


class MemOSRetriever(BaseRetriever):
    """Retrieve memories from a :class:`~memos_core.MemOS` (every mounted cube, or ``cubes``).

    Scope (``user_id`` / ``agent_id`` / ``session_id``), ``k``, ``filter`` (a core SearchFilter dict) and
    ``mode`` (``"hybrid"``, ``"dense"``, ``"lexical"``) are passed to :meth:`MemOS.search` unchanged. A blank
    query returns no nodes.

    Fail closed: a user is required (``user_id``, or a user-bound view ``mem.for_user("ann")`` as ``memos``);
    without one the constructor raises :class:`memos_core.UserRequired`, unless ``single_user=True`` (one
    fixed scope).
    """

    def __init__(
        self,
        memos: MemOS,
        *,
        user_id: Optional[str] = None,
        agent_id: Optional[str] = None,
        session_id: Optional[str] = None,
        k: int = 5,
        filter: Optional[Dict[str, Any]] = None,
        cubes: Optional[Sequence[str]] = None,
        mode: str = "hybrid",
        callback_manager: Optional[CallbackManager] = None,
        verbose: bool = False,
        single_user: bool = False,
    ) -> None:
        if not isinstance(memos, MemOS):
            raise TypeError(f"memos must be a MemOS, got {type(memos).__name__}")
        user = UserRule(memos, user_id=user_id, single_user=single_user, adapter="MemOSRetriever",
                        how=USER_HOW).require()
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.memos = memos
        self.user_id = user
        self.single_user = single_user
        self.agent_id = agent_id
        self.session_id = session_id
        self.k = k
        self.filter = filter
        self.cubes = list(cubes) if cubes is not None else None
        self.mode = mode

    @classmethod
    def from_cube(cls, cube: Any, *, memos: Optional[MemOS] = None, **kwargs: Any) -> "MemOSRetriever":
        """A retriever over one cube (a :class:`~memos_core.MemCube` or its folder)."""
        memos, name = mount_cube(cube, memos)
        kwargs.setdefault("cubes", [name])
        return cls(memos, **kwargs)

    def _kwargs(self) -> Dict[str, Any]:
        return {"user_id": self.user_id, "agent_id": self.agent_id, "session_id": self.session_id, "k": self.k,
                "filter": self.filter, "cubes": self.cubes, "mode": self.mode}

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        query = query_bundle.query_str
        if not isinstance(query, str) or not query.strip():
            return []
        return [hit_to_node(h) for h in self.memos.search(query, **self._kwargs())]

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        query = query_bundle.query_str
        if not isinstance(query, str) or not query.strip():
            return []
        return [hit_to_node(h) for h in await self.memos.asearch(query, **self._kwargs())]
