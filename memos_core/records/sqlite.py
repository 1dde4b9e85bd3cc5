"""SQLite system of record: items, versions, lifecycle transitions, the event log and the lexical index.

This is the one place MemOS cannot lose. Design points a user can rely on:

* WAL journal with ``synchronous=FULL``: when a write method returns, its transaction is fsync'd and survives
  ``kill -9`` or power loss. Every write method is one transaction (all or nothing).
* The lexical index (FTS5, BM25) lives in the same database and is updated in the same transaction as the
  item, so it can never disagree with the records.
* The vector index (Chroma) is *derived*: each write that changes what should be in it also inserts the item
  into ``vec_pending`` in the same transaction. The cube applies pending rows to Chroma after commit and
  clears them lazily; on open it re-applies whatever is still pending (a crash between the commit and the
  Chroma write). The embedding is stored here too, so the vector index can be rebuilt without re-embedding.
  The records can never be rebuilt from the index.
* ``secure_delete`` is on: erased content is overwritten in the file, not just unlinked.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from .. import forksafe
from ..errors import BackendUnavailable, Conflict, CorruptData, CubeClosed, SchemaVersionError, ValidationError
from .base import GENESIS_HASH, CompiledFilter, IndexRow, RecordStore, canonical_json, event_hash
from ..items import (
    LifecycleState,
    MemoryForm,
    MemoryItem,
    MemoryKind,
    MemoryVersion,
    Provenance,
    Scope,
    SearchFilter,
    Transition,
    Usage,
)

__all__ = ["SQLiteRecordStore", "RECORDS_SCHEMA_VERSION"]

log = logging.getLogger(__name__)

#: 1: the first layout; 2: ``vec_pending.gen`` (a pending mark is cleared only as it was listed)
RECORDS_SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items(
  rowid INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  cube_id TEXT NOT NULL,
  content TEXT NOT NULL,
  index_text TEXT,
  indexed_text TEXT,
  form TEXT NOT NULL,
  kind TEXT NOT NULL,
  user_id TEXT, agent_id TEXT, session_id TEXT,
  state TEXT NOT NULL,
  version INTEGER NOT NULL,
  created_at REAL NOT NULL, updated_at REAL NOT NULL,
  event_time REAL, valid_until REAL, expires_at REAL,
  provenance TEXT NOT NULL, tags TEXT NOT NULL, metadata TEXT NOT NULL,
  confidence REAL NOT NULL,
  access_count INTEGER NOT NULL DEFAULT 0, last_access REAL,
  created_by TEXT
);
CREATE INDEX IF NOT EXISTS items_user ON items(user_id);
CREATE INDEX IF NOT EXISTS items_agent ON items(agent_id);
CREATE INDEX IF NOT EXISTS items_session ON items(session_id);
CREATE INDEX IF NOT EXISTS items_state ON items(state);
CREATE INDEX IF NOT EXISTS items_event ON items(event_time);
CREATE INDEX IF NOT EXISTS items_expires ON items(expires_at);
CREATE TABLE IF NOT EXISTS versions(
  item_id TEXT NOT NULL, version INTEGER NOT NULL, snapshot TEXT NOT NULL,
  PRIMARY KEY(item_id, version)
);
CREATE TABLE IF NOT EXISTS transitions(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL, from_state TEXT, to_state TEXT NOT NULL,
  at REAL NOT NULL, actor TEXT, reason TEXT
);
CREATE INDEX IF NOT EXISTS transitions_item ON transitions(item_id);
CREATE TABLE IF NOT EXISTS events(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT, op TEXT NOT NULL, item_id TEXT,
  outcome TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings(item_rowid INTEGER PRIMARY KEY, version INTEGER NOT NULL, vec BLOB NOT NULL,
  topic BLOB);
-- embedding_count() (the index check at the first search after every open) counts this index's few bytes per row
-- instead of the table's pages (its vectors: most of the file, 5 s cold at 100k memories). A cube written before
-- builds it once, at its first open (no semicolon in these comments: _SCHEMA is split on it)
CREATE INDEX IF NOT EXISTS embeddings_count ON embeddings(version);
CREATE TABLE IF NOT EXISTS vec_pending(item_rowid INTEGER PRIMARY KEY, gen INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS gov_principals(id TEXT PRIMARY KEY, kind TEXT NOT NULL, created_at REAL NOT NULL,
  created_by TEXT);
CREATE TABLE IF NOT EXISTS gov_acl(principal TEXT PRIMARY KEY, role TEXT NOT NULL, granted_by TEXT,
  granted_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS gov_settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gov_forget_pending(item_id TEXT PRIMARY KEY);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(text, content='', tokenize='porter unicode61 remove_diacritics 2');
"""

#: The vector change log (:meth:`SQLiteRecordStore.vector_changes`): triggers append the rowid of every item whose
#: stored embedding was added, replaced or removed, whose scope (user/agent/session) changed, or that was deleted
#: (forget), so that an in-process copy of a scope's vectors (plaintext/scope_cache.py) can catch up with every
#: write of every process in O(changes). Triggers, not calls in the write methods: every path that touches an
#: embedding (add, update, reindex, restore, forget, purge, migrations, bundle import) is logged, including
#: writes by other processes. Only rowids: no content. Writers are serialised (BEGIN IMMEDIATE), so the seq
#: order is the commit order. It trims itself (keeps about the last 64k changes; a reader further behind
#: rebuilds). Created on every read-write open (IF NOT EXISTS); older code opening the file keeps logging.
_VEC_LOG_DDL = (
    # (no AUTOINCREMENT: it updates sqlite_sequence on every insert; max+1 is monotonic here, since trimming never
    # deletes the newest row and a rolled-back number was never seen outside its transaction)
    "CREATE TABLE IF NOT EXISTS vec_changes(seq INTEGER PRIMARY KEY, item_rowid INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS vec_changes_add AFTER INSERT ON embeddings BEGIN "
    "INSERT INTO vec_changes(item_rowid) VALUES(new.item_rowid); END",
    "CREATE TRIGGER IF NOT EXISTS vec_changes_set AFTER UPDATE OF vec, item_rowid ON embeddings BEGIN "
    "INSERT INTO vec_changes(item_rowid) VALUES(old.item_rowid); "
    "INSERT INTO vec_changes(item_rowid) VALUES(new.item_rowid); END",
    "CREATE TRIGGER IF NOT EXISTS vec_changes_del AFTER DELETE ON embeddings BEGIN "
    "INSERT INTO vec_changes(item_rowid) VALUES(old.item_rowid); END",
    "CREATE TRIGGER IF NOT EXISTS vec_changes_scope AFTER UPDATE OF user_id, agent_id, session_id ON items "
    "WHEN old.user_id IS NOT new.user_id OR old.agent_id IS NOT new.agent_id OR old.session_id IS NOT new.session_id "
    "BEGIN INSERT INTO vec_changes(item_rowid) VALUES(new.rowid); END",
    "CREATE TRIGGER IF NOT EXISTS vec_changes_gone AFTER DELETE ON items BEGIN "
    "INSERT INTO vec_changes(item_rowid) VALUES(old.rowid); END",
    "CREATE TRIGGER IF NOT EXISTS vec_changes_trim AFTER INSERT ON vec_changes WHEN new.seq % 4096 = 0 BEGIN "
    "DELETE FROM vec_changes WHERE seq <= new.seq - 65536; END",
)

_ITEM_COLS = (
    "rowid, id, cube_id, content, index_text, form, kind, user_id, agent_id, session_id, state, version, "
    "created_at, updated_at, event_time, valid_until, expires_at, provenance, tags, metadata, confidence, "
    "access_count, last_access, created_by"
)


def _mmap_size() -> int:
    raw = os.environ.get("MEMOS_SQLITE_MMAP", "")
    try:
        return max(0, int(raw)) if raw.strip() else 1 << 30
    except ValueError:
        raise ValidationError(f"MEMOS_SQLITE_MMAP must be a number of bytes, not {raw!r}") from None


#: meta key: 'open' from the first change any handle makes to the file (in that change's own commit: no extra fsync,
#: and a handle that only reads writes nothing) until the clean close of the last handle, which writes 'closed'. An
#: open that finds no other handle and anything but 'closed' runs the check.
_OPEN_STATE_KEY = "open_state"
#: how long an open waits for another handle's open (its integrity check) or close to finish, in seconds
_OPEN_LOCK_WAIT_S = 600.0


def _open_check_policy() -> str:
    """``MEMOS_SQLITE_OPEN_CHECK``: ``auto`` (default: the integrity check runs at open only when the last
    shutdown may have been unclean) or ``always`` (every open, as before)."""
    raw = os.environ.get("MEMOS_SQLITE_OPEN_CHECK", "").strip().lower() or "auto"
    if raw not in ("auto", "always"):
        raise ValidationError(f"MEMOS_SQLITE_OPEN_CHECK must be 'auto' or 'always', not {raw!r}")
    return raw


