"""Offline stand-ins for tests, examples and CI: no API key, no download.

* :class:`HashingEmbeddings`: a LangChain ``Embeddings`` giving deterministic hashed bag-of-words vectors (texts
  that share words are close), fast enough for thousands of texts per second.
* :class:`ScriptedChatModel`: a chat model that plays a script (fixed replies, tool calls, or functions of the
  messages it is shown) and records every call, so an agent built with ``create_agent`` runs end to end.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import Any, Callable, Sequence, Union

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.embeddings import Embeddings
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field, PrivateAttr

__all__ = ["HashingEmbeddings", "ScriptedChatModel", "tool_call", "Step"]

_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbeddings(Embeddings):
    """Hashed bag-of-words embeddings (``dim`` buckets, blake2b). Deterministic across processes."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.name = f"hashing-bow-{dim}"

    def _vec(self, text: str) -> list[float]:
        out = [0.0] * self.dim
        for word in _WORD.findall(text.lower()):
            h = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=4).digest(), "little")
            out[h % self.dim] += 1.0
        out[-1] += 0.01  # never the zero vector
        return out

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


def tool_call(name: str, args: dict[str, Any] | None = None, *, content: str = "",
              id: str | None = None) -> AIMessage:
    """An ``AIMessage`` that calls one tool."""
    return AIMessage(content=content, tool_calls=[{"name": name, "args": dict(args or {}),
                                                    "id": id or f"call_{uuid.uuid4().hex[:12]}",
                                                    "type": "tool_call"}])


Step = Union[str, AIMessage, Callable[[list[BaseMessage]], Union[str, AIMessage]]]


class ScriptedChatModel(BaseChatModel):
    """Plays ``script`` one step per model call: a string (a plain answer), an ``AIMessage`` (e.g. from
    :func:`tool_call`), or a function of the messages the model is shown returning either.

    When the script runs out, ``default`` (if set) answers every further call; otherwise an
    ``IndexError`` says so. ``calls`` records the messages of every call, for assertions.
    """

    script: list[Any] = Field(default_factory=list)
    default: Any = None
    calls: list[list[BaseMessage]] = Field(default_factory=list)
    _pos: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "memos-scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> "ScriptedChatModel":
        return self  # the script decides which tools to call

    def _next_step(self) -> Step:
        if self._pos < len(self.script):
            step = self.script[self._pos]
            self._pos += 1
            return step
        if self.default is not None:
            return self.default
        raise IndexError(f"ScriptedChatModel: script of {len(self.script)} steps is exhausted")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        self.calls.append(list(messages))
        step = self._next_step()
        out = step(list(messages)) if callable(step) and not isinstance(step, BaseMessage) else step
        if isinstance(out, str):
            out = AIMessage(content=out)
        if not isinstance(out, AIMessage):
            raise TypeError(f"a script step must give a str or an AIMessage, got {type(out).__name__}")
        if out.id is None:
            out = out.model_copy(update={"id": f"run-{uuid.uuid4().hex}"})
        return ChatResult(generations=[ChatGeneration(message=out)])
