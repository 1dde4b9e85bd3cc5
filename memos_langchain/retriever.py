"""MemOSRetriever: a LangChain ``BaseRetriever`` over MemOS search (sync and async)."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, PrivateAttr

from memos_core import SearchHit
from memos_core.adapter_args import check_adapter_args
from memos_core.os import DEFAULT_K, UserRule, hit_metadata, memory_text, resolve_memory

__all__ = ["MemOSRetriever", "hit_to_document"]


def hit_to_document(hit: SearchHit) -> Document:
    """A search hit as a ``Document``: ``page_content`` is the memory's text (its content; a JSON value, such as
    a store item, as its text: :func:`memos_core.os.memory_text`), ``id`` its id, and
    ``metadata`` says what MemOS knows about it (:func:`memos_core.os.hit_metadata`: the same keys as the
    LlamaIndex retriever's nodes; the memory's own metadata is under ``memory_metadata``)."""
    return Document(id=hit.item.id, page_content=memory_text(hit.item), metadata=hit_metadata(hit))


class MemOSRetriever(BaseRetriever):
    """Retrieve memories as ``Document`` objects.

    ``memory`` follows the constructor rule of every adapter (:func:`memos_core.os.resolve_memory`, checked when
    the retriever is built): a ``MemOS`` (searches every mounted cube the principal may read, or ``cubes``), a
    view of one (``mem.for_user("ann")``, ``mem.as_principal(...)``), a :class:`memos_core.MemCube` or a folder
    path, or a ``postgresql://`` store URL (its Chroma server as ``index="http://host:port"``, else
    ``$MEMOS_INDEX``). ``k`` (default 5, as in every adapter), the scope (``user_id`` / ``agent_id`` / ``session_id``),
    ``filter`` (a :class:`memos_core.SearchFilter` or its dict form: kinds, tags, metadata operators, event
    time ...) and ``mode`` (``hybrid`` / ``dense`` / ``lexical``) are set here and may be overridden per call:
    ``retriever.invoke("query", k=3, user_id="ann")``. A blank query returns no documents (as in the LlamaIndex
    retriever).

    Fail closed: a search needs a user (a user-bound view, ``user_id`` here or per call); without one it raises
    :class:`memos_core.UserRequired`. On a bound view another ``user_id`` is :class:`memos_core.PermissionDenied`.
    ``single_user=True`` searches one fixed scope instead.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    memory: Any
    k: int = Field(default=DEFAULT_K, ge=1, le=1000)
    user_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    filter: Any = None
    mode: str = "hybrid"
    cubes: list[str] | None = None
    single_user: bool = False

    _rule: UserRule = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        # Checked here, before pydantic (which would wrap our typed errors in its own ValidationError).
        check_adapter_args("MemOSRetriever", **{key: data.get(key) for key in ("user_id", "agent_id", "session_id", "k")})
        data["memory"] = resolve_memory(data.get("memory"), adapter="MemOSRetriever", index=data.pop("index", None))
        rule = UserRule(data["memory"], user_id=data.get("user_id"), single_user=data.get("single_user", False),
                        adapter="MemOSRetriever", how="pass user_id=... here or per call "
                        "(retriever.invoke(query, user_id=...))")
        super().__init__(**data)
        self._rule = rule

    def _kwargs(self, overrides: dict[str, Any]) -> dict[str, Any]:
        allowed = {"k", "user_id", "agent_id", "session_id", "filter", "mode", "cubes"}
        unknown = set(overrides) - allowed
        if unknown:
            raise ValueError(f"unknown retriever argument(s) {sorted(unknown)}; use {sorted(allowed)}")
        kw: dict[str, Any] = {name: getattr(self, name) for name in allowed}
        kw.update(overrides)
        kw["user_id"] = self._rule.user(overrides.get("user_id"), explicit=True)
        return kw

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        kw = self._kwargs(kwargs)  # the user is checked even for a blank query
        if not isinstance(query, str) or not query.strip():
            return []
        return [hit_to_document(h) for h in self.memory.search(query, **kw)]

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **kwargs: Any) -> list[Document]:
        kw = self._kwargs(kwargs)
        if not isinstance(query, str) or not query.strip():
            return []
        return [hit_to_document(h) for h in await self.memory.asearch(query, **kw)]
