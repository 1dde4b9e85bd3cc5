"""MemOSMemoryBlock: long-term MemOS memory as a block of LlamaIndex's ``Memory``.

::

    from llama_index.core.memory import Memory
    from memos_llamaindex import MemOSMemoryBlock

    memory = Memory.from_defaults(
        session_id="s1", token_limit=4000,
        memory_blocks=[MemOSMemoryBlock.from_memos(mem, user_id="ann", priority=1)],
    )

* Messages ``Memory`` flushes out of its short-term window go through the MemOS MemReader
  (``accept_short_term_memory=True``, the default); the session id ``Memory`` stamps on them goes to provenance.
* ``aget`` returns the memories relevant to the current messages (the latest ``retrieval_context_window`` of
  them; a string ``input`` given to ``Memory.get`` arrives here as the last user message), rendered by :meth:`MemOS.get_context` within
  ``token_budget``; ``""`` when nothing is relevant.
* Under ``Memory``'s token limit the block is truncated by priority like any block (``priority=0`` never);
  ``atruncate`` re-renders the same query with a smaller budget, dropping the least relevant memories first,
  and gives ``None`` when no memory would fit.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory.memory import BaseMemoryBlock
from llama_index.core.utils import get_tokenizer

from memos_core.log import get_logger
from memos_core import MemOS
from memos_core.adapter_args import check_adapter_args
from memos_core.places import check_place
from memos_core.shared import shared_memos
from memos_core.os import CONTEXT_HEADER, DEFAULT_K, AddResult, UserRule, adapter_index, resolve_memory

from ._common import (
    USER_HOW,
    build_query,
    check_messages,
    exclude_filter,
    memos_index,
    memos_spec,
    messages_to_turns,
    mount_cube,
    track_memos,
    resolve_memos,
)

__all__ = ["MemOSMemoryBlock"]

log = get_logger(__name__)

_MIN_BUDGET = 16  # below this no memory line fits (the core shortens lines only with 16+ tokens left)


class MemOSMemoryBlock(BaseMemoryBlock[str]):
    """A ``Memory`` block backed by MemOS (see the module docstring)."""

    name: str = Field(default="memos_memory", description="Block name (the tag it is rendered in).")
    description: str | None = Field(default="Long-term memories from MemOS relevant to the conversation.")
    priority: int = Field(default=1, description="Truncation priority (0 = never truncate; higher goes first"
                                                 " only after lower ones).")
    memos_path: str = Field(description="Folder (or store URL, without password) of the MemOS this block uses.")
    memos_index: str | None = Field(default=None, description="Vector index of a MemOS on a store URL.")
    principal: str = Field(default="local")
    cube: str | None = Field(default=None, description="Cube to write to (None: the MemOS default cube).")
    search_cubes: list[str] | None = Field(default=None, description="Cubes to read (None: all mounted).")
    user_id: str | None = Field(default=None, description="Whose memory this is (required unless the MemOS "
                                                             "is a user-bound view or single_user=True).")
    single_user: bool = Field(default=False, description="One fixed user scope for a single-user app.")
    agent_id: str | None = None
    k: int = Field(default=DEFAULT_K, ge=1, le=1000)
    token_budget: int = Field(default=500, ge=1, description="Token budget of the block's text.")
    search_filter: dict[str, Any] | None = None
    infer: bool | None = None
    remember_roles: list[str] = Field(default_factory=lambda: ["user", "assistant"])
    speaker_names: dict[str, str] = Field(default_factory=dict)
    context_header: str = Field(default=CONTEXT_HEADER)
    retrieval_context_window: int = Field(default=1, ge=1)

    _memos: MemOS = PrivateAttr()
    _user: str = PrivateAttr()
    _tokenizer: Any = PrivateAttr(default=None)
    _queries: "OrderedDict[str, tuple[str, dict[str, Any]]]" = PrivateAttr(default_factory=OrderedDict)
    _last_add: AddResult | None = PrivateAttr(default=None)

    def __init__(self, memos: Any = None, *, index: str | None = None, **data: Any) -> None:
        check_adapter_args("MemOSMemoryBlock", **{key: data.get(key) for key in ("user_id", "agent_id", "k")})
        if memos is not None or index is not None:  # a MemOS, a view, a MemCube, a folder or a store URL
            memos = resolve_memory(memos, adapter="MemOSMemoryBlock", index=index)
            path, principal = memos_spec(memos)
            data["memos_path"], data["principal"] = path, principal  # the object given wins over a saved path
            data["memos_index"] = memos_index(memos)
            if data.get("user_id") is None and memos.bound_user is not None and not data.get("single_user"):
                data["user_id"] = memos.bound_user  # saved with the config: a restored block keeps its user
        super().__init__(**data)
        self._memos = (track_memos(memos) if memos is not None
                       else resolve_memos(self.memos_path, self.principal, self.memos_index, self.cube))
        self._user = UserRule(self._memos, user_id=self.user_id, single_user=self.single_user,
                              adapter="MemOSMemoryBlock", how=USER_HOW).require()

    @classmethod
    def from_memos(cls, memos: Any, **kwargs: Any) -> "MemOSMemoryBlock":
        """A block on an open :class:`~memos_core.MemOS`."""
        return cls(memos=memos, **kwargs)

    @classmethod
    def from_defaults(cls, path: str = "./memos_data", *, embedder: Any = None, llm: Any = None,
                      principal: str = "local", index: str | None = None, **kwargs: Any) -> "MemOSMemoryBlock":
        """Open (or create) the MemOS at ``path`` (a folder, or a ``postgresql://`` store URL with its Chroma
        server as ``index``, default ``$MEMOS_INDEX``) and build a block on it."""
        check_place(path, "MemOSMemoryBlock.from_defaults")
        index = adapter_index(path, index, "MemOSMemoryBlock.from_defaults")
        extra = {} if index is None else {"index": index}
        return cls(memos=shared_memos(path, embedder=embedder, llm=llm, principal=principal, **extra), **kwargs)

    @classmethod
    def from_cube(cls, cube: Any, *, memos: MemOS | None = None, **kwargs: Any) -> "MemOSMemoryBlock":
        """A block on one cube (a :class:`~memos_core.MemCube` or its folder); see ``MemOSMemory.from_cube``."""
        memos, name = mount_cube(cube, memos)
        kwargs.setdefault("cube", name)
        kwargs.setdefault("search_cubes", [name])
        return cls(memos=memos, **kwargs)

    def __deepcopy__(self, memo: dict[int, Any]) -> "MemOSMemoryBlock":
        # The MemOS handle (open databases) is shared, the configuration copied.
        return type(self)(memos=self._memos, **copy.deepcopy(self.model_dump(), memo))

    @property
    def memos(self) -> MemOS:
        return self._memos

    @property
    def last_add_result(self) -> AddResult | None:
        return self._last_add

    def _tokens(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = get_tokenizer()
        return self._tokenizer

    def _context_kwargs(self, messages: list[ChatMessage], session_id: str | None,
                        budget: int) -> dict[str, Any]:
        return {"user_id": self._user, "agent_id": self.agent_id, "k": self.k, "token_budget": budget,
                "filter": exclude_filter(self.search_filter, messages, session_id, self.remember_roles),
                "cubes": self.search_cubes, "tokenizer": self._tokens(), "header": self.context_header}

    def _remember(self, content: str, query: str, kwargs: dict[str, Any]) -> None:
        self._queries[content] = (query, kwargs)
        self._queries.move_to_end(content)
        while len(self._queries) > 32:
            self._queries.popitem(last=False)

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        messages = list(messages or [])
        query = build_query(messages, None, self.retrieval_context_window)
        if query is None:
            return ""
        session_id = block_kwargs.get("session_id")
        kwargs = self._context_kwargs(messages, session_id if isinstance(session_id, str) else None,
                                      self.token_budget)
        content = (await self._memos.aget_context(query, **kwargs)).strip()
        if content:
            self._remember(content, query, kwargs)
        return content

    async def _aput(self, messages: list[ChatMessage]) -> None:
        messages = check_messages(messages, "MemOSMemoryBlock.aput")
        turns = messages_to_turns(messages, session_id=None, roles=self.remember_roles,
                                  speaker_names=self.speaker_names)
        if not turns:
            return
        # Memory stamps the session on each flushed message; one add per session keeps provenance exact.
        by_session: "OrderedDict[str | None, list[dict[str, Any]]]" = OrderedDict()
        for t in turns:
            by_session.setdefault(t.get("session_id"), []).append(t)
        for session_id, group in by_session.items():
            res = await self._memos.aadd(group, user_id=self._user, agent_id=self.agent_id,
                                         session_id=session_id, cube=self.cube, infer=self.infer)
            self._last_add = res
            if res.errors:
                log.warning("MemOS add reported problems: %s", "; ".join(res.errors))

    async def atruncate(self, content: str, tokens_to_truncate: int) -> str | None:
        """Re-render the same query with ``tokens_to_truncate`` fewer tokens (least relevant memories go
        first); ``None`` when nothing fits any more or the content is not one this block produced."""
        if not content or tokens_to_truncate <= 0:
            return content or None
        budget = len(self._tokens()(content)) - tokens_to_truncate
        remembered = self._queries.get(content)
        if remembered is None or budget < _MIN_BUDGET:
            return None
        query, kwargs = remembered
        smaller = (await self._memos.aget_context(query, **{**kwargs, "token_budget": budget})).strip()
        if smaller:
            self._remember(smaller, query, {**kwargs, "token_budget": budget})
        return smaller or None
