"""MemOSRetriever: MemOS search as a LlamaIndex ``BaseRetriever`` (sync and native async).

Each hit becomes a ``NodeWithScore`` whose node is a ``TextNode`` with ``id_`` = the memory id, ``text`` =
the memory content and ``score`` = the core's absolute score in [0, 1] (``SearchHit.score``: the same for a
memory whatever else the cube holds, so ``similarity_cutoff``-style thresholds work). Its metadata (all JSON values):

=====================  ===============================================================================
``memory_id``          the item id (also ``node.id_``)
``cube_id``            the cube it lives in
``version``            its version number (``history``/``rollback`` take it)
``kind`` / ``state``   e.g. ``"episode"`` / ``"activated"``
``user_id`` ...        its scope: ``user_id``, ``agent_id``, ``session_id`` (when set)
``event_time``         when it happened (ISO-8601, UTC), else absent; ``created_at``, ``updated_at``
``source``             provenance: ``source``, ``source_ids``, ``extractor``, ``speaker`` (when set)
``score``              the absolute score in [0, 1] (also ``NodeWithScore.score``)
``retrievers``         per-retriever scores, e.g. ``{"dense": 0.71, "lexical": 3.2}``; ``ranks`` likewise
``tags`` / ``memory_metadata``  the item's tags and its own metadata
=====================  ===============================================================================

These keys are :func:`memos_core.os.hit_metadata`'s, shared with the LangChain retriever's ``Document.metadata``.
Only ``event_time`` and ``speaker`` are shown to the LLM (``excluded_llm_metadata_keys`` hides the rest) and
nothing is embedded, so a query engine's prompt stays clean.
"""

from __future__ import annotations

from typing import Any, Sequence

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from memos_core import MemOS, MemoryItem, SearchHit
from memos_core.adapter_args import check_adapter_args
from memos_core.os import DEFAULT_K, UserRule, hit_metadata, memory_text, resolve_memory

from ._common import USER_HOW, mount_cube

__all__ = ["MemOSRetriever", "hit_to_node"]

_LLM_VISIBLE = {"event_time", "speaker"}


def hit_to_node(hit: SearchHit) -> NodeWithScore:
    """Translate one core :class:`~memos_core.SearchHit` into a LlamaIndex ``NodeWithScore``."""
    item: MemoryItem = hit.item
    meta: dict[str, Any] = hit_metadata(hit)  # the same keys as the LangChain retriever's Documents
    hidden = [key for key in meta if key not in _LLM_VISIBLE]
    node = TextNode(id_=item.id, text=memory_text(item), metadata=meta, excluded_llm_metadata_keys=hidden,
                    excluded_embed_metadata_keys=list(meta))
    return NodeWithScore(node=node, score=hit.score)


class MemOSRetriever(BaseRetriever):
    """Retrieve memories from a :class:`~memos_core.MemOS` (every mounted cube, or ``cubes``).

    ``memos`` follows the constructor rule of every adapter (:func:`memos_core.os.resolve_memory`): a MemOS, a
    view of one (``mem.for_user("ann")``), a MemCube, a folder path or a ``postgresql://`` store URL (its Chroma
    server as ``index="http://host:port"``, else ``$MEMOS_INDEX``).

    Scope (``user_id`` / ``agent_id`` / ``session_id``), ``k``, ``filter`` (a core SearchFilter dict) and
    ``mode`` (``"hybrid"``, ``"dense"``, ``"lexical"``) are passed to :meth:`MemOS.search` unchanged. A blank
    query returns no nodes.

    Fail closed: a user is required (``user_id``, or a user-bound view ``mem.for_user("ann")`` as ``memos``);
    without one the constructor raises :class:`memos_core.UserRequired`, unless ``single_user=True`` (one
    fixed scope).
    """

    def __init__(
        self,
        memos: Any,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        k: int = DEFAULT_K,
        filter: dict[str, Any] | None = None,
        cubes: Sequence[str] | None = None,
        mode: str = "hybrid",
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        single_user: bool = False,
        index: str | None = None,
    ) -> None:
        check_adapter_args("MemOSRetriever", user_id=user_id, agent_id=agent_id, session_id=session_id, k=k)
        memos = resolve_memory(memos, adapter="MemOSRetriever", index=index)
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
    def from_cube(cls, cube: Any, *, memos: MemOS | None = None, **kwargs: Any) -> "MemOSRetriever":
        """A retriever over one cube (a :class:`~memos_core.MemCube` or its folder)."""
        memos, name = mount_cube(cube, memos)
        kwargs.setdefault("cubes", [name])
        return cls(memos, **kwargs)

    def _kwargs(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "agent_id": self.agent_id, "session_id": self.session_id, "k": self.k,
                "filter": self.filter, "cubes": self.cubes, "mode": self.mode}

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        if not isinstance(query, str) or not query.strip():
            return []
        return [hit_to_node(h) for h in self.memos.search(query, **self._kwargs())]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        if not isinstance(query, str) or not query.strip():
            return []
        return [hit_to_node(h) for h in await self.memos.asearch(query, **self._kwargs())]
