"""MemOSMemory: a LlamaIndex ``BaseMemory`` with short-term chat history and long-term MemOS memory.

* **Short-term**: LlamaIndex's own :class:`~llama_index.core.memory.Memory` (a FIFO window under a token
  limit). In memory by default (a list of this process with the SQL chat store's behaviour); give
  ``chat_store_uri`` (any SQLAlchemy async URI, e.g. ``"sqlite+aiosqlite:///chat.db"``) and it is kept in
  LlamaIndex's SQL chat store there, so the history survives a restart.
* **Long-term**: every user/assistant message put here goes through the MemOS MemReader (offline episodes,
  or LLM facts when the MemOS has an ``llm``) into a cube, scoped by ``user_id`` / ``agent_id``, with the
  session id in provenance.
* ``get(input=...)`` returns the chat history with the memories relevant to ``input`` (or, without input, to
  the latest message), rendered by :meth:`MemOS.get_context` under a token budget, in a system message
  (appended to the history's first system message when there is one; ``insert_method="user"``: prepended to
  the last user message). Memories read from messages already in the history are left out (they are in the prompt).

Serialisable: ``to_dict`` / ``from_dict`` / ``to_json`` / pickle keep the configuration, the MemOS folder
and (for the in-memory store) the active chat history, so agent workflows can keep this memory in their
``Context`` store and restore it.
"""

from __future__ import annotations

import copy
import itertools
import sys
import threading
import time
import uuid
from typing import Any, Literal

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory import Memory
from llama_index.core.memory.types import BaseMemory
from llama_index.core.storage.chat_store.base_db import AsyncDBChatStore
from llama_index.core.storage.chat_store.sql import MessageStatus, SQLAlchemyChatStore
from llama_index.core.utils import get_tokenizer

from memos_core.log import get_logger
from memos_core import MemCube, MemOS
from memos_core.adapter_args import check_adapter_args
from memos_core.places import check_place
from memos_core.shared import shared_memos
from memos_core.os import (CONTEXT_HEADER, DEFAULT_K, AddResult, MemoryArgumentError, UserRule, adapter_index,
                           resolve_memory)

from ._common import (
    USER_HOW,
    build_query,
    check_messages,
    exclude_filter,
    memos_index,
    memos_spec,
    message_text,
    messages_to_turns,
    track_memos,
    resolve_memos,
)

__all__ = ["MemOSMemory"]

log = get_logger(__name__)

IN_MEMORY_URI = "sqlite+aiosqlite:///:memory:"
DEFAULT_TABLE = "memos_llamaindex_chat"


