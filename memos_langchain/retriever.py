"""MemOSRetriever: a LangChain ``BaseRetriever`` over MemOS search (sync and async)."""

from __future__ import annotations

from typing import Any, Optional

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from memos_core import SearchHit
from memos_core.errors import ValidationError
from memos_core.os import UserRule

from ._common import run_sync

__all__ = ["MemOSRetriever", "hit_to_document"]


def hit_to_document(hit: SearchHit) -> Document:
    """A search hit as a ``Document``: ``page_content`` is the memory's content, ``id`` its id, and
    ``metadata`` says what MemOS knows about it (score, kind, scope, times, provenance, own metadata)."""
    it = hit.item
    return Document(
        id=it.id,
        page_content=it.content,
        metadata={
            "memory_id": it.id,
            "score": hit.score,
            "retrievers": dict(hit.retrievers),
            "kind": it.kind.value,
            "cube_id": it.cube_id,
            "user_id": it.scope.user_id,
            "agent_id": it.scope.agent_id,
            "session_id": it.scope.session_id,
            "version": it.version,
            "event_time": it.event_time.isoformat() if it.event_time else None,
            "created_at": it.created_at.isoformat(),
            "source": it.provenance.source.value,
            "source_ids": list(it.provenance.source_ids),
            "metadata": dict(it.metadata),
        },
    )


class MemOSRetriever(BaseRetriever):
    """Retrieve memories as ``Document`` objects.

    ``memory`` is a ``MemOS`` facade (searches every mounted cube the principal may read, or ``cubes``), a view
    of one (``mem.for_user("ann")``, ``mem.as_principal(...)``) or a :class:`memos_core.MemCube`. ``k``, the
    scope (``user_id`` / ``agent_id`` / ``session_id``), ``filter`` (a :class:`memos_core.SearchFilter` or its
    dict form: kinds, tags, metadata operators, event time ...) and ``mode`` (``hybrid`` / ``dense`` /
    ``lexical``) are set here and may be overridden per call: ``retriever.invoke("query", k=3, user_id="ann")``.

    Fail closed: a search needs a user (a user-bound view, ``user_id`` here or per call); without one it raises
    :class:`memos_core.UserRequired`. On a bound view another ``user_id`` is :class:`memos_core.PermissionDenied`.
    ``single_user=True`` searches one fixed scope instead.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: Any
    k: int = Field(default=4, ge=1, le=1000)
    user_id: Optional[str] = None
    agent_id: Optional[str] = None
    session_id: Optional[str] = None
    filter: Optional[Any] = None
    mode: str = "hybrid"
    cubes: Optional[list[str]] = None
    single_user: bool = False

    _rule: UserRule = PrivateAttr()

    def model_post_init(self, __context: Any) -> None:
        if not callable(getattr(self.memory, "search", None)):
            raise ValidationError(f"MemOSRetriever needs a MemOS (or a view of one) or a MemCube, got "
                                  f"{type(self.memory).__name__}")
        self._rule = UserRule(self.memory, user_id=self.user_id, single_user=self.single_user,
                              adapter="MemOSRetriever", how="pass user_id=... here or per call "
                              "(retriever.invoke(query, user_id=...))")

    def _kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        allowed = {"k", "user_id", "agent_id", "session_id", "filter", "mode", "cubes"}
        unknown = set(overrides) - allowed
        if unknown:
            raise ValueError(f"unknown retriever argument(s) {sorted(unknown)}; use {sorted(allowed)}")
        kw: dict[str, Any] = {name: getattr(self, name) for name in allowed}
        kw.update(overrides)
        kw["user_id"] = self._rule.user(overrides.get("user_id"), explicit=True)
        if kw["cubes"] is None:
            kw.pop("cubes")
        elif not hasattr(self.memory, "cubes"):
            raise ValueError("cubes= needs a MemOS instance (a MemCube is a single cube)")
        return kw

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        return [hit_to_document(h) for h in self.memory.search(query, **self._kwargs(kwargs))]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **kwargs: Any) -> list[Document]:
        kw = self._kwargs(kwargs)
        asearch = getattr(self.memory, "asearch", None)
        hits = await asearch(query, **kw) if asearch is not None else await run_sync(self.memory.search, query, **kw)
        return [hit_to_document(h) for h in hits]
