"""MemOSChatMessageHistory: a durable LangChain ``BaseChatMessageHistory`` per session, kept in a cube.

Each message is one memory in the cube: kind ``episode``, state ``archived`` (the raw transcript is cold
storage: kept, listable, but out of default search, so it never crowds out real memories), tag
``lc:chat-history``, scope ``session_id`` (+ ``user_id`` / ``agent_id`` when given), the exact message in
``metadata["lc_message"]`` (LangChain's ``message_to_dict``) so it comes back identical. Writes are fsync'd
transactions of the core: a returned ``add_messages`` survives a crash.

With ``memorize=True`` (needs a ``MemOS`` facade) the human and AI messages are also handed to the MemReader
(``MemOS.add``), so long-term memories accrue: episodes offline, or extracted facts when an LLM is configured.
"""

from __future__ import annotations

from typing import Any, Sequence

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict

from memos_core import LifecycleState, MemCube, MemoryKind, SourceKind
from memos_core.errors import ValidationError
from memos_core.os import UserRule, resolve_memory

from ._common import delete_if_live, message_text, principal_of, resolve_cube, run_sync

__all__ = ["MemOSChatMessageHistory", "HISTORY_TAG"]

HISTORY_TAG = "lc:chat-history"
_EXTRACTOR = "memos_langchain.history/1"
_PAGE = 500


def turns_for_reader(messages: Sequence[BaseMessage], *, user_name: str = "user",
                     ai_name: str = "assistant") -> list[dict[str, Any]]:
    """Human and AI messages with text, as the MemReader's turn dicts (``role``, ``content``, ``id``)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.type not in ("human", "ai"):
            continue
        text = message_text(m).strip()
        if not text:
            continue
        turn: dict[str, Any] = {"role": user_name if m.type == "human" else (m.name or ai_name), "content": text}
        if m.id:
            turn["id"] = str(m.id)
        out.append(turn)
    return out


class MemOSChatMessageHistory(BaseChatMessageHistory):
    """Chat history of one session, durable in a MemOS cube; works with ``RunnableWithMessageHistory``.

    Parameters
    ----------
    memory:
        A ``MemOS`` (its default cube, or ``cube``), a view of one, a :class:`MemCube` or a folder path (the
        constructor rule of every adapter: :func:`memos_core.os.resolve_memory`), or a ``postgresql://`` store URL.
    session_id:
        The conversation; each session has its own history.
    user_id, agent_id:
        Scope of the stored messages (and of memories the MemReader derives from them). A user is required
        (fail closed): ``user_id``, or a user-bound view as ``memory`` (``mem.for_user("ann")``), or
        ``single_user=True`` for one fixed scope; otherwise :class:`memos_core.UserRequired` is raised here.
    memorize:
        Also feed human/AI messages to the MemReader (``MemOS.add``) so long-term memories accrue.
    infer:
        Passed to ``MemOS.add`` (``None``: LLM reader when the facade has an LLM, else offline).
    index:
        With a store URL only: its Chroma server, ``"http://host:port"`` (default ``$MEMOS_INDEX``).
    """

    def __init__(self, memory: Any, session_id: str, *, user_id: str | None = None, agent_id: str | None = None,
                 cube: str | None = None, memorize: bool = False, infer: bool | None = None,
                 user_name: str | None = None, ai_name: str = "assistant", actor: str | None = None,
                 single_user: bool = False, index: str | None = None) -> None:
        if not isinstance(session_id, str) or not session_id.strip():
            raise ValidationError("session_id must be a non-empty string")
        rule = UserRule(memory, user_id=user_id, single_user=single_user, adapter="MemOSChatMessageHistory",
                        how="pass user_id=... (MemOSChatMessageHistory(mem, session_id, user_id=...))")
        user_id = rule.require()
        memory = resolve_memory(memory, adapter="MemOSChatMessageHistory", index=index)  # a MemCube: a MemOS over it
        self.memory = memory
        self.cube: MemCube = resolve_cube(memory, cube)
        self.cube_name = cube
        self.session_id = session_id
        self.user_id = user_id
        self.agent_id = agent_id
        self.memorize = memorize
        self.infer = infer
        self.single_user = single_user
        self.user_name = user_name or ("user" if single_user else user_id)
        self.ai_name = ai_name
        actor = actor or principal_of(memory)
        self._as: dict[str, Any] = {} if actor is None else {"actor": actor}
        self._scope = {k: v for k, v in (("user_id", user_id), ("agent_id", agent_id), ("session_id", session_id))
                       if v is not None}

    def _filter(self) -> dict[str, Any]:
        return {**self._scope, "tags_all": [HISTORY_TAG], "kinds": [MemoryKind.EPISODE],
                "states": [LifecycleState.ARCHIVED]}

    def _items(self) -> list[Any]:
        out: list[Any] = []
        while True:
            page = self.cube.list(self._filter(), limit=_PAGE, offset=len(out), **self._as)
            out.extend(page)
            if len(page) < _PAGE:
                return out

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """Every message of the session, oldest first."""
        return messages_from_dict([it.metadata["lc_message"] for it in self._items()])

    async def aget_messages(self) -> list[BaseMessage]:
        return await run_sync(lambda: self.messages)

    def _content(self, m: BaseMessage) -> str:
        text = message_text(m).strip()
        if not text:
            calls = getattr(m, "tool_calls", None) or []
            text = f"[tool calls: {', '.join(c['name'] for c in calls)}]" if calls else f"[{m.type} message]"
        text = f"{m.type}: {text}"
        return text[:self.cube.max_content_chars]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Append messages (one transaction); with ``memorize`` also hand them to the MemReader."""
        messages = list(messages)
        if not messages:
            return
        specs = [{"content": self._content(m), "kind": MemoryKind.EPISODE, "state": LifecycleState.ARCHIVED,
                  "tags": [HISTORY_TAG], "metadata": {"lc_message": message_to_dict(m)}, **self._scope,
                  "provenance": {"source": SourceKind.CONVERSATION, "session_id": self.session_id,
                                 "source_ids": [str(m.id)] if m.id else [], "extractor": _EXTRACTOR,
                                 "speaker": self.user_name if m.type == "human" else None}}
                 for m in messages]
        self.cube.add_many(specs, **self._as)
        if self.memorize:
            turns = turns_for_reader(messages, user_name=self.user_name, ai_name=self.ai_name)
            if turns:
                self.memory.add(turns, user_id=self.user_id, agent_id=self.agent_id, session_id=self.session_id,
                                cube=self.cube_name, infer=self.infer)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await run_sync(self.add_messages, messages)

    def clear(self) -> None:
        """Tombstone the session's messages (MemOS deletes are recoverable until purged). Memories the
        MemReader derived from them are kept: forget those explicitly."""
        for it in self._items():
            delete_if_live(self.cube, it.id, "chat history cleared", self._as)  # another worker may clear too

    async def aclear(self) -> None:
        await run_sync(self.clear)
