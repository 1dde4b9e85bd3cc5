"""A LlamaIndex chat engine that remembers across sessions, with MemOS memory.

Runs offline out of the box: the embedded MemOS defaults (Chroma + SQLite + the all-MiniLM-L6-v2 embedder
shipped in a wheel) and a tiny offline "LLM" that answers from the memories it is given. With a real LLM it
is the same code:

    python examples/llamaindex_chat.py                        # scripted two-session demo, offline
    python examples/llamaindex_chat.py --chat                 # talk to it (type 'quit' to leave)
    python examples/llamaindex_chat.py --llm openai:gpt-4o-mini --chat    # needs OPENAI_API_KEY and
                                                              # pip install llama-index-llms-openai
    python examples/llamaindex_chat.py --llm ollama:llama3.1 --chat       # pip install llama-index-llms-ollama

``--llm auto`` (the default) uses OpenAI when ``OPENAI_API_KEY`` is set and the integration is installed,
and the offline LLM otherwise. ``--llm-reader`` also lets the LLM extract facts from the conversation
(MemOS LLM reader) instead of storing each turn as an episode.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import LLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from memos_core import MemOS
from memos_llamaindex import MemOSMemory

SESSION_1 = [
    "Hi! I'm Ann. I just adopted a grey cat called Miso.",
    "I'm a nurse and I work night shifts at the hospital in Lisbon.",
    "Next month I'm flying to Kyoto to see the cherry blossoms.",
]
SESSION_2 = [
    "What was the name of my cat again?",
    "Where am I travelling next month?",
]

_WORD = re.compile(r"[a-z0-9]+")
_STOP = {"the", "a", "an", "i", "my", "me", "is", "am", "was", "what", "where", "to", "of", "again", "are",
         "you", "do", "did", "in", "at", "and", "next"}


class OfflineLLM(CustomLLM):
    """A stand-in LLM for running without a model: it answers with the remembered line that shares the most
    words with the question (from the memory block MemOS put into the system message), else acknowledges."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_chat_model=True, model_name="offline-memory-echo")

    @staticmethod
    def _answer(messages: Sequence[ChatMessage]) -> str:
        question = next((m.content or "" for m in reversed(messages) if m.role == MessageRole.USER), "")
        memory_lines = [line[2:] for m in messages if m.role == MessageRole.SYSTEM
                        for line in (m.content or "").splitlines() if line.startswith("- [")]
        words = set(_WORD.findall(question.lower())) - _STOP
        best = max(memory_lines, key=lambda line: len(words & set(_WORD.findall(line.lower()))), default=None)
        if question.rstrip().endswith("?") and best and words & set(_WORD.findall(best.lower())):
            return f"From what you told me earlier: {best.split('] ', 1)[-1].split(': ', 1)[-1]}"
        return "Got it, I'll remember that."

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=self._answer(messages)))

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return CompletionResponse(text=self._answer([ChatMessage(role=MessageRole.USER, content=prompt)]))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text = self.complete(prompt).text
        yield CompletionResponse(text=text, delta=text)


def make_llm(spec: str) -> LLM:
    """``offline``, ``openai[:model]``, ``ollama[:model]`` or ``auto``."""
    name, _, model = spec.partition(":")
    if name == "auto":
        if os.environ.get("OPENAI_API_KEY"):
            try:
                return make_llm("openai")
            except SystemExit:
                pass
        return OfflineLLM()
    if name == "offline":
        return OfflineLLM()
    try:
        if name == "openai":
            from llama_index.llms.openai import OpenAI

            return OpenAI(model=model or "gpt-4o-mini")
        if name == "ollama":
            from llama_index.llms.ollama import Ollama

            return Ollama(model=model or "llama3.1", request_timeout=120)
    except ImportError:
        raise SystemExit(f"--llm {spec}: pip install llama-index-llms-{name}") from None
    raise SystemExit(f"--llm {spec!r}: use offline, auto, openai[:model] or ollama[:model]")


def chat_engine(mem: MemOS, llm: LLM, user: str, session: str) -> tuple[SimpleChatEngine, MemOSMemory]:
    memory = MemOSMemory.from_memos(mem, user_id=user, session_id=session, k=5, memory_token_budget=400,
                                    speaker_names={"user": user.title(), "assistant": "Assistant"})
    engine = SimpleChatEngine.from_defaults(
        llm=llm, memory=memory,
        system_prompt="You are a friendly assistant. Use the relevant memories when they help; be brief.")
    return engine, memory


def demo(mem: MemOS, llm: LLM, user: str) -> None:
    engine, _ = chat_engine(mem, llm, user, "monday")
    print("== session 'monday'")
    for text in SESSION_1:
        print(f"you> {text}")
        print(f"bot> {engine.chat(text)}")
    print("\n== session 'tuesday' (a new chat: new memory object, new engine, empty history)")
    engine, memory = chat_engine(mem, llm, user, "tuesday")
    for text in SESSION_2:
        print(f"you> {text}")
        injected = memory.get(input=text)
        if injected and injected[0].role == MessageRole.SYSTEM:
            print("   (memory MemOS adds to the prompt)\n   " + injected[0].content.strip().replace("\n", "\n   "))
        print(f"bot> {engine.chat(text)}")


def repl(mem: MemOS, llm: LLM, user: str, session: str) -> None:
    engine, _ = chat_engine(mem, llm, user, session)
    print(f"Chatting as {user!r} in session {session!r}. Type 'quit' to leave.")
    for line in sys.stdin:
        text = line.strip()
        if text.lower() in ("quit", "exit"):
            break
        if text:
            print(f"bot> {engine.chat(text)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="./llamaindex_demo_memory", help="MemOS folder (default: %(default)s)")
    ap.add_argument("--llm", default="auto", help="offline | auto | openai[:model] | ollama[:model]")
    ap.add_argument("--llm-reader", action="store_true", help="let the LLM extract facts (MemOS LLM reader)")
    ap.add_argument("--user", default="ann")
    ap.add_argument("--chat", action="store_true", help="interactive chat instead of the scripted demo")
    ap.add_argument("--session", default="main", help="session id for --chat")
    ap.add_argument("--keep", action="store_true", help="demo: keep earlier memories in --data")
    args = ap.parse_args(argv)

    llm = make_llm(args.llm)
    data = Path(args.data)
    if not args.chat and not args.keep and data.exists():
        shutil.rmtree(data)  # the scripted demo starts from an empty memory
    reader_llm = llm if args.llm_reader and not isinstance(llm, OfflineLLM) else None
    print(f"LLM: {llm.metadata.model_name}; memory: {data}")
    with MemOS(data, llm=reader_llm) as mem:
        if args.chat:
            repl(mem, llm, args.user, args.session)
        else:
            demo(mem, llm, args.user)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