class _HandleLock:
    """Which handles have one records file open, across processes: each open handle holds a shared ``flock`` on a
    sidecar file (``<db>-handles``, empty), taken exclusively (without waiting) by an open to learn whether it is the
    only handle, and by a close to learn whether it is the last. Locks of a killed process vanish with it.

    A lock on a sidecar, never on the database file: closing any descriptor of the database would drop SQLite's
    own POSIX locks on it in this process. Each handle opens its own descriptor, so two handles in one process
    are two holders. ``fd`` is None where ``flock`` is unavailable (not POSIX, a read-only folder): every open then
    runs the check."""

    def __init__(self, db: Path) -> None:
        self.path = db.with_name(db.name + "-handles")
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # not POSIX
            return
        self._fcntl = fcntl
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            self.fd = None

    def try_exclusive(self) -> bool | None:
        """Exclusive without waiting: True when no other handle holds the lock, False when one does, None when the
        file system refuses ``flock`` (the lock is then given up: not known). (Converting a held shared lock may
        drop it when this fails: call only at open, before holding it, or at close.)"""
        if self.fd is None:
            return None
        try:
            self._fcntl.flock(self.fd, self._fcntl.LOCK_EX | self._fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # e.g. a network file system without flock
            self.release()
            return None

    def shared(self, wait_s: float) -> None:
        """Shared, waiting while another handle holds it exclusively (its open's check, or its close)."""
        deadline = time.monotonic() + wait_s
        while self.fd is not None:
            try:
                self._fcntl.flock(self.fd, self._fcntl.LOCK_SH | self._fcntl.LOCK_NB)
                return
            except OSError as exc:
                if not isinstance(exc, BlockingIOError):  # flock refused: hold nothing (and never mark a close)
                    self.release()
                    return
                if time.monotonic() > deadline:
                    raise BackendUnavailable(
                        f"records database {self.path.with_name(self.path.name[:-len('-handles')])}: another handle "
                        f"has been opening or closing it for over {wait_s:.0f} s (its integrity check at open?)"
                    ) from None
                time.sleep(0.05)

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)  # drops the lock


