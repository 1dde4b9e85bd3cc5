"""LangChain conversions for the core (registered in :mod:`memos_core._adapters` when this module loads).

The core imports this module itself the first time it meets an object whose class comes from a ``langchain*``
module: a chat model (any ``Runnable``: a ``BaseChatModel``, a chain, a model with bound tools) for the LLM
reader, and an ``Embeddings`` for the embedder.
"""

from __future__ import annotations

from typing import Any, Sequence

from langchain_core.embeddings import Embeddings
from langchain_core.runnables import Runnable

from memos_core._adapters import register_chat_model_adapter, register_embedder_adapter
from memos_core.embedding import CallableEmbedder

__all__ = ["LangChainChat", "embedder_from_langchain"]

_ROLES = {"system": "system", "user": "human", "assistant": "ai"}


def _reply_unparsable(exc: BaseException) -> bool:
    """One reply did not parse (LangChain's ``OutputParserException``): the model accepted the schema, so its
    structured output stays in use for the next request (e.g. a constrained local model cut by its token limit)."""
    from langchain_core.exceptions import OutputParserException

    return isinstance(exc, OutputParserException)


class LangChainChat:
    """A LangChain ``Runnable`` as a :class:`memos_core._adapters.ChatBackend`.

    Messages go in as ``[(role, text), ...]``. When asked for a schema, the model's ``with_structured_output``
    is used if it has one; once that raises (e.g. the provider rejects the schema), this model answers in plain
    text for that schema from then on -- unless the error is only that one reply did not parse.
    """

    kind = "langchain"

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.name = str(getattr(llm, "model_name", None) or getattr(llm, "model", None) or type(llm).__name__)
        self._structured: dict[type, Any] = {}

    @staticmethod
    def messages(messages: Sequence[dict[str, str]]) -> list[tuple[str, str]]:
        return [(_ROLES.get(m["role"], "human"), m["content"]) for m in messages]

    def _runnable(self, schema: type | None) -> Any:
        if schema is None:
            return None
        if schema not in self._structured:
            try:
                self._structured[schema] = self.llm.with_structured_output(schema)
            except (NotImplementedError, AttributeError, TypeError, ValueError):
                self._structured[schema] = None
        return self._structured[schema]

    def call(self, messages: Sequence[dict[str, str]], schema: type | None) -> Any:
        runnable = self._runnable(schema)
        if runnable is not None:
            try:
                return runnable.invoke(self.messages(messages))
            except Exception as exc:
                if not _reply_unparsable(exc):  # the schema was refused: text from now on
                    self._structured[schema] = None  # type: ignore[index]
                raise
        return self.llm.invoke(self.messages(messages))

    async def acall(self, messages: Sequence[dict[str, str]], schema: type | None) -> Any:
        runnable = self._runnable(schema)
        if runnable is not None:
            try:
                return await runnable.ainvoke(self.messages(messages))
            except Exception as exc:
                if not _reply_unparsable(exc):
                    self._structured[schema] = None  # type: ignore[index]
                raise
        return await self.llm.ainvoke(self.messages(messages))


def embedder_from_langchain(obj: Embeddings) -> CallableEmbedder:
    """A LangChain ``Embeddings`` as a core embedder (``embed_documents`` / ``embed_query``)."""
    name = getattr(obj, "name", None) or getattr(obj, "model", None) or f"langchain:{type(obj).__name__}"
    dim = getattr(obj, "dim", None)
    return CallableEmbedder(obj.embed_documents, obj.embed_query, name=str(name),
                            dim=dim if isinstance(dim, int) and not isinstance(dim, bool) else None)


register_chat_model_adapter(Runnable, LangChainChat)
register_embedder_adapter(Embeddings, embedder_from_langchain)
