"""MemOSMiddleware: long-term memory for ``langchain.agents.create_agent``.

* **Before every model call** it puts the memories relevant to the latest user message into the system
  message (``MemOS.get_context`` for the current user). The block is added to the request only, never to the
  agent's state, so it does not pile up in the thread.
* **After the agent turn** it hands the turn's new human and AI messages to the MemReader (``MemOS.add``), so
  what the user said is remembered in later threads.

Who "the current user" is (fail closed, see :class:`memos_core.os.UserRule`): the user of a user-bound view
(``MemOSMiddleware(mem.for_user("ann"))``; a run naming another user is refused), else ``user_id`` given here,
else ``context.user_id`` (``create_agent(..., context_schema=...)``), else ``config["configurable"]["user_id"]``
or LangMem's ``langgraph_user_id``. With none of these a model call or a save raises
:class:`memos_core.UserRequired` (nothing is read or written across users), unless the app opted in to one
fixed scope with ``single_user=True``. The thread id becomes the memories' ``session_id`` (provenance); recall
is not limited to the thread.

No double writes: the ids of messages already handed to the reader are kept in the agent state
(``memos_saved_ids``, private), and each write carries a key derived from its message ids
(``metadata["lc_turn_key"]``) that is looked up first, so a retried ``after_agent`` (node retry, resumed
run) does not write the same turn twice.
"""

from __future__ import annotations

import hashlib
from typing import Any, Awaitable, Callable, Sequence

from langchain.agents.middleware import AgentMiddleware, AgentState, ModelRequest, ModelResponse
from langchain.agents.middleware.types import PrivateStateAttr
from langchain_core.messages import BaseMessage, SystemMessage
from langgraph.runtime import Runtime
from typing_extensions import Annotated, NotRequired

from memos_core.log import get_logger
from memos_core.errors import MemOSError, ValidationError

from memos_core.adapter_args import check_adapter_args
from memos_core.os import DEFAULT_K, UserRule, resolve_memory

from ._common import (
    RUN_USER_HOW,
    check_require_user,
    message_text,
    principal_of,
    resolve_cube,
    run_sync,
    scope_from_run,
)
from .history import turns_for_reader

__all__ = ["MemOSMiddleware", "MemOSState"]

log = get_logger(__name__)

DEFAULT_TEMPLATE = ("{context}\n"
                    "(Long-term memories from earlier conversations; use them when relevant, and prefer what the "
                    "user says now when they disagree.)")


class MemOSState(AgentState):
    """Agent state with the ids of the messages already handed to the MemReader (private to the middleware)."""

    memos_saved_ids: NotRequired[Annotated[list[str], PrivateStateAttr]]


def _config() -> dict[str, Any]:
    try:
        from langgraph.config import get_config

        return dict(get_config())
    except RuntimeError:  # outside a runnable context
        return {}