class _ProcessChatStore(AsyncDBChatStore):
    """The chat history of a memory without ``chat_store_uri``: :class:`SQLAlchemyChatStore`'s behaviour (rows
    with a key, a status, an order by time then id; messages stored as JSON and rebuilt on every read) in a list
    of this process, without a database. LlamaIndex's ``Memory`` reads the whole active history and writes on
    every ``put``; on its in-memory aiosqlite store each of those statements hopped to aiosqlite's thread and
    back through an event loop: ~5-30 ms per ``put`` on the 2-core box (more while the background embedder was
    busy), ~1 ms here (README "One memory per call")."""

    _rows: list[list[Any]] = PrivateAttr(default_factory=list)  # [id, key, time_ns, status, message JSON]
    _next: Any = PrivateAttr(default_factory=lambda: itertools.count(1))
    _lock: Any = PrivateAttr(default_factory=threading.Lock)  # sync calls from several threads

    def _select(self, key: str, status: MessageStatus | None) -> list[list[Any]]:
        rows = [r for r in self._rows if r[1] == key and (status is None or r[3] == status.value)]
        return sorted(rows, key=lambda r: (r[2], r[0]))

    def _insert(self, key: str, messages: list[ChatMessage], status: MessageStatus) -> None:
        now = time.time_ns()
        self._rows.extend([next(self._next), key, now + i, MessageStatus(status).value, m.model_dump_json()]
                          for i, m in enumerate(messages))

    async def get_messages(self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE,
                           limit: int | None = None, offset: int | None = None) -> list[ChatMessage]:
        with self._lock:
            rows = self._select(key, status)[offset or 0:]
        rows = rows if limit is None else rows[:limit]
        return [ChatMessage.model_validate_json(r[4]) for r in rows]

    async def count_messages(self, key: str, status: MessageStatus | None = MessageStatus.ACTIVE) -> int:
        with self._lock:
            return len(self._select(key, status))

    async def add_message(self, key: str, message: ChatMessage, status: MessageStatus = MessageStatus.ACTIVE) -> None:
        with self._lock:
            self._insert(key, [message], status)

    async def add_messages(self, key: str, messages: list[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        with self._lock:
            self._insert(key, list(messages), status)

    async def set_messages(self, key: str, messages: list[ChatMessage],
                           status: MessageStatus = MessageStatus.ACTIVE) -> None:
        with self._lock:
            self._rows = [r for r in self._rows if r[1] != key]
            self._insert(key, list(messages), status)

    async def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        with self._lock:
            for i, r in enumerate(self._rows):
                if r[1] == key and r[0] == idx:
                    del self._rows[i]
                    return ChatMessage.model_validate_json(r[4])
        return None

    async def delete_messages(self, key: str, status: MessageStatus | None = None) -> None:
        with self._lock:
            self._rows = [r for r in self._rows if not (r[1] == key and (status is None or r[3] == status.value))]

    async def delete_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        with self._lock:
            gone = self._select(key, MessageStatus.ACTIVE)[:max(0, n)]
            ids = {r[0] for r in gone}
            self._rows = [r for r in self._rows if r[0] not in ids]
        return [ChatMessage.model_validate_json(r[4]) for r in gone]

    async def archive_oldest_messages(self, key: str, n: int) -> list[ChatMessage]:
        with self._lock:
            rows = self._select(key, MessageStatus.ACTIVE)[:max(0, n)]
            for r in rows:
                r[3] = MessageStatus.ARCHIVED.value
        return [ChatMessage.model_validate_json(r[4]) for r in rows]

    async def get_keys(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys(r[1] for r in self._rows))

    @classmethod
    def class_name(cls) -> str:
        return "MemOSProcessChatStore"


def _new_session() -> str:
    return uuid.uuid4().hex


_REACT_WARNED = False


def _react_drops_leading_system() -> bool:
    """Whether this ``get`` serves a ``ReActAgent`` without a ``system_prompt``.

    Such an agent (llama-index-core 0.14) replaces the first message of its input, when it is a system message,
    with its own ReAct header, so a memory block put there would never reach the model. The memory then goes
    into the last user message instead (and a warning says so once). Found by looking up the caller's frames
    for the agent (or the ``AgentWorkflow`` whose root agent it is); costs a few microseconds.
    """
    global _REACT_WARNED
    try:
        from llama_index.core.agent.workflow import AgentWorkflow, ReActAgent
    except ImportError:  # pragma: no cover - another llama-index layout
        return False
    frame = sys._getframe(2)
    for _ in range(40):
        if frame is None:
            return False
        owner = frame.f_locals.get("self")
        if isinstance(owner, AgentWorkflow):
            owner = owner.agents.get(owner.root_agent)
        if isinstance(owner, ReActAgent):
            if owner.system_prompt:
                return False
            if not _REACT_WARNED:
                _REACT_WARNED = True
                log.warning("MemOSMemory: a ReActAgent without a system_prompt drops the first system message; "
                            "the memories go into the user message instead (pass insert_method='user', or give "
                            "the agent a system_prompt, to choose yourself)")
            return True
        frame = frame.f_back
    return False


class MemOSMemory(BaseMemory):
    """Chat history (short-term) plus MemOS memory (long-term) for chat engines and agents.

    Build it with :meth:`from_defaults` (opens or creates a MemOS folder), :meth:`from_memos` (an open
    :class:`~memos_core.MemOS`) or :meth:`from_cube` (a :class:`~memos_core.MemCube` or cube folder).

    What a user can rely on:

    * ``put`` / ``put_messages`` / ``aput`` / ``aput_messages`` store the message in the chat history and
      feed its text to the MemReader (roles in ``remember_roles``; empty and tool-only messages stay in the
      history but are not read). ``set`` replaces the history and reads only the messages that were not in
      it before. ``reset`` clears the history of this session; long-term memories stay.
    * ``get(input=None)`` never changes the stored history; the memory message is built on a copy. With no
      input and no message to take a query from, it returns the history as is.
    * Bad input raises ``TypeError`` (not a ``ChatMessage``) before anything is written. An add the core
      refuses raises its :class:`~memos_core.MemOSError`; nothing is written to the history then either.
    """

    memos_path: str = Field(description="Folder (or store URL, without password) of the MemOS this memory "
                                        "writes to.")
    memos_index: str | None = Field(default=None, description="Vector index of a MemOS on a store URL.")
    principal: str = Field(default="local", description="Principal of that MemOS.")
    cube: str | None = Field(default=None, description="Cube to write to (None: the MemOS default cube).")
    search_cubes: list[str] | None = Field(default=None, description="Cubes to read (None: all mounted).")
    user_id: str | None = Field(default=None, description="Whose memory this is (required unless the MemOS "
                                                             "is a user-bound view or single_user=True).")
    single_user: bool = Field(default=False, description="One fixed user scope for a single-user app.")
    agent_id: str | None = Field(default=None, description="Scope of writes and reads.")
    session_id: str = Field(default_factory=_new_session, description="Chat session (short-term key).")
    k: int = Field(default=DEFAULT_K, ge=1, le=1000, description="At most this many memories per get().")
    memory_token_budget: int = Field(default=1000, ge=1, description="Token budget of the memory message.")
    search_filter: dict[str, Any] | None = Field(default=None, description="Extra core SearchFilter (dict).")
    infer: bool | None = Field(default=None, description="MemOS.add(infer=...): None = LLM reader if any.")
    remember_roles: list[str] = Field(default_factory=lambda: ["user", "assistant"])
    speaker_names: dict[str, str] = Field(default_factory=dict, description="Role -> speaker name in memories.")
    insert_method: Literal["system", "user"] = Field(default="system")
    context_header: str = Field(default=CONTEXT_HEADER)
    retrieval_context_window: int = Field(default=1, ge=1, description="Messages used as query without input.")
    token_limit: int = Field(default=30000, ge=1, description="Token limit of the short-term history window.")
    token_flush_size: int | None = Field(default=None, description="Tokens flushed at once (Memory's).")
    chat_store_uri: str | None = Field(default=None, description="SQLAlchemy async URI; None = in memory.")
    chat_store_table: str = Field(default=DEFAULT_TABLE)

    _memos: MemOS = PrivateAttr()
    _user: str = PrivateAttr()
    _short: Memory = PrivateAttr()
    _tokenizer: Any = PrivateAttr(default=None)
    _last_add: AddResult | None = PrivateAttr(default=None)

    def __init__(self, memos: Any = None, chat_history: list[Any] | None = None, *, index: str | None = None,
                 **data: Any) -> None:
        """Prefer the ``from_*`` constructors. ``chat_history`` here restores a saved history as is (it is not
        read into long-term memory again); ``from_defaults(chat_history=...)`` reads it. ``index`` is the Chroma
        server of a ``postgresql://`` store URL given as ``memos`` (default ``$MEMOS_INDEX``)."""
        check_adapter_args("MemOSMemory", **{key: data.get(key) for key in ("user_id", "agent_id", "session_id", "k")})
        if memos is not None or index is not None:  # a MemOS, a view, a MemCube, a folder or a store URL
            memos = resolve_memory(memos, adapter="MemOSMemory", index=index)
            path, principal = memos_spec(memos)
            data["memos_path"], data["principal"] = path, principal  # the object given wins over a saved path
            data["memos_index"] = memos_index(memos)
            if data.get("user_id") is None and memos.bound_user is not None and not data.get("single_user"):
                data["user_id"] = memos.bound_user  # saved with the config: a restored memory keeps its user
        data.pop("class_name", None)
        super().__init__(**data)
        self._memos = (track_memos(memos) if memos is not None
                       else resolve_memos(self.memos_path, self.principal, self.memos_index, self.cube))
        self._user = UserRule(self._memos, user_id=self.user_id, single_user=self.single_user,
                              adapter="MemOSMemory", how=USER_HOW).require()
        store: AsyncDBChatStore = (_ProcessChatStore() if self.chat_store_uri is None else
                                   SQLAlchemyChatStore(table_name=self.chat_store_table,
                                                       async_database_uri=self.chat_store_uri))
        kwargs: dict[str, Any] = {}
        if self.token_flush_size is not None:
            kwargs["token_flush_size"] = self.token_flush_size
        self._short = Memory(token_limit=self.token_limit, chat_history_token_ratio=1.0, sql_store=store,
                             session_id=self.session_id, **kwargs)
        if chat_history:
            restored = [m if isinstance(m, ChatMessage) else ChatMessage.model_validate(m) for m in chat_history]
            self._short.set(restored)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def class_name(cls) -> str:
        return "MemOSMemory"

    @classmethod
    def from_defaults(  # type: ignore[override]
        cls,
        path: str = "./memos_data",
        *,
        memos: MemOS | None = None,
        embedder: Any = None,
        llm: Any = None,
        principal: str = "local",
        chat_history: list[ChatMessage] | None = None,
        index: str | None = None,
        **kwargs: Any,
    ) -> "MemOSMemory":
        """Open (or create) the MemOS at ``path`` and build a memory on it.

        ``embedder`` / ``llm`` / ``principal`` configure that MemOS (``llm`` makes its MemReader extract
        facts; any LlamaIndex LLM works). Pass ``memos=`` to use an open one instead. Other keyword arguments
        are this class's fields (``user_id``, ``session_id``, ``k``, ``memory_token_budget``,
        ``chat_store_uri`` ...). ``chat_history`` is set as the starting history and read into memory.
        ``path`` may be a ``postgresql://`` store URL; ``index`` is then its Chroma server (default
        ``$MEMOS_INDEX``).
        """
        if memos is None:
            if isinstance(path, (MemOS, MemCube)):  # the constructor rule: a MemOS, a view or a cube works here too
                if embedder is not None or llm is not None or principal != "local" or index is not None:
                    raise MemoryArgumentError("MemOSMemory.from_defaults: embedder=, llm=, principal= and index= "
                                              "configure a MemOS opened from a path; the MemOS or MemCube given "
                                              "is already configured (use mem.as_principal(...) for a principal)")
                memos = path  # resolved by the constructor rule, as from_memos does
            else:
                check_place(path, "MemOSMemory.from_defaults")
                index = adapter_index(path, index, "MemOSMemory.from_defaults")
                extra = {} if index is None else {"index": index}
                memos = shared_memos(path, embedder=embedder, llm=llm, principal=principal, **extra)
        elif index is not None:
            raise MemoryArgumentError("MemOSMemory.from_defaults: index= goes with a store URL as path, not with "
                                      "memos=")
        mem = cls(memos=memos, **kwargs)
        if chat_history:
            mem.set(chat_history)
        return mem

    @classmethod
    def from_memos(cls, memos: Any, **kwargs: Any) -> "MemOSMemory":
        """A memory on an open :class:`~memos_core.MemOS` (``cube=`` picks the cube it writes to)."""
        return cls(memos=memos, **kwargs)

    @classmethod
    def from_cube(cls, cube: Any, *, memos: MemOS | None = None, **kwargs: Any) -> "MemOSMemory":
        """A memory that writes to and reads from one cube: a :class:`~memos_core.MemCube` or its folder.

        With ``memos=`` the cube is mounted there (if it is not already). Without, the cube's parent folder
        is opened as a MemOS data folder with that cube as its default cube.
        """
        from ._common import mount_cube

        memos, name = mount_cube(cube, memos)
        kwargs.setdefault("cube", name)
        kwargs.setdefault("search_cubes", [name])
        return cls(memos=memos, **kwargs)

    # ------------------------------------------------------------------ accessors
    @property
    def memos(self) -> MemOS:
        """The :class:`~memos_core.MemOS` behind this memory."""
        return self._memos

    @property
    def short_term(self) -> Memory:
        """The LlamaIndex ``Memory`` holding the chat history."""
        return self._short

    @property
    def last_add_result(self) -> AddResult | None:
        """What the last write to long-term memory did (``None`` before the first, or when nothing was read)."""
        return self._last_add

    @property
    def tokenizer_fn(self) -> Any:
        """Token counter (LlamaIndex's default tokenizer, shipped offline). Chat engines use it too."""
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer()
        return self._tokenizer

    # ------------------------------------------------------------------ serialisation
    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        data = self.model_dump(**kwargs)
        data["class_name"] = self.class_name()
        if self.chat_store_uri is None:  # in-memory history travels with the dict
            data["chat_history"] = [m.model_dump(mode="json") for m in
                                    self._short.get_all(status=MessageStatus.ACTIVE)]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> "MemOSMemory":  # type: ignore[override]
        """Rebuild from :meth:`to_dict`. ``memos=`` attaches to an open MemOS; otherwise the registered one for
        the folder (see :func:`memos_llamaindex.register_memos`), else the folder opened with defaults."""
        data = {**dict(data), **kwargs}
        data.pop("class_name", None)
        return cls(**data)

    def __getstate__(self) -> dict[str, Any]:
        return {"__dict__": self.to_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["__dict__"])  # type: ignore[misc]

    def __deepcopy__(self, memo: dict[int, Any]) -> "MemOSMemory":
        data = copy.deepcopy(self.to_dict(), memo)
        return type(self).from_dict(data, memos=self._memos)

    # ------------------------------------------------------------------ helpers
    def _scope(self) -> dict[str, Any]:
        return {"user_id": self._user, "agent_id": self.agent_id}

    def _turns(self, messages: list[ChatMessage]) -> list[dict[str, Any]]:
        return messages_to_turns(messages, session_id=self.session_id, roles=self.remember_roles,
                                 speaker_names=self.speaker_names)

    def _add_kwargs(self) -> dict[str, Any]:
        return {**self._scope(), "session_id": self.session_id, "cube": self.cube, "infer": self.infer}

    def _record(self, res: AddResult) -> None:
        self._last_add = res
        if res.errors:
            log.warning("MemOS add reported problems: %s", "; ".join(res.errors))

    def _context_kwargs(self, history: list[ChatMessage]) -> dict[str, Any]:
        return {**self._scope(), "k": self.k, "token_budget": self.memory_token_budget,
                "filter": exclude_filter(self.search_filter, history, self.session_id, self.remember_roles),
                "cubes": self.search_cubes, "tokenizer": self.tokenizer_fn, "header": self.context_header}

    def _with_context(self, history: list[ChatMessage], context: str) -> list[ChatMessage]:
        """A copy of ``history`` with the memory block inserted (the stored messages are never touched)."""
        out = list(history)
        context = context.strip()
        if not context:
            return out
        method = self.insert_method
        if method == "system" and _react_drops_leading_system():
            method = "user"
        if method == "user":
            for i in range(len(out) - 1, -1, -1):
                if out[i].role == MessageRole.USER:
                    msg = out[i].model_copy(deep=True)
                    msg.blocks = [TextBlock(text=context + "\n\n"), *msg.blocks]
                    out[i] = msg
                    return out
            out.append(ChatMessage(role=MessageRole.USER, content=context))
            return out
        if out and out[0].role == MessageRole.SYSTEM:
            msg = out[0].model_copy(deep=True)
            msg.blocks = [*msg.blocks, TextBlock(text="\n\n" + context)]
            out[0] = msg
            return out
        return [ChatMessage(role=MessageRole.SYSTEM, content=context), *out]

    def _new_messages(self, messages: list[ChatMessage], current: list[ChatMessage]) -> list[ChatMessage]:
        """The part of ``messages`` not already in ``current`` (after their common prefix)."""
        n = 0
        for a, b in zip(messages, current):
            if a.role != b.role or message_text(a) != message_text(b):
                break
            n += 1
        return messages[n:]

    # ------------------------------------------------------------------ sync API
    def get(self, input: str | ChatMessage | None = None, **kwargs: Any) -> list[ChatMessage]:
        """The chat history with the memories relevant to ``input`` (or the latest message) inserted.

        Extra keyword arguments chat engines pass (``initial_token_count``) are accepted and ignored: the
        history window is bounded when messages are put, the memory block by ``memory_token_budget``.
        """
        history = self._short.get()
        query = build_query(history, input, self.retrieval_context_window)
        if query is None:
            return history
        context = self._memos.get_context(query, **self._context_kwargs(history))
        return self._with_context(history, context)

    def get_all(self) -> list[ChatMessage]:
        """Every message of this session's history, flushed ones included (no memories inserted)."""
        return self._short.get_all()

    def put(self, message: ChatMessage) -> None:
        """Add a message to the history and read it into long-term memory."""
        self.put_messages(check_messages([message], "put"))

    def put_messages(self, messages: list[ChatMessage]) -> None:
        """Add messages to the history and read them into long-term memory (one MemOS add)."""
        messages = check_messages(messages, "put_messages")
        if not messages:
            return
        turns = self._turns(messages)
        if turns:
            self._record(self._memos.add(turns, **self._add_kwargs()))
        self._short.put_messages(messages)

    def set(self, messages: list[ChatMessage]) -> None:
        """Replace the history; messages that were not in it before are read into long-term memory."""
        messages = check_messages(messages, "set")
        new = self._new_messages(messages, self._short.get_all(status=MessageStatus.ACTIVE))
        turns = self._turns(new)
        if turns:
            self._record(self._memos.add(turns, **self._add_kwargs()))
        self._short.set(messages)

    def reset(self) -> None:
        """Clear this session's chat history. Long-term memories stay (delete them through MemOS)."""
        self._short.reset()

    # ------------------------------------------------------------------ async API (native)
    async def aget(self, input: str | ChatMessage | None = None, **kwargs: Any) -> list[ChatMessage]:
        history = await self._short.aget()
        query = build_query(history, input, self.retrieval_context_window)
        if query is None:
            return history
        context = await self._memos.aget_context(query, **self._context_kwargs(history))
        return self._with_context(history, context)

    async def aget_all(self) -> list[ChatMessage]:
        return await self._short.aget_all()

    async def aput(self, message: ChatMessage) -> None:
        await self.aput_messages(check_messages([message], "aput"))

    async def aput_messages(self, messages: list[ChatMessage]) -> None:
        messages = check_messages(messages, "aput_messages")
        if not messages:
            return
        turns = self._turns(messages)
        if turns:
            self._record(await self._memos.aadd(turns, **self._add_kwargs()))
        await self._short.aput_messages(messages)

    async def aset(self, messages: list[ChatMessage]) -> None:
        messages = check_messages(messages, "aset")
        new = self._new_messages(messages, await self._short.aget_all(status=MessageStatus.ACTIVE))
        turns = self._turns(new)
        if turns:
            self._record(await self._memos.aadd(turns, **self._add_kwargs()))
        await self._short.aset(messages)

    async def areset(self) -> None:
        await self._short.areset()
