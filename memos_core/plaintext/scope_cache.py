"""An in-process copy of the stored embeddings of user scopes, for scoped dense search.

A search scoped to one user (agent, session) whose scope holds tens of thousands of memories cannot use the
ANN index well (the nearest neighbours of the whole cube are mostly other users': over-fetching until enough
pass the filter costs 0.1-0.4 s), and scoring the scope exactly means reading every one of its stored vectors
from the record store on every search (~1.5 KB each). This module keeps, per scope and per record store, the
scope's vectors as one float32 matrix, so that an exact scoped search is one matrix-vector product plus a
filter check of its best candidates in the store (:meth:`Retriever.dense
<memos_core.plaintext.retrieval.Retriever.dense>`).

Correctness comes from the store's vector change log (:meth:`RecordStore.vector_changes`): before every use the
cache replays the changes committed since its last look -- by any writer, any process -- dropping the rows that
changed and re-reading those that still have an embedding in a cached scope. A backend without such a log gets
no cache. What is cached is only ever a *superset source of candidates*: every candidate is checked against the
search's full filter (state, expiry, kinds, tags, ...) in the store before it is returned, so a deleted,
archived or expired memory is never returned from here.

Erasure: a row dropped from the cache has its vector overwritten with zeros in place. A forget in this process
syncs the caches of its store right after its commit (``Erasure.finish`` calls :func:`sync`), a forget (or purge)
by another process is applied at this process's next call of any kind on the cube (the cube calls
:func:`after_call` after its governance check, which reads the store's erasure counter in the same statement on
PostgreSQL; the log is replayed only when that counter moved), and closing the cube drops every copy
(:func:`drop`). Memory is bounded: an LRU over scopes capped at ``MEMOS_SCOPE_CACHE_MB`` (default 256 MiB per
store; 0 turns the cache off); a scope larger than the cap alone is not cached.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..records import RecordStore

__all__ = ["ScopeCache", "cache_for", "sync", "after_call", "drop", "DEFAULT_CAP_MB"]

Scope = tuple["str | None", "str | None", "str | None"]  # (user_id, agent_id, session_id); None: any

DEFAULT_CAP_MB = 256


def _cap_bytes() -> int:
    raw = os.environ.get("MEMOS_SCOPE_CACHE_MB")
    try:
        mb = float(raw) if raw not in (None, "") else DEFAULT_CAP_MB
    except ValueError:
        mb = DEFAULT_CAP_MB
    return max(0, int(mb * 1024 * 1024))


class _Entry:
    """One scope's rows: ``mat[:n]`` vectors, ``rowids[:n]`` and ``live[:n]`` (a dropped row is zeroed and
    marked dead; dead rows are compacted away once they are a quarter of the rows)."""

    __slots__ = ("mat", "rowids", "live", "n", "dead", "where", "used")

    @staticmethod
    def estimate(rows: int, dim: int) -> int:
        """What :attr:`nbytes` will be for ``rows`` rows (with the initial headroom)."""
        cap = max(16, rows + rows // 8)
        return cap * (dim * 4 + 9) + 100 * rows

    def __init__(self, dim: int, rowids: list[int], blobs: list[bytes]) -> None:
        n = len(rowids)
        cap = max(16, n + n // 8)
        self.mat = np.zeros((cap, dim), dtype=np.float32)
        if n:
            self.mat[:n] = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(n, dim)
        self.rowids = np.zeros(cap, dtype=np.int64)
        self.rowids[:n] = rowids
        self.live = np.zeros(cap, dtype=bool)
        self.live[:n] = True
        self.n = n
        self.dead = 0
        self.where = {r: i for i, r in enumerate(rowids)}
        self.used = 0

    @property
    def nbytes(self) -> int:
        # (the rowid -> slot dict: ~100 bytes a row)
        return int(self.mat.nbytes + self.rowids.nbytes + self.live.nbytes + 100 * len(self.where))

    def remove(self, rowid: int) -> None:
        i = self.where.pop(rowid, None)
        if i is None:
            return
        self.mat[i] = 0.0  # the vector leaves this process's memory now, not when the array is freed
        self.live[i] = False
        self.dead += 1

    def add(self, rowid: int, vec: np.ndarray) -> None:
        if self.n == len(self.rowids):
            self._resize(max(16, self.n + self.n // 2))
        i = self.n
        self.mat[i] = vec
        self.rowids[i] = rowid
        self.live[i] = True
        self.where[rowid] = i
        self.n += 1

    def compact_if_sparse(self) -> None:
        if self.dead and self.dead * 4 >= self.n:
            self._resize(max(16, (self.n - self.dead) + (self.n - self.dead) // 8))

    def _resize(self, cap: int) -> None:
        keep = np.flatnonzero(self.live[:self.n])
        old = self.mat
        mat = np.zeros((cap, old.shape[1]), dtype=np.float32)
        mat[:len(keep)] = old[keep]
        old.fill(0.0)
        self.mat = mat
        rowids = np.zeros(cap, dtype=np.int64)
        rowids[:len(keep)] = self.rowids[keep]
        live = np.zeros(cap, dtype=bool)
        live[:len(keep)] = True
        self.rowids, self.live = rowids, live
        self.n = len(keep)
        self.dead = 0
        self.where = {int(r): i for i, r in enumerate(rowids[:self.n])}

    def wipe(self) -> None:
        self.mat.fill(0.0)
        self.where.clear()
        self.n = self.dead = 0


def _matches(scope: Scope, user_id: Any, agent_id: Any, session_id: Any) -> bool:
    u, a, s = scope
    return (u is None or u == user_id) and (a is None or a == agent_id) and (s is None or s == session_id)


class ScopeCache:
    """The cached scopes of one record store (thread-safe). See the module docstring."""

    def __init__(self, records: "RecordStore", cap_bytes: int | None = None) -> None:
        self._records = weakref.ref(records)
        self.cap_bytes = _cap_bytes() if cap_bytes is None else int(cap_bytes)
        self._lock = threading.Lock()
        self._entries: "OrderedDict[Scope, _Entry]" = OrderedDict()
        self._pos: int | None = None
        self._tick = 0  # scoped searches served (an entry's ``used`` is the tick of its last one)
        self._sizes: dict[Scope, int] = {}  # bytes each scope took when it was last read
        self.builds = 0  # scopes read from the store (tests and benchmarks look at it)
        self.refused = 0  # misses not cached: the busy scopes fill the cap
        self.replayed = 0  # log changes applied
        self._erasures: int | None = None  # the store's erasure counter this cache has replayed the log past
        self.erasure_syncs = 0  # replays started by after_call (another handle's forget or purge)

    #: a cached scope is idle (may be evicted to admit another) after this many scoped searches without it,
    #: or 8 per cached scope when more are cached
    idle_after = 64

    # ------------------------------------------------------------------ use
    def scores(self, scope: Scope, qvec: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(rowids, cosines)`` of every row with a stored embedding in ``scope`` (any state; live rows only;
        rowid order is not guaranteed), after catching up with the store's change log. ``None`` when this store
        keeps no log, the cache is off, or the scope is known not to fit now (see below): the caller reads the
        store instead.

        Admission: a scope read for the first time is cached when it fits under the cap once *idle* scopes
        (unused for the last :attr:`idle_after` scoped searches, or more when many scopes are cached) are
        evicted; otherwise this search is scored from what was just read, and later misses of that scope
        return ``None`` while the busy scopes stay. So when more scopes are active than fit, the cache keeps
        some of them instead of thrashing (rebuilding 30 MB matrices on every search would cost twice what
        reading the store does)."""
        records = self._records()
        if records is None or self.cap_bytes <= 0 or records.closed or records.in_transaction():
            return None  # (never inside a transaction: see sync)
        from .retrieval import matvec

        # Lock order, everywhere: the store's (read_snapshot: SQLite's connection lock) before this cache's. A
        # forget finishing inside a caller's records transaction syncs while holding the store's lock; taking
        # this cache's lock first here could deadlock against it.
        got = self._scores_unchanged(records, scope, qvec, dim)
        if got is not None:
            return got
        with records.read_snapshot(), self._lock:
            if not self._sync(records):
                return None
            self._tick += 1
            entry = self._entries.get(scope)
            if entry is None:
                known = self._sizes.get(scope)
                if known is not None and not self._room_for(known):
                    self.refused += 1
                    return None
                rowids, blobs = records.scope_vectors(*scope)
                self.builds += 1
                need = _Entry.estimate(len(rowids), dim)
                if len(self._sizes) >= 4096:
                    self._sizes.clear()
                self._sizes[scope] = need
                if not self._room_for(need):  # score what was read, keep nothing
                    self.refused += 1
                    if not rowids:
                        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
                    mat = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(rowids), -1)
                    if mat.shape[1] != dim:
                        return None
                    return np.asarray(rowids, dtype=np.int64), matvec(mat, qvec)
                entry = _Entry(dim, rowids, blobs)
                self._entries[scope] = entry
                self._evict(keep=scope)
            else:
                self._entries.move_to_end(scope)
            entry.used = self._tick
            return self._score(entry, qvec, dim)

    def _scores_unchanged(self, records: "RecordStore", scope: Scope, qvec: np.ndarray, dim: int
                          ) -> tuple[np.ndarray, np.ndarray] | None:
        """The fast path of :meth:`scores` when ``scope`` is cached: one read of the change log on its own (one
        statement, so one snapshot: one round trip on a server instead of a read-only transaction's three); when
        nothing changed since this cache's position, the cache is the state as of that statement and its snapshot
        becomes the new position. ``None`` when anything changed (or the scope is not cached): :meth:`scores`
        then replays inside a snapshot as before. The log is read outside this cache's lock (lock order: the
        store's before the cache's) and applied only if no other thread moved the position meanwhile."""
        with self._lock:
            pos, entry = self._pos, self._entries.get(scope)
        if pos is None or entry is None:
            return None
        erasures = records.erasures_seen  # (read before the log, as in _sync)
        got = records.vector_changes(pos)
        if got is None or got[1] is None or got[1]:
            return None
        with self._lock:
            if self._pos != pos or self._entries.get(scope) is not entry:
                return None  # another thread synced meanwhile: take the full path
            self._pos = got[0]
            if erasures is not None:
                self._erasures = erasures
            self._tick += 1
            self._entries.move_to_end(scope)
            entry.used = self._tick
            return self._score(entry, qvec, dim)

    @staticmethod
    def _score(entry: "_Entry", qvec: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
        from .retrieval import matvec

        if entry.mat.shape[1] != dim:  # another embedder's vectors: not this search's
            return None
        n = entry.n
        sims = matvec(entry.mat[:n], qvec)  # (a dead row is zeros: it is left out just below)
        if entry.dead:
            live = np.flatnonzero(entry.live[:n])
            return entry.rowids[live], sims[live]
        return entry.rowids[:n].copy(), sims

    def _room_for(self, need: int) -> bool:
        """Whether ``need`` bytes fit under the cap after evicting only idle scopes."""
        if need > self.cap_bytes:
            return False
        free = self.cap_bytes - sum(e.nbytes for e in self._entries.values())
        if free >= need:
            return True
        idle = max(self.idle_after, 8 * len(self._entries))
        for entry in self._entries.values():  # least recently used first
            if self._tick - entry.used <= idle:
                break
            free += entry.nbytes
            if free >= need:
                return True
        return False

    def sync(self) -> None:
        """Catch up with the store's change log now (a forget in this process calls it after its commit)."""
        records = self._records()
        if records is None or records.closed or records.in_transaction():
            # (inside a transaction the log holds its uncommitted rows, whose positions a rollback would hand out
            # again: drop everything rather than sync to them; this thread holds the store's lock already, so
            # taking this cache's lock keeps the lock order)
            self.clear()
            return
        with records.read_snapshot(), self._lock:
            self._sync(records)

    def clear(self) -> None:
        with self._lock:
            self._clear()

    @property
    def scopes(self) -> list[Scope]:
        with self._lock:
            return list(self._entries)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def cached_rowids(self) -> set[int]:
        """Every rowid whose vector this cache holds now (tests: nothing forgotten stays)."""
        with self._lock:
            return {int(r) for e in self._entries.values() for r in e.where}

    def after_call(self) -> None:
        """At a call on the cube (any kind: its governance check has just read the store's erasure counter,
        :attr:`RecordStore.erasures_seen`): when the counter moved past what this cache has replayed -- a forget or
        purge committed since, by any process -- catch up with the change log now, so that the erased rows'
        vectors leave this process's memory at this call, not at the next scoped search. Otherwise nothing: the
        common path costs one comparison."""
        records = self._records()
        if records is None or records.closed:
            return
        seen = records.erasures_seen
        if seen is None or seen == self._erasures:
            return
        with self._lock:
            if not self._entries:  # nothing held: nothing to drop (a scope read later is read fresh)
                self._erasures = seen
                return
        self.erasure_syncs += 1
        self.sync()

    # ------------------------------------------------------------------ inside the lock
    def _sync(self, records: "RecordStore") -> bool:
        # the counter as last read: every erasure it counts committed before this replay's snapshot
        erasures = records.erasures_seen
        got = records.vector_changes(self._pos)
        if got is None:
            self._clear()
            return False
        pos, changed = got
        if self._pos is None or changed is None:
            self._clear()  # first look, or the log no longer reaches back to ours: start again
        elif changed and self._entries:
            rows = records.index_rows(sorted(set(changed)))
            for entry in self._entries.values():
                for r in changed:
                    entry.remove(r)
            for row in rows:
                if row.vec is None:
                    continue
                vec = None
                for scope, entry in self._entries.items():
                    if _matches(scope, row.user_id, row.agent_id, row.session_id):
                        if vec is None:
                            vec = np.frombuffer(row.vec, dtype=np.float32)
                        if vec.shape[0] == entry.mat.shape[1]:
                            entry.add(row.rowid, vec)
            for entry in self._entries.values():
                entry.compact_if_sparse()
            self.replayed += len(changed)
            self._evict()
        self._pos = pos
        if erasures is not None:
            self._erasures = erasures
        return True

    def _evict(self, keep: Scope | None = None) -> None:
        total = sum(e.nbytes for e in self._entries.values())
        while total > self.cap_bytes and self._entries:
            scope = next(iter(self._entries))
            if scope == keep:
                if len(self._entries) == 1:
                    return
                self._entries.move_to_end(scope)
                continue
            entry = self._entries.pop(scope)
            total -= entry.nbytes
            entry.wipe()

    def _clear(self) -> None:
        for entry in self._entries.values():
            entry.wipe()
        self._entries.clear()
        self._pos = None


_CACHES: "weakref.WeakKeyDictionary[Any, ScopeCache]" = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_for(records: "RecordStore") -> ScopeCache | None:
    """The scope cache of ``records`` (created on first use), or ``None`` when the cache is off
    (``MEMOS_SCOPE_CACHE_MB=0``) or the store keeps no vector change log."""
    with _CACHES_LOCK:
        cache = _CACHES.get(records)
        if cache is None:
            if _cap_bytes() <= 0 or type(records).vector_changes is _base_vector_changes():
                return None
            cache = _CACHES[records] = ScopeCache(records)
        return cache


def _base_vector_changes() -> Any:
    from ..records.base import RecordStore

    return RecordStore.vector_changes


def sync(records: "RecordStore") -> None:
    """Bring the scope cache of ``records`` (if it has one) up to date with its change log: after a forget in
    this process, the forgotten rows' vectors leave memory before forget returns."""
    cache = _CACHES.get(records)
    if cache is not None:
        cache.sync()


def after_call(records: "RecordStore") -> None:
    """Called by the cube at every call, after its governance check (see :meth:`ScopeCache.after_call`)."""
    cache = _CACHES.get(records)
    if cache is not None:
        cache.after_call()


def drop(records: "RecordStore") -> None:
    """Forget every cached vector of ``records`` (the cube is closing)."""
    with _CACHES_LOCK:
        cache = _CACHES.pop(records, None)
    if cache is not None:
        cache.clear()
