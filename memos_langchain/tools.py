"""Memory tools for agents: search, save, update and forget, as LangChain tools.

``create_memory_tools(mem)`` returns ``StructuredTool`` objects with typed argument schemas. Each call acts for
one user: the user of a user-bound view (``create_memory_tools(mem.for_user("ann"))``), else the ``user_id``
given here, else the one in the run (``context.user_id`` or ``config["configurable"]["user_id"]`` /
``["langgraph_user_id"]``, read through LangGraph's ``ToolRuntime``). With none of these a call raises
:class:`memos_core.UserRequired` (a configuration error the app must fix, so it is not handed to the model as a
tool error), unless the tools were made with ``single_user=True`` (one fixed scope).

Governance: the tools never reach outside their scope (an id of another user's memory reads as "not found"),
every write goes through the ``MemOS`` facade as its principal (so the cube's access control and audit apply),
updates make new versions, and forgetting is a recoverable tombstone unless ``forget_mode="erase"``. Failures
come back to the model as tool errors it can read, not as exceptions that end the run.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, Optional, Sequence

from langchain_core.tools import BaseTool, InjectedToolArg, StructuredTool, ToolException
from pydantic import BaseModel, ConfigDict, Field

from memos_core import LifecycleState, MemoryKind, SourceKind
from memos_core.errors import MemOSError, NotFound, ValidationError

from memos_core.os import UserRule, memory_text, resolve_memory

from ._common import RUN_USER_HOW, check_require_user, principal_of, resolve_cube, run_sync, scope_from_run

__all__ = ["create_memory_tools", "MemoryToolkit"]

_EXTRACTOR = "memos_langchain.tools/1"
_KINDS = Literal["fact", "preference", "episode", "procedure", "profile", "note"]
# LangGraph injects its ToolRuntime (context, config, store) into a tool argument named ``runtime``; typed
# ``Any`` here so pydantic does not try to serialise the runtime's generic fields.
_Runtime = Annotated[Optional[Any], InjectedToolArg]


class _Args(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    runtime: _Runtime = None


class SearchMemoryArgs(_Args):
    query: str = Field(description="What to look for, in natural language (e.g. 'user's favourite colour').")
    k: int = Field(default=5, ge=1, le=50, description="How many memories to return at most.")


class SaveMemoryArgs(_Args):
    content: str = Field(description="The memory to keep, as one self-contained statement "
                                     "(e.g. 'The user's favourite colour is teal.').")
    kind: _KINDS = Field(default="fact", description="fact, preference, episode, procedure, profile or note.")


class UpdateMemoryArgs(_Args):
    memory_id: str = Field(description="The id of the memory to change, as shown by search_memory.")
    content: str = Field(description="The corrected memory, as one self-contained statement.")
    reason: str | None = Field(default=None, description="Why it changes (kept in the memory's history).")


class ForgetMemoryArgs(_Args):
    memory_id: str = Field(description="The id of the memory to forget, as shown by search_memory.")
    reason: str | None = Field(default=None, description="Why it should be forgotten (kept in the audit log).")


class MemoryToolkit:
    """The memory tools bound to one ``MemOS`` (and optionally one user / agent / cube). ``memory`` follows the
    constructor rule of every adapter: a MemOS, a view of one, a MemCube, a folder path or a ``postgresql://``
    store URL (its Chroma server as ``index="http://host:port"``, else ``$MEMOS_INDEX``)."""

    def __init__(self, memory: Any, *, user_id: str | None = None, agent_id: str | None = None,
                 cube: str | None = None, forget_mode: Literal["delete", "erase"] = "delete",
                 require_user: bool | None = None, single_user: bool = False, index: str | None = None) -> None:
        memory = resolve_memory(memory, adapter="the memory tools", index=index)
        check_require_user(require_user, "memory tools")
        self._rule = UserRule(memory, user_id=user_id, single_user=single_user, adapter="the memory tools",
                              how=RUN_USER_HOW)
        if forget_mode not in ("delete", "erase"):
            raise ValidationError("forget_mode must be 'delete' (tombstone) or 'erase' (forget for good)")
        self.memory = memory
        self.user_id = self._rule.fixed if not single_user else None
        self.single_user = single_user
        self.agent_id = agent_id
        self.cube = cube
        self.forget_mode = forget_mode

    # ------------------------------------------------------------------ scope
    def _user(self, runtime: Any) -> str:
        found = None
        if runtime is not None:
            found = scope_from_run(getattr(runtime, "context", None), getattr(runtime, "config", None))
        return self._rule.user(found)  # UserRequired / PermissionDenied propagate: the app must fix them

    def _owned(self, memory_id: str, user: str) -> Any:
        """The memory if it exists, is live and lies in this scope; otherwise 'not found' (never 'forbidden':
        the answer must not reveal other users' memories)."""
        try:
            item = self.memory.get(memory_id, self.cube)
        except NotFound:
            item = None
        if item is None or item.scope.user_id != user or \
                (self.agent_id is not None and item.scope.agent_id != self.agent_id):
            raise ToolException(f"no memory with id {memory_id!r}; search first to find the right id")
        return item

    # ------------------------------------------------------------------ operations
    def search(self, query: str, k: int = 5, runtime: Any = None) -> str:
        user = self._user(runtime)
        try:
            hits = self.memory.search(query, user_id=user, agent_id=self.agent_id, k=k)
        except MemOSError as exc:
            raise ToolException(str(exc)) from exc
        if not hits:
            return "No memories found."
        lines = []
        for h in hits:
            it = h.item
            when = (it.event_time or it.created_at).strftime("%Y-%m-%d")
            lines.append(f"[{it.id}] ({when}, {it.kind.value}) {' '.join(memory_text(it).split())}")
        return "\n".join(lines)

    def save(self, content: str, kind: str = "fact", runtime: Any = None) -> str:
        user = self._user(runtime)
        text = " ".join(content.split())
        if not text:
            raise ToolException("content is empty")
        # A stable id per (scope, text): saving the same memory twice (e.g. a retried tool call) writes once.
        key = "\x1f".join([user, self.agent_id or "", text.lower()])
        item_id = "tool-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        cube = resolve_cube(self.memory, self.cube)
        actor = principal_of(self.memory)
        kw: dict[str, Any] = {} if actor is None else {"actor": actor}
        try:
            existing = cube.lookup(item_id, **kw)
            if existing is not None and existing.state != LifecycleState.PURGED:
                if existing.state == LifecycleState.DELETED:
                    cube.restore(item_id, reason="saved again by an agent", **kw)
                return f"Already remembered (id {item_id})."
            cube.add(text, kind=MemoryKind(kind), user_id=user, agent_id=self.agent_id, id=item_id,
                     provenance={"source": SourceKind.TOOL, "extractor": _EXTRACTOR}, **kw)
        except MemOSError as exc:
            raise ToolException(str(exc)) from exc
        return f"Saved memory {item_id}."

    def update(self, memory_id: str, content: str, reason: str | None = None, runtime: Any = None) -> str:
        user = self._user(runtime)
        self._owned(memory_id, user)
        try:
            item = self.memory.update(memory_id, content, self.cube, reason=reason or "updated by an agent")
        except MemOSError as exc:
            raise ToolException(str(exc)) from exc
        return f"Updated memory {memory_id} (now version {item.version})."

    def forget(self, memory_id: str, reason: str | None = None, runtime: Any = None) -> str:
        user = self._user(runtime)
        self._owned(memory_id, user)
        why = reason or "forgotten by an agent"
        try:
            if self.forget_mode == "erase":
                self.memory.forget(memory_id, self.cube, reason=why)
                return f"Erased memory {memory_id}."
            self.memory.delete(memory_id, self.cube, reason=why)
        except MemOSError as exc:
            raise ToolException(str(exc)) from exc
        return f"Forgot memory {memory_id} (it can be restored by an administrator)."

    # ------------------------------------------------------------------ tools
    def tools(self, include: Sequence[str] = ("search", "save", "update", "forget"), *,
              prefix: str = "") -> list[BaseTool]:
        specs = {
            "search": (self.search, SearchMemoryArgs, "search_memory",
                       "Search long-term memory about the user and past conversations. Use it before answering "
                       "questions that may depend on what the user said earlier (preferences, facts, plans). "
                       "Returns one memory per line as '[id] (date, kind) content'."),
            "save": (self.save, SaveMemoryArgs, "save_memory",
                     "Save something worth remembering across conversations: a fact about the user, a preference, "
                     "a decision. Write one self-contained statement. Saving the same statement twice is harmless."),
            "update": (self.update, UpdateMemoryArgs, "update_memory",
                       "Correct a memory that is outdated or wrong, by its id (from search_memory). The old "
                       "version stays in the memory's history."),
            "forget": (self.forget, ForgetMemoryArgs, "forget_memory",
                       "Forget a memory by its id (from search_memory) when the user asks you to, or when it is "
                       "wrong and should not be used again."),
        }
        unknown = set(include) - set(specs)
        if unknown:
            raise ValidationError(f"unknown memory tool(s) {sorted(unknown)}; choose from {sorted(specs)}")
        out: list[BaseTool] = []
        for name in include:
            fn, schema, tool_name, description = specs[name]
            out.append(StructuredTool.from_function(
                func=fn, coroutine=_async(fn), name=prefix + tool_name, description=description,
                args_schema=schema, handle_tool_error=True))
        return out


def _async(fn: Any) -> Any:
    async def run(**kwargs: Any) -> Any:
        return await run_sync(fn, **kwargs)

    return run


def create_memory_tools(memory: Any, *, user_id: str | None = None, agent_id: str | None = None,
                        cube: str | None = None, include: Sequence[str] = ("search", "save", "update", "forget"),
                        forget_mode: Literal["delete", "erase"] = "delete", require_user: bool | None = None,
                        single_user: bool = False, prefix: str = "", index: str | None = None) -> list[BaseTool]:
    """Memory tools for an agent: ``search_memory``, ``save_memory``, ``update_memory``, ``forget_memory``.

    ``include`` picks a subset (e.g. ``("search", "save")`` for an agent that may not change memories);
    ``forget_mode="erase"`` makes forgetting irreversible (the principal needs the *administer* right);
    without a user (``user_id``, a user-bound view, or the run's context/config) every call raises
    :class:`memos_core.UserRequired`, unless ``single_user=True`` (one fixed scope); ``require_user=True`` is
    accepted and is the default; ``prefix`` renames the tools; ``index`` is a store URL's Chroma server.
    """
    return MemoryToolkit(memory, user_id=user_id, agent_id=agent_id, cube=cube, forget_mode=forget_mode,
                         require_user=require_user, single_user=single_user, index=index).tools(include, prefix=prefix)
