"""Small shared helpers of the LangChain adapters: finding the cube, reading messages, finding the user.

Private: nothing here is part of the public API.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from typing import Any, Callable, Mapping, TypeVar

from memos_core import MemCube
from memos_core.errors import Conflict, NotFound, ValidationError
from memos_core.items import LifecycleState
from memos_core.os import resolve_memory

T = TypeVar("T")

DEFAULT_CUBE = "default"


def resolve_cube(memory: Any, cube: str | None = None, *, embedder: Any = None, adapter: str = "this adapter",
                 index: str | None = None) -> MemCube:
    """The :class:`MemCube` an adapter works on, by the one constructor rule of every adapter
    (:func:`memos_core.os.resolve_memory`): a cube as is; a ``MemOS`` or a view of one: ``cube`` names one of its
    cubes (default: its default cube); a folder path: a cube folder is that cube, any other folder a MemOS data
    folder (opened or created with ``embedder``) whose default cube (or ``cube``) is used; a store URL with its
    Chroma server ``index`` (checked by ``resolve_memory``, which refuses ``index`` with anything else).

    An adapter that keeps only the cube uses :func:`resolve_cube_memos` and keeps the MemOS too: a folder or URL
    opens the process's shared MemOS (:mod:`memos_core.shared`), which closes its cubes once nothing holds it."""
    return resolve_cube_memos(memory, cube, embedder=embedder, adapter=adapter, index=index)[0]


def resolve_cube_memos(memory: Any, cube: str | None = None, *, embedder: Any = None,
                       adapter: str = "this adapter", index: str | None = None) -> tuple[MemCube, Any]:
    """:func:`resolve_cube` and the MemOS the cube was found in (``None`` for a MemCube given as is)."""
    if isinstance(memory, MemCube) and index is None:
        if cube is not None and cube not in (memory.name, memory.cube_id):
            raise ValidationError(f"cube={cube!r} was given with a MemCube named {memory.name!r}")
        return memory, None
    mem = resolve_memory(memory, embedder=embedder, adapter=adapter, index=index)
    cubes = mem.cubes
    name = cube or mem.default_cube or DEFAULT_CUBE
    if name in cubes:
        return cubes[name], mem
    for c in cubes.values():
        if c.cube_id == name:
            return c, mem
    raise NotFound(f"no cube named {name!r} is mounted; mounted: {sorted(cubes)}")


def principal_of(memory: Any) -> str | None:
    """The principal a ``MemOS`` facade acts as (``None`` for a bare cube: the cube's own actor)."""
    principal = getattr(memory, "principal", None)
    return principal if isinstance(principal, str) else None


async def run_sync(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run blocking core work in the default executor so the event loop stays free."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


def message_text(message: Any) -> str:
    """The plain text of a LangChain message (text blocks joined; tool calls and images dropped)."""
    text = getattr(message, "text", None)
    if isinstance(text, str):  # langchain-core >= 1.0: a property (a str that is also callable)
        return str(text)
    if callable(text):  # older langchain-core: a method
        text = text()
        if isinstance(text, str):
            return text
    content = getattr(message, "content", "")
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


_USER_KEYS = ("user_id", "langgraph_user_id")


def lookup(source: Any, keys: tuple[str, ...]) -> str | None:
    """The first of ``keys`` found on a mapping or as an attribute of an object (e.g. a context dataclass)."""
    if source is None:
        return None
    for key in keys:
        val = source.get(key) if isinstance(source, Mapping) else getattr(source, key, None)
        if isinstance(val, str) and val:
            return val
    return None


RUN_USER_HOW = ("pass user_id=... here, or name the user in the run: context={'user_id': ...} (create_agent(..., "
                "context_schema=...)) or config={'configurable': {'user_id': ...}} (LangMem's 'langgraph_user_id' "
                "works too)")


def check_require_user(require_user: bool | None, adapter: str) -> None:
    """``require_user`` is kept for compatibility: requiring a user is the default, ``False`` is refused."""
    if require_user is False:
        raise ValidationError(f"{adapter}: require_user=False is no longer a switch (adapters always require a "
                              "user); for an app with one user, pass single_user=True (one fixed scope)")
    if require_user not in (None, True):
        raise ValidationError(f"{adapter}: require_user must be True (the default) or left out")


def scope_from_run(context: Any = None, config: Mapping[str, Any] | None = None,
                   keys: tuple[str, ...] = _USER_KEYS) -> str | None:
    """Find an id (by default the user id) in the run's context, then in ``config["configurable"]``
    (``user_id`` or LangMem's ``langgraph_user_id``)."""
    found = lookup(context, keys)
    if found is None and config is not None:
        found = lookup(config.get("configurable") or {}, keys)
    return found


def delete_if_live(cube: MemCube, item_id: str, reason: str, as_: Mapping[str, Any]) -> None:
    """Tombstone a memory, or nothing if it is already gone: when another worker (its own handle on the cube)
    deleted it between our read and our delete, the core's ``Conflict`` ("already deleted") is not an error for
    an operation whose outcome is "these are deleted"; any other conflict is raised."""
    try:
        cube.delete(item_id, reason=reason, **as_)
    except Conflict:
        now = cube.lookup(item_id, **as_)
        if now is not None and now.state not in (LifecycleState.DELETED, LifecycleState.PURGED):
            raise


#: how often a write that collided with another writer is tried again on a fresh read (:func:`write_retrying`)
WRITE_RETRIES = 8


def write_retrying(existing: Any, read: Callable[[], Any], write: Callable[[Any], None]) -> None:
    """``write(existing)``; when another writer (a worker with its own handle on the cube) changed the memory
    since it was read and the core raised :class:`Conflict`, ``read()`` it again and write again: an upsert's
    last write wins, as in LangGraph's database stores. A conflict about the memory itself (e.g. frozen under
    legal hold: nothing changed since the read), or one that persists, is raised."""
    for attempt in range(WRITE_RETRIES):
        try:
            write(existing)
            return
        except Conflict:
            fresh = read()
            seen = None if existing is None else (existing.version, existing.state, existing.updated_at)
            if attempt + 1 == WRITE_RETRIES or fresh is None or (fresh.version, fresh.state, fresh.updated_at) == seen:
                raise
            existing = fresh
            time.sleep(random.uniform(0.0, 0.005 * (attempt + 1)))  # let the other writer finish
