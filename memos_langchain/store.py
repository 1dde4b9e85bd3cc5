"""MemOSStore: LangGraph's long-term memory interface (``BaseStore``) over a MemCube.

How LangGraph items map onto MemOS (documented, reversible)
-----------------------------------------------------------
One store is bound to one cube (a ``MemCube``, or one cube of a ``MemOS`` facade). Each
``(namespace, key) -> value`` item is one memory in that cube:

=========================  =================================================================================
LangGraph                  MemOS memory
=========================  =================================================================================
``(namespace, key)``       id ``"lg-" + sha256(json([namespace, key]))`` (stable, so ``get`` is one lookup);
                           ``metadata["langgraph"]["path"]`` / ``["ns"]`` / ``["key"]`` keep them verbatim
``value``                  ``metadata["langgraph"]["value"]`` (returned exactly, as JSON round-trips it)
indexed text               ``content``: the texts at the index ``fields``, joined by newlines (default ``"$"``:
                           the whole value as text: its ``content`` field, e.g. LangMem's items, else its
                           ``text`` field, else ``key: value`` parts; objects and lists at a field path are
                           rendered the same way, never as raw JSON); the core embeds it and indexes it
                           lexically, and prompts show it
namespace labels           ``scope``: the first of ``scope_templates`` that matches the namespace fills
                           ``user_id`` / ``agent_id`` / ``session_id`` (default ``("memories", "{user_id}")``:
                           LangMem's convention), so ``MemOS.search(user_id=...)``, the retriever and the
                           middleware see what agents stored
``put`` on a live key      a new version (``history``/``rollback`` work); an identical value writes nothing
``delete``                 a tombstone (``restore``-able); a later ``put`` revives the same memory
``ttl`` (minutes)          ``expires_at``; reads slide it forward (``refresh_ttl``) through
                           :meth:`MemCube.refresh_expiry`; expired items are invisible at once and
                           :meth:`sweep_ttl` tombstones them through the core's retention (:meth:`MemCube.expire`)
=========================  =================================================================================

Whose memory an item is (fail closed)
-------------------------------------
Every operation resolves to one user (see :class:`memos_core.os.UserRule`): the ``{user_id}`` (or
``{langgraph_user_id}``) label of the namespace, matched by ``scope_templates`` (for searches and
``list_namespaces``: the prefix); or, when the store was built on a user-bound view (``mem.for_user("ann")``),
that user (a namespace naming another user is :class:`memos_core.PermissionDenied`). An operation whose
namespace names no user on a store that is not bound raises :class:`memos_core.UserRequired` (nothing is read
or written across users), unless the store was built with ``single_user=True``: then every item goes to one
fixed scope (:data:`memos_core.os.SINGLE_USER`). Reads return only the items of that user. An item's id mixes
in the user when the user does not come from the namespace, so the same ``(namespace, key)`` of two users are
two memories.

The mapping back is the identity on ``metadata["langgraph"]``: a namespace, key and value written through the
store come back exactly. Memories of the cube that were not written through the store (e.g. by the MemReader)
are not store items and never appear in store results.

Where behaviour differs from ``InMemoryStore`` (on purpose)
-----------------------------------------------------------
* Search with a ``query`` uses the core's hybrid retrieval (dense + BM25, fused); ``score`` is the core's
  absolute score in [0, 1] (``SearchHit.score``: a calibrated mix of cosine similarity and query-word coverage
  that does not depend on how many items are stored, so it can be thresholded like ``InMemoryStore``'s cosine);
  items come in the fusion's order, which the scores need not follow exactly, and several index fields are embedded as one
  text instead of one vector each. Items not indexed (``index=False``, or no text at the index fields) follow
  the ranked ones with ``score=None``, as in ``InMemoryStore`` (but paginated with them consistently).
* Without a query, results come in creation order (LangGraph leaves this order unspecified).
* ``list_namespaces`` lists only namespaces that hold at least one live item (``InMemoryStore`` also lists
  namespaces whose items were all deleted, or that were merely read).
* Ops in one ``batch`` apply in order (a ``GetOp`` after a ``PutOp`` of the same key sees the new value).
* Expired items are omitted from every read even before a sweep (``TTLConfig.omit_expired`` is always true).
* Filter keys are value keys made of letters, digits, ``_`` and ``-`` (nested keys as nested dicts); the
  operators are LangGraph's (``$eq $ne $gt $gte $lt $lte``) plus the core's ``$in $nin $exists``. Filtering by
  list equality is not supported. Bad filters raise ``ValueError``, as LangGraph's stores do.
* A frozen memory (legal hold) cannot be overwritten or deleted: :class:`memos_core.Conflict`.
* A search with a query ranks at most 1000 items: when more than 1000 items match, a page reaching beyond
  (``offset + limit > 1000``) raises ``ValueError`` rather than returning a silently short page; with 1000 or
  fewer matches such a page is short or empty, as in ``InMemoryStore``.
* Putting a value identical to the stored one writes nothing (no empty version), so ``updated_at`` stays
  (``InMemoryStore`` sets it to now); a different value, or a new ``ttl``, is a write.
* What agents see: items are memories in their user's scope, so ``MemOSMiddleware``, the memory tools and the
  retrievers recall store items of every namespace that names the user (``scope_templates``) or that was
  written through a user-bound view; they do not read ``runtime.store`` themselves.
* ``created_at`` is when the key was first written (a put after a delete revives the same memory, so it keeps
  its first creation time; ``InMemoryStore`` resets it on every put, ``PostgresStore`` on a put after delete).
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import timedelta
from typing import Any, Iterable, Mapping, Sequence

from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
)

from memos_core.log import PROGRESS_MIN, Progress, get_logger
from memos_core import LifecycleState, MemCube, MemoryItem, MemoryKind, SourceKind
from memos_core.errors import Conflict, EmbeddingDimensionError, PermissionDenied, ValidationError
from memos_core.items import MAX_METADATA_DEPTH, MAX_TTL_SECONDS, check_nesting, check_text
from memos_core.os import UserRule, value_text

from ._common import principal_of, resolve_cube_memos, run_sync, write_retrying

__all__ = ["MemOSStore", "InvalidStoreValue", "InvalidNamespace", "DEFAULT_SCOPE_TEMPLATES", "META_KEY"]

log = get_logger(__name__)

META_KEY = "langgraph"
"""The metadata key under which a store item keeps its namespace, key and value."""
DEFAULT_SCOPE_TEMPLATES: tuple[tuple[str, ...], ...] = (("memories", "{user_id}"),)
_PLACEHOLDERS = {"{user_id}": "user_id", "{agent_id}": "agent_id", "{session_id}": "session_id",
                 "{langgraph_user_id}": "user_id"}
_LG_OPS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"}
_S = LifecycleState
_LIVE = (_S.GENERATED, _S.ACTIVATED)
_EXTRACTOR = "memos_langchain.store/1"


class InvalidStoreValue(ValidationError, TypeError):
    """A value that is not a JSON-serialisable mapping with string keys.

    It is both a ``ValueError`` and a ``TypeError``: LangGraph's ``InMemoryStore`` raises one or the other
    for such values, so code written against it keeps catching what it caught.
    """


class InvalidNamespace(InvalidNamespaceError, ValidationError):
    """A namespace LangGraph refuses (empty, a label that is not a non-empty string without '.' or NUL, the
    reserved root ``"langgraph"``). It is LangGraph's ``InvalidNamespaceError`` (what ``InMemoryStore`` raises,
    so code written against it keeps catching it) and a MemOS :class:`~memos_core.errors.ValidationError`."""


def _namespace_hint(message: str) -> str:
    """What to do about a namespace LangGraph refused (appended to its message)."""
    if "empty strings" in message:
        return "every label must be a non-empty string (an empty user id in ('memories', user_id)?)"
    if "periods" in message:
        return "split the label into several labels or replace the '.'"
    if "must be strings" in message:
        return "convert the label with str()"
    if "tuple of strings" in message:
        return "write (label,) for a namespace of one label"
    if "cannot be empty" in message:
        return "give at least one label, e.g. ('memories', user_id)"
    if "langgraph" in message:
        return "the root label 'langgraph' is reserved by LangGraph"
    return "see LangGraph's namespace rules"


def _typed_namespaces(cls: type) -> type:
    """LangGraph's convenience methods (``put``, ``get``, ``search`` ...) check the namespace themselves and
    raise LangGraph's ``InvalidNamespaceError``; here that becomes :class:`InvalidNamespace` (a subclass of it, so
    ``except InvalidNamespaceError`` still catches it, and a MemOS ``ValidationError``) with a hint."""
    import functools
    import inspect

    def retyped(exc: Exception) -> InvalidNamespace:
        message = str(exc)
        return InvalidNamespace(f"{message.rstrip('.')}: {_namespace_hint(message)}")

    def wrap(name: str) -> None:
        base = getattr(BaseStore, name)
        if inspect.iscoroutinefunction(base):
            @functools.wraps(base)
            async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    return await base(self, *args, **kwargs)
                except InvalidNamespaceError as exc:
                    if isinstance(exc, InvalidNamespace):
                        raise
                    raise retyped(exc) from None
        else:
            @functools.wraps(base)
            def method(self: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    return base(self, *args, **kwargs)
                except InvalidNamespaceError as exc:
                    if isinstance(exc, InvalidNamespace):
                        raise
                    raise retyped(exc) from None
        if name not in cls.__dict__:
            setattr(cls, name, method)

    for name in ("put", "get", "search", "delete", "list_namespaces",
                 "aput", "aget", "asearch", "adelete", "alist_namespaces"):
        if hasattr(BaseStore, name):
            wrap(name)
    return cls


def _validate_labels(namespace: Sequence[Any], *, for_put: bool = False) -> tuple[str, ...]:
    if not isinstance(namespace, (tuple, list)):
        raise InvalidNamespace(f"Namespace must be a tuple of strings, got {type(namespace).__name__}: "
                               f"write ({namespace!r},) for a namespace of one label"[:300])
    ns = tuple(namespace)
    for label in ns:
        if not isinstance(label, str):
            raise InvalidNamespace(f"Invalid namespace label '{label}' found in {ns}. Namespace labels"
                                   f" must be strings, but got {type(label).__name__}: convert it with str().")
        if "." in label:
            raise InvalidNamespace(f"Invalid namespace label '{label}' found in {ns}. Namespace labels "
                                   "cannot contain periods ('.'): split it into several labels or replace the '.'.")
        if "\x00" in label:
            raise InvalidNamespace(f"Invalid namespace label '{label}' found in {ns}. Namespace labels "
                                   "cannot contain NUL bytes ('\\x00').")
        check_text(label, "namespace label")  # ValidationError for a lone surrogate (no id can hash it)
        if not label:
            raise InvalidNamespace(f"Namespace labels cannot be empty strings. Got {label!r} in {ns}: every "
                                   "label must be a non-empty string (an empty user id in "
                                   "('memories', user_id)?)")
    if for_put:
        if not ns:
            raise InvalidNamespace("Namespace cannot be empty: give at least one label, e.g. "
                                   "('memories', user_id).")
        if ns[0] == "langgraph":
            raise InvalidNamespace(f'Root label for namespace cannot be "langgraph" (reserved by LangGraph). '
                                   f'Got: {ns}')
    return ns


def _item_id(namespace: tuple[str, ...], key: str, user: str | None = None) -> str:
    parts: list[Any] = [list(namespace), key] if user is None else [list(namespace), key, user]
    digest = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()
    return f"lg-{digest}"


def _check_value(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidStoreValue(f"store values must be dicts (a mapping with string keys), got {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise InvalidStoreValue("store value keys must be strings")
    # a value is kept at metadata["langgraph"]["value"]: two levels below the cube's metadata nesting limit
    check_nesting(dict(value), "store value", MAX_METADATA_DEPTH - 2)
    try:
        return json.loads(json.dumps(dict(value), allow_nan=False))
    except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested thousands of levels deep
        raise InvalidStoreValue(f"store values must be JSON-serialisable: {exc}") from None


@_typed_namespaces
class MemOSStore(BaseStore):
    """A LangGraph ``BaseStore`` whose items are MemOS memories (durable, versioned, hybrid-searchable).

    Use it wherever LangGraph takes a store: ``create_agent(..., store=store)``,
    ``graph.compile(store=store)``, ``runtime.store`` in nodes and middleware, LangMem's memory tools.

    Parameters
    ----------
    memory:
        A ``MemOS`` facade, a :class:`MemCube`, a folder path (a cube is created there if needed), or a
        ``postgresql://`` store URL (see ``vector_index``).
    cube:
        With a ``MemOS`` facade: the name of the cube to use (default: its default cube).
    index:
        LangGraph's ``IndexConfig``. ``fields`` chooses the text that is embedded and indexed (default ``["$"]``,
        the whole value). ``embed`` (any LangChain ``Embeddings``, callable or ``"provider:model"`` string) is
        only accepted when ``memory`` is a path: a cube keeps the embedder it was built with; ``dims`` is
        checked against it. Leave ``index`` out to search with the cube's own embedder; pass ``index=False``
        for a plain key-value store (queries are then ignored, as in LangGraph stores without an index).
    ttl:
        LangGraph's ``TTLConfig``: ``default_ttl`` (minutes), ``refresh_on_read`` (default true) and
        ``sweep_interval_minutes`` (used by :meth:`start_ttl_sweeper`).
    scope_templates:
        Namespace patterns whose ``{user_id}`` / ``{agent_id}`` / ``{session_id}`` labels become the memory's
        scope (see the module docs). ``()`` disables the mapping.
    search_mode:
        ``"hybrid"`` (default), ``"dense"`` or ``"lexical"``: the core retrieval used for queries.
    actor:
        The principal the store acts as (default: the cube's own actor). The cube's governance checks its
        rights on every operation: reads need **read**, puts and deletes **write**, :meth:`sweep_ttl`
        **administer**; a refusal raises :class:`memos_core.PermissionDenied`.
    single_user:
        ``True`` for an app with one user: every item goes to one fixed user scope, whatever the namespace
        (see "Whose memory an item is" in the module docs).
    vector_index:
        With a ``postgresql://`` store URL as ``memory`` only: its Chroma server, ``"http://host:port"``
        (default ``$MEMOS_INDEX``). Every other adapter class calls this ``index=``; here ``index`` is
        LangGraph's ``IndexConfig``.
    progress:
        A progress bar for a :meth:`batch` of at least ``memos_core.log.PROGRESS_MIN`` (200) puts, as for a bulk
        ingest: ``None`` (default) shows one only in a terminal, unless ``MEMOS_PROGRESS=0``
        (``MEMOS_PROGRESS=1`` shows it anywhere); ``True`` / ``False`` force it on / off. The embedding of the
        new items shows its own bar under the same rule.
    """

    supports_ttl: bool = True

    def __init__(self, memory: Any, *, cube: str | None = None, index: IndexConfig | bool | None = None,
                 ttl: TTLConfig | None = None, scope_templates: Sequence[Sequence[str]] = DEFAULT_SCOPE_TEMPLATES,
                 search_mode: str = "hybrid", actor: str | None = None, single_user: bool = False,
                 vector_index: str | None = None, progress: bool | None = None) -> None:
        if isinstance(index, str):
            raise ValidationError(
                "MemOSStore: index= is LangGraph's IndexConfig ({'dims': ..., 'embed': ..., 'fields': [...]}, or "
                "False); name the Chroma server of a postgresql:// store URL with vector_index='http://host:port'")
        self._rule = UserRule(memory, single_user=single_user, adapter="MemOSStore",
                              how="use namespaces that name the user (scope_templates; default "
                                  "('memories', '{user_id}'), e.g. ('memories', 'ann'))")
        embedder = None
        if isinstance(index, Mapping) and index.get("embed") is not None:
            if isinstance(memory, MemCube) or hasattr(memory, "cubes"):
                raise ValidationError(
                    "index['embed'] can only be used when MemOSStore opens the cube from a path; an existing cube "
                    "keeps the embedder it was built with (leave 'embed' out)")
            embedder = ensure_embeddings(index["embed"])
        # the MemOS is kept too: one opened from a path is the process's shared one, closed when nothing holds it
        self.cube: MemCube
        self.cube, self._memos = resolve_cube_memos(memory, cube, embedder=embedder, adapter="MemOSStore",
                                                    index=vector_index)
        self.index_config: IndexConfig | None
        if index is False:
            self.index_config = None
        else:
            self.index_config = dict(index) if isinstance(index, Mapping) else {}  # type: ignore[assignment]
            dims = self.index_config.get("dims") if self.index_config else None
            if dims is not None and dims != self.cube.embedder.dim:
                raise EmbeddingDimensionError(
                    f"index['dims']={dims} but the cube's embedder produces {self.cube.embedder.dim} dimensions")
        fields = (self.index_config or {}).get("fields") or ["$"]
        self._fields: list[tuple[str, Any]] = [(f, f if f == "$" else tokenize_path(f)) for f in fields]
        self.ttl_config = ttl
        if search_mode not in ("hybrid", "dense", "lexical"):
            raise ValidationError(f"search_mode must be 'hybrid', 'dense' or 'lexical', not {search_mode!r}")
        self.search_mode = search_mode
        self.scope_templates = tuple(tuple(t) for t in scope_templates)
        for tpl in self.scope_templates:
            for label in tpl:
                if label.startswith("{") and label not in _PLACEHOLDERS:
                    raise ValidationError(f"unknown placeholder {label!r} in scope template {tpl}; "
                                          f"use one of {sorted(_PLACEHOLDERS)}")
        self.actor = actor or principal_of(memory)
        self._as: dict[str, Any] = {} if self.actor is None else {"actor": self.actor}
        self._write_lock = threading.RLock()  # resolve-then-write of a key is one step within this process
        self._sweeper: threading.Thread | None = None
        self._sweeper_stop = threading.Event()
        self.progress = progress

    # ------------------------------------------------------------------ BaseStore
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Execute ops in order; consecutive puts are written together (one transaction for new items). A batch
        of many puts shows a progress bar (see ``progress``)."""
        ops = list(ops)
        for op in ops:
            self._validate(op)
        puts = sum(isinstance(op, PutOp) for op in ops)
        with Progress(puts, "storing items", unit="item", progress=self.progress, minimum=PROGRESS_MIN) as bar:
            return self._batch(ops, bar)

    def _batch(self, ops: list[Op], bar: Progress) -> list[Result]:
        results: list[Result] = [None] * len(ops)
        i = 0
        while i < len(ops):
            op = ops[i]
            if isinstance(op, PutOp):
                j = i
                while j < len(ops) and isinstance(ops[j], PutOp):
                    j += 1
                self._apply_puts(ops[i:j], bar)  # type: ignore[arg-type]
                i = j
                continue
            if isinstance(op, GetOp):
                j = i
                while j < len(ops) and isinstance(ops[j], GetOp):
                    j += 1
                results[i:j] = self._get_many(ops[i:j])  # type: ignore[arg-type]
                i = j
                continue
            if isinstance(op, SearchOp):
                results[i] = self._search(op)
            elif isinstance(op, ListNamespacesOp):
                results[i] = self._list_namespaces(op)
            i += 1
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await run_sync(self.batch, list(ops))

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate(op: Any) -> None:
        if isinstance(op, PutOp):
            _validate_labels(op.namespace, for_put=True)
            if not isinstance(op.key, str):
                raise ValidationError(f"key must be a string, got {type(op.key).__name__}")
            check_text(op.key, "key")
            if op.value is not None:
                _check_value(op.value)
            if op.index not in (None, False) and (isinstance(op.index, str) or not isinstance(op.index, list)
                                                  or not all(isinstance(f, str) for f in op.index)):
                raise ValidationError("index must be None, False or a list of field paths")
            if op.ttl is not None and (isinstance(op.ttl, bool) or not isinstance(op.ttl, (int, float))
                                       or not 0 < op.ttl <= MAX_TTL_SECONDS / 60):  # also refuses inf and nan
                raise ValidationError(f"ttl must be a positive number of minutes (at most {MAX_TTL_SECONDS / 60:.3g}) "
                                      f"or None, got {str(op.ttl)[:40]}")
        elif isinstance(op, GetOp):
            _validate_labels(op.namespace)
            if not isinstance(op.key, str):
                raise ValidationError(f"key must be a string, got {type(op.key).__name__}")
            check_text(op.key, "key")
        elif isinstance(op, SearchOp):
            _validate_labels(op.namespace_prefix)
            if op.filter is not None and not isinstance(op.filter, Mapping):
                raise ValidationError(f"filter must be a dict, got {type(op.filter).__name__}")
            if op.filter is not None:
                check_nesting(dict(op.filter), "filter")
            for name, val in (("limit", op.limit), ("offset", op.offset)):
                if isinstance(val, bool) or not isinstance(val, int) or val < 0:
                    raise ValidationError(f"{name} must be a non-negative integer, got {val!r}")
            if op.query is not None and not isinstance(op.query, str):
                raise ValidationError("query must be a string")
        elif isinstance(op, ListNamespacesOp):
            for cond in op.match_conditions or ():
                if cond.match_type not in ("prefix", "suffix"):
                    raise ValueError(f"Unsupported match type: {cond.match_type}")
                _validate_labels(cond.path)
            if op.max_depth is not None and (not isinstance(op.max_depth, int) or op.max_depth < 1):
                raise ValidationError("max_depth must be a positive integer or None")
        else:
            raise ValueError(f"Unknown operation type: {type(op)}")

    # ------------------------------------------------------------------ mapping helpers
    def _resolve(self, namespace: tuple[str, ...], key: str,
                 scope: dict[str, str] | None = None) -> tuple[str, MemoryItem | None]:
        """The memory id for (namespace, key) and the memory in any state (None if never written).

        A purged memory's id cannot be reused, so a key written again after a purge gets ``<id>-2``, ...
        """
        scope = self._op_scope(namespace) if scope is None else scope
        base = _item_id(namespace, key, None if scope.pop("_from_ns", False) else scope["user_id"])
        item_id, n = base, 1
        item = self.cube.lookup(item_id, **self._as)
        while item is not None and item.state == _S.PURGED:
            n += 1
            item_id = f"{base}-{n}"
            item = self.cube.lookup(item_id, **self._as)
        if item is not None and item.scope.user_id != scope["user_id"]:
            raise PermissionDenied(f"the key {key!r} in {namespace} belongs to another user scope")
        return item_id, item

    def memory_id(self, namespace: tuple[str, ...], key: str) -> str:
        """The id of the MemOS memory that holds (or would hold) ``namespace``/``key``: use it with the core's
        ``history``, ``rollback``, ``get(include_deleted=True)``, ``legal_hold`` ..."""
        return self._resolve(_validate_labels(namespace), str(key))[0]

    def _op_scope(self, namespace: tuple[str, ...]) -> dict[str, Any]:
        """The scope of an operation on ``namespace`` (or a search/list prefix): the template's labels plus the
        user (see the module docs; raises UserRequired / PermissionDenied). ``_from_ns``: the user is the
        namespace's own label, so the item id needs no user mixed in."""
        scope: dict[str, Any] = dict(self._scope(namespace))
        label = scope.get("user_id")
        if label == "*":  # a wildcard in a list_namespaces prefix names no user
            label = None
            scope.pop("user_id")
        scope["user_id"] = self._rule.user(label)
        scope["_from_ns"] = label is not None and label == scope["user_id"]
        return scope

    def _scope(self, namespace: tuple[str, ...]) -> dict[str, str]:
        for tpl in self.scope_templates:
            if len(namespace) < len(tpl):
                continue
            scope: dict[str, str] = {}
            for want, have in zip(tpl, namespace):
                axis = _PLACEHOLDERS.get(want)
                if axis is not None:
                    if len(have) > 256:
                        raise InvalidNamespace(f"namespace label {have[:40]!r}... is used as {axis} and must "
                                               "be at most 256 characters")
                    scope[axis] = have
                elif want != have:
                    break
            else:
                return scope
        return {}

    def _index_text(self, value: dict[str, Any], index: Any) -> str | None:
        if self.index_config is None or index is False:
            return None
        paths = self._fields if index is None else [(f, f if f == "$" else tokenize_path(f)) for f in index]
        texts: list[str] = []
        for _, tokens in paths:
            if tokens == "$":  # the whole value, as text (its "content" field, else its fields), never raw JSON
                found = [value_text(value)]
            else:  # a field holding an object or a list comes back as JSON: render it as text too
                found = [_json_text(t) for t in get_text_at_path(value, tokens)]
            texts.extend(t for t in found if t and t.strip())
        return "\n".join(texts) if texts else None

    def _content(self, text: str) -> str:
        limit = self.cube.max_content_chars
        return text if len(text) <= limit else text[:limit]

    def _meta(self, namespace: tuple[str, ...], key: str, value: dict[str, Any], indexed: bool,
              ttl: float | None) -> dict[str, Any]:
        return {META_KEY: {"path": json.dumps(list(namespace), ensure_ascii=False),
                           "ns": {str(i): label for i, label in enumerate(namespace)},
                           "depth": len(namespace), "key": key, "value": value, "indexed": indexed, "ttl": ttl}}

    @staticmethod
    def _to_item(item: MemoryItem, score: float | None = None, search: bool = False) -> Item:
        lg = item.metadata[META_KEY]
        ns = tuple(json.loads(lg["path"]))
        if search:
            return SearchItem(namespace=ns, key=lg["key"], value=lg["value"], created_at=item.created_at,
                              updated_at=item.updated_at, score=score)
        return Item(namespace=ns, key=lg["key"], value=lg["value"], created_at=item.created_at,
                    updated_at=item.updated_at)

    def _refresh(self, items: Iterable[MemoryItem], refresh: bool) -> None:
        if not refresh:
            return
        ttls = {it.id: float(it.metadata[META_KEY]["ttl"]) * 60.0 for it in items
                if it.metadata[META_KEY].get("ttl") and it.expires_at is not None}
        if ttls:
            self.cube.refresh_expiry(ttls, **self._as)

    # ------------------------------------------------------------------ ops
    def _apply_puts(self, ops: Sequence[PutOp], bar: Progress | None = None) -> None:
        with self._write_lock:
            self._apply_puts_locked(ops, bar or Progress(0, "", progress=False))

    def _apply_puts_locked(self, ops: Sequence[PutOp], bar: Progress) -> None:
        last: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for op in ops:  # last write wins within a run of puts, as in every LangGraph store
            last.pop((tuple(op.namespace), op.key), None)
            last[(tuple(op.namespace), op.key)] = op
        bar.update(len(ops) - len(last))  # overwritten within the run: done
        new: list[dict[str, Any]] = []
        scopes = {(ns, key): self._op_scope(ns) for (ns, key) in last}  # every op's user first: all or nothing
        for (ns, key), op in last.items():
            scope = scopes[(ns, key)]
            item_id, existing = self._resolve(ns, key, dict(scope))
            if op.value is None:
                def delete(found: MemoryItem | None, item_id: str = item_id) -> None:
                    if found is not None and found.state not in (_S.DELETED, _S.PURGED):
                        self.cube.delete(item_id, reason="langgraph delete", **self._as)

                self._retrying(ns, key, scope, existing, delete)
                bar.update(1)
                continue
            value = _check_value(op.value)
            text = self._index_text(value, op.index)
            indexed = text is not None
            content = self._content(text if indexed else (value_text(value).strip() or
                                                          json.dumps(value, sort_keys=True, ensure_ascii=False)))
            meta = self._meta(ns, key, value, indexed, op.ttl)
            if existing is None:
                spec: dict[str, Any] = {
                    "id": item_id, "content": content, "kind": MemoryKind.NOTE, "metadata": meta,
                    "provenance": {"source": SourceKind.TOOL, "source_ids": ["/".join(ns) + "/" + key],
                                   "extractor": _EXTRACTOR},
                    **{a: v for a, v in scope.items() if a != "_from_ns"}}
                if op.ttl is not None:
                    spec["ttl"] = timedelta(minutes=op.ttl)
                new.append(spec)
                continue
            self._retrying(ns, key, scope, existing, lambda found, item_id=item_id, content=content, meta=meta,
                           ttl=op.ttl: self._overwrite(item_id, found, content, meta, ttl))
            bar.update(1)
        if new:
            try:
                self.cube.add_many(new, progress=self.progress if bar.shown else False, **self._as)
                bar.update(len(new))
            except (ValidationError, Conflict):
                # Another process wrote one of these keys between our lookup and our add (the whole add was
                # rolled back): write them one by one, overwriting what now exists.
                if all(self.cube.lookup(spec["id"], **self._as) is None for spec in new):
                    raise
                by_id = {spec["id"]: op for (ns, key), op in last.items()
                         for spec in new if spec["id"] == self._resolve(ns, key)[0]}
                self._apply_puts_locked(list(by_id.values()), bar)

    def _retrying(self, ns: tuple[str, ...], key: str, scope: dict[str, Any], existing: MemoryItem | None,
                  write: Any) -> None:
        """``write(existing)``, read again and retried when another worker's write collided with it (a put is an
        upsert: :func:`memos_langchain._common.write_retrying`)."""
        write_retrying(existing, lambda: self._resolve(ns, key, dict(scope))[1], write)

    def _overwrite(self, item_id: str, existing: MemoryItem, content: str, meta: dict[str, Any],
                   ttl: float | None) -> None:
        if existing.state == _S.DELETED:
            existing = self.cube.restore(item_id, reason="langgraph put after delete", **self._as)
        elif existing.state in (_S.ARCHIVED, _S.MERGED):
            existing = self.cube.transition(item_id, _S.ACTIVATED, reason="langgraph put", **self._as)
        expires_at = None if ttl is None else self.cube._now() + timedelta(minutes=ttl)
        if existing.content == content and existing.metadata == meta and existing.state != _S.FROZEN:
            if ttl is not None:  # same value: only the TTL restarts (no new version)
                if not self.cube.refresh_expiry({item_id: ttl * 60.0}, **self._as):
                    self.cube.update(item_id, expires_at=expires_at, reason="langgraph put (ttl)",
                                     **self._as)
            elif existing.expires_at is not None:
                self.cube.update(item_id, expires_at=None, reason="langgraph put (no ttl)", **self._as)
            return
        self.cube.update(item_id, content=content, metadata=meta, expires_at=expires_at, reason="langgraph put",
                         **self._as)

    def _get_many(self, ops: Sequence[GetOp]) -> list[Item | None]:
        ids = [self._resolve(tuple(op.namespace), op.key)[0] for op in ops]  # each resolves (and checks) its user
        found = {it.id: it for it in self.cube.list(
            {"ids": sorted(set(ids)), "metadata": {f"{META_KEY}.key": {"$exists": True}}}, limit=len(set(ids)),
            **self._as)}
        self._refresh([found[i] for i, op in zip(ids, ops) if i in found and op.refresh_ttl], True)
        return [self._to_item(found[i]) if i in found else None for i in ids]

    def _filter(self, prefix: tuple[str, ...], value_filter: Mapping[str, Any] | None) -> dict[str, Any]:
        meta: dict[str, Any] = {f"{META_KEY}.key": {"$exists": True}}
        for i, label in enumerate(prefix):
            meta[f"{META_KEY}.ns.{i}"] = label
        for key, cond in _flatten_filter(value_filter or {}, ()):
            meta[f"{META_KEY}.value.{key}"] = cond
        return {"metadata": meta, "user_id": self._op_scope(prefix)["user_id"]}

    def _search(self, op: SearchOp) -> list[SearchItem]:
        base = self._filter(tuple(op.namespace_prefix), op.filter)
        if op.limit == 0:
            return []
        want = op.offset + op.limit
        if op.query and op.query.strip() and self.index_config is not None:
            ranked_filter = {**base, "metadata": {**base["metadata"], f"{META_KEY}.indexed": True}}
            if want > 1000:  # the core ranks at most 1000: fine when no more than that can match, as in LangGraph
                if self.cube.list(ranked_filter, limit=1, offset=1000, **self._as):
                    raise ValidationError(f"a query search ranks at most 1000 items and more than 1000 match; "
                                          f"offset + limit is {want} (narrow the namespace or filter, or search "
                                          "without a query to page further)")
            k = min(want, 1000)
            hits = self.cube.search(op.query, k=k, filter=ranked_filter, mode=self.search_mode, **self._as)  # type: ignore[arg-type]
            page: list[tuple[MemoryItem, float | None]] = [(h.item, h.score) for h in hits]
            if len(hits) < k:  # ranked ones exhausted: the unindexed ones follow, unscored
                rest = self.cube.list({**base, "metadata": {**base["metadata"], f"{META_KEY}.indexed": False}},
                                      limit=want - len(page), **self._as)
                page += [(it, None) for it in rest]
            page = page[op.offset:want]
        else:
            page = [(it, None) for it in self.cube.list(base, limit=op.limit, offset=op.offset, **self._as)]
        self._refresh([it for it, _ in page], op.refresh_ttl)
        return [self._to_item(it, score, search=True) for it, score in page]  # type: ignore[misc]

    def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        meta: dict[str, Any] = {f"{META_KEY}.key": {"$exists": True}}
        prefix: tuple[str, ...] = ()
        for cond in op.match_conditions or ():  # push exact prefix labels down to the core's filter
            if cond.match_type == "prefix":
                prefix = prefix or tuple(cond.path)
                for i, label in enumerate(cond.path):
                    if label != "*":
                        meta[f"{META_KEY}.ns.{i}"] = label
        user = self._op_scope(prefix)["user_id"]  # the prefix (or the bound view) must name the user
        paths = self.cube.distinct_metadata(f"{META_KEY}.path", {"metadata": meta, "user_id": user}, **self._as)
        namespaces = [tuple(json.loads(p)) for p in paths]
        if op.match_conditions:
            namespaces = [ns for ns in namespaces if all(_matches(c, ns) for c in op.match_conditions)]
        if op.max_depth is not None:
            namespaces = sorted({ns[:op.max_depth] for ns in namespaces})
        else:
            namespaces = sorted(set(namespaces))
        return namespaces[op.offset:op.offset + op.limit]

    # ------------------------------------------------------------------ TTL
    def sweep_ttl(self) -> int:
        """Tombstone every expired memory of the cube through the core's retention sweep; returns how many.

        Expired items are already invisible to reads; the sweep moves them to ``deleted`` (kept with their
        history until a purge, like any MemOS delete)."""
        return len(self.cube.expire(action="delete", **self._as))

    async def asweep_ttl(self) -> int:
        return await run_sync(self.sweep_ttl)

    def start_ttl_sweeper(self, sweep_interval_minutes: float | None = None) -> threading.Thread:
        """Sweep expired items periodically in a daemon thread (interval: argument, else
        ``ttl['sweep_interval_minutes']``, else 5 minutes). Stop it with :meth:`stop_ttl_sweeper`."""
        if self._sweeper is not None and self._sweeper.is_alive():
            return self._sweeper
        minutes = sweep_interval_minutes or (self.ttl_config or {}).get("sweep_interval_minutes") or 5
        self._sweeper_stop.clear()

        def loop() -> None:
            while not self._sweeper_stop.wait(float(minutes) * 60.0):
                try:
                    self.sweep_ttl()
                except Exception:  # noqa: BLE001 - a sweep failure must not kill the sweeper
                    log.exception("TTL sweep failed")

        self._sweeper = threading.Thread(target=loop, name="memos-ttl-sweeper", daemon=True)
        self._sweeper.start()
        return self._sweeper

    def stop_ttl_sweeper(self, timeout: float | None = None) -> bool:
        """Stop the sweeper thread; returns whether it stopped within ``timeout``."""
        self._sweeper_stop.set()
        if self._sweeper is None:
            return True
        self._sweeper.join(timeout)
        stopped = not self._sweeper.is_alive()
        if stopped:
            self._sweeper = None
        return stopped

    def __repr__(self) -> str:
        return f"MemOSStore(cube={self.cube!r})"



def _flatten_filter(flt: Mapping[str, Any], path: tuple[str, ...]) -> list[tuple[str, Any]]:
    """LangGraph filter -> (dotted value key, core condition) pairs. Nested dicts without operators compare
    nested fields; operator dicts pass through (checked by the core's ``SearchFilter``)."""
    out: list[tuple[str, Any]] = []
    for key, cond in flt.items():
        if not isinstance(key, str) or not key or not all(c.isalnum() or c in "_-" for c in key):
            raise ValidationError(f"filter key {key!r}: use letters, digits, '_' or '-' (nest dicts for nested "
                                  "fields)")
        here = (*path, key)
        if isinstance(cond, Mapping) and cond and all(isinstance(k, str) and k.startswith("$") for k in cond):
            bad = [k for k in cond if k not in _LG_OPS]
            if bad:
                raise ValidationError(f"Unsupported operator: {bad[0]} (filter on {'.'.join(here)!r}); use one of "
                                      f"{sorted(_LG_OPS)}")
            out.append((".".join(here), dict(cond)))
        elif isinstance(cond, Mapping):
            if any(isinstance(k, str) and k.startswith("$") for k in cond):
                raise ValidationError(f"filter on {'.'.join(here)!r} mixes operators and fields")
            if not cond:
                raise ValidationError(f"filter on {'.'.join(here)!r} is an empty dict")
            out.extend(_flatten_filter(cond, here))
        elif isinstance(cond, (list, tuple)):
            raise ValidationError(f"filter on {'.'.join(here)!r}: list equality is not supported; use $in for "
                                  "one-of matches")
        else:
            out.append((".".join(here), cond))
    return out


def _json_text(text: str) -> str:
    """A text found at an index path; JSON (an object or list at that path) becomes its text."""
    s = text.strip()
    if s[:1] in "{[" and s[-1:] in "}]":
        try:
            return value_text(json.loads(s))
        except ValueError:
            pass
    return text


def _matches(cond: MatchCondition, ns: tuple[str, ...]) -> bool:
    path = tuple(cond.path)
    if len(ns) < len(path):
        return False
    pairs = zip(ns, path) if cond.match_type == "prefix" else zip(reversed(ns), reversed(path))
    return all(p == "*" or n == p for n, p in pairs)
