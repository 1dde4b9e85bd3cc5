"""Shared translation helpers: LlamaIndex messages <-> MemOS turns, and MemOS handles for (de)serialisation.

Nothing here ranks, deduplicates or decides policy; that is :mod:`memos_core`'s job. This module only

* turns ``ChatMessage`` objects into the turn dicts :meth:`memos_core.MemOS.add` reads,
* builds the search query from what LlamaIndex hands a memory (``input`` or the latest messages),
* tags each turn with a digest of its message so a read can ask the core to leave out memories of messages
  that are already in the prompt (a core metadata filter), and
* keeps a per-process registry of open :class:`~memos_core.MemOS` objects by folder, so objects rebuilt from a
  dict (workflow ``Context`` stores, pickles) reuse the live instance instead of opening the folder twice.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from llama_index.core.base.llms.types import ChatMessage, TextBlock

from memos_core import MemOS, MemOSError, ValidationError
from memos_core.items import check_text
from memos_core.os import adapter_index
from memos_core.records.migrate import is_store_url
from memos_core.shared import shared_memos

__all__ = [
    "DIGEST_KEY",
    "message_text",
    "message_digest",
    "check_messages",
    "messages_to_turns",
    "build_query",
    "exclude_filter",
    "memos_spec",
    "memos_index",
    "resolve_memos",
    "register_memos",
    "track_memos",
]

#: Metadata key each memory written from a chat message carries: a digest of (session, role, text).
DIGEST_KEY = "llamaindex_message"

_LOCK = threading.Lock()
_PINNED: dict[tuple[str, str], MemOS] = {}  # registered by the user: kept alive
_LIVE: "weakref.WeakValueDictionary[tuple[str, str], MemOS]" = weakref.WeakValueDictionary()  # adapters' own


#: how to pass a user, for the :class:`memos_core.UserRequired` message of every LlamaIndex adapter
USER_HOW = "pass user_id=... (e.g. MemOSMemory.from_memos(mem, user_id=...))"


# ---------------------------------------------------------------------------------------------- messages
def message_text(message: ChatMessage) -> str:
    """The text of a message: its text blocks joined (images, audio, tool-call blocks carry no text)."""
    return "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock) and b.text)


def message_digest(session_id: str | None, role: str, text: str) -> str:
    key = "\x1f".join([session_id or "", role, text])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


def check_messages(messages: Any, what: str) -> list[ChatMessage]:
    """Accept a list of ``ChatMessage`` (what LlamaIndex's own memory accepts); raise ``TypeError`` otherwise.

    LlamaIndex's ``Memory`` fails on anything else with an ``AttributeError`` deep inside its store; we say
    what was wrong up front, before anything is written.
    """
    if isinstance(messages, (str, bytes, ChatMessage)) or not isinstance(messages, Sequence):
        raise TypeError(f"{what} expects a list of ChatMessage, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, ChatMessage):
            raise TypeError(
                f"{what}: item {i} is a {type(m).__name__}, not a ChatMessage; wrap text as "
                "ChatMessage(role='user', content=...)"
            )
        check_text(message_text(m), f"{what}: item {i} text")  # ValidationError for a lone surrogate
        try:  # the chat history stores each message as JSON: refuse one it cannot store before anything is written
            m.model_dump_json()
        except ValueError as exc:  # (pydantic's PydanticSerializationError, e.g. a lone surrogate in additional_kwargs)
            raise ValidationError(f"{what}: item {i} cannot be stored in the chat history as JSON: {exc}") from None
    return list(messages)


def _role(message: ChatMessage) -> str:
    return getattr(message.role, "value", str(message.role))


def messages_to_turns(
    messages: Sequence[ChatMessage],
    *,
    session_id: str | None,
    roles: Sequence[str],
    speaker_names: dict[str, str],
) -> list[dict[str, Any]]:
    """Turn dicts for :meth:`MemOS.add` (``role``, ``content``, ``metadata``) for the messages worth reading.

    Kept: messages whose role is in ``roles`` and that carry text. Dropped: system prompts, tool calls
    without text, tool results (unless ``roles`` asks for them), empty messages. A message's
    ``additional_kwargs["session_id"]`` (set by ``Memory`` when it flushes messages to blocks) wins over
    ``session_id``.
    """
    turns: list[dict[str, Any]] = []
    for m in messages:
        role = _role(m)
        if role not in roles:
            continue
        text = message_text(m)
        if not text.strip():
            continue
        sid = m.additional_kwargs.get("session_id") if isinstance(m.additional_kwargs, dict) else None
        sid = sid if isinstance(sid, str) and sid else session_id
        turns.append({
            "role": speaker_names.get(role, role),
            "content": text,
            "session_id": sid,
            "metadata": {DIGEST_KEY: message_digest(sid, role, text)},
        })
    return turns


def build_query(
    messages: Sequence[ChatMessage], input: str | ChatMessage | None, window: int
) -> str | None:
    """What to search for: ``input`` when given, else the text of the last ``window`` messages that have
    text (user or assistant). ``None`` when there is nothing to search for."""
    if isinstance(input, ChatMessage):
        input = message_text(input)
    if isinstance(input, str) and input.strip():
        return input.strip()
    texts: list[str] = []
    for m in reversed(messages):
        if _role(m) not in ("user", "assistant"):
            continue
        t = message_text(m).strip()
        if t:
            texts.append(t)
        if len(texts) >= max(1, window):
            break
    return "\n".join(reversed(texts)) or None


def exclude_filter(
    base: dict[str, Any] | None, messages: Sequence[ChatMessage], session_id: str | None, roles: Sequence[str]
) -> dict[str, Any] | None:
    """``base`` plus a core metadata filter leaving out memories read from ``messages`` (already in the prompt).

    Memories without the digest key (facts from other sources, other frameworks) always pass.
    """
    digests = []
    for m in messages:
        role = _role(m)
        if role not in roles:
            continue
        text = message_text(m)
        if text.strip():
            sid = m.additional_kwargs.get("session_id") if isinstance(m.additional_kwargs, dict) else None
            digests.append(message_digest(sid if isinstance(sid, str) and sid else session_id, role, text))
    if not digests:
        return dict(base) if base else None
    out = dict(base or {})
    meta = dict(out.get("metadata") or {})
    if DIGEST_KEY not in meta:
        meta[DIGEST_KEY] = {"$nin": sorted(set(digests))}
    out["metadata"] = meta
    return out


# ---------------------------------------------------------------------------------------------- handles
def memos_spec(mem: MemOS) -> tuple[str, str]:
    """``(where, principal)``: what a serialised adapter records to find its MemOS again. ``where`` is the
    absolute folder of a MemOS data folder, or the store URL of a MemOS opened by one (``postgresql://...``,
    without its password: a dict or pickle of a memory must not carry credentials; a new process connects with
    ``$PGPASSWORD`` / ``~/.pgpass``, or registers its own MemOS with :func:`register_memos`)."""
    url = _store_url(mem)
    if url is not None:
        return _without_password(url), mem.principal
    return str(Path(mem.path).resolve()), mem.principal


def _store_url(mem: MemOS) -> str | None:
    """The store URL of a MemOS opened by one, or of one over a single cube on a store (``MemOS.over_cube``)."""
    if mem.store_url is not None:
        return mem.store_url
    url = getattr(mem.cubes.get(mem.default_cube), "store_url", None)
    return url if isinstance(url, str) else None


def memos_index(mem: MemOS) -> str | None:
    """The vector index a MemOS opened by a store URL uses (a Chroma server URL, or ``"embedded"``); ``None`` for
    a data folder. Saved with a serialised adapter so that a new process opens the same index."""
    if _store_url(mem) is None:
        return None
    opts = getattr(mem, "_cube_options", None) or {}  # what MemOS(url, index=...) was opened with: no I/O
    url = (opts.get("index") or opts.get("chroma_url")) if mem.store_url is not None else None
    if not isinstance(url, str):
        cube = mem.cubes.get(mem.default_cube)
        url = getattr(getattr(cube, "index", None), "url", None)
    return url if isinstance(url, str) else "embedded"


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = userinfo.split(":", 1)[0] + "@" + host
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "password" for k, _ in pairs):
        query = urlencode([(k, v) for k, v in pairs if k != "password"])
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def register_memos(mem: MemOS) -> MemOS:
    """Make ``mem`` the instance adapters rebuilt from a dict (or a pickle) in this process attach to.

    Adapters register the MemOS they are built with automatically. Call this in a new process, before
    restoring a serialised memory or workflow context, when the MemOS needs a custom embedder or LLM: an
    unregistered folder is opened with the offline defaults.
    """
    if not isinstance(mem, MemOS):
        raise TypeError(f"register_memos expects a MemOS, got {type(mem).__name__}")
    if mem.bound_user is not None:
        raise ValidationError("register the MemOS itself, not a user-bound view: adapters keep their own user_id")
    with _LOCK:
        _PINNED[memos_spec(mem)] = mem
    return mem


def track_memos(mem: MemOS) -> MemOS:
    """Remember a MemOS an adapter was built with (weakly: it lives as long as something uses it). A user-bound
    view is not remembered: an adapter rebuilt from a dict finds the unbound MemOS and its saved ``user_id``."""
    if mem.bound_user is not None:
        return mem
    with _LOCK:
        key = memos_spec(mem)
        if _PINNED.get(key) is not mem:
            _LIVE[key] = mem
    return mem


def resolve_memos(path: str, principal: str, index: str | None = None, cube: str | None = None) -> MemOS:
    """The live registered MemOS for this folder (or store URL) and principal, or a newly opened one (offline
    defaults; a store URL with the saved vector ``index``, else ``$MEMOS_INDEX``, its cube mounted as ``cube``,
    the name the adapter writes to)."""
    url = is_store_url(path)
    key = (path if url else str(Path(path).resolve()), principal)
    with _LOCK:
        for registry in (_PINNED, _LIVE):
            mem = registry.get(key)
            if mem is not None and not getattr(mem, "_closed", False):
                return mem
        try:
            if url:
                mem = MemOS(path, principal=principal, index=adapter_index(path, index, "restoring a memory"),
                            **({"default_cube": cube} if cube else {}))
            else:  # the process's shared MemOS of that folder when another adapter opened it from a path
                mem = shared_memos(key[0], principal=principal)
        except MemOSError as exc:
            raise type(exc)(
                f"{exc} (reopening {key[0]} with the offline defaults; if it needs another embedder or LLM, "
                "open it yourself and call memos_llamaindex.register_memos(mem) before restoring)"
            ) from exc
        _LIVE[key] = mem
        return mem


def mount_cube(cube: Any, memos: MemOS | None = None) -> tuple[MemOS, str]:
    """``(memos, mount name)`` for a :class:`~memos_core.MemCube` or a cube folder.

    With ``memos`` the cube is mounted there unless it already is. Without, the cube's parent folder is opened
    as a MemOS data folder whose default cube is this one (a MemCube object given is mounted as is, so the
    caller's object stays the one in use).
    """
    from memos_core import MemCube

    if memos is not None:
        if isinstance(cube, MemCube):
            for name, c in memos.cubes.items():
                if c is cube or c.cube_id == cube.cube_id:
                    return memos, name
            return memos, _mounted_name(memos, memos.mount(cube))
        folder = Path(cube).resolve()
        for name, c in memos.cubes.items():
            if Path(c.path).resolve() == folder:
                return memos, name
        return memos, _mounted_name(memos, memos.mount(folder))
    mem = MemOS.over_cube(cube)  # that cube only; a MemCube object stays the caller's
    track_memos(mem)
    return mem, mem.default_cube


def _mounted_name(memos: MemOS, cube: Any) -> str:
    for name, c in memos.cubes.items():
        if c is cube:
            return name
    raise RuntimeError("cube was mounted but is not listed")  # pragma: no cover