class MemOSMiddleware(AgentMiddleware):
    """Inject relevant memories before model calls; save each turn's messages after the agent finishes.

    Parameters
    ----------
    memory:
        A ``MemOS``, a view of one (``mem.for_user(...)``, ``mem.as_principal(...)``), a ``MemCube`` or a folder
        path (the constructor rule of every adapter: :func:`memos_core.os.resolve_memory`), or a
        ``postgresql://`` store URL.
    index:
        With a store URL only: its Chroma server, ``"http://host:port"`` (default ``$MEMOS_INDEX``).
    user_id, agent_id:
        Fixed scope. Without ``user_id`` the run's context/config is asked (see the module docs); when none is
        found, the call raises :class:`memos_core.UserRequired`.
    single_user:
        ``True``: a single-user app; every read and write goes to one fixed scope
        (:data:`memos_core.os.SINGLE_USER`) and user ids in runs are not used.
    require_user:
        Accepted for compatibility: requiring a user is the default. ``False`` is refused; say
        ``single_user=True`` instead.
    cube:
        The cube new memories are written to (default: the facade's default cube). Reads span every cube the
        principal may read, or ``search_cubes``.
    k, token_budget:
        How many memories, and how many tokens of them at most, go into the prompt.
    inject, save:
        Turn either half off.
    infer:
        Passed to ``MemOS.add`` (``None``: the LLM reader when the facade has an LLM, else offline).
    template:
        How the memory block is added to the system message (``{context}`` is replaced).
    roles:
        Which messages are remembered: ``"human"`` and/or ``"ai"``.
    """

    state_schema = MemOSState  # type: ignore[assignment]

    def __init__(self, memory: Any, *, user_id: str | None = None, agent_id: str | None = None,
                 cube: str | None = None, search_cubes: Sequence[str] | None = None, k: int = DEFAULT_K,
                 token_budget: int = 800, inject: bool = True, save: bool = True, infer: bool | None = None,
                 template: str = DEFAULT_TEMPLATE, roles: Sequence[str] = ("human", "ai"),
                 ai_name: str = "assistant", tools: Sequence[Any] = (), single_user: bool = False,
                 require_user: bool | None = None, index: str | None = None) -> None:
        super().__init__()
        check_adapter_args("MemOSMiddleware", user_id=user_id, agent_id=agent_id, k=k)
        memory = resolve_memory(memory, adapter="MemOSMiddleware", index=index)
        check_require_user(require_user, "MemOSMiddleware")
        self._rule = UserRule(memory, user_id=user_id, single_user=single_user, adapter="MemOSMiddleware",
                              how=RUN_USER_HOW)
        if "{context}" not in template:
            raise ValidationError("template must contain '{context}'")
        bad = set(roles) - {"human", "ai"}
        if bad:
            raise ValidationError(f"roles may be 'human' and/or 'ai', not {sorted(bad)}")
        self.memory = memory
        self.user_id = self._rule.fixed if not single_user else None
        self.single_user = single_user
        self.agent_id = agent_id
        self.cube = cube
        self.search_cubes = list(search_cubes) if search_cubes is not None else None
        self.k = k
        self.token_budget = token_budget
        self.inject = inject
        self.save = save
        self.infer = infer
        self.template = template
        self.roles = tuple(roles)
        self.ai_name = ai_name
        self.tools = list(tools)

    # ------------------------------------------------------------------ who / what
    def _user(self, runtime: Any) -> str:
        """The user of this run (raises :class:`UserRequired` / :class:`PermissionDenied`, see the module docs)."""
        return self._rule.user(scope_from_run(getattr(runtime, "context", None), _config()))

    @staticmethod
    def _thread(runtime: Any) -> str | None:
        info = getattr(runtime, "execution_info", None)
        thread = getattr(info, "thread_id", None)
        if thread is None:
            thread = (_config().get("configurable") or {}).get("thread_id")
        return None if thread is None else str(thread)

    @staticmethod
    def _query(messages: Sequence[BaseMessage]) -> str | None:
        for m in reversed(messages):
            if m.type == "human":
                text = message_text(m).strip()
                return text or None
        return None

    def _context_kwargs(self, user: str) -> dict[str, Any]:
        kw: dict[str, Any] = {"user_id": user, "agent_id": self.agent_id, "k": self.k,
                              "token_budget": self.token_budget}
        if self.search_cubes is not None:
            kw["cubes"] = self.search_cubes
        return kw

    def _with_context(self, request: ModelRequest, context: str) -> ModelRequest:
        if not context.strip():
            return request
        block = self.template.format(context=context.strip())
        old = request.system_message
        if old is None:
            return request.override(system_message=SystemMessage(content=block))
        if isinstance(old.content, str):
            content: Any = f"{old.content}\n\n{block}" if old.content else block
        else:
            content = [*old.content, {"type": "text", "text": "\n\n" + block}]
        return request.override(system_message=SystemMessage(content=content))

    # ------------------------------------------------------------------ before the model: inject
    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        if self.inject:
            query = self._query(request.messages)
            if query:
                kw = self._context_kwargs(self._user(request.runtime))  # no user: raise, never read across users
                try:
                    ctx = self.memory.get_context(query, **kw)
                except MemOSError as exc:  # memory trouble must not take the agent down
                    log.warning("memory context unavailable: %s", exc)
                    ctx = ""
                request = self._with_context(request, ctx)
        return handler(request)

    async def awrap_model_call(self, request: ModelRequest,
                               handler: Callable[[ModelRequest], Awaitable[ModelResponse]]) -> Any:
        if self.inject:
            query = self._query(request.messages)
            if query:
                kw = self._context_kwargs(self._user(request.runtime))
                try:
                    aget = getattr(self.memory, "aget_context", None)
                    ctx = await aget(query, **kw) if aget else await run_sync(self.memory.get_context, query, **kw)
                except MemOSError as exc:
                    log.warning("memory context unavailable: %s", exc)
                    ctx = ""
                request = self._with_context(request, ctx)
        return await handler(request)

    # ------------------------------------------------------------------ after the agent: save
    def _pending(self, state: dict[str, Any], runtime: Any) -> tuple[list[str], dict[str, Any]] | None:
        if not self.save:
            return None
        saved = set(state.get("memos_saved_ids") or [])
        new = [m for m in state.get("messages", []) if m.id and m.id not in saved and m.type in self.roles]
        if not new:
            return [], {}
        user = self._user(runtime)  # no user: raise, never write unscoped
        turns = turns_for_reader(new, user_name="user" if self.single_user else user, ai_name=self.ai_name)
        if not turns:
            return [m.id for m in new], {}
        key = hashlib.sha256("\x1f".join(t["id"] for t in turns).encode("utf-8")).hexdigest()[:32]
        kwargs = {"user_id": user, "agent_id": self.agent_id, "session_id": self._thread(runtime),
                  "cube": self.cube, "infer": self.infer, "metadata": {"lc_turn_key": key},
                  "messages": turns}
        return [m.id for m in new], kwargs

    def _already_written(self, key: str, user: str) -> bool:
        cube = resolve_cube(self.memory, self.cube)
        actor = principal_of(self.memory)
        kw: dict[str, Any] = {} if actor is None else {"actor": actor}
        states = ["generated", "activated", "archived", "merged", "frozen"]
        return bool(cube.list({"metadata": {"lc_turn_key": key}, "states": states, "user_id": user}, limit=1,
                              **kw))

    def _write(self, kwargs: dict[str, Any]) -> None:
        if self._already_written(kwargs["metadata"]["lc_turn_key"], kwargs["user_id"]):
            return
        messages = kwargs.pop("messages")
        res = self.memory.add(messages, **kwargs)
        if getattr(res, "errors", None):
            log.warning("MemReader reported problems: %s", "; ".join(res.errors))

    def after_agent(self, state: dict[str, Any], runtime: Runtime) -> dict[str, Any] | None:  # type: ignore[override]
        pending = self._pending(state, runtime)
        if pending is None or not pending[0]:
            return None
        ids, kwargs = pending
        if kwargs:
            self._write(kwargs)
        return {"memos_saved_ids": [*(state.get("memos_saved_ids") or []), *ids]}

    async def aafter_agent(self, state: dict[str, Any], runtime: Runtime) -> dict[str, Any] | None:  # type: ignore[override]
        pending = self._pending(state, runtime)
        if pending is None or not pending[0]:
            return None
        ids, kwargs = pending
        if kwargs:
            if await run_sync(self._already_written, kwargs["metadata"]["lc_turn_key"], kwargs["user_id"]):
                pass
            else:
                messages = kwargs.pop("messages")
                aadd = getattr(self.memory, "aadd", None)
                res = await aadd(messages, **kwargs) if aadd else await run_sync(self.memory.add, messages, **kwargs)
                if getattr(res, "errors", None):
                    log.warning("MemReader reported problems: %s", "; ".join(res.errors))
        return {"memos_saved_ids": [*(state.get("memos_saved_ids") or []), *ids]}
