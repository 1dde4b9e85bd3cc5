"""Helpers for the LlamaIndex adapter tests (no tests here).

* ``hashed_embed``: a deterministic fake embedder (hashed bag of words); importable by subprocesses, so a cube
  written in one process opens with the very same embedder in the next.
* ``RecordingLLM``: a chat ``CustomLLM`` that records every message list it receives and answers from a script.
* ``ScriptedAgentLLM``: a ``FunctionCallingLLM`` (LlamaIndex's ``MockFunctionCallingLLM``) that records its
  inputs and can emit tool calls, for agents.
* ``new_memos``: a MemOS in a folder with the fake embedder.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.llms.mock import MockFunctionCallingLLM

REPO = Path(__file__).resolve().parents[1]
_WORD = re.compile(r"[a-z0-9]+")
DIM = 64


def hashed_embed(texts: List[str]) -> np.ndarray:
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in _WORD.findall(text.lower()):
            out[i, int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") % DIM] += 1.0
        out[i, DIM - 1] += 0.01
    return out


def new_memos(path: Path, **kw: Any) -> Any:
    from memos_core import MemOS

    kw.setdefault("embedder", hashed_embed)
    return MemOS(path, **kw)


def text_of(messages: Sequence[ChatMessage]) -> str:
    """Everything an LLM call received, as one string."""
    return "\n".join(f"{m.role.value}: {m.content}" for m in messages)


def _snapshot(messages: Sequence[ChatMessage]) -> List[ChatMessage]:
    return [m.model_copy(deep=True) for m in messages]


class RecordingLLM(CustomLLM):
    """A chat model that records every call; ``reply(messages) -> str`` scripts the answers."""

    _calls: List[List[ChatMessage]] = PrivateAttr(default_factory=list)
    _prompts: List[str] = PrivateAttr(default_factory=list)
    _reply: Callable[[Sequence[ChatMessage]], str] = PrivateAttr()

    def __init__(self, reply: Optional[Callable[[Sequence[ChatMessage]], str]] = None, **kw: Any) -> None:
        super().__init__(**kw)
        self._reply = reply or (lambda messages: "Noted.")

    @property
    def calls(self) -> List[List[ChatMessage]]:
        return self._calls

    @property
    def prompts(self) -> List[str]:
        return self._prompts

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True, context_window=8000, num_output=256)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        self._calls.append(_snapshot(messages))
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=self._reply(messages)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        text = self.chat(messages).message.content or ""

        def gen() -> ChatResponseGen:
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=text)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self._prompts.append(prompt)
        return CompletionResponse(text=self._reply([ChatMessage(role=MessageRole.USER, content=prompt)]))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self.complete(prompt).text

        def gen() -> CompletionResponseGen:
            yield CompletionResponse(text=text, delta=text)

        return gen()


class ScriptedAgentLLM(MockFunctionCallingLLM):
    """A function-calling mock: ``script(messages, tools) -> ChatMessage`` decides each reply."""

    _calls: List[List[ChatMessage]] = PrivateAttr(default_factory=list)

    def __init__(self, script: Callable[[Sequence[ChatMessage], Any], ChatMessage], **kw: Any) -> None:
        def generator(messages: Sequence[ChatMessage], **kwargs: Any) -> ChatMessage:
            self._calls.append(_snapshot(messages))
            return script(messages, kwargs.get("tools"))

        super().__init__(response_generator=generator, is_chat_model=True, **kw)

    @property
    def calls(self) -> List[List[ChatMessage]]:
        return self._calls
