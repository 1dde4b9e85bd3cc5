"""MemOS: the one object applications start from.

::

    from memos_core import MemOS

    with MemOS("./memos_data") as mem:                      # offline: no LLM, no API key
        mem.add([{"role": "Ann", "content": "I moved to Lisbon yesterday", "id": "t1"}],
                user_id="ann", timestamp="2023-05-08")
        print(mem.get_context("Where does Ann live?", user_id="ann"))

What it does:

* **Cubes.** ``path`` holds one folder per cube. Every cube folder found there is mounted on start, and a cube
  named ``"default"`` is created when missing; :meth:`MemOS.mount` adds cubes from elsewhere (a user's own, a
  shared one). Writes go to one cube (``cube=``, default ``"default"``); reads span every mounted cube the
  caller may read.
* **add** turns messages into memories with a MemReader: offline (every turn an episode, the default) or, when
  an ``llm`` is configured, LLM mode (facts with ADD / UPDATE / DELETE / NOOP, see
  :mod:`memos_core.reader.llm`). It returns an :class:`AddResult` that says exactly what was stored and what
  failed; it never reports success with nothing stored.
* **search** merges the hits of every cube by their fused score, drops duplicates (same content; for episodes
  the same content at the same time), and orders ties stably (per-cube rank, then mount order, then id).
* **get_context** returns a prompt-ready block (see :meth:`MemOS.get_context`).
* Every cube call carries ``actor=principal`` where the cube accepts it, so the cube's governance decides
  what this caller may read or write. Cubes that deny a read are skipped in cross-cube reads (and raise when
  named explicitly).
* Principals act on cubes; user scopes say whose memory an item is. ``mem.for_user("ann")`` is a user-bound
  view: every read and write is Ann's, another ``user_id`` is refused (:meth:`MemOS.for_user`). The adapters
  use :class:`UserRule` (fail closed: no user, no read or write) and :func:`resolve_memory` (what they accept).
* ``a*`` methods are native async: blocking store work runs in a worker thread (``asyncio.to_thread``) and an
  async-capable model is awaited, so the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import os
import re
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

from .log import get_logger
from .cube import MANIFEST, MemCube, SearchMode
from .cube import _workdir as _store_workdir
from .records.migrate import is_store_url
from .embedding import resolve_embedder
from .errors import Conflict, CubeClosed, MemOSError, NotFound, PermissionDenied, UserRequired, ValidationError
from .items import (
    LifecycleState,
    MemoryItem,
    MemoryKind,
    MemoryVersion,
    Scope,
    SearchFilter,
    SearchHit,
    to_utc,
    utcnow,
)
from .reader.dedup import DEFAULT_NEAR_THRESHOLD, merge_provenance, normalize, plan_merges
from .reader.llm import AddResult, LLMReader
from .reader.offline import OfflineReader, Turn, coerce_turns

__all__ = ["MemOS", "AddResult", "DEFAULT_CUBE", "SINGLE_USER", "UserRule", "bound_user", "resolve_memory",
           "MemoryArgumentError", "hit_metadata", "DEFAULT_K", "value_text", "memory_text"]

log = get_logger(__name__)

DEFAULT_CUBE = "default"
#: how many memories the adapters' retrievers, memory blocks, middleware and tools return by default
DEFAULT_K = 5
_CUBE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_FACT_KINDS = [k for k in MemoryKind if k not in (MemoryKind.EPISODE, MemoryKind.DOCUMENT)]
_RECENT_MAX = 1024
CONTEXT_HEADER = "## Relevant memories"


@functools.lru_cache(maxsize=256)
def _takes_actor(cls: type, name: str) -> bool:
    try:
        return "actor" in inspect.signature(getattr(cls, name)).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _approx_tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _turn_id(t: Turn) -> str:
    """A content-derived id for a turn that has none: re-adding the same message finds the same id."""
    key = "\x1f".join([t.session_id or "", t.speaker or "", t.time.isoformat() if t.time else "", t.text])
    return "turn-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- adapters' user rule
SINGLE_USER = "local"
"""The one fixed user scope of adapters built with ``single_user=True``."""


def bound_user(memory: Any) -> str | None:
    """The user a user-bound view (:meth:`MemOS.for_user`) acts for; ``None`` for anything else."""
    user = getattr(memory, "bound_user", None)
    return user if isinstance(user, str) else None


class UserRule:
    """Whose memory an adapter reads and writes: one rule for every adapter of both frameworks (fail closed).

    An adapter builds one at construction from what it was given, then asks :meth:`user` on every read and
    write, passing what the run says (a LangGraph context or config, a store namespace label, a per-call
    argument), if anything:

    =================================  ====================================================================
    given at construction              the user of a call
    =================================  ====================================================================
    ``single_user=True``               always :data:`SINGLE_USER` (one fixed scope; users named by a run
                                       are not used). Combining it with ``user_id`` or a bound view is a
                                       :class:`ValidationError`: they already say who the user is.
    a user-bound view                  the bound user; a run naming another user: :class:`PermissionDenied`
    ``user_id="ann"``                  ``"ann"`` (``explicit=True`` calls, e.g. a retriever's per-call
                                       ``user_id``, override it)
    nothing                            the user the run names; none: :class:`UserRequired`, whose message
                                       says how to pass one (``how``)
    =================================  ====================================================================
    """

    def __init__(self, memory: Any, *, user_id: str | None = None, single_user: bool = False,
                 adapter: str = "this adapter", how: str = "pass user_id=...") -> None:
        if not isinstance(single_user, bool):
            raise ValidationError(f"single_user must be True or False, got {single_user!r}")
        self.bound = bound_user(memory)
        self.single_user = single_user
        self.adapter = adapter
        self.how = how
        if user_id is not None:
            _check_user_id(user_id)
        if single_user:
            if user_id is not None or self.bound is not None:
                raise ValidationError(
                    f"{adapter}: single_user=True means one fixed scope for every call; it cannot be combined "
                    f"with {'user_id=' if user_id is not None else 'a user-bound view'} (drop one of the two)")
            self.fixed: str | None = SINGLE_USER
        elif user_id is not None and self.bound is not None and user_id != self.bound:
            raise PermissionDenied(f"{adapter}: the view is bound to user {self.bound!r}, so user_id={user_id!r} "
                                   "is refused")
        else:
            self.fixed = user_id if user_id is not None else self.bound

    def message(self) -> str:
        return (f"{self.adapter} does not know whose memory to read or write, and will not read or write across "
                f"users: {self.how}; or hand it a user-bound view (mem.for_user(user_id)); or, for an app with "
                "a single user, opt in to one fixed scope with single_user=True")

    def user(self, found: str | None = None, *, explicit: bool = False) -> str:
        """The user of one read or write. ``found``: the user the run or call names (``None`` if none)."""
        if self.single_user:
            return SINGLE_USER
        if found is not None:
            _check_user_id(found)
            if self.bound is not None and found != self.bound:
                raise PermissionDenied(f"{self.adapter}: the view is bound to user {self.bound!r}; this call names "
                                       f"user {found!r}")
            if explicit or self.fixed is None:
                return found
        if self.fixed is not None:
            return self.fixed
        raise UserRequired(self.message())

    def require(self) -> str:
        """For adapters that learn the user only at construction: the user, or :class:`UserRequired` now."""
        return self.user()


class MemoryArgumentError(ValidationError, TypeError):
    """An adapter was given something that is not a MemOS, a view of one, a MemCube, a folder path or a store URL
    (or a store URL with no vector index known)."""


def check_index_url(index: Any, what: str = "index") -> str:
    """``index`` if it names a vector index an adapter can open: ``"http(s)://host[:port]"`` (a Chroma server)
    or ``"embedded"``; otherwise :class:`MemoryArgumentError` saying what was wrong (no connection is made)."""
    if not isinstance(index, str):
        raise MemoryArgumentError(f"{what} must be a Chroma server URL 'http://host:port' or 'embedded', "
                                  f"got {type(index).__name__}")
    if index == "embedded":
        return index
    try:
        u = urlparse(index)
        u.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise MemoryArgumentError(f"{what}={index!r} is not a valid URL ({exc}); expected 'http://host:port' "
                                  "(a Chroma server) or 'embedded'") from None
    if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/") or u.query:
        raise MemoryArgumentError(f"{what}={index!r}: expected a Chroma server 'http://host:port' (or "
                                  "'https://...'), or 'embedded' for a single process")
    return index


def adapter_index(memory: Any, index: Any, adapter: str = "this adapter") -> str | None:
    """The vector index an adapter opens a store URL with: ``index`` (an adapter's ``index=``) or else
    ``$MEMOS_INDEX``, checked by :func:`check_index_url`; ``None`` when ``memory`` is not a store URL. Raises
    :class:`MemoryArgumentError` for ``index`` given with anything but a store URL, or a store URL with neither."""
    if not is_store_url(memory):
        if index is not None:
            got = ("a MemCube" if isinstance(memory, MemCube) else "a MemOS" if isinstance(memory, MemOS)
                   else "a folder path" if isinstance(memory, (str, os.PathLike)) else type(memory).__name__)
            raise MemoryArgumentError(
                f"{adapter}: index= names the Chroma server of a postgresql:// store URL, but it was given {got}, "
                "whose vector index is already chosen (a folder keeps embedded Chroma); drop index=, or pass the "
                "store URL")
        return None
    if index is not None:
        return check_index_url(index, f"{adapter}: index=")
    if os.environ.get("MEMOS_INDEX"):
        return check_index_url(os.environ["MEMOS_INDEX"], f"{adapter}: $MEMOS_INDEX")
    raise MemoryArgumentError(
        f"{adapter} was given a store URL but no vector index: a cube on PostgreSQL shares its vectors through a "
        "Chroma server; pass index='http://host:port' (or 'embedded' for a single process), or set $MEMOS_INDEX")


def resolve_memory(memory: Any, *, embedder: Any = None, adapter: str = "this adapter",
                   index: str | None = None) -> "MemOS":
    """The one constructor rule of every adapter class: what it may be given, as a :class:`MemOS`.

    * a :class:`MemOS`, or a view of one (:meth:`MemOS.for_user`, :meth:`MemOS.as_principal`): itself;
    * a :class:`MemCube`: :meth:`MemOS.over_cube` (a MemOS over that cube only; the cube stays the caller's);
    * a folder path: a folder holding a cube (its manifest) is opened as that cube (:meth:`MemOS.over_cube`),
      any other folder as a MemOS data folder (one sub-folder per cube, ``default`` created when missing);
    * a store URL (``"postgresql://user@host/db?cube=NAME"``): ``MemOS(url, index=...)`` with the Chroma server
      given as ``index`` or, when not given, ``$MEMOS_INDEX`` (as the CLI's ``--index``); with neither,
      :class:`MemoryArgumentError` says so (no connection is made).

    ``index`` (every adapter class's ``index=`` keyword) is checked here, before anything is opened: only with a
    store URL, and only ``"http(s)://host:port"`` or ``"embedded"`` (:func:`check_index_url`); otherwise
    :class:`MemoryArgumentError`. ``$MEMOS_INDEX`` is the fallback and is checked the same way.

    A folder or a store URL opens one MemOS per process (:func:`memos_core.shared.shared_memos`): adapters given
    the same place share it while any of them uses it. ``embedder`` is used only when a folder or URL is opened
    here (for one already open it must agree with it). Anything else raises
    :class:`MemoryArgumentError` (a ``ValidationError`` and a ``TypeError``) at once, so a wrong argument fails
    when the adapter is built, not on its first call.
    """
    index = adapter_index(memory, index, adapter)
    if isinstance(memory, MemOS):
        return memory
    if isinstance(memory, MemCube):
        return MemOS.over_cube(memory)
    if index is not None or (isinstance(memory, (str, os.PathLike)) and str(memory).strip()):
        # a store URL or a folder: every adapter given the same one in this process shares one MemOS
        from .places import check_place
        from .shared import shared_memos

        check_place(memory, adapter)  # before the registry turns it into an absolute folder path

        return shared_memos(memory, embedder=embedder, index=index)
    raise MemoryArgumentError(
        f"{adapter} takes a MemOS (or a view of one: mem.for_user(...), mem.as_principal(...)), a MemCube, a "
        f"folder path or a postgresql:// URL; got {type(memory).__name__}")


def hit_metadata(hit: SearchHit) -> dict[str, Any]:
    """What both adapters attach to a retrieved memory (LangChain ``Document.metadata``, LlamaIndex
    ``TextNode.metadata``): JSON values only, keys absent rather than ``None``.

    ``memory_id``, ``cube_id``, ``version``, ``kind``, ``state``, ``score`` (the absolute score in [0, 1]), ``user_id`` /
    ``agent_id`` / ``session_id`` (when set), ``event_time`` (when known), ``created_at``, ``updated_at``,
    ``valid_until`` (when set), ``source``, ``source_ids``, ``extractor`` / ``speaker`` (when set),
    ``retrievers`` and ``ranks`` (per retriever), ``degraded`` (``True`` when set: see :attr:`SearchHit.degraded`),
    ``tags`` and ``memory_metadata`` (the memory's own metadata) when not empty.
    """
    item = hit.item
    meta: dict[str, Any] = {"memory_id": item.id, "cube_id": item.cube_id, "version": item.version,
                            "kind": item.kind.value, "state": item.state.value, "score": float(hit.score)}
    for axis in ("user_id", "agent_id", "session_id"):
        val = getattr(item.scope, axis)
        if val is not None:
            meta[axis] = val
    if item.event_time is not None:
        meta["event_time"] = item.event_time.isoformat()
    meta["created_at"] = item.created_at.isoformat()
    meta["updated_at"] = item.updated_at.isoformat()
    if item.valid_until is not None:
        meta["valid_until"] = item.valid_until.isoformat()
    prov = item.provenance
    meta["source"] = prov.source.value
    meta["source_ids"] = list(prov.source_ids)
    if prov.extractor:
        meta["extractor"] = prov.extractor
    if prov.speaker:
        meta["speaker"] = prov.speaker
    if prov.session_id and "session_id" not in meta:
        meta["session_id"] = prov.session_id
    meta["retrievers"] = dict(hit.retrievers)
    meta["ranks"] = dict(hit.ranks)
    if hit.degraded:  # a retriever could not run (the embedder was down): lexical hits only
        meta["degraded"] = True
    if item.tags:
        meta["tags"] = list(item.tags)
    if item.metadata:
        meta["memory_metadata"] = dict(item.metadata)
    return meta


_TEXT_FIELDS = ("content", "text")


def value_text(value: Any) -> str:
    """A JSON value as the text a model should read, never raw JSON: a mapping's ``content`` (else ``text``)
    field when it has one (LangMem's items are ``{"content": ...}``), otherwise its fields as ``key: value``
    parts joined by "; "; a list's elements joined by "; "; a string as is."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in _TEXT_FIELDS:
            if key in value:
                text = value_text(value[key])
                if text.strip():
                    return text
        parts = [f"{k}: {t}" for k, v in value.items() if (t := value_text(v)).strip()]
        return "; ".join(parts)
    if isinstance(value, (list, tuple)):
        return "; ".join(t for t in (value_text(v) for v in value) if t.strip())
    if value is None or isinstance(value, bool):
        return "" if value is None else str(value).lower()
    return str(value)


def memory_text(item: MemoryItem) -> str:
    """What a prompt or a retriever shows of a memory: its content, or, when the content is a JSON object or
    list (a store value written before values were rendered, or any JSON a tool saved), that value's text."""
    content = item.content
    s = content.strip()
    if (s.startswith("{") and s.endswith("}")) or (s.startswith("[") and s.endswith("]")):
        try:
            value = json.loads(s)
        except ValueError:
            return content
        if isinstance(value, (dict, list)):
            text = value_text(value)
            return text if text.strip() else content
    return content


def _check_user_id(user_id: Any) -> None:
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 256:
        raise ValidationError(f"user_id must be a non-empty string of at most 256 characters, got {user_id!r}")


class _CubeStore:
    """A cube bound to one add: scope, metadata and actor (the reader's :class:`MemoryStore`)."""

    def __init__(self, mem: "MemOS", cube: MemCube, scope: Scope, metadata: Mapping[str, Any] | None) -> None:
        self.mem = mem
        self.cube = cube
        self.scope = scope
        self.metadata = dict(metadata or {})
        #: ids of turns that came without a time (they were given "now")
        self.untimed: set[str] = set()

    def _spec(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(spec)
        out["metadata"] = {**self.metadata, **(spec.get("metadata") or {})}
        for axis in ("user_id", "agent_id", "session_id"):
            val = getattr(self.scope, axis)
            if val is not None:
                out[axis] = val
        return out

    def similar(self, text: str, k: int) -> list[MemoryItem]:
        f: dict[str, Any] = {"kinds": _FACT_KINDS}
        if self.scope.user_id is not None:
            f["user_id"] = self.scope.user_id
        if self.scope.agent_id is not None:
            f["agent_id"] = self.scope.agent_id
        try:
            hits = self.mem._call(self.cube, "search", text, k=max(k * 3, 10), filter=f, record_usage=False)
        except ValidationError:
            return []
        now = self.now()
        out = []
        for h in hits:
            it = h.item
            if it.scope.user_id != self.scope.user_id or it.scope.agent_id != self.scope.agent_id:
                continue  # never let one user's facts decide about another's
            if it.valid_until is not None and it.valid_until <= now:
                continue  # a fact that stopped being true is history, not something to update
            out.append(it)
            if len(out) >= k:
                break
        return out

    def get(self, item_id: str) -> MemoryItem:
        return self.mem._call(self.cube, "get", item_id)  # type: ignore[no-any-return]

    def episode_id(self, turn_id: str) -> str:
        """The id of the episode for one turn in this cube and scope: adding a turn twice finds it again."""
        s = self.scope
        key = "\x1f".join([self.cube.cube_id, s.user_id or "", s.agent_id or "", s.session_id or "", turn_id])
        return "ep-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]

    def add_many(self, specs: list[dict[str, Any]]) -> list[MemoryItem]:
        """Add in one transaction. Episodes without an id get :meth:`episode_id` and are skipped when already
        stored (so a retried add that fell back to episodes does not store them twice)."""
        out = []
        for spec in specs:
            spec = self._spec(spec)
            if spec.get("id") is None and spec.get("kind") == MemoryKind.EPISODE:
                ids = (spec.get("provenance") or {}).get("source_ids") or []
                if len(ids) == 1:
                    spec["id"] = self.episode_id(ids[0])
                    if self.mem._call(self.cube, "lookup", spec["id"]) is not None:
                        continue
            out.append(spec)
        if not out:
            return []
        return self.mem._call(self.cube, "add_many", out)  # type: ignore[no-any-return]

    def update(self, item_id: str, *, reason: str, **fields: Any) -> MemoryItem:
        return self.mem._call(self.cube, "update", item_id, reason=reason, **fields)  # type: ignore[no-any-return]

    def delete(self, item_id: str, *, reason: str) -> MemoryItem:
        return self.mem._call(self.cube, "delete", item_id, reason=reason)  # type: ignore[no-any-return]

    def now(self) -> datetime:
        return self.mem._now()


class MemOS:
    """Memory for an application: several cubes, a reader, search and prompt context behind one object.

    Parameters
    ----------
    path:
        Folder holding one sub-folder per cube (created when missing). Or a store URL
        (``"postgresql://user@host/db?cube=NAME"``), as for :class:`MemCube`: the default cube's records then
        live in PostgreSQL and ``index="http://host:port"`` (a Chroma server; ``"embedded"`` for a single
        process) is required; ``workdir=`` is this process's local folder (default: one under
        ``~/.cache/memos/stores``), holding the cube's local artefacts in ``workdir/default`` and any folder
        cubes made by :meth:`create_cube`.
    embedder:
        ``None`` for the offline default, or any LangChain ``Embeddings``, LlamaIndex ``BaseEmbedding`` or
        callable; shared by every cube this object opens.
    llm:
        ``None`` for the offline reader; a LangChain chat model, a LlamaIndex LLM or a callable
        ``fn(messages) -> str`` for LLM mode; or a configured :class:`~memos_core.reader.llm.LLMReader`.
    principal:
        Who is acting; passed as ``actor`` to every cube call.
    tokenizer:
        Token counter for :meth:`get_context` budgets: ``fn(text) -> int`` (or a list of tokens). Default:
        characters / 4.
    clock:
        Zero-argument callable returning the current time (tests); also given to the cubes opened here.
    """

    def __init__(self, path: str | os.PathLike[str] = "./memos_data", *, embedder: Any = None, llm: Any = None,
                 principal: str = "local", tokenizer: Callable[[str], Any] | None = None,
                 clock: Callable[[], datetime] | None = None, default_cube: str = DEFAULT_CUBE,
                 context_turns: int = 1, **cube_options: Any) -> None:
        if not isinstance(principal, str) or not principal.strip():
            raise ValidationError("principal must be a non-empty string")
        from .places import check_place

        check_place(path, "MemOS")  # a wrong type, an empty path or a mistyped URL: refused before anything is created
        #: the default cube's store URL when its records live on a server (``MemOS("postgresql://...")``)
        self.store_url: str | None = str(path) if is_store_url(path) else None
        workdir = cube_options.pop("workdir", None)
        if workdir is not None and self.store_url is None:
            raise ValidationError("workdir= is the local folder of a MemOS opened by a store URL "
                                  "(postgresql://...); for a data folder pass it as path")
        self.path = Path(path) if self.store_url is None else _store_workdir(self.store_url, workdir)
        self.principal = principal
        self.tokenizer = tokenizer
        self._clock = clock or utcnow
        self._cube_options = dict(cube_options)
        # one memory per call is the agent pattern: vectors reach the index in batches (search still sees every
        # acknowledged write; see MemCube's vector_sync). MEMOS_VECTOR_SYNC=immediate or vector_sync= overrides.
        self._cube_options.setdefault("vector_sync", os.environ.get("MEMOS_VECTOR_SYNC") or "deferred")
        # ... and a turn's embedding is computed on a background thread right after its commit (search embeds what
        # is still waiting first; see MemCube.embed_sync). MEMOS_EMBED_SYNC=immediate or embed_sync= overrides.
        self._cube_options.setdefault("embed_sync", os.environ.get("MEMOS_EMBED_SYNC") or "deferred")
        self.embedder = resolve_embedder(embedder)
        self.reader = OfflineReader(context_turns=context_turns)
        self.llm_reader: LLMReader | None = None
        if llm is not None:
            self.llm_reader = llm if isinstance(llm, LLMReader) else LLMReader(llm)
        self._lock = threading.RLock()
        self._cubes: dict[str, MemCube] = {}
        self._owned: set[str] = set()
        self._recent: OrderedDict[tuple[Any, ...], Turn] = OrderedDict()
        self._closed = False
        self._parent: MemOS | None = None  # set on views made by as_principal() / for_user()
        #: the user every call of a user-bound view is scoped to (``None``: not bound; see :meth:`for_user`)
        self.bound_user: str | None = None
        self.default_cube = self._check_name(default_cube)
        self.path.mkdir(parents=True, exist_ok=True)
        #: cube folders under ``path`` that could not be mounted on start, with the reason
        self.mount_errors: dict[str, str] = {}
        only = self.__dict__.pop("_only", None)  # set by over_cube(): mount that one cube, nothing else
        try:  # the default cube first (mount order breaks ties in search), then the others by name
            if isinstance(only, MemCube):
                self._cubes[self.default_cube] = only  # the caller's object, left open by close()
                return
            if self.store_url is not None:  # records in PostgreSQL, local artefacts in path/<default cube>
                self._cubes[self.default_cube] = MemCube(
                    self.store_url, embedder=self.embedder, name=self.default_cube, clock=self._clock,
                    actor=self.principal, workdir=self.path / self.default_cube, **self._cube_options)
                self._owned.add(self.default_cube)
            else:
                self._open(self.path / self.default_cube, self.default_cube,
                           create=not (self.path / self.default_cube / MANIFEST).is_file())
            if only is not None:
                self._register_direct(cube_folder=True)
                return
            for sub in sorted(p for p in self.path.iterdir() if (p / MANIFEST).is_file()):
                if sub.name == self.default_cube or not _CUBE_NAME.match(sub.name):
                    continue
                try:
                    self._open(sub, sub.name, create=False)
                except MemOSError as exc:  # e.g. built with another embedder: the others still open
                    self.mount_errors[sub.name] = str(exc)
                    log.warning("cube %s not mounted: %s", sub, exc)
            self._register_direct(cube_folder=False)
        except BaseException:
            self.close()
            raise

    def _register_direct(self, *, cube_folder: bool) -> None:
        """Make this MemOS the one that adapters given its place (folder, cube folder, store URL) get, while it is
        open and used, unless one is open there already (:func:`memos_core.shared.register_direct`). Not for a
        data folder that is itself a cube folder: an adapter given that path opens the cube (``over_cube``)."""
        from .shared import register_direct

        if self.store_url is not None:
            register_direct(self, self.store_url, self._cube_options.get("index"))
        elif cube_folder:
            register_direct(self, self.path / self.default_cube)
        elif not (self.path / MANIFEST).is_file():
            register_direct(self, self.path)

    @classmethod
    def over_cube(cls, cube: MemCube | str | os.PathLike[str], *, embedder: Any = None, llm: Any = None,
                  principal: str | None = None, **options: Any) -> "MemOS":
        """A MemOS whose only mounted cube is ``cube``: an open :class:`MemCube` (it stays the caller's: closing
        the MemOS leaves it open) or a cube folder (opened here). The cube is mounted under its folder's name
        (``"default"`` when that is not a valid cube name) and is the default cube; ``path`` is the folder's
        parent, so :meth:`create_cube` makes siblings. ``principal`` defaults to the cube's own actor."""
        if isinstance(cube, MemCube):
            folder = Path(cube.path)
            embedder = cube.embedder if embedder is None else embedder
            principal = principal or cube.actor
        elif isinstance(cube, (str, os.PathLike)):
            folder = Path(cube)
            if not (folder / MANIFEST).is_file():
                raise NotFound(f"no cube at {folder} (no {MANIFEST})")
        else:
            raise MemoryArgumentError(f"expected a MemCube or a cube folder, got {type(cube).__name__}")
        name = folder.name if _CUBE_NAME.match(folder.name) else DEFAULT_CUBE
        mem = object.__new__(cls)
        mem._only = cube  # type: ignore[attr-defined]  # consumed by __init__
        if not isinstance(cube, MemCube) and name != folder.name:
            raise ValidationError(f"cube folder name {folder.name!r}: use 1-64 letters, digits, '_', '-' or '.'")
        mem.__init__(folder.parent, embedder=embedder, llm=llm, principal=principal or "local",  # type: ignore[misc]
                     default_cube=name, **options)
        return mem

    # ------------------------------------------------------------------ plumbing
    def _now(self) -> datetime:
        return to_utc(self._clock()) or utcnow()

    def _call(self, cube: MemCube, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call a cube method, passing ``actor=principal`` when the method accepts it."""
        if _takes_actor(type(cube), name):
            kwargs.setdefault("actor", self.principal)
        return getattr(cube, name)(*args, **kwargs)

    @staticmethod
    def _check_name(name: Any) -> str:
        if not isinstance(name, str) or not _CUBE_NAME.match(name):
            raise ValidationError(f"cube name {name!r}: use 1-64 letters, digits, '_', '-' or '.', "
                                  "starting with a letter or digit")
        return name

    def _open(self, folder: Path, name: str, *, create: bool) -> MemCube:
        cube = MemCube(folder, embedder=self.embedder, create=create, name=name, clock=self._clock,
                       actor=self.principal, **self._cube_options)
        self._cubes[name] = cube
        self._owned.add(name)
        return cube

    def _check_open(self) -> None:
        if self._closed or (self._parent is not None and self._parent._closed):
            raise CubeClosed("this MemOS is closed; create a new one")

    def _check_not_view(self, what: str) -> None:
        if self._parent is not None:
            raise ValidationError(f"{what} on the MemOS this view was made from (views made by as_principal() and "
                                  "for_user() share its cubes)")

    def as_principal(self, principal: str) -> "MemOS":
        """A view of this MemOS that acts as ``principal``: the same cubes, embedder, reader and LLM, nothing
        opened again, and every cube call checked by the cubes' governance as that principal.

        A principal is who acts on *cubes*: its roles (owner/admin/writer/reader/guest) decide what it may do
        to a cube as a whole. It does not decide whose memories inside a cube it reads: a principal that may
        read a cube reads every user scope in it, whatever ``user_id`` it passes. To pin a view to one end user
        as well, bind it: ``mem.as_principal("bob").for_user("bob")`` (see :meth:`for_user`). A view made from
        a user-bound view stays bound to that user.

        Closing a view closes nothing; closing the MemOS it came from closes its views too. Mount, unmount and
        create cubes on the original.
        """
        self._check_open()
        if not isinstance(principal, str) or not principal.strip():
            raise ValidationError("principal must be a non-empty string")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.principal = principal
        view._owned = set()
        view._recent = OrderedDict()
        view._closed = False
        view._parent = self._parent or self
        return view

    def for_user(self, user_id: str) -> "MemOS":
        """A **user-bound view**: the same cubes, principal, embedder and reader, with every read and write
        scoped to ``user_id``. This is the object to hand to a request handler or an adapter.

        On the view, ``add`` / ``search`` / ``get_context`` / ``dedup`` (and their async forms) use
        ``user_id`` when none is given, and raise :class:`PermissionDenied` when another ``user_id`` is given
        (as an argument or in a ``filter``). ``get`` / ``update`` / ``delete`` / ``restore`` / ``history`` /
        ``rollback`` / ``forget`` reach only that user's memories: another user's id reads as
        :class:`NotFound`, exactly like an id that does not exist. Every adapter (LangChain, LangGraph,
        LlamaIndex) accepts the view and then needs no other user argument.

        How it relates to principals: the principal (``MemOS(principal=...)``, :meth:`as_principal`) is checked
        by each cube's ACL; the bound user is checked here, inside the cubes the principal may use. A server
        that authenticates end users usually wants both: ``mem.as_principal(service).for_user(request.user)``,
        or simply ``mem.for_user(request.user)``. ``view.cubes`` still gives the raw cubes, which are governed
        by principal only: do not hand those to untrusted code.

        Binding a bound view to the same user returns an equal view; to another user raises
        :class:`PermissionDenied`. Closing a view closes nothing.
        """
        self._check_open()
        if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 256:
            raise ValidationError("user_id must be a non-empty string of at most 256 characters")
        if self.bound_user is not None and self.bound_user != user_id:
            raise PermissionDenied(f"this view is bound to user {self.bound_user!r}; it cannot be re-bound to "
                                   f"{user_id!r} (make a new view from the original MemOS)")
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.bound_user = user_id
        view._owned = set()
        view._closed = False  # _recent is shared: it is keyed by scope, and this keeps the turn context going
        view._parent = self._parent or self
        return view

    # ------------------------------------------------------------------ user-bound views
    def _user(self, user_id: str | None) -> str | None:
        """The user a call acts for: on a bound view the bound user (another one is refused)."""
        bound = self.bound_user
        if bound is None or user_id is None or user_id == bound:
            return bound if bound is not None else user_id
        raise PermissionDenied(f"this MemOS view is bound to user {bound!r} and cannot act for user {user_id!r}")

    def _check_filter(self, filter: SearchFilter | Mapping[str, Any] | None) -> None:
        if self.bound_user is None or filter is None:
            return
        named = filter.user_id if isinstance(filter, SearchFilter) else (
            filter.get("user_id") if isinstance(filter, Mapping) else None)
        if named is not None and named != self.bound_user:
            raise PermissionDenied(f"this MemOS view is bound to user {self.bound_user!r}; its filter may not "
                                   f"name user {named!r}")

    def _owns(self, item: MemoryItem | None) -> bool:
        return item is not None and (self.bound_user is None or item.scope.user_id == self.bound_user)

    def _cube(self, cube: str | MemCube | None) -> tuple[str, MemCube]:
        """Resolve a cube argument (mount name, cube id, MemCube or None for the default)."""
        self._check_open()
        with self._lock:
            if cube is None:
                cube = self.default_cube
            if isinstance(cube, MemCube):
                for n, c in self._cubes.items():
                    if c is cube:
                        return n, c
                raise NotFound(f"cube {cube!r} is not mounted; mount() it first")
            if not isinstance(cube, str):
                raise ValidationError(f"cube must be a mounted cube's name or id, got {type(cube).__name__}")
            if cube in self._cubes:
                return cube, self._cubes[cube]
            for n, c in self._cubes.items():
                if c.cube_id == cube:
                    return n, c
        raise NotFound(f"no cube {cube!r} is mounted; mounted: {sorted(self._cubes)}")

    def _targets(self, cubes: Sequence[str | MemCube] | str | None) -> list[tuple[str, MemCube]]:
        if cubes is None:
            self._check_open()
            with self._lock:
                return list(self._cubes.items())
        if isinstance(cubes, (str, MemCube)):
            cubes = [cubes]
        out: list[tuple[str, MemCube]] = []
        for c in cubes:
            nc = self._cube(c)
            if nc not in out:
                out.append(nc)
        return out

    # ------------------------------------------------------------------ cubes
    @property
    def cubes(self) -> dict[str, MemCube]:
        """Mounted cubes by name (a copy)."""
        with self._lock:
            return dict(self._cubes)

    def create_cube(self, name: str) -> MemCube:
        """Create a cube in ``path/name`` and mount it under ``name``."""
        self._check_open()
        self._check_not_view("create cubes")
        self._check_name(name)
        with self._lock:
            if name in self._cubes:
                raise Conflict(f"a cube named {name!r} is already mounted")
            folder = self.path / name
            if (folder / MANIFEST).exists():
                raise Conflict(f"{folder} already holds a cube; mount({str(folder)!r}) it instead")
            return self._open(folder, name, create=True)

    def mount(self, cube_or_path: MemCube | str | os.PathLike[str], name: str | None = None) -> MemCube:
        """Mount an open :class:`MemCube` or an existing cube folder under ``name`` (default: the cube's name).

        A cube passed as an object stays owned by the caller (``close``/``unmount`` leave it open); one opened
        from a path here is closed by them.
        """
        self._check_open()
        self._check_not_view("mount cubes")
        with self._lock:
            if isinstance(cube_or_path, MemCube):
                cube, owned = cube_or_path, False
                name = self._check_name(name or cube.name)
            else:
                folder = Path(cube_or_path)
                name = self._check_name(name or folder.name)
                if not (folder / MANIFEST).is_file():
                    raise NotFound(f"no cube at {folder} (no {MANIFEST}); use create_cube(name) for a new one")
                cube, owned = None, True
            if name in self._cubes:
                raise Conflict(f"a cube named {name!r} is already mounted; pass another name=")
            if cube is not None and any(c.cube_id == cube.cube_id for c in self._cubes.values()):
                raise Conflict(f"cube {cube.cube_id} is already mounted")
            if owned:
                cube = MemCube(folder, embedder=self.embedder, create=False, clock=self._clock,
                               actor=self.principal, **self._cube_options)
                if any(c.cube_id == cube.cube_id for c in self._cubes.values()):
                    cube.close()
                    raise Conflict(f"cube {cube.cube_id} at {folder} is already mounted")
                self._owned.add(name)
            assert cube is not None
            self._cubes[name] = cube
            return cube

    def unmount(self, name: str) -> None:
        """Unmount a cube (closing it if this object opened it). Its data stays on disk."""
        self._check_open()
        self._check_not_view("unmount cubes")
        with self._lock:
            if name not in self._cubes:
                raise NotFound(f"no cube {name!r} is mounted")
            cube = self._cubes.pop(name)
            if name in self._owned:
                self._owned.discard(name)
                cube.close()
            if name == self.default_cube:
                log.warning("the default cube %r was unmounted; add() now needs cube=", name)
            for key in [k for k in self._recent if k[0] == name]:
                del self._recent[key]

    def close(self) -> None:
        """Close every cube this object opened. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._parent is not None:  # a view: the cubes are its original's
                return
            for name in list(self._cubes):
                cube = self._cubes.pop(name)
                if name in self._owned:
                    try:
                        cube.close()
                    except Exception:  # noqa: BLE001 - closing the others matters more
                        log.exception("closing cube %s failed", name)
            self._owned.clear()

    def __enter__(self) -> "MemOS":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        bound = "" if self.bound_user is None else f", user={self.bound_user!r}"
        return f"MemOS(path={str(self.path)!r}, cubes={sorted(self._cubes)}, principal={self.principal!r}{bound})"

    # ------------------------------------------------------------------ add
    def _prepare(self, messages: Any, user_id: str | None, agent_id: str | None, session_id: str | None,
                 timestamp: Any, cube: str | MemCube | None, infer: bool | None,
                 metadata: Mapping[str, Any] | None) -> tuple[str, _CubeStore, list[Turn], bool]:
        name, c = self._cube(cube)
        from pydantic import ValidationError as PydanticError

        try:
            scope = Scope(user_id=user_id, agent_id=agent_id, session_id=session_id)
        except PydanticError as exc:
            raise ValidationError(f"bad scope: {exc.errors()[0]['msg']}") from None
        if metadata is not None:
            from pydantic import ValidationError as PydanticError

            try:
                MemoryItem(content="-", metadata=metadata)
            except PydanticError as exc:
                raise ValidationError(f"bad metadata: {exc.errors()[0]['msg']}") from None
        if infer is None:
            infer = self.llm_reader is not None
        elif infer and self.llm_reader is None:
            raise ValidationError("infer=True needs an LLM: MemOS(..., llm=<chat model or callable>)")
        turns = coerce_turns(messages, session_id=session_id, timestamp=timestamp)
        if not turns:
            raise ValidationError("messages is empty: nothing to add")
        now = self._now()
        seen: dict[str, int] = {}
        for t in turns:
            if not t.id:
                t.id = _turn_id(t)
                if t.id in seen:  # the same text twice in one call is said twice
                    seen[t.id] += 1
                    t.id = f"{t.id}#{seen[t.id]}"
                else:
                    seen[t.id] = 1
        store = _CubeStore(self, c, scope, metadata)
        for t in turns:
            if t.time is None:
                t.time = now
                store.untimed.add(t.id or "")
        return name, store, turns, bool(infer)

    def add(self, messages: Any, *, user_id: str | None = None, agent_id: str | None = None,
            session_id: str | None = None, timestamp: Any = None, cube: str | MemCube | None = None,
            infer: bool | None = None, metadata: Mapping[str, Any] | None = None) -> AddResult:
        """Turn messages into memories in one cube.

        ``messages``: a string, a dict (``role``/``speaker``, ``content``/``text``, optional ``id`` and
        ``time``), a :class:`~memos_core.reader.Turn`, or a list of them. Turns without an id get one derived
        from their content, speaker, session and time, so adding the same message again changes nothing.
        Turns without a time take ``timestamp`` (default: now).

        ``infer``: ``None`` uses the LLM reader when an ``llm`` is configured, else the offline reader;
        ``False`` forces offline; ``True`` requires an LLM.
        """
        user_id = self._user(user_id)
        name, store, turns, infer = self._prepare(messages, user_id, agent_id, session_id, timestamp, cube, infer,
                                                  metadata)
        if infer:
            assert self.llm_reader is not None
            res = self.llm_reader.read(turns, store, user_name=user_id)
        else:
            res = self._add_offline(name, store, turns)
        res.cube = name
        return res

    async def aadd(self, messages: Any, *, user_id: str | None = None, agent_id: str | None = None,
                   session_id: str | None = None, timestamp: Any = None, cube: str | MemCube | None = None,
                   infer: bool | None = None, metadata: Mapping[str, Any] | None = None) -> AddResult:
        """Async :meth:`add`: the model is awaited natively, store work runs in a worker thread."""
        user_id = self._user(user_id)
        name, store, turns, infer = self._prepare(messages, user_id, agent_id, session_id, timestamp, cube, infer,
                                                  metadata)
        if infer:
            assert self.llm_reader is not None
            res = await self.llm_reader.aread(turns, store, user_name=user_id)
        else:
            res = await asyncio.to_thread(self._add_offline, name, store, turns)
        res.cube = name
        return res

    def _add_offline(self, name: str, store: _CubeStore, turns: list[Turn]) -> AddResult:
        """One episode per turn, idempotent: a turn already stored in this scope (same cube, scope and turn id)
        is left alone (also when it was deleted since: re-sending a message does not undo a delete), and one
        whose text or time changed gets a new version."""
        res = AddResult(mode="offline")
        key = (name, store.scope.user_id, store.scope.agent_id, store.scope.session_id)
        with self._lock:
            prev = self._recent.get(key)
        if prev is not None:
            # The previous turn is context only while its memory still holds it: once it was forgotten or
            # purged (by this process or another), its text must not come back in the next turn's index.
            was = self._call(store.cube, "lookup", store.episode_id(prev.id or ""))
            if was is None or was.state == LifecycleState.PURGED or not was.content:
                prev = None
        specs = self.reader.read(turns, history=[prev] if prev is not None else [])
        fresh: list[dict[str, Any]] = []
        edited: list[tuple[MemoryItem, dict[str, Any]]] = []
        seen: set[str] = set()
        for t, spec in zip(turns, specs):
            spec["id"] = store.episode_id(t.id or "")
            if spec["id"] in seen:  # the same turn id twice in one call: the first one counts
                continue
            seen.add(spec["id"])
            cur = self._call(store.cube, "lookup", spec["id"])
            if cur is None:
                fresh.append(spec)
            elif cur.state in (LifecycleState.DELETED, LifecycleState.PURGED) or (
                    cur.content == spec["content"] and (cur.event_time == t.time or t.id in store.untimed)):
                res.unchanged.append(cur.id)
            else:
                edited.append((cur, spec))
        if fresh:
            res.added = store.add_many(fresh)  # one transaction: all or nothing (raises on failure)
        for cur, spec in edited:
            try:
                res.updated.append(store.update(
                    cur.id, reason="the turn was edited", content=spec["content"], index_text=spec["index_text"],
                    event_time=spec["event_time"], metadata={**cur.metadata, **store._spec(spec)["metadata"]}))
            except MemOSError as exc:
                res.errors.append(f"turn {spec['provenance']['source_ids']} changed but memory {cur.id} could not "
                                  f"be updated: {exc}")
        with self._lock:
            self._recent[key] = turns[-1]
            self._recent.move_to_end(key)
            while len(self._recent) > _RECENT_MAX:
                self._recent.popitem(last=False)
        return res

    # ------------------------------------------------------------------ search
    def search(self, query: str, *, user_id: str | None = None, agent_id: str | None = None,
               session_id: str | None = None, k: int = 10, filter: SearchFilter | Mapping[str, Any] | None = None,
               cubes: Sequence[str | MemCube] | str | None = None, mode: SearchMode = "hybrid",
               min_score: float | None = None) -> list[SearchHit]:
        """Search every mounted cube the caller may read (or only ``cubes``) and merge the hits.

        ``min_score`` drops hits whose absolute score (``hit.score`` in [0, 1]) is below it, in every cube alike.

        Hits are merged by score (``hit.score`` is absolute: it depends on the query and the memory only, so
        scores of different cubes compare), keeping each cube's own order (its fusion's ranking). Duplicates are dropped keeping
        the best (same normalised content; for episodes also the same event time), and ties are ordered by
        per-cube rank, mount order and id. ``hit.item.cube_id`` says which cube a hit came from. Cubes the
        principal may not read are skipped, unless named in ``cubes`` (then :class:`PermissionDenied`).
        """
        if not isinstance(query, str) or not query.strip():
            raise ValidationError("query must be a non-empty string")
        user_id = self._user(user_id)
        self._check_filter(filter)
        explicit = cubes is not None
        scored: list[tuple[float, int, int, str, SearchHit]] = []
        for order, (name, cube) in enumerate(self._targets(cubes)):
            try:
                hits = self._call(cube, "search", query, k=k, filter=filter, mode=mode, user_id=user_id,
                                  agent_id=agent_id, session_id=session_id,
                                  **({} if min_score is None else {"min_score": min_score}))
            except PermissionDenied:
                if explicit:
                    raise
                log.debug("cube %s denies %s a search; skipped", name, self.principal)
                continue
            floor = float("inf")
            for rank, h in enumerate(hits):
                # hit.score is absolute (comparable across cubes) but a cube's hits come in its fusion's order;
                # merging by the running minimum keeps each cube's order and interleaves cubes by score
                floor = min(floor, h.score)
                scored.append((-floor, rank, order, h.item.id, h))
        scored.sort(key=lambda x: x[:4])
        out: list[SearchHit] = []
        seen: set[tuple[str, Any]] = set()
        for *_, h in scored:
            it = h.item
            key = (normalize(it.content), it.event_time if it.kind == MemoryKind.EPISODE else None)
            if key in seen:
                continue
            seen.add(key)
            out.append(h)
            if len(out) >= k:
                break
        return out

    async def asearch(self, query: str, **kwargs: Any) -> list[SearchHit]:
        """Async :meth:`search` (runs in a worker thread)."""
        return await asyncio.to_thread(functools.partial(self.search, query, **kwargs))

    # ------------------------------------------------------------------ context
    def _tokens(self, text: str, tokenizer: Callable[[str], Any] | None) -> int:
        fn = tokenizer or self.tokenizer
        if fn is None:
            return _approx_tokens(text)
        n = fn(text)
        return int(n) if isinstance(n, (int, float)) else len(n)

    @staticmethod
    def format_memory(item: MemoryItem) -> str:
        """One context line: ``- [YYYY-MM-DD] content`` (date = event time, else creation; one line). Content
        that is a JSON object shows as its text (:func:`memory_text`), never raw JSON."""
        when = item.event_time or item.created_at
        text = " ".join(memory_text(item).split())
        line = f"- [{when:%Y-%m-%d}] {text}"
        if item.valid_until is not None:
            line += f" (no longer true since {item.valid_until:%Y-%m-%d})"
        return line

    def get_context(self, query: str, *, user_id: str | None = None, agent_id: str | None = None,
                    session_id: str | None = None, k: int = 10, token_budget: int = 1000,
                    filter: SearchFilter | Mapping[str, Any] | None = None,
                    cubes: Sequence[str | MemCube] | str | None = None,
                    tokenizer: Callable[[str], Any] | None = None, header: str = CONTEXT_HEADER) -> str:
        """A memory block ready to put into a prompt, or ``""`` when nothing relevant was found.

        Format (stable)::

            ## Relevant memories
            - [2023-05-07] Ann: I moved to Lisbon yesterday.
            - [2023-05-08] Ann likes green tea.

        The top ``k`` hits of :meth:`search` are taken in relevance order while they fit ``token_budget``
        (header included; tokens = characters / 4 unless a ``tokenizer`` is given). A line that does not fit
        is shortened with "..." when at least 16 tokens are left, otherwise skipped. The chosen lines are then
        printed in chronological order (event time, else creation time; ties by relevance), since a timeline is
        what a model reads best. A fact that stopped being true says so: ``(no longer true since ...)``.
        """
        if not isinstance(token_budget, int) or isinstance(token_budget, bool) or token_budget < 1:
            raise ValidationError("token_budget must be a positive integer")
        hits = self.search(query, user_id=user_id, agent_id=agent_id, session_id=session_id, k=k, filter=filter,
                           cubes=cubes)
        return self._render(hits, token_budget, tokenizer, header)

    def _render(self, hits: list[SearchHit], budget: int, tokenizer: Callable[[str], Any] | None,
                header: str) -> str:
        if not hits:
            return ""
        used = self._tokens(header + "\n", tokenizer)
        chosen: list[tuple[datetime, int, str]] = []
        for rank, h in enumerate(hits):
            line = self.format_memory(h.item)
            cost = self._tokens(line + "\n", tokenizer)
            if used + cost > budget:
                left = budget - used
                if left < 16:
                    continue
                line = self._shorten(line, left, tokenizer)
                if line is None:
                    continue
                cost = self._tokens(line + "\n", tokenizer)
            used += cost
            chosen.append((h.item.event_time or h.item.created_at, rank, line))
        if not chosen:
            return ""
        chosen.sort(key=lambda x: (x[0], x[1]))
        return header + "\n" + "".join(line + "\n" for _, _, line in chosen)

    def _shorten(self, line: str, tokens: int, tokenizer: Callable[[str], Any] | None) -> str | None:
        lo, hi, best = 0, len(line), None
        while lo <= hi:  # longest prefix (cut at a space) that fits
            mid = (lo + hi) // 2
            cand = line[:mid].rsplit(" ", 1)[0] + " ..."
            if self._tokens(cand + "\n", tokenizer) <= tokens:
                best, lo = cand, mid + 1
            else:
                hi = mid - 1
        if best is None or len(best) <= len("- [0000-00-00]  ..."):
            return None
        return best

    async def aget_context(self, query: str, **kwargs: Any) -> str:
        """Async :meth:`get_context` (runs in a worker thread)."""
        return await asyncio.to_thread(functools.partial(self.get_context, query, **kwargs))

    # ------------------------------------------------------------------ item pass-throughs
    def _locate(self, item_id: str, cube: str | MemCube | None) -> MemCube:
        """The cube holding ``item_id`` (any state). On a user-bound view only that user's memories are found:
        another user's id is :class:`NotFound`, like an unknown one."""
        if cube is not None:
            c = self._cube(cube)[1]
            if self.bound_user is not None and not self._owns(self._call(c, "lookup", item_id)):
                raise NotFound(f"no memory with id {item_id!r} in cube {c.name!r}")
            return c
        if not isinstance(item_id, str) or not item_id:
            raise ValidationError("item id must be a non-empty string")
        for _, c in self._targets(None):
            try:
                if self._owns(self._call(c, "lookup", item_id)):  # any state; needs read only
                    return c
            except (NotFound, PermissionDenied):
                continue
        raise NotFound(f"no memory with id {item_id!r} in any mounted cube ({', '.join(sorted(self._cubes))})")

    def get(self, item_id: str, cube: str | MemCube | None = None, *, include_deleted: bool = False) -> MemoryItem:
        """The current version of a memory, looked up in ``cube`` or in every mounted cube."""
        return self._call(self._locate(item_id, cube), "get", item_id,  # type: ignore[no-any-return]
                          include_deleted=include_deleted)

    def update(self, item_id: str, content: str | None = None, cube: str | MemCube | None = None, *,
               reason: str | None = None, **fields: Any) -> MemoryItem:
        """Write a new version of a memory (see :meth:`MemCube.update`).

        New ``content`` without a new ``index_text`` re-derives what retrieval indexes (see
        :meth:`MemCube.update`).
        """
        c = self._locate(item_id, cube)
        return self._call(c, "update", item_id, content, reason=reason, **fields)  # type: ignore[no-any-return]

    def delete(self, item_id: str, cube: str | MemCube | None = None, *, reason: str | None = None) -> MemoryItem:
        """Tombstone a memory (restorable until purged or forgotten)."""
        return self._call(self._locate(item_id, cube), "delete", item_id,  # type: ignore[no-any-return]
                          reason=reason)

    def restore(self, item_id: str, cube: str | MemCube | None = None, *, reason: str | None = None) -> MemoryItem:
        """Undo a delete."""
        return self._call(self._locate(item_id, cube), "restore", item_id,  # type: ignore[no-any-return]
                          reason=reason)

    def history(self, item_id: str, cube: str | MemCube | None = None) -> list[MemoryVersion]:
        """Every version of a memory, oldest first."""
        return self._call(self._locate(item_id, cube), "history", item_id)  # type: ignore[no-any-return]

    def rollback(self, item_id: str, version: int, cube: str | MemCube | None = None, *,
                 reason: str | None = None) -> MemoryItem:
        """Restore an earlier version's content as a new version."""
        return self._call(self._locate(item_id, cube), "rollback", item_id, version,  # type: ignore[no-any-return]
                          reason=reason)

    def forget(self, item_id: str, cube: str | MemCube | None = None, *, reason: str | None = None,
               **kwargs: Any) -> Any:
        """Erase a memory for good (needs the *administer* right on its cube).

        Uses the cube's governance ``forget`` (the item, its versions and index rows, and by default the
        memories derived from it: see :meth:`MemCube.forget`; returns the erased ids). A cube without it gets
        delete + purge (content of every version erased; artefacts built from it then read as stale).
        """
        c = self._locate(item_id, cube)
        if hasattr(c, "forget"):
            return self._call(c, "forget", item_id, reason=reason, **kwargs)
        item = self._call(c, "get", item_id, include_deleted=True)
        if item.state not in (LifecycleState.DELETED, LifecycleState.PURGED):
            self._call(c, "delete", item_id, reason=reason or "forget")
        return self._call(c, "purge", item_id, reason=reason or "forget")

    async def aget(self, item_id: str, cube: str | MemCube | None = None, **kwargs: Any) -> MemoryItem:
        return await asyncio.to_thread(functools.partial(self.get, item_id, cube, **kwargs))

    async def aupdate(self, item_id: str, content: str | None = None, cube: str | MemCube | None = None,
                      **fields: Any) -> MemoryItem:
        return await asyncio.to_thread(functools.partial(self.update, item_id, content, cube, **fields))

    async def adelete(self, item_id: str, cube: str | MemCube | None = None, **kwargs: Any) -> MemoryItem:
        return await asyncio.to_thread(functools.partial(self.delete, item_id, cube, **kwargs))

    async def ahistory(self, item_id: str, cube: str | MemCube | None = None) -> list[MemoryVersion]:
        return await asyncio.to_thread(self.history, item_id, cube)

    async def arollback(self, item_id: str, version: int, cube: str | MemCube | None = None,
                        **kwargs: Any) -> MemoryItem:
        return await asyncio.to_thread(functools.partial(self.rollback, item_id, version, cube, **kwargs))

    # ------------------------------------------------------------------ maintenance
    def dedup(self, *, cube: str | MemCube | None = None, user_id: str | None = None, agent_id: str | None = None,
              session_id: str | None = None, threshold: float = DEFAULT_NEAR_THRESHOLD, dry_run: bool = False,
              limit: int = 10_000) -> list[tuple[str, list[str]]]:
        """Merge exact and near-duplicate memories of one cube (optionally one scope).

        For each group the oldest memory survives: its provenance gains the others' source ids and their ids
        as parents (a new version), and the others move to the ``merged`` state (kept, hidden from default
        search, restorable). Frozen memories are left alone. Returns ``[(survivor_id, [merged_ids])]``;
        ``dry_run`` only reports. Duplicates are looked for among each memory's lexical neighbours.
        """
        _, c = self._cube(cube)
        user_id = self._user(user_id)
        f: dict[str, Any] = {a: v for a, v in (("user_id", user_id), ("agent_id", agent_id),
                                               ("session_id", session_id)) if v is not None}
        f["states"] = [LifecycleState.GENERATED, LifecycleState.ACTIVATED]
        items = self._call(c, "list", f, limit=limit)
        done: set[str] = set()
        merges: list[tuple[str, list[str]]] = []
        for it in items:
            if it.id in done:
                continue
            try:
                hits = self._call(c, "search", it.content, k=8, filter={**f, "kinds": [it.kind]}, mode="lexical",
                                  record_usage=False)
            except ValidationError:
                continue
            group = [it] + [h.item for h in hits if h.item.id != it.id and h.item.id not in done]
            for survivor, dups in plan_merges(group, threshold):
                if survivor.id in done or any(d.id in done for d in dups):
                    continue
                ids = [d.id for d in dups]
                done.update(ids)
                done.add(survivor.id)
                merges.append((survivor.id, ids))
                if dry_run:
                    continue
                prov = merge_provenance(survivor.provenance, *(d.provenance for d in dups), parent_ids=ids)
                self._call(c, "update", survivor.id, provenance=prov, reason=f"dedup: merged {', '.join(ids)}")
                for d in dups:
                    self._call(c, "transition", d.id, LifecycleState.MERGED, reason=f"merged into {survivor.id}")
        return merges

