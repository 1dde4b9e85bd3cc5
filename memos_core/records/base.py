"""The record-store seam: one typed interface for the system of record, whatever engine holds it.

In the spirit of LangGraph's ``BaseStore``: a backend implements a small set of typed primitive operations
(the abstract methods below) and everything else is derived here once, so SQLite (the embedded default) and
PostgreSQL (shared by many workers) behave the same and pass the same contract suite
(``tests/test_records_contract.py``). Nothing outside ``memos_core/records/`` speaks SQL.

What every backend guarantees (and the contract suite checks):

* **Transactions.** :meth:`RecordStore.transaction` yields an opaque handle (:data:`Txn`); every write method
  takes it, and the whole block commits durably (fsync'd) or not at all. Reads made with the handle see the
  block's own writes. Reads made without it see committed data only.
* **Versions.** :meth:`replace_item` with ``new_version`` writes version ``item.version`` only if the stored
  row is still at ``item.version - 1``; otherwise it raises :class:`~memos_core.errors.Conflict` and the
  transaction rolls back. Concurrent writers therefore end in success or ``Conflict``, never a lost or a
  duplicated version, and versions stay contiguous.
* **The audit chain** (:meth:`append_event`) is one hash chain per cube; appends are serialized per cube (a
  lock held until commit), so concurrent writers on many hosts still produce one verifiable chain. Sequence
  numbers never repeat: the high-water mark is kept transactionally, so a deleted tail shows as a gap.
* **Derived indexes.** The lexical index lives with the records and changes in the same transaction. The
  vector index (Chroma) is derived: a write that changes what should be in it marks the row *pending* in the
  same transaction; the cube pushes pending rows after commit (:meth:`index_rows`) and clears them
  (:meth:`mark_vectors_applied`). The records can never be rebuilt from the vector index.
* **Erasure.** :meth:`erase_item` leaves no content in live rows (item, versions, transitions, embedding,
  lexical entries, pending marks). What the engine keeps below the live rows (SQLite free pages are
  overwritten: ``secure_delete``; PostgreSQL dead tuples and WAL until VACUUM/checkpoint) is documented per
  backend, and :meth:`compact_erased` is the hook that removes it as far as the engine allows.
* **Unavailability.** A backend that cannot be reached raises :class:`~memos_core.errors.BackendUnavailable`
  (typed, retryable); nothing is half-written.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, NamedTuple, Sequence

import numpy as np

from ..items import LifecycleState, MemoryItem, MemoryVersion, SearchFilter, Transition
from ..lifecycle import INDEXED as _INDEXED

__all__ = [
    "RecordStore",
    "CompiledFilter",
    "CandidateReads",
    "Txn",
    "IndexRow",
    "EventRow",
    "GENESIS_HASH",
    "event_hash",
    "canonical_json",
    "match_terms",
]

#: The hash a chain starts from (``prev_hash`` of the first record).
GENESIS_HASH = "0" * 64

#: An open transaction of a backend (a connection or cursor); opaque outside ``records/``.
Txn = Any

#: One audit record verbatim: (seq, at, actor, op, item_id, outcome, detail JSON text, prev_hash, hash).
EventRow = tuple[int, float, "str | None", str, "str | None", str, str, str, str]


class IndexRow(NamedTuple):
    """What the vector index needs for one row (``vec`` is None when the item has no embedding now)."""

    rowid: int
    id: str
    state: str
    kind: str
    user_id: str | None
    agent_id: str | None
    session_id: str | None
    vec: bytes | None


class CandidateReads(NamedTuple):
    """What :meth:`RecordStore.candidates_passing` read: the vector-index hits passing the filter (``{id:
    rowid}``), each candidate's row (``{rowid: (float32 embedding bytes or None, content, metadata value)}``)
    and, when asked for and read in the same query, a loader of each candidate's full item (``{rowid:
    callable -> MemoryItem}``; a backend that does not read them there leaves it empty) and, read with the items,
    each candidate's topic vector (``{rowid: blob, or None when it has none}``, as :meth:`RecordStore.topic_vectors`;
    a row left out was not read: empty where the backend does not read them there). Read-only."""

    passing: dict[str, int]
    rows: dict[int, tuple[bytes | None, str, Any]]
    items: dict[int, Callable[[], MemoryItem]]
    topics: dict[int, bytes | None] = {}


class CompiledFilter(NamedTuple):
    """A :class:`SearchFilter` compiled by one backend for one query (opaque to callers: pass it back to the
    same store's :meth:`RecordStore.lexical`, :meth:`~RecordStore.filtered_vectors`, ... ). What ``where`` and
    ``args`` hold is the backend's business (SQL with its own placeholders for both backends here)."""

    where: str
    args: list[Any]


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def event_hash(prev_hash: str, seq: int, at: float, actor: str | None, op: str, item_id: str | None,
               outcome: str, detail: str) -> str:
    """The hash of one event record: sha256 over the previous hash and the record's canonical JSON."""
    body = canonical_json([seq, repr(float(at)), actor, op, item_id, outcome, detail])
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


def match_terms(match: str) -> list[str]:
    """The terms of a lexical match expression (``"a" OR "b"``, as :func:`memos_core.plaintext.fts_query`
    builds it: quoted terms OR-ed, quotes doubled inside). Backends without FTS5 translate from these."""
    out: list[str] = []
    for part in match.split(" OR "):
        p = part.strip()
        if len(p) >= 2 and p[0] == p[-1] == '"':
            p = p[1:-1].replace('""', '"')
        if p:
            out.append(p)
    return out


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


class RecordStore(ABC):
    """The durable system of record of one cube. See the module docstring for the guarantees.

    Write methods take the :data:`Txn` handle that :meth:`transaction` yields. ``rowid`` is the store's
    integer key of an item (stable for the item's life, never reused by the same store).
    """

    #: ``"sqlite"`` or ``"postgresql"``
    backend: str = ""
    #: the schema version this code writes
    schema_version: int = 1

    # ------------------------------------------------------------------ lifecycle
    @abstractmethod
    def transaction(self) -> AbstractContextManager[Txn]:
        """One all-or-nothing, durable transaction. Called while this thread already has one of this store open,
        a backend nests it (a savepoint, undone alone when its block raises, committed or rolled back with the
        open transaction: SQLite and PostgreSQL); it never opens a second, independent transaction."""

    def derived_transaction(self) -> AbstractContextManager[Txn]:
        """A transaction that writes only derived data the cube recomputes when it is lost (deferred embeddings):
        all-or-nothing like :meth:`transaction`, but a backend may skip its own flush to disk (it must still
        survive a crash of the process, and never weaken an earlier durable commit). Default: :meth:`transaction`."""
        return self.transaction()

    @abstractmethod
    def read_snapshot(self) -> AbstractContextManager[None]:
        """A block whose reads (on this thread) all see one consistent state, e.g. the audit chain together
        with the evidence kept beside it. Inside a write transaction it is that transaction."""

    @abstractmethod
    def in_transaction(self) -> bool:
        """Whether the calling thread has a transaction of this store open (work handed to another thread
        then could not join it)."""

    @abstractmethod
    def close(self) -> None:
        """Flush buffered counters and release connections. Closing twice is a no-op."""

    @property
    @abstractmethod
    def closed(self) -> bool: ...

    @abstractmethod
    def flush(self) -> None:
        """Write buffered usage counters and index bookkeeping now."""

    @abstractmethod
    def stored_schema_version(self) -> int:
        """The schema version the database is at (after the migrations run on open)."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    def set_meta(self, c: Txn, key: str, value: str) -> None: ...

    @abstractmethod
    def setdefault_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there (one transaction); return the stored value.
        Workers creating the same cube at once agree on one manifest."""

    # ------------------------------------------------------------------ item reads
    @abstractmethod
    def get_many(self, ids: Sequence[str]) -> dict[str, MemoryItem]:
        """Items by id (any state); unknown ids are absent from the result."""

    @abstractmethod
    def get_many_by_rowid(self, rowids: Sequence[int]) -> dict[int, MemoryItem]: ...

    @abstractmethod
    def rowids_of(self, ids: Sequence[str], c: Txn | None = None) -> dict[str, tuple[int, str]]:
        """``{id: (rowid, state)}`` for the ids that exist (with ``c``: as seen inside that transaction)."""

    @abstractmethod
    def count_by_state(self) -> dict[str, int]: ...

    @abstractmethod
    def iter_items(self, batch: int = 1000, states: Iterable[LifecycleState] | None = None) -> Iterator[MemoryItem]:
        """Every item (optionally in some states) in rowid order, read in batches."""

    @abstractmethod
    def versions(self, item_id: str) -> list[MemoryVersion]:
        """Every stored version of an item, oldest first."""

    @abstractmethod
    def transitions(self, item_id: str) -> list[Transition]: ...

    def erasure_candidates(self, c: Txn | None, user_id: str | None, agent_id: str | None,
                           fragments: Sequence[str]) -> list[int]:
        """Rowids of the items of exactly this user/agent scope whose index text may hold any of ``fragments``
        now or in an earlier version: those whose current index text contains one, and every item past version 1
        (its versions are checked by the caller). A superset of what forget must re-derive
        (:mod:`memos_core.erasure`), found without loading the scope. This default scans the scope;
        backends answer it in SQL."""
        cf = self.compile_filter(SearchFilter(user_id=user_id, agent_id=agent_id), list(LifecycleState),
                                 float("-inf"))
        rowids = self.list_rowids(cf, "created", 1 << 62, 0)
        out: list[int] = []
        for s in range(0, len(rowids), 500):
            for rowid, it in self.get_many_by_rowid(rowids[s:s + 500]).items():
                if it.scope.user_id != user_id or it.scope.agent_id != agent_id:
                    continue
                if it.version > 1 or any(it.index_text and f in it.index_text for f in fragments):
                    out.append(rowid)
        return sorted(out)

    @abstractmethod
    def items_citing(self, c: Txn, parent_id: str) -> list[tuple[str, str]]:
        """``(id, provenance JSON)`` of items whose provenance text mentions ``parent_id`` (a superset of the
        items derived from it; the caller checks ``parent_ids`` / ``parent_versions``)."""

    @abstractmethod
    def expired_ids(self, now: float, states: Sequence[LifecycleState]) -> list[str]:
        """Ids of items in ``states`` whose ``expires_at`` is at or before ``now``, oldest first."""

    # ------------------------------------------------------------------ item writes (inside transaction())
    @abstractmethod
    def insert_item(self, c: Txn, item: MemoryItem, vec: np.ndarray | None, indexed: bool,
                    author: str | None, reason: str | None) -> int:
        """Insert a new item (version snapshot included; lexical + vector index when ``indexed``). A taken id
        raises ValidationError. Returns its rowid."""

    @abstractmethod
    def replace_item(self, c: Txn, rowid: int, item: MemoryItem, vec: np.ndarray | None,
                     indexed: bool, new_version: bool, author: str | None, reason: str | None) -> None:
        """Write the item's current row (and, with ``new_version``, the snapshot of ``item.version``, checked
        against the stored version: :class:`Conflict` when someone else wrote first)."""

    @abstractmethod
    def set_state(self, c: Txn, rowid: int, item_id: str, old: LifecycleState | None, new: LifecycleState,
                  at: float, actor: str | None, reason: str | None) -> None:
        """Record a lifecycle transition (the state column and the transitions log)."""

    @abstractmethod
    def unindex(self, c: Txn, rowid: int) -> None:
        """Drop the item from the lexical index and its embedding; mark it pending for the vector index."""

    @abstractmethod
    def reindex_row(self, c: Txn, rowid: int, item: MemoryItem, vec: np.ndarray) -> None: ...

    @abstractmethod
    def mark_pending(self, c: Txn, rowid: int) -> None:
        """Mark a row for the vector index (e.g. its state, carried in the index's metadata, changed)."""

    @abstractmethod
    def refresh_expiry(self, c: Txn, item_id: str, expires_at: float, now: float,
                       states: Sequence[LifecycleState]) -> bool:
        """Set ``expires_at`` of a live item in ``states`` that has an expiry not yet passed; True if it did."""

    @abstractmethod
    def erase_content(self, c: Txn, rowid: int, item_id: str) -> None:
        """Purge: blank the content of the item and every version (the tombstone row and history stay)."""

    @abstractmethod
    def erase_item(self, c: Txn, rowid: int, item_id: str) -> None:
        """Forget: delete the item row, every version, its transitions, embedding and lexical entries."""

    @abstractmethod
    def restore_item(self, c: Txn, item: MemoryItem, versions: Sequence[MemoryVersion],
                     transitions: Sequence[Transition], vec: np.ndarray | None, indexed: bool) -> int:
        """Insert an item exactly as exported (its id, state, version, history): bundles and migration."""

    # ------------------------------------------------------------------ usage
    @abstractmethod
    def record_usage(self, rowids: Iterable[int], at: float) -> None:
        """Buffer access counts; written with the next transaction or :meth:`flush` (not fsync'd per search)."""

    # ------------------------------------------------------------------ audit chain
    @abstractmethod
    def append_event(self, c: Txn, at: float, actor: str | None, op: str, item_id: str | None,
                     outcome: str = "ok", detail: Mapping[str, Any] | None = None) -> str:
        """Append one record to the cube's hash chain (serialized per cube) and return its hash."""

    @abstractmethod
    def append_event_alone(self, at: float, actor: str | None, op: str, item_id: str | None,
                           outcome: str, detail: Mapping[str, Any]) -> str:
        """Append one record in a transaction of its own that writes nothing else (refusals, failures)."""

    @abstractmethod
    def raw_events(self, item_id: str | None = None, limit: int | None = None) -> list[EventRow]:
        """Audit records verbatim in chain order (optionally for one item, at most ``limit``)."""

    @abstractmethod
    def event_counter(self) -> int | None:
        """The high-water mark of sequence numbers ever handed out (None before the first record)."""

    @abstractmethod
    def has_events(self, c: Txn | None = None) -> bool: ...

    @abstractmethod
    def restore_events(self, c: Txn, rows: Sequence[Sequence[Any]]) -> bool:
        """Copy an exported chain verbatim into an empty log (so it still verifies). False if not empty."""

    # ------------------------------------------------------------------ filters, lexical and dense reads
    @abstractmethod
    def compile_filter(self, f: SearchFilter, states: Sequence[LifecycleState], now: float) -> CompiledFilter:
        """Compile a filter (scope, kinds, forms, ids, times, tags, metadata operators, states, expiry)."""

    @abstractmethod
    def lexical(self, match: str, cf: CompiledFilter, k: int) -> list[tuple[int, float]]:
        """Full-text search. ``match`` is quoted terms OR-ed (:func:`match_terms`). Returns (rowid, score) best
        first; higher is better. Scores are comparable within one query only."""

    @abstractmethod
    def filtered_vectors(self, cf: CompiledFilter, limit: int, *, pending_only: bool = False
                         ) -> tuple[list[int], list[bytes]]:
        """(rowids, float32 embedding bytes) of up to ``limit`` items passing the filter that have one (with
        ``pending_only``: only rows the vector index has not received yet)."""

    @abstractmethod
    def embeddings_of(self, rowids: Sequence[int]) -> tuple[list[int], list[bytes]]:
        """Stored embeddings of these rows (rows without one are left out), for exact dense scoring."""

    @abstractmethod
    def rowids_passing(self, ids: Sequence[str], cf: CompiledFilter) -> dict[str, int]:
        """``{id: rowid}`` for the ids that pass the filter (checks ANN candidates)."""

    def vector_changes(self, since: int | None) -> tuple[int, list[int] | None] | None:
        """The store's log of vector changes, for in-process copies of stored embeddings (the scoped-search
        cache, :mod:`memos_core.plaintext.scope_cache`). Returns ``(position, rowids)``: the log's position now and
        the rowids whose stored embedding was added, replaced or removed, whose scope (user/agent/session)
        changed, or that were deleted, by any writer (any process) after position ``since`` (``since=None``:
        the position only, ``rowids`` empty). ``rowids`` is ``None`` when the log no longer reaches back to
        ``since`` (trimmed, or another log): the caller must drop everything it copied. A position is opaque to
        the caller (SQLite: a sequence number; PostgreSQL, whose writers commit out of order: the snapshot the log
        was read under); a reader that took a position *before* (or in the same snapshot as) reading rows never
        misses a later change.

        The default returns ``None``: this backend keeps no such log, and nothing may be cached (searches read
        the store every time). Never call it inside a transaction (its own writes could still roll back)."""
        return None

    def scope_vectors(self, user_id: str | None, agent_id: str | None, session_id: str | None
                      ) -> tuple[list[int], list[bytes]]:
        """``(rowids, float32 embedding bytes)`` of every item with a stored embedding whose user, agent and
        session equal those given (``None``: any), in every lifecycle state: what the scoped-search cache copies
        (it checks each candidate against the full filter afterwards, :meth:`passing_rowids`). Derived here;
        backends answer it in one query."""
        f = SearchFilter.coerce({k: v for k, v in (("user_id", user_id), ("agent_id", agent_id),
                                                   ("session_id", session_id)) if v is not None})
        return self.filtered_vectors(self.compile_filter(f, list(LifecycleState), float("-inf")), 10**12)

    def passing_rowids(self, rowids: Sequence[int], cf: CompiledFilter) -> set[int]:
        """Those of ``rowids`` whose item passes the filter (the scoped-search cache's candidates). Derived from
        :meth:`index_rows` and :meth:`rowids_passing`; backends answer it in one query by rowid."""
        if not rowids:
            return set()
        ids = {r.id: r.rowid for r in self.index_rows(sorted({int(r) for r in rowids}))}
        return {rowid for iid, rowid in self.rowids_passing(list(ids), cf).items() if ids.get(iid) == rowid}

    @abstractmethod
    def contents(self, rowids: Sequence[int]) -> dict[int, str]: ...

    @abstractmethod
    def contents_with(self, rowids: Sequence[int], key: str) -> dict[int, tuple[str, Any]]:
        """``{rowid: (content, value of top-level metadata key or None)}`` (e.g. fusion's ``recall_weight``)."""

    #: Whether reads from several threads run at the same time (a database server: each thread borrows its own
    #: connection). A search then runs its lexical leg and its read of pending rows beside the vector-index
    #: query. SQLite serializes reads under one lock: there is nothing to overlap.
    concurrent_reads: bool = False

    def candidate_rows(self, rowids: Sequence[int], key: str) -> dict[int, tuple[bytes | None, str, Any]]:
        """``{rowid: (float32 embedding bytes or None, content, value of metadata key or None)}`` for those of
        ``rowids`` that exist, in rowid order: what exact scoring and fusion read about each search candidate.
        Derived from :meth:`embeddings_of` and :meth:`contents_with`; backends answer it in one query."""
        ordered = sorted({int(r) for r in rowids})
        keep, blobs = self.embeddings_of(ordered)
        vecs = dict(zip(keep, blobs))
        return {r: (vecs.get(r), c, v) for r, (c, v) in sorted(self.contents_with(ordered, key).items())}

    def candidates_passing(self, ids: Sequence[str], rowids: Sequence[int], cf: CompiledFilter, key: str, *,
                           with_items: bool = False) -> CandidateReads:
        """The dense leg's filter check and the candidates' reads together: ``passing``, ``{id: rowid}`` for
        those of ``ids`` (vector-index hits) that pass the filter (as :meth:`rowids_passing`), and ``rows``,
        :meth:`candidate_rows` of those plus ``rowids`` (rows found otherwise: lexical hits, pending rows).
        With ``with_items`` a backend may also read the full items in the same query (``items``: loaders, so
        that only the hits that are returned are built). Derived here (without items); a database server
        answers it in one round trip."""
        passing = self.rowids_passing(ids, cf) if ids else {}
        return CandidateReads(passing, self.candidate_rows([*passing.values(), *rowids], key), {})

    def lexical_rows(self, match: str, cf: CompiledFilter, k: int, key: str, *, with_items: bool = False
                     ) -> tuple[list[tuple[int, float]], CandidateReads]:
        """:meth:`lexical` and the found rows' :class:`CandidateReads` (``rows``, and ``items`` where the backend
        reads them in the same query; ``passing`` stays empty), so that the lexical leg of a search brings what
        fusion and the hits need about its candidates. Derived here; a database server answers it in one
        round trip."""
        ranked = self.lexical(match, cf, k)
        return ranked, CandidateReads({}, self.candidate_rows([r for r, _ in ranked], key), {})

    def pending_with_waiting(self, cf: CompiledFilter) -> tuple[list[int], list[bytes], bool]:
        """:meth:`filtered_vectors` of the pending rows passing the filter (``pending_only``) and whether any row is
        waiting for its embedding (:meth:`waiting_embeddings`; any scope, any worker), read together: what a search
        must know before its dense leg runs. Derived here; a database server answers it in one round trip."""
        rowids, blobs = self.filtered_vectors(cf, 10**9, pending_only=True)
        return rowids, blobs, bool(self.embeds_later and self.waiting_embeddings(1))

    @abstractmethod
    def list_rowids(self, cf: CompiledFilter, order: Literal["created", "event_time"], limit: int,
                    offset: int) -> list[int]: ...

    @abstractmethod
    def distinct_metadata(self, key: str, cf: CompiledFilter, limit: int) -> list[Any]:
        """Distinct values of a dotted metadata key among filtered items: scalars as Python values, objects and
        arrays as JSON text."""

    # ------------------------------------------------------------------ vector-index bookkeeping
    @abstractmethod
    def embedding(self, rowid: int) -> np.ndarray | None: ...

    @abstractmethod
    def all_embeddings(self, batch: int = 5000) -> Iterator[list[tuple[int, str, np.ndarray]]]:
        """Batches of (rowid, item id, vector) for every indexed item (rebuilding the vector index)."""

    @abstractmethod
    def pending_vectors(self) -> list[int]: ...

    @abstractmethod
    def index_rows(self, rowids: Sequence[int]) -> list[IndexRow]:
        """What the vector index needs for these rows, in rowid order (forgotten rows are absent)."""

    @abstractmethod
    def mark_vectors_applied(self, rowids: Iterable[int]) -> None:
        """The vector index accepted these rows (as they were when :meth:`pending_vectors` listed them)."""

    # ------------------------------------------------------------------ governance tables
    @abstractmethod
    def governance_ready(self) -> bool:
        """Whether the governance tables exist and hold at least one grant."""

    @abstractmethod
    def bootstrap_governance(self, c: Txn, owner: str, owner_kind: str, now: float, redaction_key: str) -> bool:
        """Create the governance tables; when nobody holds a role, make ``owner`` the owner and store the
        redaction key. True if the owner was installed now."""

    @abstractmethod
    def grants(self, c: Txn | None = None, principal: str | None = None) -> list[tuple[str, str, str, str | None, float]]:
        """(principal, kind, role, granted_by, granted_at), by principal (one principal when given)."""

    @abstractmethod
    def principal_kind(self, c: Txn, principal: str) -> str | None: ...

    @abstractmethod
    def add_principal(self, c: Txn, principal: str, kind: str, now: float, created_by: str | None) -> None: ...

    @abstractmethod
    def put_grant(self, c: Txn, principal: str, role: str, granted_by: str | None, at: float) -> None: ...

    @abstractmethod
    def delete_grant(self, c: Txn, principal: str) -> None: ...

    @abstractmethod
    def governance_settings(self) -> dict[str, str]: ...

    @abstractmethod
    def put_settings(self, c: Txn, values: Mapping[str, str]) -> None: ...

    @abstractmethod
    def add_forget_pending(self, c: Txn, ids: Sequence[str]) -> None:
        """Remember erased ids whose vector-index rows may still exist (cleared after the index confirms)."""

    @abstractmethod
    def forget_pending(self) -> list[str]: ...

    @abstractmethod
    def clear_forget_pending(self, ids: Sequence[str]) -> None: ...

    # ------------------------------------------------------------------ maintenance
    @abstractmethod
    def compact_erased(self) -> None:
        """After an erase: drop what the engine still keeps of erased rows, as far as it can (SQLite: merge FTS
        segments, checkpoint and truncate the WAL; PostgreSQL: VACUUM the tables involved)."""

    # ================================================================== derived (never overridden needlessly)
    def add_items(self, c: Txn, items: Sequence[MemoryItem], vecs: Sequence[np.ndarray | None],
                  indexed: Sequence[bool], actor: str | None, at: float) -> list[int]:
        """Add new items inside ``c``: each row with its first version, its creation transition and its
        ``add`` audit record (in item order). Returns their rowids. Backends may batch the round trips."""
        rowids: list[int] = []
        for item, vec, idx in zip(items, vecs, indexed):
            rowid = self.insert_item(c, item, vec, idx, actor, "add")
            self.set_state(c, rowid, item.id, None, item.state, at, actor, "created")
            self.append_event(c, at, actor, "add", item.id, detail={"version": 1})
            rowids.append(rowid)
        return rowids

    def get(self, item_id: str) -> MemoryItem | None:
        return self.get_many([item_id]).get(item_id)

    def rowid(self, item_id: str) -> int | None:
        hit = self.rowids_of([item_id]).get(item_id)
        return None if hit is None else hit[0]

    def load(self, item_id: str) -> tuple[int, MemoryItem] | None:
        """``(rowid, item)`` of ``item_id`` in any state, or ``None``: :meth:`rowid` and :meth:`get` (inside a
        write transaction the row is locked as :meth:`get` locks it). A server backend reads both in one
        statement."""
        rowid = self.rowid(item_id)
        item = self.get(item_id) if rowid is not None else None
        return None if rowid is None or item is None else (rowid, item)

    def count(self, states: Iterable[LifecycleState] | None = None) -> int:
        by = self.count_by_state()
        if states is None:
            return sum(by.values())
        return sum(by.get(s.value, 0) for s in states)

    def version(self, item_id: str, version: int) -> MemoryVersion | None:
        return next((v for v in self.versions(item_id) if v.version == version), None)

    def events(self, item_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Audit records as dicts (``at`` as an aware datetime, ``detail`` parsed)."""
        return [dict(seq=r[0], at=_dt(r[1]), actor=r[2], op=r[3], item_id=r[4], outcome=r[5],
                     detail=json.loads(r[6]), prev_hash=r[7], hash=r[8])
                for r in self.raw_events(item_id, limit)]

    def audit_chain(self) -> tuple[list[EventRow], int | None]:
        """Rows in chain order and the sequence high-water mark (what ``governance.audit.verify_rows`` takes)."""
        return self.raw_events(), self.event_counter()

    def audit_head(self) -> tuple[int, str] | None:
        rows = self.raw_events()
        return None if not rows else (int(rows[-1][0]), rows[-1][8])

    def role(self, principal: str, c: Txn | None = None) -> str | None:
        got = self.grants(c, principal)
        return got[0][2] if got else None

    #: the cube's erasure counter (forgets and purges committed by any process: ``meta`` key ``erasures``) as
    #: :meth:`access` last read it; ``None`` before. The scope cache compares it with what it has replayed to
    #: drop another process's forgotten vectors at this process's next call (``scope_cache.after_call``).
    erasures_seen: int | None = None

    def access(self, principal: str) -> tuple[str | None, dict[str, str]]:
        """``principal``'s role (or ``None``) and the governance settings (:meth:`governance_settings`), read
        together: what every governed call checks. A database server answers both in one round trip. Also
        notes the erasure counter (:attr:`erasures_seen`)."""
        raw = self.get_meta("erasures")
        self.erasures_seen = int(raw) if raw is not None else 0
        return self.role(principal), self.governance_settings()

    def count_role(self, c: Txn, role: str) -> int:
        return sum(1 for g in self.grants(c) if g[2] == role)

    def embedding_count(self) -> int:
        """How many items have a stored embedding (what the vector index should hold)."""
        return sum(len(b) for b in self.all_embeddings())

    #: Whether :meth:`insert_item` / :meth:`add_items` accept an indexed item with ``vec=None``: the row is
    #: written (lexical index included) and marked pending, and its embedding comes later through
    #: :meth:`put_embeddings` (a cube's ``embed_sync="deferred"``). Rows in that state are listed by
    #: :meth:`waiting_embeddings`; :meth:`index_rows` gives them ``vec=None`` in an indexed state.
    embeds_later: bool = False

    def waiting_embeddings(self, limit: int = 10_000) -> list[tuple[int, str]]:
        """``(rowid, indexed text)`` of pending indexed items that have no embedding yet (written with
        ``vec=None``), oldest first, at most ``limit``. Derived from the pending marks; backends answer it in one
        query.

        The pending marks are filtered first and the result trimmed after: many pending rows that already have
        their embedding (waiting only for the vector index) may come before the waiting ones."""
        if limit <= 0:
            return []
        indexed = {s.value for s in _INDEXED}
        pending = self.pending_vectors()
        step = max(int(limit), 256)
        out: list[tuple[int, str]] = []
        for s in range(0, len(pending), step):
            waiting = [r.rowid for r in self.index_rows(pending[s:s + step]) if r.vec is None and r.state in indexed]
            items = self.get_many_by_rowid(waiting) if waiting else {}
            out.extend((r, items[r].index_text or items[r].content) for r in waiting if r in items)
            if len(out) >= limit:
                break
        return out[:limit]

    def put_embeddings(self, c: Txn, rows: Sequence[tuple[int, str, np.ndarray]]) -> list[int]:
        """Store the embedding of each ``(rowid, text, vec)`` listed by :meth:`waiting_embeddings`, only if the
        item still has no embedding and still indexes exactly ``text`` (an update, a delete, a forget or another
        worker's write since then wins; that row is skipped), and mark it pending for the vector index. Returns
        the rowids written. This default reads then writes inside ``c``; backends do it in one statement."""
        done: list[int] = []
        for rowid, text, vec in rows:
            item = self.get_many_by_rowid([rowid]).get(rowid)
            if item is None or item.state not in _INDEXED or (item.index_text or item.content) != text \
                    or self.embedding(rowid) is not None:
                continue
            self.reindex_row(c, rowid, item, vec)
            done.append(rowid)
        return done

    # ------------------------------------------------------------------ topic vectors (schema 3)
    #: Each stored embedding may carry a *topic vector*: the embedding of the memory's own words
    #: (:func:`memos_core.reader.offline.topic_text`), which the topical leg of hybrid search compares with a
    #: question naming people (:class:`memos_core.plaintext.fusion.Candidates`). It lives in the embedding's row:
    #: every write that replaces or removes the embedding (update, re-embedding, delete, forget) drops it too,
    #: and the writer stores the new one in the same transaction. ``b""`` means "the same text as the indexed
    #: text": the topic vector is the embedding itself (nothing extra stored or embedded).

    def put_topics(self, c: Txn, rows: Sequence[tuple[int, int, bytes]]) -> None:
        """Store the topic vector (float32 bytes, or ``b""``: the embedding itself) of each ``(rowid, version,
        blob)`` beside that row's embedding, if the embedding is still of that item version (else skipped).

        The default stores nothing: a backend without topic vectors answers :meth:`topic_vectors` with ``{}``,
        and hybrid search then runs without the topical leg (as on a cube written before schema 3)."""
        return None

    def topic_vectors(self, rowids: Sequence[int]) -> dict[int, bytes]:
        """``{rowid: topic blob}`` of those ``rowids`` whose embedding has a topic vector (see
        :meth:`put_topics`); rows without one (none stored yet: written before schema 3) are left out."""
        return {}

    def missing_topics(self, limit: int = 10_000) -> list[tuple[int, int]]:
        """``(rowid, version)`` of stored embeddings without a topic vector (at most ``limit``, oldest first)."""
        return []

    def missing_embeddings(self, states: Sequence[LifecycleState]) -> list[int]:
        have = {r for batch in self.all_embeddings() for r, _, _ in batch}
        want = {s.value for s in states}
        out: list[int] = []
        for it in self.iter_items(states=[LifecycleState(s) for s in want]):
            r = self.rowid(it.id)
            if r is not None and r not in have:
                out.append(r)
        return out

    def optimize_lexical(self) -> None:
        """Kept for callers written before :meth:`compact_erased`."""
        self.compact_erased()

    def checkpoint(self) -> None:
        """Kept for callers written before :meth:`compact_erased` (a no-op where nothing is buffered)."""
        self.flush()

    @staticmethod
    def snapshot(item: MemoryItem, author: str | None, reason: str | None) -> MemoryVersion:
        """The version record of ``item`` as it is now."""
        return MemoryVersion(
            item_id=item.id, version=item.version, content=item.content, index_text=item.index_text, kind=item.kind,
            tags=item.tags, metadata=item.metadata, provenance=item.provenance, event_time=item.event_time,
            valid_until=item.valid_until, expires_at=item.expires_at, confidence=item.confidence,
            created_at=item.updated_at, author=author, reason=reason,
        )