def _ts(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


class SQLiteRecordStore(RecordStore):
    """The durable system of record for one cube (one SQLite file). Implements :class:`RecordStore`."""

    backend = "sqlite"
    schema_version = RECORDS_SCHEMA_VERSION
    embeds_later = True

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._pid = os.getpid()  # the process this connection belongs to
        self._savepoints = 0  # nesting depth of transaction() inside an open one (guarded by _lock)
        self._pending_done: dict[int, int] = {}  # rowid -> gen of the mark the vector index accepted
        self._pending_seen: dict[int, int] = {}  # rowid -> gen as pending_vectors() listed it
        self._usage: dict[int, tuple[int, float]] = {}
        self._df_cache: dict[str, tuple[int, int]] = {}  # lexical term -> (capped document count, max rowid then)
        self._db: sqlite3.Connection | None = None
        #: why ``PRAGMA quick_check`` ran at this open (None: skipped, the last shutdown was a clean close)
        self.open_check: str | None = None
        self._marked = False  # this handle has put 'open' in the file (with its first change to it)
        self._opening = False  # inside the open's own transaction (it marks the file itself when it changes it)
        mmap_size = _mmap_size()
        policy = _open_check_policy()
        self._handles = _HandleLock(self.path)
        try:
            self._db = c = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=FULL")
            c.execute("PRAGMA foreign_keys=ON")
            c.execute("PRAGMA secure_delete=ON")
            c.execute("PRAGMA busy_timeout=30000")
            # Up to 64 MiB of page cache (allocated as used; the default is 2 MiB): BM25 reads doclists and
            # row sizes all over a large FTS index, and repeated searches then stop re-reading the same pages.
            c.execute("PRAGMA cache_size=-65536")
            # Reads through a memory map (read-only mapping; writes still go through the WAL as before): a search
            # scoped to one user reads a few thousand rows scattered over the file, and a read() per page cost
            # ~40% of it (scoped search at 100k memories: p50 46 -> 28 ms). Address space only; the OS page cache
            # holds the pages either way. MEMOS_SQLITE_MMAP=bytes sets the size (0 turns it off).
            c.execute(f"PRAGMA mmap_size={mmap_size}")
            # The integrity check reads the whole file (seconds per GB): it runs only when the last shutdown may
            # have been unclean (see _open_check_reason), not at every open.
            reason: str | None = None
            if readonly:
                reason = "opened read-only"
            elif policy == "always":
                reason = "MEMOS_SQLITE_OPEN_CHECK=always"
            alone: bool | None = None  # the only handle on the file (None: not known)
            if not readonly:
                alone = self._handles.try_exclusive()
                if alone is False:
                    self._handles.shared(_OPEN_LOCK_WAIT_S)
            short = self._shorter_than_its_header(c)
            is_new = c.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None
            if not readonly:
                self._opening = True
                with self.transaction():
                    schema0 = c.execute("PRAGMA schema_version").fetchone()[0]
                    for stmt in _SCHEMA.strip().split(";"):
                        if stmt.strip():
                            c.execute(stmt)
                    for stmt in _VEC_LOG_DDL:  # (triggers hold ';': not in _SCHEMA, which is split on it)
                        c.execute(stmt)
                    row = c.execute("SELECT value FROM meta WHERE key='records_schema'").fetchone()
                    if row is not None and int(row[0]) > RECORDS_SCHEMA_VERSION:
                        raise SchemaVersionError(
                            f"records database {self.path} has schema version {row[0]}; this MemOS understands up to "
                            f"{RECORDS_SCHEMA_VERSION}. Upgrade memos-langchain-llamaindex to open it.")
                    self._migrate(c, RECORDS_SCHEMA_VERSION if row is None else int(row[0]))
                    state = c.execute("SELECT value FROM meta WHERE key=?", (_OPEN_STATE_KEY,)).fetchone()
                    changed = (c.execute("PRAGMA schema_version").fetchone()[0] != schema0  # a new file, new tables
                               or (row is not None and int(row[0]) < RECORDS_SCHEMA_VERSION))  # a migration
                    if changed:
                        self.set_meta(c, _OPEN_STATE_KEY, "open")
                self._opening = False
                self._marked = changed
                if reason is None:
                    reason = self._open_check_reason(alone, is_new, state, short)
            elif short:
                reason = short
            self.open_check = reason
            if reason is not None:  # (an open that found no other handle checks holding the lock exclusively:
                # other handles opening meanwhile wait for the verdict)
                log.info("records database %s: integrity check at open (%s)", self.path, reason)
                try:
                    quick = c.execute("PRAGMA quick_check").fetchone()[0]
                except sqlite3.DatabaseError as exc:  # (a page too damaged to be walked)
                    quick = str(exc)
                if quick != "ok":
                    raise CorruptData(f"records database {self.path} failed its integrity check: {quick}")
            if alone:
                self._handles.shared(_OPEN_LOCK_WAIT_S)  # (a downgrade: never waits)
        except sqlite3.DatabaseError as exc:
            self._abandon()
            raise CorruptData(f"records database {self.path} cannot be opened: {exc}") from exc
        except BaseException:
            self._abandon()
            raise

    def _shorter_than_its_header(self, c: sqlite3.Connection) -> str | None:
        """A cheap look at every open: with no write-ahead log to add pages, the file must be as long as its
        header's page count (a cut file). Returns why the check must run, or None."""
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            if wal.exists() and wal.stat().st_size > 0:
                return None  # pages may live in the log
            size = self.path.stat().st_size
        except OSError:
            return None
        pages = int(c.execute("PRAGMA page_count").fetchone()[0])
        page = int(c.execute("PRAGMA page_size").fetchone()[0])
        return f"the file holds {size} bytes, its header says {pages * page}" if pages * page > size else None

    @staticmethod
    def _open_check_reason(alone: bool | None, is_new: bool, state: Sequence[Any] | None,
                           short: str | None) -> str | None:
        """Why the integrity check must run at this open, or None to skip it.

        * Another handle (this process or another) has the file open: skip. The open that found no other handle
          ran the check if it was due; SQLite's write-ahead log keeps the file consistent when one of several
          processes is killed, and the check is for the damage a whole-machine crash can leave.
        * No other handle: run it unless the last handle closed cleanly ('closed' in meta, written by the close
          that found no other handle). 'open' means a handle changed the file and the last process holding it
          ended without a clean close (killed, crashed, power loss); a missing mark, that a version before this
          one wrote the file. A handle that changed nothing leaves 'closed' as it was: nothing of it can be
          damaged. The mark rides in the commit of the handle's first change: a checkpoint or a later fsync'd
          commit carries it to the disk before anything else of that handle's (the log replays in order).
        """
        if short is not None:
            return short
        if alone is None:
            return "no handle lock on this platform or folder"
        if not alone or is_new:
            return None
        if state is None:
            return "no record of a clean close (written by an older version)"
        if state[0] != "closed":
            return "the last shutdown was not a clean close"
        return None

    def _abandon(self) -> None:
        """Close the connection and drop the handle lock after a failed open (no flush, no clean-close mark)."""
        db, self._db = self._db, None
        try:
            if db is not None:
                db.close()
        finally:
            self._handles.release()

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE ... COMMIT`` (fsync'd). Rolls back everything on any exception.

        Called while this thread already has a transaction of this store open (a search run inside a write's
        transaction writes usage, index bookkeeping, deferred embeddings or an audited read), it nests: a
        SAVEPOINT of the open transaction, undone alone when its block raises, and committed or rolled back
        with the open transaction (never on its own: one connection has one transaction)."""
        with self._lock:
            c = self._conn
            if c.in_transaction:  # ours: the connection is only used under this (re-entrant) lock
                with self._savepoint(c):
                    yield c
                return
            c.execute("BEGIN IMMEDIATE")
            changes = c.total_changes
            try:
                yield c
                self._flush_lazy(c)
                # (not the open's own transaction: its schema upsert counts as a change but writes nothing)
                marking = not self._marked and not self._opening and c.total_changes != changes
                if marking:  # this handle's first change to the file carries the mark (see _open_check_reason)
                    self.set_meta(c, _OPEN_STATE_KEY, "open")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            if marking:
                self._marked = True

    @contextmanager
    def _savepoint(self, c: sqlite3.Connection) -> Iterator[None]:
        """A nested transaction inside the open one (see :meth:`transaction`). Buffered bookkeeping is left to
        the outer commit: written here, a rollback of the outer transaction would lose it."""
        self._savepoints += 1
        name = f"memos_nested_{self._savepoints}"
        c.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            if c.in_transaction:  # (an error that ended the whole transaction leaves nothing to roll back to)
                c.execute(f"ROLLBACK TO {name}")
                c.execute(f"RELEASE {name}")
            raise
        else:
            c.execute(f"RELEASE {name}")
        finally:
            self._savepoints -= 1

    @contextmanager
    def derived_transaction(self) -> Iterator[sqlite3.Connection]:
        """:meth:`transaction` committed without its own fsync (``synchronous=NORMAL`` in WAL mode): it survives a
        process crash (the WAL is in the OS's cache), the next fsync'd commit makes it durable with it, and a
        power loss may drop it but never an earlier fsync'd commit. For derived data only (deferred embeddings:
        a row whose embedding is lost is still pending and the next open embeds it again)."""
        with self._lock:
            c = self._conn
            if c.in_transaction:  # nested: a savepoint, made durable by the open transaction's own commit
                with self.transaction() as t:
                    yield t
                return
            c.execute("PRAGMA synchronous=NORMAL")
            try:
                with self.transaction() as t:
                    yield t
            finally:
                c.execute("PRAGMA synchronous=FULL")

    def _flush_lazy(self, c: sqlite3.Connection) -> None:
        """Piggy-back cheap bookkeeping on a transaction that commits anyway."""
        if self._pending_done:
            c.executemany("DELETE FROM vec_pending WHERE item_rowid=? AND gen=?", list(self._pending_done.items()))
            self._pending_done.clear()
        if self._usage:
            c.executemany(
                "UPDATE items SET access_count=access_count+?, last_access=MAX(COALESCE(last_access,0),?) WHERE rowid=?",
                [(n, t, r) for r, (n, t) in self._usage.items()],
            )
            self._usage.clear()

    def flush(self) -> None:
        """Write buffered usage counters and index bookkeeping now (inside an open transaction of this thread:
        with that transaction's commit)."""
        with self._lock:
            if (self._pending_done or self._usage) and not self._conn.in_transaction:
                with self.transaction():
                    pass

    @property
    def _conn(self) -> sqlite3.Connection:
        db = self._db
        if db is None:
            raise CubeClosed(f"the cube at {self.path.parent} was closed (by close() or its MemOS); open it again: "
                             f"MemCube({str(self.path.parent)!r}), or MemOS(its data folder)")
        if self._pid != os.getpid():  # a SQLite connection must not be used across fork() (memos_core.forksafe)
            forksafe.check(self._pid, f"records database {self.path}")
        return db

    @property
    def closed(self) -> bool:
        return self._db is None

    def close(self) -> None:
        """Flush buffered counters and close the connection. Closing twice is a no-op. In a forked child, a
        connection the parent opened is left alone (closing it there could checkpoint or unlink the parent's WAL)."""
        if self._pid != os.getpid():
            return
        with self._lock:
            if self._db is None:
                return
            try:
                self.flush()
                self._mark_clean_close()
            finally:
                db, self._db = self._db, None
                try:
                    db.close()
                finally:
                    self._handles.release()

    def _mark_clean_close(self) -> None:
        """The last handle on the file (no other holds the handle lock) writes 'closed': the next open that finds
        no other handle skips the integrity check. Any other close leaves the mark as it is."""
        if not self._handles.try_exclusive():
            return
        try:
            state = self._conn.execute("SELECT value FROM meta WHERE key=?", (_OPEN_STATE_KEY,)).fetchone()
            if state is not None and state[0] == "closed":  # nothing was written since the last clean close
                return
            self._marked = True  # (this write must not put 'open' back)
            # (not fsync'd here: the checkpoint of the connection's close syncs it; a mark lost to a power loss
            # leaves 'open', and the next open checks)
            with self.derived_transaction() as c:
                self.set_meta(c, _OPEN_STATE_KEY, "closed")
        except sqlite3.Error as exc:  # the file cannot take the write: the next open checks it
            log.warning("records database %s: could not record a clean close (%s)", self.path, exc)

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, c: sqlite3.Connection, key: str, value: str) -> None:
        c.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                  (key, value))

    # ------------------------------------------------------------------ rows <-> models
    @staticmethod
    def _row_to_item(r: Sequence[Any]) -> MemoryItem:
        return MemoryItem.model_construct(
            id=r[1], cube_id=r[2], content=r[3], index_text=r[4], form=MemoryForm(r[5]), kind=MemoryKind(r[6]),
            scope=Scope.model_construct(user_id=r[7], agent_id=r[8], session_id=r[9]),
            state=LifecycleState(r[10]), version=r[11], created_at=_dt(r[12]), updated_at=_dt(r[13]),
            event_time=_dt(r[14]), valid_until=_dt(r[15]), expires_at=_dt(r[16]),
            provenance=Provenance.model_validate_json(r[17]), tags=json.loads(r[18]), metadata=json.loads(r[19]),
            confidence=r[20], usage=Usage.model_construct(access_count=r[21], last_access=_dt(r[22])),
            created_by=r[23],
        )

    @staticmethod
    def _item_params(item: MemoryItem) -> dict[str, Any]:
        return dict(
            id=item.id, cube_id=item.cube_id, content=item.content, index_text=item.index_text,
            form=item.form.value, kind=item.kind.value, user_id=item.scope.user_id, agent_id=item.scope.agent_id,
            session_id=item.scope.session_id, state=item.state.value, version=item.version,
            created_at=_ts(item.created_at), updated_at=_ts(item.updated_at), event_time=_ts(item.event_time),
            valid_until=_ts(item.valid_until), expires_at=_ts(item.expires_at),
            provenance=item.provenance.model_dump_json(), tags=json.dumps(item.tags),
            metadata=canonical_json(item.metadata), confidence=item.confidence,
            access_count=item.usage.access_count, last_access=_ts(item.usage.last_access), created_by=item.created_by,
        )

    @staticmethod
    def snapshot(item: MemoryItem, author: str | None, reason: str | None) -> MemoryVersion:
        return MemoryVersion(
            item_id=item.id, version=item.version, content=item.content, index_text=item.index_text, kind=item.kind,
            tags=item.tags, metadata=item.metadata, provenance=item.provenance, event_time=item.event_time,
            valid_until=item.valid_until, expires_at=item.expires_at, confidence=item.confidence,
            created_at=item.updated_at, author=author, reason=reason,
        )

    # ------------------------------------------------------------------ reads
    def rowid(self, item_id: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT rowid FROM items WHERE id=?", (item_id,)).fetchone()
        return None if row is None else row[0]

    def get(self, item_id: str) -> MemoryItem | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_ITEM_COLS} FROM items WHERE id=?", (item_id,)).fetchone()
        return None if row is None else self._row_to_item(row)

    def get_many_by_rowid(self, rowids: Sequence[int]) -> dict[int, MemoryItem]:
        out: dict[int, MemoryItem] = {}
        if not rowids:
            return out
        with self._lock:
            for chunk_start in range(0, len(rowids), 500):
                chunk = list(rowids[chunk_start:chunk_start + 500])
                q = f"SELECT {_ITEM_COLS} FROM items WHERE rowid IN ({','.join('?' * len(chunk))})"
                for row in self._conn.execute(q, chunk):
                    out[row[0]] = self._row_to_item(row)
        return out

    def get_many(self, ids: Sequence[str]) -> dict[str, MemoryItem]:
        out: dict[str, MemoryItem] = {}
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = list(ids[start:start + 500])
                q = f"SELECT {_ITEM_COLS} FROM items WHERE id IN ({','.join('?' * len(chunk))})"
                for row in self._conn.execute(q, chunk):
                    out[row[1]] = self._row_to_item(row)
        return out

    def count(self, states: Iterable[LifecycleState] | None = None) -> int:
        with self._lock:
            if states is None:
                return self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            st = [s.value for s in states]
            return self._conn.execute(
                f"SELECT COUNT(*) FROM items WHERE state IN ({','.join('?' * len(st))})", st
            ).fetchone()[0]

    def versions(self, item_id: str) -> list[MemoryVersion]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT snapshot FROM versions WHERE item_id=? ORDER BY version", (item_id,)
            ).fetchall()
        return [MemoryVersion.model_validate_json(r[0]) for r in rows]

    def version(self, item_id: str, version: int) -> MemoryVersion | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT snapshot FROM versions WHERE item_id=? AND version=?", (item_id, version)
            ).fetchone()
        return None if row is None else MemoryVersion.model_validate_json(row[0])

    def transitions(self, item_id: str) -> list[Transition]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT item_id, from_state, to_state, at, actor, reason FROM transitions WHERE item_id=? ORDER BY seq",
                (item_id,),
            ).fetchall()
        return [Transition(item_id=r[0], from_state=r[1], to_state=r[2], at=_dt(r[3]), actor=r[4], reason=r[5])
                for r in rows]

    def iter_items(self, batch: int = 1000, states: Iterable[LifecycleState] | None = None) -> Iterator[MemoryItem]:
        last = 0
        st = [s.value for s in states] if states is not None else None
        while True:
            with self._lock:
                if st is None:
                    rows = self._conn.execute(
                        f"SELECT {_ITEM_COLS} FROM items WHERE rowid>? ORDER BY rowid LIMIT ?", (last, batch)
                    ).fetchall()
                else:
                    rows = self._conn.execute(
                        f"SELECT {_ITEM_COLS} FROM items WHERE rowid>? AND state IN ({','.join('?' * len(st))}) "
                        "ORDER BY rowid LIMIT ?", (last, *st, batch)
                    ).fetchall()
            if not rows:
                return
            for r in rows:
                yield self._row_to_item(r)
            last = rows[-1][0]

    def embedding(self, rowid: int) -> np.ndarray | None:
        with self._lock:
            row = self._conn.execute("SELECT vec FROM embeddings WHERE item_rowid=?", (rowid,)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32)

    def pending_vectors(self) -> list[int]:
        with self._lock:
            rows = self._conn.execute("SELECT item_rowid, gen FROM vec_pending ORDER BY item_rowid").fetchall()
            # a row applied by this handle whose mark's deletion still waits for the next transaction is not pending
            rows = [(r, g) for r, g in rows if self._pending_done.get(r) != g]
            self._pending_seen.update(rows)
        return [r[0] for r in rows]

    def mark_vectors_applied(self, rowids: Iterable[int]) -> None:
        """Called after Chroma accepted the rows; cleared in the next transaction (or :meth:`flush`)."""
        with self._lock:
            for r in rowids:
                g = self._pending_seen.pop(r, None)
                if g is not None:  # cleared only as listed: a row pending again since (another writer) stays
                    self._pending_done[r] = g

    def record_usage(self, rowids: Iterable[int], at: float) -> None:
        """Buffer access counts; written with the next transaction or :meth:`flush` (not fsync'd per search)."""
        with self._lock:
            for r in rowids:
                n, _ = self._usage.get(r, (0, 0.0))
                self._usage[r] = (n + 1, at)

    # ------------------------------------------------------------------ writes (call inside transaction())
    def insert_item(self, c: sqlite3.Connection, item: MemoryItem, vec: np.ndarray | None, indexed: bool,
                    author: str | None, reason: str | None) -> int:
        p = self._item_params(item)
        try:
            cur = c.execute(
                "INSERT INTO items(id, cube_id, content, index_text, indexed_text, form, kind, user_id, agent_id, "
                "session_id, state, version, created_at, updated_at, event_time, valid_until, expires_at, provenance, "
                "tags, metadata, confidence, access_count, last_access, created_by) VALUES(:id, :cube_id, :content, "
                ":index_text, NULL, :form, :kind, :user_id, :agent_id, :session_id, :state, :version, :created_at, "
                ":updated_at, :event_time, :valid_until, :expires_at, :provenance, :tags, :metadata, :confidence, "
                ":access_count, :last_access, :created_by)",
                p,
            )
        except sqlite3.IntegrityError:
            raise ValidationError(f"an item with id {item.id!r} already exists; use update() to change it") from None
        rowid = int(cur.lastrowid)
        c.execute("INSERT INTO versions(item_id, version, snapshot) VALUES(?, ?, ?)",
                  (item.id, item.version, self.snapshot(item, author, reason).model_dump_json()))
        if indexed:
            self._index(c, rowid, item, vec)
        return rowid

    def replace_item(self, c: sqlite3.Connection, rowid: int, item: MemoryItem, vec: np.ndarray | None,
                     indexed: bool, new_version: bool, author: str | None, reason: str | None) -> None:
        """Write the item's current row (and a version snapshot when ``new_version``), re-indexing as needed."""
        p = self._item_params(item)
        p["rowid"] = rowid
        p["prev"] = item.version - 1 if new_version else item.version
        # Checked against the stored version: a writer that read the item before another process committed a
        # new version gets Conflict (the transaction rolls back), never a lost or duplicated version.
        cur = c.execute(
            "UPDATE items SET content=:content, index_text=:index_text, form=:form, kind=:kind, user_id=:user_id, "
            "agent_id=:agent_id, session_id=:session_id, state=:state, version=:version, updated_at=:updated_at, "
            "event_time=:event_time, valid_until=:valid_until, expires_at=:expires_at, provenance=:provenance, "
            "tags=:tags, metadata=:metadata, confidence=:confidence WHERE rowid=:rowid AND version=:prev",
            p,
        )
        if cur.rowcount != 1:
            raise Conflict(f"memory {item.id!r} was changed by another writer (it is no longer at version "
                           f"{p['prev']}); read it again and retry")
        self._unindex(c, rowid)
        if new_version:
            c.execute("INSERT INTO versions(item_id, version, snapshot) VALUES(?, ?, ?)",
                      (item.id, item.version, self.snapshot(item, author, reason).model_dump_json()))
        if indexed:
            self._index(c, rowid, item, vec)

    def _index(self, c: sqlite3.Connection, rowid: int, item: MemoryItem, vec: np.ndarray | None) -> None:
        text = item.index_text or item.content
        c.execute("INSERT INTO fts(rowid, text) VALUES(?, ?)", (rowid, text))
        c.execute("UPDATE items SET indexed_text=? WHERE rowid=?", (text, rowid))
        if vec is not None:  # None: the embedding comes later (put_embeddings); the pending mark finds the row
            c.execute("INSERT OR REPLACE INTO embeddings(item_rowid, version, vec) VALUES(?, ?, ?)",
                      (rowid, item.version, np.asarray(vec, dtype=np.float32).tobytes()))
        self.mark_pending(c, rowid)

    def _unindex(self, c: sqlite3.Connection, rowid: int) -> None:
        row = c.execute("SELECT indexed_text FROM items WHERE rowid=?", (rowid,)).fetchone()
        if row is not None and row[0] is not None:
            c.execute("INSERT INTO fts(fts, rowid, text) VALUES('delete', ?, ?)", (rowid, row[0]))
            c.execute("UPDATE items SET indexed_text=NULL WHERE rowid=?", (rowid,))
            c.execute("DELETE FROM embeddings WHERE item_rowid=?", (rowid,))
            self.mark_pending(c, rowid)

    def set_state(self, c: sqlite3.Connection, rowid: int, item_id: str, old: LifecycleState | None,
                  new: LifecycleState, at: float, actor: str | None, reason: str | None) -> None:
        if old is None:
            c.execute("UPDATE items SET state=?, updated_at=MAX(updated_at, ?) WHERE rowid=?", (new.value, at, rowid))
        elif c.execute("UPDATE items SET state=?, updated_at=MAX(updated_at, ?) WHERE rowid=? AND state=?",
                       (new.value, at, rowid, old.value)).rowcount != 1:
            raise Conflict(f"memory {item_id!r} is no longer {old.value} (another writer changed it); "
                           "read it again and retry")
        c.execute("INSERT INTO transitions(item_id, from_state, to_state, at, actor, reason) VALUES(?,?,?,?,?,?)",
                  (item_id, None if old is None else old.value, new.value, at, actor, reason))

    def unindex(self, c: sqlite3.Connection, rowid: int) -> None:
        self._unindex(c, rowid)

    def reindex_row(self, c: sqlite3.Connection, rowid: int, item: MemoryItem, vec: np.ndarray) -> None:
        self._unindex(c, rowid)
        self._index(c, rowid, item, vec)

    def erase_content(self, c: sqlite3.Connection, rowid: int, item_id: str) -> None:
        """Purge: blank the content of the item and every version (the tombstone row and history stay)."""
        self._count_erasure(c)
        self._unindex(c, rowid)
        c.execute("UPDATE items SET content='', index_text=NULL, metadata='{}', tags='[]' WHERE rowid=?", (rowid,))
        for (ver, snap) in c.execute("SELECT version, snapshot FROM versions WHERE item_id=?", (item_id,)).fetchall():
            v = json.loads(snap)
            v.update(content="", index_text=None, metadata={}, tags=[])
            c.execute("UPDATE versions SET snapshot=? WHERE item_id=? AND version=?", (canonical_json(v), item_id, ver))

    def erase_item(self, c: sqlite3.Connection, rowid: int, item_id: str) -> None:
        """Forget: delete the item row, every version, its transitions, embedding and lexical entries.

        The caller removes the id from the vector index after commit (governance/core.py ``forget``)."""
        self._unindex(c, rowid)
        c.execute("DELETE FROM vec_pending WHERE item_rowid=?", (rowid,))
        c.execute("DELETE FROM embeddings WHERE item_rowid=?", (rowid,))
        c.execute("DELETE FROM versions WHERE item_id=?", (item_id,))
        c.execute("DELETE FROM transitions WHERE item_id=?", (item_id,))
        c.execute("DELETE FROM items WHERE rowid=?", (rowid,))
        self._count_erasure(c)
        self._usage.pop(rowid, None)
        self._pending_done.pop(rowid, None)
        self._pending_seen.pop(rowid, None)

    @staticmethod
    def _count_erasure(c: sqlite3.Connection) -> None:
        """One more erasure (forget, purge) in the cube's counter, in the erasing transaction: other processes'
        scope caches see it move at their next call (:attr:`RecordStore.erasures_seen`)."""
        c.execute("INSERT INTO meta(key, value) VALUES('erasures', '1') ON CONFLICT(key) DO UPDATE "
                  "SET value=CAST(CAST(meta.value AS INTEGER) + 1 AS TEXT)")

    def append_event(self, c: sqlite3.Connection, at: float, actor: str | None, op: str, item_id: str | None,
                     outcome: str = "ok", detail: dict[str, Any] | None = None) -> str:
        """Append one record to the hash-chained event log and return its hash."""
        row = c.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        prev = GENESIS_HASH if row is None else row[1]
        # The next number comes from the AUTOINCREMENT counter, not the last row: a deleted tail then
        # shows as a gap (governance/audit.py) instead of being silently re-used.
        top = c.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
        seq = max(0 if row is None else row[0], 0 if top is None else top[0]) + 1
        d = canonical_json(detail or {})
        h = event_hash(prev, seq, at, actor, op, item_id, outcome, d)
        c.execute("INSERT INTO events(seq, at, actor, op, item_id, outcome, detail, prev_hash, hash) "
                  "VALUES(?,?,?,?,?,?,?,?,?)", (seq, at, actor, op, item_id, outcome, d, prev, h))
        # evidence of the log's length kept with the records (governance/audit.py: a cut tail shows)
        self.set_meta(c, "audit_head", f"{seq}:{h}")
        return h

    def events(self, item_id: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        rows = self.raw_events(item_id, limit)
        return [dict(seq=r[0], at=_dt(r[1]), actor=r[2], op=r[3], item_id=r[4], outcome=r[5],
                     detail=json.loads(r[6]), prev_hash=r[7], hash=r[8]) for r in rows]

    # ------------------------------------------------------------------ filtering and lexical search
    def compile_filter(self, f: SearchFilter, states: Sequence[LifecycleState], now: float) -> CompiledFilter:
        """The filter as a ``WHERE`` fragment over ``items`` and its parameters. Keys are validated by
        :class:`SearchFilter`; values (and metadata paths) are bound."""
        a = "items"
        where = [f"{a}.state IN ({','.join('?' * len(states))})"]
        args: list[Any] = [s.value for s in states]
        where.append(f"({a}.expires_at IS NULL OR {a}.expires_at > ?)")
        args.append(now)
        for col in ("user_id", "agent_id", "session_id"):
            val = getattr(f, col)
            if val is not None:
                where.append(f"{a}.{col} = ?")
                args.append(val)
        if f.kinds:
            where.append(f"{a}.kind IN ({','.join('?' * len(f.kinds))})")
            args += [k.value for k in f.kinds]
        if f.forms:
            where.append(f"{a}.form IN ({','.join('?' * len(f.forms))})")
            args += [k.value for k in f.forms]
        if f.ids:
            where.append(f"{a}.id IN ({','.join('?' * len(f.ids))})")
            args += list(f.ids)
        if f.event_after is not None:
            where.append(f"{a}.event_time >= ?")
            args.append(f.event_after.timestamp())
        if f.event_before is not None:
            where.append(f"{a}.event_time <= ?")
            args.append(f.event_before.timestamp())
        if f.tags_any:
            where.append(f"EXISTS (SELECT 1 FROM json_each({a}.tags) WHERE value IN ({','.join('?' * len(f.tags_any))}))")
            args += list(f.tags_any)
        for tag in f.tags_all or []:
            where.append(f"EXISTS (SELECT 1 FROM json_each({a}.tags) WHERE value = ?)")
            args.append(tag)
        for key, cond in (f.metadata or {}).items():
            path = "$." + ".".join(f'"{part}"' for part in key.split("."))
            expr = f"json_extract({a}.metadata, ?)"
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            for op, val in ops.items():
                if op == "$exists":
                    where.append(f"json_type({a}.metadata, ?) IS {'NOT ' if val else ''}NULL")
                    args.append(path)
                elif op in ("$in", "$nin"):
                    vals = [int(v) if isinstance(v, bool) else v for v in val]
                    if not vals:
                        where.append("0" if op == "$in" else "1")
                        continue
                    if op == "$nin":  # like $ne: a memory without the key matches
                        where.append(f"({expr} IS NULL OR {expr} NOT IN ({','.join('?' * len(vals))}))")
                        args += [path, path, *vals]
                    else:
                        where.append(f"{expr} IN ({','.join('?' * len(vals))})")
                        args += [path, *vals]
                elif op in ("$gt", "$gte", "$lt", "$lte"):
                    # SQLite orders every number before every string: compare only values of the same type,
                    # so {"$gt": 2} never matches "high" and {"$lt": "m"} never matches 3.
                    types = "('integer', 'real')" if isinstance(val, (int, float)) else "('text')"
                    sql_op = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
                    where.append(f"(json_type({a}.metadata, ?) IN {types} AND {expr} {sql_op} ?)")
                    args += [path, path, val]
                else:
                    sql_op = {"$eq": "IS", "$ne": "IS NOT"}[op]
                    where.append(f"{expr} {sql_op} ?")
                    args += [path, int(val) if isinstance(val, bool) else val]
        return CompiledFilter(" AND ".join(where), args)

    def filtered_vectors(self, cf: CompiledFilter, limit: int, *, pending_only: bool = False
                         ) -> tuple[list[int], list[bytes]]:
        """(rowids, embedding blobs) of up to ``limit`` items passing the filter that have an embedding, in one
        pass (exact dense scoring of a narrow filter: a user's memories, a tag, a time range)."""
        where, args = cf
        if pending_only:
            where = f"({where}) AND items.rowid IN (SELECT item_rowid FROM vec_pending)"
        with self._lock:
            rows = self._conn.execute(
                f"SELECT items.rowid, e.vec FROM items JOIN embeddings e ON e.item_rowid = items.rowid "
                f"WHERE {where} LIMIT ?", (*args, limit)).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    #: Work budget of one lexical query, in matching rows. FTS5 computes bm25 for *every* row that matches
    #: any query term (~1.5 us each), so on a large cube a query with common words costs tens of ms. Above the
    #: budget the query keeps only its rarest terms (at least one that occurs) whose document counts fit in it;
    #: the common ones add little to BM25 and dense retrieval still sees the whole query. When even the rarest
    #: term occurs in more rows than the budget (a million memories from a small vocabulary), BM25 ranks only
    #: its ``lexical_match_budget`` most recent rows (FTS5 walks the term's rows newest first and stops), so
    #: the cost stays flat as the cube grows; a filter that passes too few of them falls back to every row.
    #: Cubes smaller than the budget are never affected.
    lexical_match_budget = 3000

    def _term_df(self, phrase: str, stamp: int) -> int:
        """Rows matching one quoted term, capped just above the budget; cached (approximate is enough)."""
        hit = self._df_cache.get(phrase)
        if hit is not None and hit[1] * 1.1 >= stamp:
            return hit[0]
        if len(self._df_cache) > 50_000:
            self._df_cache.clear()
        df = self._conn.execute("SELECT count(*) FROM (SELECT rowid FROM fts WHERE fts MATCH ? LIMIT ?)",
                                (phrase, self.lexical_match_budget + 1)).fetchone()[0]
        self._df_cache[phrase] = (df, stamp)
        return df

    def _budget_match(self, match: str) -> tuple[str, bool]:
        """The MATCH expression within the work budget, and whether it is still over it (its rarest term alone
        occurs in more rows than the budget: :meth:`lexical` then ranks only the newest of them)."""
        phrases = match.split(" OR ")
        if not all(len(p) > 2 and p[0] == p[-1] == '"' and '"' not in p[1:-1].replace('""', "") for p in phrases):
            return match, False
        stamp = self._conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM items").fetchone()[0]
        if stamp <= self.lexical_match_budget:  # fewer rows than the budget: nothing to save
            return match, False
        dfs = {p: self._term_df(p, stamp) for p in phrases}
        if sum(dfs.values()) <= self.lexical_match_budget:
            return match, False
        keep: set[str] = set()
        used = 0
        for p in sorted(phrases, key=lambda p: (dfs[p], p)):
            # `used`, not `keep`: a term that occurs nowhere costs nothing and must not stand in for the rarest
            # term that does occur (the query would match no row at all)
            if used and used + dfs[p] > self.lexical_match_budget:
                break
            keep.add(p)
            used += dfs[p]
        return " OR ".join(p for p in phrases if p in keep), used > self.lexical_match_budget

    def lexical(self, match: str, cf: CompiledFilter, k: int) -> list[tuple[int, float]]:
        """BM25 search. Returns (rowid, score) best first; score is -bm25 (higher is better)."""
        where, args = cf
        if not match:
            return []
        with self._lock:
            try:
                match, over = self._budget_match(match)
                # Fast path: the best k*8 matches, then the filter. Exact when the filter is loose. Over the
                # budget the matches are the budget's worth of newest rows (rowid order: no bm25 for the others);
                # only their best k*8 are joined to `items` first (joining all of them cost more than scoring),
                # then all of them when the filter passes too few, so that a filter passing one row in fifty
                # still finds its k here.
                newest = "SELECT rowid, bm25(fts) AS score FROM fts WHERE fts MATCH ? ORDER BY rowid DESC LIMIT ?"

                def joined(inner: str) -> str:
                    return (f"SELECT m.rowid, m.score FROM ({inner}) AS m JOIN items ON items.rowid = m.rowid "
                            f"WHERE {where} ORDER BY m.score LIMIT ?")

                if over:
                    rows = self._conn.execute(joined(f"SELECT rowid, score FROM ({newest}) ORDER BY score LIMIT ?"),
                                              (match, self.lexical_match_budget, max(k * 8, 200), *args, k)).fetchall()
                    if len(rows) < k:
                        rows = self._conn.execute(joined(newest),
                                                  (match, self.lexical_match_budget, *args, k)).fetchall()
                else:
                    rows = self._conn.execute(
                        joined("SELECT rowid, bm25(fts) AS score FROM fts WHERE fts MATCH ? ORDER BY score LIMIT ?"),
                        (match, max(k * 8, 200), *args, k)).fetchall()
                if len(rows) < k:
                    rows = self._conn.execute(
                        f"SELECT fts.rowid, bm25(fts) AS score FROM fts JOIN items ON items.rowid = fts.rowid "
                        f"WHERE fts MATCH ? AND {where} ORDER BY score LIMIT ?",
                        (match, *args, k),
                    ).fetchall()
            except sqlite3.OperationalError as exc:
                raise ValidationError(f"lexical query could not be parsed: {exc}") from None
        return [(r[0], -float(r[1])) for r in rows]

    # ------------------------------------------------------------------ maintenance
    def optimize_lexical(self) -> None:
        """Merge FTS segments so deleted entries are physically dropped (used by forget/purge)."""
        with self.transaction() as c:
            c.execute("INSERT INTO fts(fts) VALUES('optimize')")

    def checkpoint(self) -> None:
        """Copy the WAL into the database and truncate it (so erased bytes leave the -wal file too)."""
        with self._lock:
            self.flush()
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def vacuum(self) -> None:
        with self._lock:
            self.flush()
            if not self._marked:  # VACUUM rewrites the file outside any transaction(): the mark first
                with self.transaction() as c:
                    self.set_meta(c, _OPEN_STATE_KEY, "open")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.execute("VACUUM")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def all_embeddings(self, batch: int = 5000) -> Iterator[list[tuple[int, str, np.ndarray]]]:
        """Yield batches of (rowid, item id, vector) for every indexed item (used to rebuild the vector index)."""
        last = 0
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT e.item_rowid, i.id, e.vec FROM embeddings e JOIN items i ON i.rowid=e.item_rowid "
                    "WHERE e.item_rowid>? ORDER BY e.item_rowid LIMIT ?", (last, batch)
                ).fetchall()
            if not rows:
                return
            yield [(r[0], r[1], np.frombuffer(r[2], dtype=np.float32)) for r in rows]
            last = rows[-1][0]

    def waiting_embeddings(self, limit: int = 10_000) -> list[tuple[int, str]]:
        with self._lock:
            return [(r[0], r[1]) for r in self._conn.execute(
                "SELECT v.item_rowid, i.indexed_text FROM vec_pending v JOIN items i ON i.rowid = v.item_rowid "
                "WHERE i.indexed_text IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM embeddings e WHERE e.item_rowid = v.item_rowid) ORDER BY v.item_rowid LIMIT ?",
                (limit,))]

    def put_embeddings(self, c: sqlite3.Connection, rows: Sequence[tuple[int, str, np.ndarray]]) -> list[int]:
        done: list[int] = []
        for rowid, text, vec in rows:
            cur = c.execute(
                "INSERT INTO embeddings(item_rowid, version, vec) SELECT rowid, version, ? FROM items "
                "WHERE rowid=? AND indexed_text=? AND NOT EXISTS (SELECT 1 FROM embeddings WHERE item_rowid=?)",
                (np.asarray(vec, dtype=np.float32).tobytes(), rowid, text, rowid))
            if cur.rowcount == 1:
                self.mark_pending(c, rowid)
                done.append(rowid)
        return done

    def put_topics(self, c: sqlite3.Connection, rows: Sequence[tuple[int, int, bytes]]) -> None:
        c.executemany("UPDATE embeddings SET topic=? WHERE item_rowid=? AND version=?",
                      [(bytes(blob), int(r), int(v)) for r, v, blob in rows])

    def topic_vectors(self, rowids: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        with self._lock:
            for s in range(0, len(rowids), 900):
                chunk = [int(r) for r in rowids[s:s + 900]]
                out.update(self._conn.execute(
                    f"SELECT item_rowid, topic FROM embeddings WHERE topic IS NOT NULL AND item_rowid IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall())
        return out

    def missing_topics(self, limit: int = 10_000) -> list[tuple[int, int]]:
        with self._lock:
            return [(int(r), int(v)) for r, v in self._conn.execute(
                "SELECT item_rowid, version FROM embeddings WHERE topic IS NULL ORDER BY item_rowid LIMIT ?",
                (limit,))]

    def missing_embeddings(self, states: Sequence[LifecycleState]) -> list[int]:
        st = [s.value for s in states]
        with self._lock:
            return [r[0] for r in self._conn.execute(
                f"SELECT rowid FROM items WHERE state IN ({','.join('?' * len(st))}) AND rowid NOT IN "
                "(SELECT item_rowid FROM embeddings)", st)]

    # ------------------------------------------------------------------ bulk restore (bundles, migration)
    def restore_item(self, c: sqlite3.Connection, item: MemoryItem, versions: Sequence[MemoryVersion],
                     transitions: Sequence[Transition], vec: np.ndarray | None, indexed: bool) -> int:
        """Insert an item exactly as exported (its id, state, version, history). Call inside transaction()."""
        p = self._item_params(item)
        try:
            cur = c.execute(
                "INSERT INTO items(id, cube_id, content, index_text, indexed_text, form, kind, user_id, agent_id, "
                "session_id, state, version, created_at, updated_at, event_time, valid_until, expires_at, provenance, "
                "tags, metadata, confidence, access_count, last_access, created_by) VALUES(:id, :cube_id, :content, "
                ":index_text, NULL, :form, :kind, :user_id, :agent_id, :session_id, :state, :version, :created_at, "
                ":updated_at, :event_time, :valid_until, :expires_at, :provenance, :tags, :metadata, :confidence, "
                ":access_count, :last_access, :created_by)",
                p,
            )
        except sqlite3.IntegrityError:
            raise ValidationError(f"an item with id {item.id!r} already exists in the target cube") from None
        rowid = int(cur.lastrowid)
        c.executemany("INSERT INTO versions(item_id, version, snapshot) VALUES(?, ?, ?)",
                      [(item.id, v.version, v.model_dump_json()) for v in versions])
        c.executemany(
            "INSERT INTO transitions(item_id, from_state, to_state, at, actor, reason) VALUES(?,?,?,?,?,?)",
            [(item.id, None if t.from_state is None else t.from_state.value, t.to_state.value, _ts(t.at), t.actor,
              t.reason) for t in transitions])
        if indexed:  # vec None: indexed, its embedding to come (see RecordStore.embeds_later)
            self._index(c, rowid, item, vec)
        return rowid

    def raw_events(self, item_id: str | None = None, limit: int | None = None) -> list[tuple[Any, ...]]:
        """Event rows verbatim (seq, at, actor, op, item_id, outcome, detail, prev_hash, hash), in chain order."""
        q = "SELECT seq, at, actor, op, item_id, outcome, detail, prev_hash, hash FROM events"
        args: list[Any] = []
        if item_id is not None:
            q += " WHERE item_id=?"
            args.append(item_id)
        q += " ORDER BY seq"
        if limit is not None:
            q += " LIMIT ?"
            args.append(limit)
        with self._lock:
            return self._conn.execute(q, args).fetchall()

    def restore_events(self, c: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> bool:
        """Copy an exported event chain verbatim into an empty log (so it still verifies). False if not empty."""
        if c.execute("SELECT COUNT(*) FROM events").fetchone()[0]:
            return False
        c.executemany("INSERT INTO events(seq, at, actor, op, item_id, outcome, detail, prev_hash, hash) "
                      "VALUES(?,?,?,?,?,?,?,?,?)", [tuple(r) for r in rows])
        if rows:
            self.set_meta(c, "audit_head", f"{rows[-1][0]}:{rows[-1][8]}")
        return True

    # ================================================================== the RecordStore seam (records/base.py)
    # The SQL that cube.py and governance/ used to run through ``_conn`` lives below, behind typed methods.
    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """Reads inside see one consistent state (one read transaction; WAL readers never block writers)."""
        with self._lock:
            c = self._conn
            if c.in_transaction:
                yield
                return
            c.execute("BEGIN")
            try:
                yield
            finally:
                c.execute("COMMIT")

    def setdefault_meta(self, key: str, value: str) -> str:
        with self.transaction() as c:
            c.execute("INSERT OR IGNORE INTO meta(key, value) VALUES(?, ?)", (key, value))
            return c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0]

    def embedding_count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def in_transaction(self) -> bool:
        owned = getattr(self._lock, "_is_owned", None)
        return True if owned is None else bool(owned())

    def stored_schema_version(self) -> int:
        raw = self.get_meta("records_schema")
        return int(raw) if raw is not None else RECORDS_SCHEMA_VERSION

    def _read(self, c: sqlite3.Connection | None) -> sqlite3.Connection:
        return self._conn if c is None else c

    def rowids_of(self, ids: Sequence[str], c: sqlite3.Connection | None = None) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        with self._lock:
            conn = self._read(c)
            for s in range(0, len(ids), 500):
                chunk = list(ids[s:s + 500])
                for iid, rowid, state in conn.execute(
                        f"SELECT id, rowid, state FROM items WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                    out[iid] = (rowid, state)
        return out

    def count_by_state(self) -> dict[str, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())

    def erasure_candidates(self, c: sqlite3.Connection | None, user_id: str | None, agent_id: str | None,
                           fragments: Sequence[str]) -> list[int]:
        frags = [f for f in fragments if f]
        hit = " OR ".join(["instr(index_text, ?) > 0"] * len(frags)) or "0"
        sql = (f"SELECT rowid FROM items WHERE user_id IS ? AND agent_id IS ? AND (version > 1 OR {hit}) "
               "ORDER BY rowid")
        if c is not None:
            return [r[0] for r in c.execute(sql, (user_id, agent_id, *frags))]
        with self._lock:
            return [r[0] for r in self._conn.execute(sql, (user_id, agent_id, *frags))]

    def items_citing(self, c: sqlite3.Connection, parent_id: str) -> list[tuple[str, str]]:
        pat = json.dumps(parent_id)[1:-1]
        return [(r[0], r[1]) for r in c.execute(
            "SELECT id, provenance FROM items WHERE provenance LIKE ? OR provenance LIKE ?",
            (f'%"{pat}"%', f'%"{pat}@%')).fetchall()]

    def expired_ids(self, now: float, states: Sequence[LifecycleState]) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute(
                "SELECT id FROM items WHERE expires_at IS NOT NULL AND expires_at <= ? AND state IN "
                f"({','.join('?' * len(states))}) ORDER BY rowid", (now, *[s.value for s in states]))]

    def mark_pending(self, c: sqlite3.Connection, rowid: int) -> None:
        # A random generation: another process's listing of an older mark of this row cannot clear this one.
        c.execute("INSERT INTO vec_pending(item_rowid, gen) VALUES(?, ?) ON CONFLICT(item_rowid) DO UPDATE SET "
                  "gen=excluded.gen", (rowid, secrets.randbits(62)))
        self._pending_done.pop(rowid, None)

    @staticmethod
    def _migrate(c: sqlite3.Connection, have: int) -> None:
        """Bring a records database from schema ``have`` to :data:`RECORDS_SCHEMA_VERSION` (in the open's
        transaction). A new database was created at the current layout by ``_SCHEMA``."""
        if have < 2 and "gen" not in {r[1] for r in c.execute("PRAGMA table_info(vec_pending)")}:
            c.execute("ALTER TABLE vec_pending ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")
        if have < 3 and "topic" not in {r[1] for r in c.execute("PRAGMA table_info(embeddings)")}:
            # schema 3: the topic vector beside the embedding (NULL: none yet; see RecordStore.put_topics)
            c.execute("ALTER TABLE embeddings ADD COLUMN topic BLOB")
        c.execute("INSERT INTO meta(key, value) VALUES('records_schema', ?) ON CONFLICT(key) DO UPDATE SET "
                  "value=excluded.value", (str(RECORDS_SCHEMA_VERSION),))

    def refresh_expiry(self, c: sqlite3.Connection, item_id: str, expires_at: float, now: float,
                       states: Sequence[LifecycleState]) -> bool:
        cur = c.execute(
            "UPDATE items SET expires_at=? WHERE id=? AND expires_at IS NOT NULL AND expires_at > ? "
            f"AND state IN ({','.join('?' * len(states))})", (expires_at, item_id, now, *[s.value for s in states]))
        return bool(cur.rowcount)

    def append_event_alone(self, at: float, actor: str | None, op: str, item_id: str | None,
                           outcome: str, detail: Mapping[str, Any]) -> str:
        # Not transaction(): that would also flush the buffered bookkeeping, and a refused or failed attempt
        # must leave no other trace than its record.
        with self._lock:
            c = self._conn
            if c.in_transaction:  # inside this thread's open transaction: recorded (and kept) with it
                with self._savepoint(c):
                    return self.append_event(c, at, actor, op, item_id, outcome=outcome, detail=dict(detail))
            c.execute("BEGIN IMMEDIATE")
            try:
                h = self.append_event(c, at, actor, op, item_id, outcome=outcome, detail=dict(detail))
                marking = not self._marked  # (a change: see transaction())
                if marking:
                    self.set_meta(c, _OPEN_STATE_KEY, "open")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            if marking:
                self._marked = True
        return h

    def event_counter(self) -> int | None:
        with self._lock:
            try:
                top = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
            except sqlite3.OperationalError:
                top = None
        return None if top is None else int(top[0])

    def has_events(self, c: sqlite3.Connection | None = None) -> bool:
        with self._lock:
            return self._read(c).execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None

    def audit_head(self) -> tuple[int, str] | None:
        with self._lock:
            row = self._conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), row[1])

    #: a reader further behind than this many changes rebuilds rather than replaying them
    _VEC_LOG_REPLAY = 50_000

    def vector_changes(self, since: int | None) -> tuple[int, list[int] | None] | None:
        """See :meth:`RecordStore.vector_changes`: the ``vec_changes`` log (filled by triggers: ``_VEC_LOG_DDL``)."""
        with self._lock:
            c = self._conn
            try:
                top = int(c.execute("SELECT MAX(seq) FROM vec_changes").fetchone()[0] or 0)
            except sqlite3.OperationalError:  # a file opened read-only that no read-write open has given the log
                return None
            if since is None:
                return top, []
            if since > top or top - since > self._VEC_LOG_REPLAY:
                return top, None  # another log (the file was replaced) or too far behind: rebuild
            if since == top:
                return top, []
            rows = c.execute("SELECT seq, item_rowid FROM vec_changes WHERE seq > ? ORDER BY seq", (since,)).fetchall()
        if not rows or rows[0][0] != since + 1:
            return top, None  # trimmed past ``since``
        return int(rows[-1][0]), list(dict.fromkeys(int(r[1]) for r in rows))

    def scope_vectors(self, user_id: str | None, agent_id: str | None, session_id: str | None
                      ) -> tuple[list[int], list[bytes]]:
        # only the scope's index and the embeddings: a user scope's rowids come from items_user (a covering
        # index), so no wide items row is read (20k vectors: ~70-100 ms here instead of ~120-190 ms)
        where = " AND ".join(f"i.{col} = ?" for col, v in (("user_id", user_id), ("agent_id", agent_id),
                                                          ("session_id", session_id)) if v is not None) or "1"
        args = [v for v in (user_id, agent_id, session_id) if v is not None]
        with self._lock:
            rows = self._conn.execute(
                f"SELECT e.item_rowid, e.vec FROM items i JOIN embeddings e ON e.item_rowid = i.rowid WHERE {where}",
                args).fetchall()
        return [r[0] for r in rows], [r[1] for r in rows]

    def passing_rowids(self, rowids: Sequence[int], cf: CompiledFilter) -> set[int]:
        if not rowids:
            return set()
        where, args = cf
        out: set[int] = set()
        # NOT INDEXED: one rowid lookup per candidate (SQLite would otherwise walk the user_id index: see
        # rowids_passing); 120 candidates ~0.1 ms
        with self._lock:
            for s in range(0, len(rowids), 900):
                chunk = [int(r) for r in rowids[s:s + 900]]
                out.update(r[0] for r in self._conn.execute(
                    f"SELECT rowid FROM items NOT INDEXED WHERE rowid IN ({','.join('?' * len(chunk))}) AND {where}",
                    (*chunk, *args)))
        return out

    def embeddings_of(self, rowids: Sequence[int]) -> tuple[list[int], list[bytes]]:
        keep: list[int] = []
        blobs: list[bytes] = []
        with self._lock:
            for s in range(0, len(rowids), 900):
                chunk = list(rowids[s:s + 900])
                for r, blob in self._conn.execute(
                        f"SELECT item_rowid, vec FROM embeddings WHERE item_rowid IN ({','.join('?' * len(chunk))})",
                        chunk):
                    keep.append(r)
                    blobs.append(blob)
        return keep, blobs

    def rowids_passing(self, ids: Sequence[str], cf: CompiledFilter) -> dict[str, int]:
        if not ids:
            return {}
        where, args = cf
        # INDEXED BY the unique id index: without statistics SQLite guesses that an equality on an indexed
        # column (state, user_id) matches ~10 rows and walks that index instead -- every row in the searchable
        # states, ~15 ms per query at 20k memories, instead of one lookup per candidate.
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, rowid FROM items INDEXED BY sqlite_autoindex_items_1 WHERE id IN "
                f"({','.join('?' * len(ids))}) AND {where}", (*ids, *args)
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def contents(self, rowids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        with self._lock:
            for s in range(0, len(rowids), 900):
                chunk = list(rowids[s:s + 900])
                out.update(self._conn.execute(
                    f"SELECT rowid, content FROM items WHERE rowid IN ({','.join('?' * len(chunk))})",
                    chunk).fetchall())
        return out

    def contents_with(self, rowids: Sequence[int], key: str) -> dict[int, tuple[str, Any]]:
        path = "$." + ".".join(f'"{part}"' for part in key.split("."))
        out: dict[int, tuple[str, Any]] = {}
        with self._lock:
            for s in range(0, len(rowids), 900):
                chunk = list(rowids[s:s + 900])
                for r, c, v in self._conn.execute(
                        f"SELECT rowid, content, json_extract(metadata, ?) FROM items WHERE rowid IN "
                        f"({','.join('?' * len(chunk))})", (path, *chunk)):
                    out[r] = (c, v)
        return out

    def candidate_rows(self, rowids: Sequence[int], key: str) -> dict[int, tuple[bytes | None, str, Any]]:
        path = "$." + ".".join(f'"{part}"' for part in key.split("."))
        ordered = sorted({int(r) for r in rowids})
        out: dict[int, tuple[bytes | None, str, Any]] = {}
        with self._lock:
            for s in range(0, len(ordered), 900):
                chunk = ordered[s:s + 900]
                for r, vec, c, v in self._conn.execute(
                        f"SELECT items.rowid, e.vec, items.content, json_extract(items.metadata, ?) FROM items "
                        f"LEFT JOIN embeddings e ON e.item_rowid = items.rowid WHERE items.rowid IN "
                        f"({','.join('?' * len(chunk))}) ORDER BY items.rowid", (path, *chunk)):
                    out[r] = (vec, c, v)
        return out

    def list_rowids(self, cf: CompiledFilter, order: str, limit: int, offset: int) -> list[int]:
        where, args = cf
        col = "rowid" if order == "created" else "COALESCE(event_time, created_at), rowid"
        with self._lock:
            return [r[0] for r in self._conn.execute(
                f"SELECT rowid FROM items WHERE {where} ORDER BY {col} LIMIT ? OFFSET ?", (*args, limit, offset))]

    def distinct_metadata(self, key: str, cf: CompiledFilter, limit: int) -> list[Any]:
        where, args = cf
        path = "$." + ".".join(f'"{part}"' for part in key.split("."))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT DISTINCT json_extract(metadata, ?) FROM items WHERE {where} "
                "AND json_type(metadata, ?) IS NOT NULL LIMIT ?", (path, *args, path, limit)
            ).fetchall()
        return [r[0] for r in rows]

    def index_rows(self, rowids: Sequence[int]) -> list[IndexRow]:
        out: list[IndexRow] = []
        with self._lock:
            for start in range(0, len(rowids), 900):
                chunk = list(rowids[start:start + 900])
                out += [IndexRow(*r) for r in self._conn.execute(
                    "SELECT i.rowid, i.id, i.state, i.kind, i.user_id, i.agent_id, i.session_id, e.vec FROM items i "
                    "LEFT JOIN embeddings e ON e.item_rowid = i.rowid "
                    f"WHERE i.rowid IN ({','.join('?' * len(chunk))}) ORDER BY i.rowid", chunk)]
        return out

    # ------------------------------------------------------------------ governance tables
    _GOV_TABLES = (
        "CREATE TABLE IF NOT EXISTS gov_principals(id TEXT PRIMARY KEY, kind TEXT NOT NULL, created_at REAL NOT NULL, "
        "created_by TEXT)",
        "CREATE TABLE IF NOT EXISTS gov_acl(principal TEXT PRIMARY KEY, role TEXT NOT NULL, granted_by TEXT, "
        "granted_at REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS gov_settings(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        # ids erased from the records whose vector-index rows may still exist (applied after commit / on open)
        "CREATE TABLE IF NOT EXISTS gov_forget_pending(item_id TEXT PRIMARY KEY)",
    )

    def governance_ready(self) -> bool:
        with self._lock:
            conn = self._conn
            have = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'gov_%'")}
            return {"gov_principals", "gov_acl", "gov_settings", "gov_forget_pending"} <= have and \
                conn.execute("SELECT COUNT(*) FROM gov_acl").fetchone()[0] > 0

    def bootstrap_governance(self, c: sqlite3.Connection, owner: str, owner_kind: str, now: float,
                             redaction_key: str) -> bool:
        for stmt in self._GOV_TABLES:
            c.execute(stmt)
        if c.execute("SELECT COUNT(*) FROM gov_acl").fetchone()[0]:
            return False
        c.execute("INSERT OR IGNORE INTO gov_principals(id, kind, created_at, created_by) VALUES(?,?,?,?)",
                  (owner, owner_kind, now, owner))
        c.execute("INSERT INTO gov_acl(principal, role, granted_by, granted_at) VALUES(?,?,?,?)",
                  (owner, "owner", owner, now))
        c.execute("INSERT OR IGNORE INTO gov_settings(key, value) VALUES('redaction_key', ?)", (redaction_key,))
        return True

    def grants(self, c: sqlite3.Connection | None = None,
               principal: str | None = None) -> list[tuple[str, str, str, str | None, float]]:
        q = ("SELECT a.principal, COALESCE(p.kind, 'user'), a.role, a.granted_by, a.granted_at FROM gov_acl a "
             "LEFT JOIN gov_principals p ON p.id = a.principal")
        args: tuple[Any, ...] = ()
        if principal is not None:
            q += " WHERE a.principal=?"
            args = (principal,)
        with self._lock:
            return [tuple(r) for r in self._read(c).execute(q + " ORDER BY a.principal", args)]  # type: ignore[misc]

    def role(self, principal: str, c: sqlite3.Connection | None = None) -> str | None:
        with self._lock:
            row = self._read(c).execute("SELECT role FROM gov_acl WHERE principal=?", (principal,)).fetchone()
        return None if row is None else row[0]

    def count_role(self, c: sqlite3.Connection, role: str) -> int:
        return c.execute("SELECT COUNT(*) FROM gov_acl WHERE role=?", (role,)).fetchone()[0]

    def principal_kind(self, c: sqlite3.Connection, principal: str) -> str | None:
        row = c.execute("SELECT kind FROM gov_principals WHERE id=?", (principal,)).fetchone()
        return None if row is None else row[0]

    def add_principal(self, c: sqlite3.Connection, principal: str, kind: str, now: float,
                      created_by: str | None) -> None:
        c.execute("INSERT INTO gov_principals(id, kind, created_at, created_by) VALUES(?,?,?,?)",
                  (principal, kind, now, created_by))

    def put_grant(self, c: sqlite3.Connection, principal: str, role: str, granted_by: str | None, at: float) -> None:
        c.execute("INSERT INTO gov_acl(principal, role, granted_by, granted_at) VALUES(?,?,?,?) "
                  "ON CONFLICT(principal) DO UPDATE SET role=excluded.role, granted_by=excluded.granted_by, "
                  "granted_at=excluded.granted_at", (principal, role, granted_by, at))

    def delete_grant(self, c: sqlite3.Connection, principal: str) -> None:
        c.execute("DELETE FROM gov_acl WHERE principal=?", (principal,))

    def governance_settings(self) -> dict[str, str]:
        with self._lock:
            return dict(self._conn.execute("SELECT key, value FROM gov_settings").fetchall())

    def put_settings(self, c: sqlite3.Connection, values: Mapping[str, str]) -> None:
        c.executemany("INSERT INTO gov_settings(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET "
                      "value=excluded.value", list(values.items()))

    def add_forget_pending(self, c: sqlite3.Connection, ids: Sequence[str]) -> None:
        c.executemany("INSERT OR IGNORE INTO gov_forget_pending(item_id) VALUES(?)", [(i,) for i in ids])

    def forget_pending(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT item_id FROM gov_forget_pending")]

    def clear_forget_pending(self, ids: Sequence[str]) -> None:
        with self.transaction() as c:
            c.executemany("DELETE FROM gov_forget_pending WHERE item_id=?", [(i,) for i in ids])

    def compact_erased(self) -> None:
        self.optimize_lexical()
        self.checkpoint()



def chain_rows(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], int | None]:
    """Audit rows in chain order and the AUTOINCREMENT high-water mark, read on ``conn``."""
    rows = conn.execute(
        "SELECT seq, at, actor, op, item_id, outcome, detail, prev_hash, hash FROM events ORDER BY seq"
    ).fetchall()
    try:
        top = conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone()
    except sqlite3.OperationalError:
        top = None
    return rows, None if top is None else int(top[0])


def evidence_rows(conn: sqlite3.Connection) -> tuple[str | None, list[tuple[str, int]]]:
    """What the records hold about their own log: the head kept in ``meta`` and every item's version."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='audit_head'").fetchone()
    except sqlite3.OperationalError:
        row = None
    return (row[0] if row else None), [(r[0], int(r[1])) for r in conn.execute("SELECT id, version FROM items")]


def read_audit_file(db: str | Path) -> tuple[list[tuple[Any, ...]], int | None, str | None, list[tuple[str, int]]]:
    """(rows, high-water mark, recorded head, item versions) of a records file, opened read-only, in one
    snapshot (the evidence first: a record is committed with what it records). No cube, no principal: whoever
    can read the file can read the log. CorruptData if it cannot be read."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            conn.execute("BEGIN")
            head, items = evidence_rows(conn)
            rows, counter = chain_rows(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise CorruptData(f"cannot read the audit log in {db}: {exc}") from exc
    return rows, counter, head, items
