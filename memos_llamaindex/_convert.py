"""LlamaIndex conversions for the core (registered in :mod:`memos_core._adapters` when this module loads).

The core imports this module itself the first time it meets an object whose class comes from a
``llama_index`` module: an ``LLM`` for the LLM reader, a ``BaseEmbedding`` for the embedder.
"""

from __future__ import annotations

from typing import Any, Sequence

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.base import BaseLLM

from memos_core._adapters import register_chat_model_adapter, register_embedder_adapter
from memos_core.embedding import CallableEmbedder

__all__ = ["LlamaIndexChat", "embedder_from_llamaindex"]


class LlamaIndexChat:
    """A LlamaIndex LLM as a :class:`memos_core._adapters.ChatBackend`: one prompt string (system, then user
    text; an earlier answer of the model is quoted as such) through ``complete`` / ``acomplete``. No structured
    output: the reply is JSON text."""

    kind = "llamaindex"

    def __init__(self, llm: Any) -> None:
        self.llm = llm
        self.name = str(getattr(llm, "model_name", None) or getattr(llm, "model", None) or type(llm).__name__)

    @staticmethod
    def prompt(messages: Sequence[dict[str, str]]) -> str:
        return "\n\n".join("Your previous reply:\n" + m["content"] if m["role"] == "assistant" else m["content"]
                           for m in messages)

    def call(self, messages: Sequence[dict[str, str]], schema: type | None) -> Any:
        return self.llm.complete(self.prompt(messages))

    async def acall(self, messages: Sequence[dict[str, str]], schema: type | None) -> Any:
        return await self.llm.acomplete(self.prompt(messages))


def embedder_from_llamaindex(obj: BaseEmbedding) -> CallableEmbedder:
    """A LlamaIndex ``BaseEmbedding`` as a core embedder (batches through ``get_text_embedding_batch``)."""
    name = getattr(obj, "model_name", None) or f"llamaindex:{type(obj).__name__}"
    return CallableEmbedder(obj.get_text_embedding_batch, obj.get_query_embedding, name=str(name))


register_chat_model_adapter(BaseLLM, LlamaIndexChat)
register_embedder_adapter(BaseEmbedding, embedder_from_llamaindex)
