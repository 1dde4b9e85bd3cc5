"""MemOSToolSpec: tools that let an agent search, save, update and forget its own memories.

::

    from memos_llamaindex import MemOSToolSpec
    tools = MemOSToolSpec(mem, user_id="ann").to_tool_list()
    agent = FunctionAgent(tools=tools, llm=llm)

Every tool is scoped to the spec's ``user_id`` / ``agent_id``: an id outside that scope reads as unknown, so an
agent cannot touch another user's memories by guessing ids. A user is required (``user_id``, or a user-bound
view ``mem.for_user("ann")`` as ``memos``): without one the constructor raises :class:`memos_core.UserRequired`,
unless ``single_user=True`` (one fixed scope). ``forget_memory`` tombstones (restorable through
:meth:`MemOS.restore`) unless the spec was built with ``hard_forget=True`` (then :meth:`MemOS.forget` erases
the content). Failures raise the core's typed errors; agents turn them into error tool outputs the model sees.
"""

from __future__ import annotations

from typing import Any, Sequence

from llama_index.core.tools.tool_spec.base import BaseToolSpec

from memos_core import MemoryItem, NotFound, SearchHit
from memos_core.os import DEFAULT_K, AddResult, UserRule, memory_text, resolve_memory

from ._common import USER_HOW

__all__ = ["MemOSToolSpec"]


def _line(item: MemoryItem) -> str:
    when = item.event_time or item.created_at
    text = " ".join(memory_text(item).split())
    return f"[{item.id}] (v{item.version}, {when:%Y-%m-%d}) {text}"


class MemOSToolSpec(BaseToolSpec):
    """``search_memory``, ``save_memory``, ``update_memory`` and ``forget_memory`` as LlamaIndex tools
    (each with a native async variant). ``memos`` follows the constructor rule of every adapter (a MemOS, a view
    of one, a MemCube, a folder path, or a ``postgresql://`` store URL with ``index="http://host:port"``)."""

    spec_functions = [
        ("search_memory", "asearch_memory"),
        ("save_memory", "asave_memory"),
        ("update_memory", "aupdate_memory"),
        ("forget_memory", "aforget_memory"),
    ]

    def __init__(self, memos: Any, *, user_id: str | None = None, agent_id: str | None = None,
                 session_id: str | None = None, cube: str | None = None,
                 search_cubes: Sequence[str] | None = None, k: int = DEFAULT_K, hard_forget: bool = False,
                 single_user: bool = False, index: str | None = None) -> None:
        # a MemOS, a view, a MemCube, a folder, or a store URL with its Chroma server as index=
        memos = resolve_memory(memos, adapter="MemOSToolSpec", index=index)
        self.memos = memos
        self.user_id = UserRule(memos, user_id=user_id, single_user=single_user, adapter="MemOSToolSpec",
                                how=USER_HOW).require()
        self.single_user = single_user
        self.agent_id = agent_id
        self.session_id = session_id
        self.cube = cube
        self.search_cubes = list(search_cubes) if search_cubes is not None else None
        self.k = k
        self.hard_forget = hard_forget

    # ------------------------------------------------------------------ translation helpers
    def _search_kwargs(self, k: int | None) -> dict[str, Any]:
        return {"user_id": self.user_id, "agent_id": self.agent_id, "k": int(k or self.k),
                "cubes": self.search_cubes}

    def _add_kwargs(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "agent_id": self.agent_id, "session_id": self.session_id,
                "cube": self.cube, "metadata": {"written_by": "llamaindex_tool"}}

    @staticmethod
    def _found(query: str, hits: list[SearchHit]) -> str:
        if not hits:
            return f"No memories found for: {query}"
        return f"{len(hits)} memories (id, version, date, content):\n" + "\n".join(_line(h.item) for h in hits)

    @staticmethod
    def _saved(res: AddResult) -> str:
        parts = []
        if res.added:
            parts.append("saved " + ", ".join(f"[{m.id}] {m.content}" for m in res.added))
        if res.updated:
            parts.append("updated " + ", ".join(f"[{m.id}] (v{m.version}) {m.content}" for m in res.updated))
        if res.deleted:
            parts.append("removed " + ", ".join(res.deleted))
        if res.unchanged:
            parts.append("already remembered " + ", ".join(res.unchanged))
        if res.errors:
            parts.append("problems: " + "; ".join(res.errors))
        return "Memory " + "; ".join(parts) + "." if parts else "Nothing was stored."

    def _check_scope(self, item: MemoryItem) -> MemoryItem:
        if (item.scope.user_id != self.user_id
                or (self.agent_id is not None and item.scope.agent_id != self.agent_id)):
            raise NotFound(f"no memory with id {item.id!r}")
        return item

    # ------------------------------------------------------------------ tools (sync)
    def search_memory(self, query: str, k: int | None = None) -> str:
        """Search long-term memory for facts and past conversation relevant to `query`.

        Returns one line per memory: [memory id] (version, date) content. Use the id with update_memory or
        forget_memory.
        """
        return self._found(query, self.memos.search(query, **self._search_kwargs(k)))

    def save_memory(self, content: str) -> str:
        """Save something worth remembering later (a fact, a preference, a decision), stated in one sentence."""
        return self._saved(self.memos.add(content, **self._add_kwargs()))

    def update_memory(self, memory_id: str, content: str) -> str:
        """Replace the content of the memory `memory_id` (found with search_memory) with `content`.

        The previous version is kept in the memory's history.
        """
        self._check_scope(self.memos.get(memory_id, self.cube))
        item = self.memos.update(memory_id, content, self.cube, reason="updated by an agent tool")
        return f"Memory [{item.id}] updated (now version {item.version}): {item.content}"

    def forget_memory(self, memory_id: str) -> str:
        """Forget the memory `memory_id` (found with search_memory), e.g. when the user asks to or it is wrong."""
        self._check_scope(self.memos.get(memory_id, self.cube))
        if self.hard_forget:
            self.memos.forget(memory_id, self.cube, reason="forgotten by an agent tool")
            return f"Memory [{memory_id}] erased."
        self.memos.delete(memory_id, self.cube, reason="forgotten by an agent tool")
        return f"Memory [{memory_id}] forgotten."

    # ------------------------------------------------------------------ tools (async)
    async def asearch_memory(self, query: str, k: int | None = None) -> str:
        """Search long-term memory for facts and past conversation relevant to `query`."""
        return self._found(query, await self.memos.asearch(query, **self._search_kwargs(k)))

    async def asave_memory(self, content: str) -> str:
        """Save something worth remembering later (a fact, a preference, a decision), stated in one sentence."""
        return self._saved(await self.memos.aadd(content, **self._add_kwargs()))

    async def aupdate_memory(self, memory_id: str, content: str) -> str:
        """Replace the content of the memory `memory_id` with `content` (history keeps the old version)."""
        self._check_scope(await self.memos.aget(memory_id, self.cube))
        item = await self.memos.aupdate(memory_id, content, self.cube, reason="updated by an agent tool")
        return f"Memory [{item.id}] updated (now version {item.version}): {item.content}"

    async def aforget_memory(self, memory_id: str) -> str:
        """Forget the memory `memory_id`."""
        self._check_scope(await self.memos.aget(memory_id, self.cube))
        if self.hard_forget:
            import asyncio

            await asyncio.to_thread(self.memos.forget, memory_id, self.cube, reason="forgotten by an agent tool")
            return f"Memory [{memory_id}] erased."
        await self.memos.adelete(memory_id, self.cube, reason="forgotten by an agent tool")
        return f"Memory [{memory_id}] forgotten."
