"""PostgreSQL system of record: the :class:`~memos_core.records.base.RecordStore` seam on a server that many
worker processes and hosts share.

``pip install 'memos-langchain-llamaindex[postgres]'`` (psycopg 3 + psycopg_pool; imported lazily, only when
a PostgreSQL store is opened).

Design points a user can rely on:

* **One schema per cube.** Several cubes share one database; each lives in its own schema
  (``memos_<cube>``), created and migrated on first open. The schema version is kept in the cube's ``meta``
  table; migrations run in order inside one transaction under a per-cube advisory lock, so workers starting
  together migrate once. A database written by a newer MemOS is refused (SchemaVersionError).
* **Durability.** Each write method runs inside one transaction; PostgreSQL's defaults (``fsync=on``,
  ``synchronous_commit=on``) make a returned write survive a crash of the server or of the worker.
* **Isolation: READ COMMITTED** (PostgreSQL's default) plus explicit checks: an update writes only if the
  stored row is still at the version the writer read (``UPDATE ... WHERE version = prev``; the row lock makes a
  second writer wait and then re-check), so concurrent writers end in success or a typed ``Conflict``, versions
  stay contiguous; a lifecycle transition checks the state it started from the same way. Serialization
  failures and deadlocks detected by the server are raised as ``Conflict`` too (retryable).
* **The audit chain** stays one chain per cube with writers on many hosts: an append takes a transaction-scoped
  advisory lock on the cube (``pg_advisory_xact_lock``), reads the head, and the lock is held until commit. The
  sequence high-water mark is a row in ``meta`` written in the same transaction (a deleted tail shows as a gap).
* **Lexical search in PostgreSQL**: a generated ``tsvector`` column (``english`` configuration: Snowball stemmer,
  stopwords) and, derived from it by triggers in the writer's transaction, narrow postings (``lex_terms``: lexeme,
  row, count in the row, row length; schema 4), ranked by **BM25** (document frequency per lexeme, lexeme counts
  per row, average row length), with the same per-query work budget as the SQLite backend (above it only the
  rarest query terms are kept, and only the newest rows of a term that alone is over it are ranked).
* **Embeddings** are ``bytea`` (float32), scored exactly by the cube; pgvector is not needed.
* **The vector change log** (schema 5, ``_V5``) keeps every worker's in-process scope cache exact
  (:meth:`PostgresRecordStore.vector_changes`): triggers log changed rowids with the writing transaction's id, and
  a reader's position is the snapshot it read under, so writers committing out of order are never missed.
* **Unavailability**: a lost connection, a server restart, a pool timeout raise ``BackendUnavailable``; after
  a failure the pool drops its broken connections, so the next call after the server is back succeeds.
* **Erasure** deletes (forget) or blanks (purge) the live rows in one transaction, then VACUUMs the tables so
  dead tuples are reclaimed; what PostgreSQL's WAL and backups keep is explained in the README.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np

from .. import forksafe
from ..errors import BackendUnavailable, Conflict, CubeClosed, SchemaVersionError, ValidationError
from ..items import LifecycleState, MemoryItem, MemoryVersion, SearchFilter, Transition
from .base import (GENESIS_HASH, CandidateReads, CompiledFilter, IndexRow, RecordStore, canonical_json, event_hash,
                   match_terms)
from .sqlite import SQLiteRecordStore

__all__ = ["PostgresRecordStore", "PG_SCHEMA_VERSION", "parse_postgres_url", "schema_name"]

_log = logging.getLogger(__name__)

#: Schema versions: 1 = tables; 2 = the lexical index (generated tsvector column + GIN index); 3 = topic vectors;
#: 4 = the lexical postings (``lex_terms``, kept by triggers); 5 = the vector change log (``vec_changes``, kept by
#: triggers: what the scoped-search cache replays).
PG_SCHEMA_VERSION = 5

_V1 = """
CREATE TABLE IF NOT EXISTS items(
  rowid BIGSERIAL PRIMARY KEY,
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
  created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL,
  event_time DOUBLE PRECISION, valid_until DOUBLE PRECISION, expires_at DOUBLE PRECISION,
  provenance TEXT NOT NULL, tags JSONB NOT NULL, metadata JSONB NOT NULL,
  confidence DOUBLE PRECISION NOT NULL,
  access_count BIGINT NOT NULL DEFAULT 0, last_access DOUBLE PRECISION,
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
  seq BIGSERIAL PRIMARY KEY, item_id TEXT NOT NULL, from_state TEXT, to_state TEXT NOT NULL,
  at DOUBLE PRECISION NOT NULL, actor TEXT, reason TEXT
);
CREATE INDEX IF NOT EXISTS transitions_item ON transitions(item_id);
CREATE TABLE IF NOT EXISTS events(
  seq BIGINT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, actor TEXT, op TEXT NOT NULL, item_id TEXT,
  outcome TEXT NOT NULL, detail TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_item ON events(item_id);
CREATE TABLE IF NOT EXISTS embeddings(item_rowid BIGINT PRIMARY KEY, version INTEGER NOT NULL, vec BYTEA NOT NULL);
CREATE SEQUENCE IF NOT EXISTS vec_gen;
CREATE TABLE IF NOT EXISTS vec_pending(item_rowid BIGINT PRIMARY KEY, gen BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS gov_principals(id TEXT PRIMARY KEY, kind TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
  created_by TEXT);
CREATE TABLE IF NOT EXISTS gov_acl(principal TEXT PRIMARY KEY, role TEXT NOT NULL, granted_by TEXT,
  granted_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS gov_settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS gov_forget_pending(item_id TEXT PRIMARY KEY)
"""

_V2 = """
ALTER TABLE items ADD COLUMN IF NOT EXISTS tsv tsvector
  GENERATED ALWAYS AS (to_tsvector('english'::regconfig, COALESCE(indexed_text, ''))) STORED;
CREATE INDEX IF NOT EXISTS items_tsv ON items USING GIN (tsv)
"""

# the topic vector beside the embedding (NULL: none yet; see RecordStore.put_topics)
_V3 = """
ALTER TABLE embeddings ADD COLUMN IF NOT EXISTS topic BYTEA
"""

# The lexical postings: one narrow row per (lexeme, item) with the lexeme's count in the item's indexed text and the
# item's length in lexemes, keyed by (lexeme, rowid): BM25 reads a lexeme's rows as one index range, newest first
# when the lexeme is over the work budget, instead of visiting every matching wide row of `items` (the tsvector
# column and its GIN index stay: they are what the postings are derived from). Kept by triggers on `items` in the
# writer's transaction, so every write path (insert, update, unindex, purge, forget) keeps them exact.
_V4 = (
    # INCLUDE: a lexeme's postings are read from the index alone (index-only scan) once autovacuum has marked
    # the pages visible
    "CREATE TABLE IF NOT EXISTS lex_terms(lexeme TEXT NOT NULL, rowid BIGINT NOT NULL, tf INTEGER NOT NULL, "
    "dl INTEGER NOT NULL, PRIMARY KEY (lexeme, rowid) INCLUDE (tf, dl))",
    "CREATE INDEX IF NOT EXISTS lex_terms_row ON lex_terms(rowid)",
    """CREATE OR REPLACE FUNCTION lex_terms_sync() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  IF TG_OP <> 'INSERT' THEN
    DELETE FROM lex_terms WHERE rowid = OLD.rowid;
  END IF;
  IF TG_OP <> 'DELETE' AND NEW.indexed_text IS NOT NULL THEN
    INSERT INTO lex_terms(lexeme, rowid, tf, dl)
      SELECT u.lexeme, NEW.rowid, GREATEST(COALESCE(cardinality(u.positions), 1), 1), length(NEW.tsv)
      FROM unnest(NEW.tsv) AS u;
  END IF;
  RETURN NULL;
END
$$""",
    "DROP TRIGGER IF EXISTS items_lex_ins ON items",
    "DROP TRIGGER IF EXISTS items_lex_upd ON items",
    "DROP TRIGGER IF EXISTS items_lex_del ON items",
    "CREATE TRIGGER items_lex_ins AFTER INSERT ON items FOR EACH ROW EXECUTE FUNCTION lex_terms_sync()",
    "CREATE TRIGGER items_lex_upd AFTER UPDATE OF indexed_text ON items FOR EACH ROW "
    "WHEN (OLD.indexed_text IS DISTINCT FROM NEW.indexed_text) EXECUTE FUNCTION lex_terms_sync()",
    "CREATE TRIGGER items_lex_del AFTER DELETE ON items FOR EACH ROW EXECUTE FUNCTION lex_terms_sync()",
    "INSERT INTO lex_terms(lexeme, rowid, tf, dl) SELECT u.lexeme, i.rowid, GREATEST(COALESCE(cardinality(u.positions), "
    "1), 1), length(i.tsv) FROM items i CROSS JOIN LATERAL unnest(i.tsv) AS u WHERE i.indexed_text IS NOT NULL "
    "ON CONFLICT DO NOTHING",
)

# The vector change log (PostgresRecordStore.vector_changes): triggers append the rowid of every item whose stored
# embedding was added, replaced or removed, whose scope (user/agent/session) changed, or that was deleted, with the
# id of the writing transaction (``xid``: the top-level one, also from a savepoint). Writers on many hosts commit
# out of xid order, so a position in this log is not a number but a snapshot (``pg_current_snapshot()``): a reader
# that read the rows visible in snapshot P and later reads under snapshot N replays exactly the rows visible in N
# and not in P -- ``xid >= xmin(P) AND NOT pg_visible_in_snapshot(xid, P)`` (every xid not visible in P is >=
# xmin(P)), whatever order the writers committed in. Trimming (``_trim_vec_log``) deletes rows whose xid is below
# a watermark kept in ``vec_log`` in the same transaction; a reader whose xmin(P) is below the watermark may have
# lost rows and starts again (a transaction running when P was taken has an xid >= xmin(P), so a reader at or above
# the watermark lost nothing). ``vec_log.epoch`` names this log: a position from another one (the schema was
# dropped and made again) starts again too. Only rowids: no content.
_V5 = (
    "CREATE TABLE IF NOT EXISTS vec_changes(seq BIGSERIAL PRIMARY KEY, xid xid8 NOT NULL DEFAULT pg_current_xact_id(), "
    "item_rowid BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS vec_changes_xid ON vec_changes(xid)",
    "CREATE TABLE IF NOT EXISTS vec_log(one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), epoch TEXT NOT NULL, "
    "trimmed_below xid8 NOT NULL)",
    "INSERT INTO vec_log(epoch, trimmed_below) VALUES(md5(random()::text || clock_timestamp()::text), '0'::xid8) "
    "ON CONFLICT DO NOTHING",
    """CREATE OR REPLACE FUNCTION vec_changes_log() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
  IF TG_TABLE_NAME = 'embeddings' THEN
    IF TG_OP <> 'INSERT' THEN
      INSERT INTO vec_changes(item_rowid) VALUES(OLD.item_rowid);
    END IF;
    IF TG_OP = 'INSERT' OR (TG_OP = 'UPDATE' AND NEW.item_rowid IS DISTINCT FROM OLD.item_rowid) THEN
      INSERT INTO vec_changes(item_rowid) VALUES(NEW.item_rowid);
    END IF;
  ELSE
    INSERT INTO vec_changes(item_rowid) VALUES(CASE WHEN TG_OP = 'DELETE' THEN OLD.rowid ELSE NEW.rowid END);
  END IF;
  RETURN NULL;
END
$$""",
    "DROP TRIGGER IF EXISTS vec_changes_add ON embeddings",
    "DROP TRIGGER IF EXISTS vec_changes_set ON embeddings",
    "DROP TRIGGER IF EXISTS vec_changes_del ON embeddings",
    "DROP TRIGGER IF EXISTS vec_changes_scope ON items",
    "DROP TRIGGER IF EXISTS vec_changes_gone ON items",
    "CREATE TRIGGER vec_changes_add AFTER INSERT ON embeddings FOR EACH ROW EXECUTE FUNCTION vec_changes_log()",
    "CREATE TRIGGER vec_changes_set AFTER UPDATE OF vec, item_rowid ON embeddings FOR EACH ROW WHEN "
    "(OLD.vec IS DISTINCT FROM NEW.vec OR OLD.item_rowid IS DISTINCT FROM NEW.item_rowid) "
    "EXECUTE FUNCTION vec_changes_log()",
    "CREATE TRIGGER vec_changes_del AFTER DELETE ON embeddings FOR EACH ROW EXECUTE FUNCTION vec_changes_log()",
    "CREATE TRIGGER vec_changes_scope AFTER UPDATE OF user_id, agent_id, session_id ON items FOR EACH ROW WHEN "
    "(OLD.user_id IS DISTINCT FROM NEW.user_id OR OLD.agent_id IS DISTINCT FROM NEW.agent_id "
    "OR OLD.session_id IS DISTINCT FROM NEW.session_id) EXECUTE FUNCTION vec_changes_log()",
    "CREATE TRIGGER vec_changes_gone AFTER DELETE ON items FOR EACH ROW EXECUTE FUNCTION vec_changes_log()",
)

#: migration n brings a schema from version n-1 to n (a string: statements separated by ";"; a tuple: statements)
_MIGRATIONS: dict[int, str | tuple[str, ...]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}

_ITEM_COLS = (
    "rowid, id, cube_id, content, index_text, form, kind, user_id, agent_id, session_id, state, version, "
    "created_at, updated_at, event_time, valid_until, expires_at, provenance, tags::text, metadata::text, confidence, "
    "access_count, last_access, created_by"
)
_INSERT = (
    "INSERT INTO items(id, cube_id, content, index_text, indexed_text, form, kind, user_id, agent_id, session_id, "
    "state, version, created_at, updated_at, event_time, valid_until, expires_at, provenance, tags, metadata, "
    "confidence, access_count, last_access, created_by) VALUES(%(id)s, %(cube_id)s, %(content)s, %(index_text)s, "
    "%(indexed_text)s, %(form)s, %(kind)s, %(user_id)s, %(agent_id)s, %(session_id)s, %(state)s, %(version)s, "
    "%(created_at)s, %(updated_at)s, %(event_time)s, %(valid_until)s, %(expires_at)s, %(provenance)s, "
    "%(tags)s::jsonb, %(metadata)s::jsonb, %(confidence)s, %(access_count)s, %(last_access)s, %(created_by)s) "
    "RETURNING rowid"
)
_INSERT_ROW = "WITH i AS (" + _INSERT + "), v AS (INSERT INTO versions(item_id, version, snapshot) " \
    "SELECT %(id)s, t.v, t.s FROM unnest(%(vv)s::int[], %(vs)s::text[]) AS t(v, s))"
_INSERT_PLAIN = _INSERT_ROW + " SELECT rowid FROM i"
_INSERT_INDEXED = _INSERT_ROW + (
    ", e AS (INSERT INTO embeddings(item_rowid, version, vec) SELECT rowid, %(version)s, %(vec)s FROM i), "
    "p AS (INSERT INTO vec_pending(item_rowid, gen) SELECT rowid, nextval('vec_gen') FROM i) SELECT rowid FROM i")
# an indexed row whose embedding comes later (RecordStore.embeds_later): its pending mark, no embedding row
_INSERT_WAITING = _INSERT_ROW + (
    ", p AS (INSERT INTO vec_pending(item_rowid, gen) SELECT rowid, nextval('vec_gen') FROM i) SELECT rowid FROM i")
_INSERT_ANY = _INSERT_ROW + (
    ", e AS (INSERT INTO embeddings(item_rowid, version, vec) SELECT rowid, %(version)s, %(vec)s FROM i "
    "WHERE %(idx)s AND %(hasvec)s), "
    "p AS (INSERT INTO vec_pending(item_rowid, gen) SELECT rowid, nextval('vec_gen') FROM i WHERE %(idx)s) "
    "SELECT rowid FROM i")
#: the item columns qualified by table (for queries that join another table with columns of the same name)
_ITEM_COLS_Q = ", ".join("items." + c.strip() for c in _ITEM_COLS.split(","))
_N_ITEM_COLS = len(_ITEM_COLS.split(","))
_EVENT_COLS = "seq, at, actor, op, item_id, outcome, detail, prev_hash, hash"
_BM25_K1, _BM25_B = 1.2, 0.75
#: add_items of this many rows or more writes them with COPY (PostgresRecordStore._add_items_copy)
_COPY_MIN_ROWS = 64


def schema_name(cube: str) -> str:
    """The PostgreSQL schema of a cube name: ``memos_`` + lowercase letters, digits and ``_`` (max 63 bytes)."""
    if not isinstance(cube, str) or not re.fullmatch(r"[A-Za-z0-9_\-]{1,56}", cube):
        raise ValidationError(f"cube name {cube!r} for PostgreSQL: use 1-56 letters, digits, '_' or '-'")
    return "memos_" + cube.lower().replace("-", "_")


def parse_postgres_url(url: str) -> tuple[str, str | None]:
    """Split ``postgresql://user@host:port/db?cube=NAME&...`` into (libpq conninfo URL, cube name or None).
    MemOS's own parameters (``cube``, ``pool_size``) are removed; the rest goes to libpq."""
    return _split_url(url)[:2]  # type: ignore[return-value]


def _split_url(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValidationError(f"{url!r} is not a postgresql:// URL")
    query = parse_qsl(parts.query, keep_blank_values=True)
    cube = next((v for k, v in query if k == "cube"), None)
    raw = next((v for k, v in query if k == "pool_size"), None)
    if raw is not None and not (raw.isdigit() and 1 <= int(raw) <= 1000):
        raise ValidationError(f"pool_size={raw!r} in the store URL: use a number of connections from 1 to 1000")
    rest = [(k, v) for k, v in query if k not in ("cube", "pool_size")]
    return urlunsplit(parts._replace(query=urlencode(rest))), cube, None if raw is None else int(raw)


def redact_url(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _closed_message(url: str) -> str:
    """What a call on a closed PostgreSQL cube says: what happened and how to go on (password redacted)."""
    shown = redact_url(url)
    return (f"the cube at {shown} was closed (by close() or its MemOS); open it again: "
            f"MemCube({shown!r}, index=...) / MemOS({shown!r}, index=...)")


def _unreachable_message(url: str, reason: str) -> str:
    """What opening a store whose server cannot be reached says: where it tried, why, and what to check."""
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        port = None
    where = f"{parts.hostname}:{port}" if parts.hostname else f"the local socket (port {port})"
    db = parts.path.lstrip("/") or parts.username or "(the user's name)"
    if parts.password:
        reason = reason.replace(parts.password, "***")
    reason = " ".join((reason.strip().splitlines() or ["no reason given"])[0].split()).rstrip(".")  # libpq's hint follows
    return (f"PostgreSQL at {where}, database {db!r}, cannot be reached: {reason}. Is the server running and "
            f"reachable from here (host, port, firewall), and are the user, password and database right? "
            f"check the URL {redact_url(url)}")


class _DropPoolNoise(logging.Filter):
    """Hides psycopg_pool's "error connecting" warnings about one pool (by its name) while this store opens it:
    the open reports a failure itself, as one typed error. Other pools' records pass."""

    def __init__(self, pool_name: str) -> None:
        super().__init__()
        self.pool_name = pool_name

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return record.levelno < logging.WARNING or self.pool_name not in args


def _import_psycopg() -> tuple[Any, Any, Any]:
    try:
        import psycopg
        import psycopg_pool
        from psycopg import sql
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendUnavailable(
            "the PostgreSQL backend needs psycopg 3 and psycopg_pool: "
            "pip install 'memos-langchain-llamaindex[postgres]'") from exc
    return psycopg, psycopg_pool, sql


class PostgresRecordStore(RecordStore):
    """The system of record of one cube in a PostgreSQL schema. Thread-safe; share one per process.

    ``url`` is a libpq URL (``postgresql://user:password@host:5432/db``); ``cube`` names the cube's schema
    (default: the URL's ``?cube=`` parameter, else ``"default"``). ``pool_size`` (or ``?pool_size=`` in the
    URL; default 4) caps this store's connections: threads of one process beyond it wait for a free one.
    """

    backend = "postgresql"
    schema_version = PG_SCHEMA_VERSION
    concurrent_reads = True
    embeds_later = True

    #: work budget of one lexical query in matching rows (as :attr:`SQLiteRecordStore.lexical_match_budget`)
    lexical_match_budget = 3000

    def __init__(self, url: str, cube: str | None = None, *, pool_size: int | None = None, connect_timeout: float = 10.0,
                 _migrate_to: int | None = None) -> None:
        psycopg, psycopg_pool, sql = _import_psycopg()
        self._psycopg, self._sql = psycopg, sql
        conninfo, url_cube, url_pool = _split_url(url)
        pool_size = pool_size or url_pool or 4
        self.url = redact_url(url)
        self.cube = cube or url_cube or "default"
        self.schema = schema_name(self.cube)
        self._lock_key = int.from_bytes(hashlib.sha256(self.schema.encode()).digest()[:8], "big", signed=True)
        self._tls = threading.local()
        self._pid = os.getpid()  # the process this pool's sockets belong to (memos_core.forksafe)
        self._buf_lock = threading.Lock()
        self._usage: dict[int, tuple[int, float]] = {}
        self._flusher: threading.Thread | None = None  # a background write of the buffered usage counts
        self._pending_seen: dict[int, int] = {}
        self._pending_done: dict[int, int] = {}
        self._df_cache: dict[str, tuple[int, int]] = {}  # lexeme -> (capped document count, rows then)
        self._lex_cache: dict[str, list[str]] = {}  # query term -> its lexemes
        self._stats: tuple[float, int, float] | None = None  # (when, indexed rows, average length)
        self._closed = False
        self._has_vec_log = False  # schema 5 or later: the vector change log exists (set by _migrate)
        self._commits = 0  # write transactions committed through this store (every so many trims the log)
        ident = sql.Identifier(self.schema)

        def configure(conn: Any) -> None:
            conn.execute(sql.SQL("SET search_path TO {}").format(ident))

        # One connection first, outside the pool: an unreachable server (or a wrong user, password or database)
        # is reported at once as one typed error, instead of the pool retrying for the whole timeout and logging
        # "error connecting" on every retry.
        try:
            psycopg.connect(conninfo, autocommit=True, connect_timeout=max(1, int(connect_timeout))).close()
        except psycopg.Error as exc:
            raise BackendUnavailable(_unreachable_message(url, str(exc) or type(exc).__name__)) from None
        self._pool = psycopg_pool.ConnectionPool(
            conninfo, min_size=1, max_size=max(1, pool_size), open=False, configure=configure,
            timeout=connect_timeout,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout))},
            name=f"memos-{self.schema}",
        )
        pool_log, quiet = logging.getLogger("psycopg.pool"), _DropPoolNoise(self._pool.name)
        pool_log.addFilter(quiet)  # only while opening (the server went away since the check above)
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except psycopg_pool.PoolTimeout as exc:
            self._pool.close()
            raise BackendUnavailable(_unreachable_message(url, f"no connection within {connect_timeout:g} s")) from exc
        finally:
            pool_log.removeFilter(quiet)
        try:
            self._migrate(ident, PG_SCHEMA_VERSION if _migrate_to is None else _migrate_to)
        except BaseException:
            self._pool.close()
            raise

    # ------------------------------------------------------------------ plumbing
    @contextmanager
    def _guard(self) -> Iterator[None]:
        """psycopg / pool errors -> the typed errors of MemOS."""
        if self._pid != os.getpid():  # a forked child never uses the parent's sockets (memos_core.forksafe)
            forksafe.check(self._pid, f"the PostgreSQL store of cube {self.cube!r}")
        psycopg = self._psycopg
        errors = psycopg.errors
        try:
            yield
        except (errors.SerializationFailure, errors.DeadlockDetected, errors.LockNotAvailable,
                errors.UniqueViolation) as exc:
            raise Conflict(f"concurrent writers collided on cube {self.cube!r} ({type(exc).__name__}); "
                           "retry the operation") from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # Connections are not checked on every borrow (that would double the round trips of every call):
            # after a failure, drop every idle connection that is broken, so one call sees the outage, not one
            # per pooled connection.
            try:
                self._pool.check()
            except Exception:  # noqa: BLE001 - the server may still be down; the next borrow reconnects
                pass
            raise BackendUnavailable(f"PostgreSQL at {self.url} is unavailable: {exc}".strip()) from exc
        except Exception as exc:
            import psycopg_pool

            if isinstance(exc, psycopg_pool.PoolClosed):
                raise CubeClosed(_closed_message(self.url)) from exc
            if isinstance(exc, psycopg_pool.PoolTimeout):
                raise BackendUnavailable(f"PostgreSQL at {self.url}: no connection available ({exc})") from exc
            raise

    @contextmanager
    def _conn(self, c: Any = None) -> Iterator[Any]:
        """A connection for a read: ``c``, this thread's open transaction, or one borrowed from the pool."""
        if c is not None:
            yield c
            return
        cur = getattr(self._tls, "conn", None)
        if cur is not None:
            yield cur
            return
        if self._closed:
            raise CubeClosed(_closed_message(self.url))
        with self._guard(), self._pool.connection() as conn:
            yield conn

    def _migrate(self, ident: Any, target: int) -> None:
        sql = self._sql
        with self._guard(), self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            conn.execute("CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key='records_schema'").fetchone()
            have = 0 if row is None else int(row[0])
            if have > PG_SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"cube {self.cube!r} in {self.url} has records schema version {have}; this MemOS understands "
                    f"up to {PG_SCHEMA_VERSION}. Upgrade memos-langchain-llamaindex to open it.")
            for n in range(have + 1, target + 1):
                m = _MIGRATIONS[n]
                for stmt in (m if isinstance(m, tuple) else m.strip().split(";")):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute("INSERT INTO meta(key, value) VALUES('records_schema', %s) ON CONFLICT(key) DO UPDATE "
                             "SET value=excluded.value", (str(n),))
            self._has_vec_log = max(have, target) >= 5

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """One transaction (READ COMMITTED), committed durably on exit, rolled back on any exception.

        Called while this thread already has a write transaction of this store open (a search run inside a
        write's transaction stores deferred embeddings or an audited read), it nests as on SQLite: a SAVEPOINT
        of the open transaction on the same connection (so it sees that transaction's writes), undone alone when
        its block raises, and committed or rolled back with the open transaction, never on its own."""
        cur = getattr(self._tls, "conn", None)
        if cur is not None:
            with self._savepoint(cur):
                yield cur
            return
        if self._closed:
            raise CubeClosed(_closed_message(self.url))
        with self._guard(), self._pool.connection() as conn:
            with conn.transaction():
                self._tls.conn = conn
                try:
                    yield conn
                finally:
                    self._tls.conn = None
                    self._tls.chain = None
        self._flush_soft()
        self._commits += 1
        if self._has_vec_log and self._commits % self._VEC_LOG_TRIM_EVERY == 0:
            self._trim_vec_log()

    @contextmanager
    def _savepoint(self, conn: Any) -> Iterator[None]:
        """A nested transaction inside this thread's open one (see :meth:`transaction`). The audit chain's head
        kept for that transaction (:meth:`append_event`) is put back when the savepoint rolls back: the records
        appended inside it are gone, and so is the advisory lock when the savepoint took it (PostgreSQL releases
        a lock taken after a savepoint when it is rolled back to). Buffered usage counts are left to the outer
        transaction's end, as on SQLite."""
        if getattr(self._tls, "snapshot", False):
            raise RuntimeError("a records write transaction cannot be opened inside read_snapshot() (read-only)")
        chain = getattr(self._tls, "chain", None)
        try:
            with self._guard(), conn.transaction():
                yield
        except BaseException:
            self._tls.chain = chain
            raise

    def in_transaction(self) -> bool:
        return getattr(self._tls, "conn", None) is not None

    @contextmanager
    def read_snapshot(self) -> Iterator[None]:
        """Reads inside see one consistent state (REPEATABLE READ, read-only)."""
        if self.in_transaction():
            yield
            return
        if self._closed:
            raise CubeClosed(_closed_message(self.url))
        with self._guard(), self._pool.connection() as conn:
            # one statement, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" (a BEGIN and then a SET TRANSACTION
            # were two round trips): the connection's settings for the transactions it starts, put back at once
            conn.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            try:
                with conn.transaction():
                    self._tls.conn = conn
                    self._tls.snapshot = True
                    try:
                        yield
                    finally:
                        self._tls.conn = None
                        self._tls.chain = None
                        self._tls.snapshot = False
            finally:
                try:
                    conn.isolation_level = None
                    conn.read_only = None
                except Exception:  # noqa: BLE001 - a connection left in a transaction: never reuse it read-only
                    conn.close()  # (the pool discards a closed connection)

    def _rollback_quietly(self, conn: Any) -> None:
        """End a manual transaction (``BEGIN`` ... ``COMMIT`` sent as statements) that failed midway, so the pooled
        connection goes back idle; a connection that cannot even roll back is left for the pool to discard."""
        if conn.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE and not conn.closed:
            try:
                conn.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the pool discards a connection it cannot reset
                pass

    def _flush_soft(self) -> None:
        """Write buffered usage counts and clear applied pending marks, in a short transaction of their own
        (not inside a write: hot rows of many workers would then be locked for the write's duration)."""
        with self._buf_lock:
            usage, self._usage = self._usage, {}
            done, self._pending_done = self._pending_done, {}
        if not usage and not done:
            return
        try:
            with self._guard(), self._pool.connection() as conn:
                # Pipelined: BEGIN, the statements and COMMIT travel together, one round trip (psycopg's own
                # transaction block syncs at BEGIN, after each executemany and at COMMIT: three or four). An error
                # aborts the rest up to the sync; the transaction is then rolled back here.
                try:
                    with conn.pipeline():
                        conn.execute("BEGIN")
                        cur = conn.cursor()
                        if done:
                            cur.executemany("DELETE FROM vec_pending WHERE item_rowid=%s AND gen=%s",
                                            sorted(done.items()))
                        if usage:
                            cur.executemany(
                                "UPDATE items SET access_count=access_count+%s, last_access=GREATEST(COALESCE("
                                "last_access,0),%s) WHERE rowid=%s", [(n, t, r) for r, (n, t) in sorted(usage.items())])
                        conn.execute("COMMIT")
                except BaseException:
                    self._rollback_quietly(conn)
                    raise
        except Conflict:  # soft state: a collision loses nothing durable; keep the counts for the next flush
            with self._buf_lock:
                for r, (n, t) in usage.items():
                    m, u = self._usage.get(r, (0, 0.0))
                    self._usage[r] = (n + m, max(t, u))
                for r, g in done.items():
                    self._pending_done.setdefault(r, g)

    def _flush_in_background(self) -> None:
        """:meth:`_flush_soft` on a thread of its own (one at a time), so that the search whose usage filled the
        buffer does not wait for hundreds of row updates. Counts it could not write stay buffered."""
        with self._buf_lock:
            if self._closed or (self._flusher is not None and self._flusher.is_alive()):
                return

            def run() -> None:
                try:
                    self._flush_soft()
                except Exception as exc:  # noqa: BLE001 - soft state: the next flush (or close) writes them
                    _log.warning("writing buffered usage counts of cube %s failed: %s", self.cube, exc)

            self._flusher = threading.Thread(target=run, name=f"memos-usage-{self.schema}", daemon=True)
            self._flusher.start()

    def _wait_flusher(self) -> None:
        t = self._flusher
        if t is not None and t is not threading.current_thread():
            t.join()

    def flush(self) -> None:
        if not self._closed:
            self._wait_flusher()  # what a background flush took from the buffer is written when this returns
            self._flush_soft()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed or self._pid != os.getpid():  # in a forked child: the parent's pool, left alone
            return
        try:
            self._wait_flusher()
            self._flush_soft()
        except Exception:  # noqa: BLE001 - closing must not fail on an unreachable server
            pass
        finally:
            self._closed = True
            self._pool.close()

    def stored_schema_version(self) -> int:
        raw = self.get_meta("records_schema")
        return int(raw) if raw is not None else 0

    def get_meta(self, key: str) -> str | None:
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key=%s", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, c: Any, key: str, value: str) -> None:
        c.execute("INSERT INTO meta(key, value) VALUES(%s, %s) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                  (key, value))

    def setdefault_meta(self, key: str, value: str) -> str:
        with self.transaction() as c:
            c.execute("INSERT INTO meta(key, value) VALUES(%s, %s) ON CONFLICT(key) DO NOTHING", (key, value))
            return c.execute("SELECT value FROM meta WHERE key=%s", (key,)).fetchone()[0]

    # ------------------------------------------------------------------ item reads
    _row_to_item = staticmethod(SQLiteRecordStore._row_to_item)

    def get(self, item_id: str) -> MemoryItem | None:
        # Inside this thread's write transaction the row is read FOR UPDATE: a writer that re-checks the state
        # it read earlier (MemCube.update) waits for a concurrent writer's commit, sees its change, and holds
        # the row until it commits, so no state change lands between its check and its write.
        lock = " FOR UPDATE" if self.in_transaction() else ""
        with self._conn() as conn:
            row = conn.execute(f"SELECT {_ITEM_COLS} FROM items WHERE id=%s{lock}", (item_id,)).fetchone()
        return None if row is None else self._row_to_item(row)

    def load(self, item_id: str) -> tuple[int, MemoryItem] | None:
        # one statement (the item columns start with its rowid), locked as get() locks it
        lock = " FOR UPDATE" if self.in_transaction() else ""
        with self._conn() as conn:
            row = conn.execute(f"SELECT {_ITEM_COLS} FROM items WHERE id=%s{lock}", (item_id,)).fetchone()
        return None if row is None else (int(row[0]), self._row_to_item(row))

    def get_many(self, ids: Sequence[str]) -> dict[str, MemoryItem]:
        if not ids:
            return {}
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_ITEM_COLS} FROM items WHERE id = ANY(%s)", (list(ids),)).fetchall()
        return {r[1]: self._row_to_item(r) for r in rows}

    def get_many_by_rowid(self, rowids: Sequence[int]) -> dict[int, MemoryItem]:
        if not rowids:
            return {}
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {_ITEM_COLS} FROM items WHERE rowid = ANY(%s)",
                                ([int(r) for r in rowids],)).fetchall()
        return {r[0]: self._row_to_item(r) for r in rows}

    def rowids_of(self, ids: Sequence[str], c: Any = None) -> dict[str, tuple[int, str]]:
        if not ids:
            return {}
        with self._conn(c) as conn:
            rows = conn.execute("SELECT id, rowid, state FROM items WHERE id = ANY(%s)", (list(ids),)).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def count_by_state(self) -> dict[str, int]:
        with self._conn() as conn:
            return {r[0]: int(r[1]) for r in conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state")}

    def iter_items(self, batch: int = 1000, states: Iterable[LifecycleState] | None = None) -> Iterator[MemoryItem]:
        last = 0
        st = [s.value for s in states] if states is not None else None
        while True:
            with self._conn() as conn:
                if st is None:
                    rows = conn.execute(f"SELECT {_ITEM_COLS} FROM items WHERE rowid>%s ORDER BY rowid LIMIT %s",
                                        (last, batch)).fetchall()
                else:
                    rows = conn.execute(f"SELECT {_ITEM_COLS} FROM items WHERE rowid>%s AND state = ANY(%s) "
                                        "ORDER BY rowid LIMIT %s", (last, st, batch)).fetchall()
            if not rows:
                return
            for r in rows:
                yield self._row_to_item(r)
            last = rows[-1][0]

    def versions(self, item_id: str) -> list[MemoryVersion]:
        with self._conn() as conn:
            rows = conn.execute("SELECT snapshot FROM versions WHERE item_id=%s ORDER BY version", (item_id,)).fetchall()
        return [MemoryVersion.model_validate_json(r[0]) for r in rows]

    def version(self, item_id: str, version: int) -> MemoryVersion | None:
        with self._conn() as conn:
            row = conn.execute("SELECT snapshot FROM versions WHERE item_id=%s AND version=%s",
                               (item_id, version)).fetchone()
        return None if row is None else MemoryVersion.model_validate_json(row[0])

    def transitions(self, item_id: str) -> list[Transition]:
        with self._conn() as conn:
            rows = conn.execute("SELECT item_id, from_state, to_state, at, actor, reason FROM transitions "
                                "WHERE item_id=%s ORDER BY seq", (item_id,)).fetchall()
        from .sqlite import _dt

        return [Transition(item_id=r[0], from_state=r[1], to_state=r[2], at=_dt(r[3]), actor=r[4], reason=r[5])
                for r in rows]

    def erasure_candidates(self, c: Any, user_id: str | None, agent_id: str | None,
                           fragments: Sequence[str]) -> list[int]:
        frags = [f for f in fragments if f]
        with self._conn(c) as conn:
            return [r[0] for r in conn.execute(
                "SELECT rowid FROM items WHERE user_id IS NOT DISTINCT FROM %s AND agent_id IS NOT DISTINCT FROM %s "
                "AND (version > 1 OR EXISTS (SELECT 1 FROM unnest(%s::text[]) f WHERE strpos(index_text, f) > 0)) "
                "ORDER BY rowid", (user_id, agent_id, frags))]

    def items_citing(self, c: Any, parent_id: str) -> list[tuple[str, str]]:
        pat = json.dumps(parent_id)[1:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return [(r[0], r[1]) for r in c.execute(
            "SELECT id, provenance FROM items WHERE provenance LIKE %s OR provenance LIKE %s",
            (f'%"{pat}"%', f'%"{pat}@%')).fetchall()]

    def expired_ids(self, now: float, states: Sequence[LifecycleState]) -> list[str]:
        with self._conn() as conn:
            return [r[0] for r in conn.execute(
                "SELECT id FROM items WHERE expires_at IS NOT NULL AND expires_at <= %s AND state = ANY(%s) "
                "ORDER BY rowid", (now, [s.value for s in states]))]

    # ------------------------------------------------------------------ item writes
    def _params(self, item: MemoryItem, indexed_text: str | None) -> dict[str, Any]:
        p = SQLiteRecordStore._item_params(item)
        p["indexed_text"] = indexed_text
        return p

    def _unique(self, exc: Exception, item_id: str, msg: str) -> ValidationError:
        return ValidationError(msg.format(item_id=item_id))

    def insert_item(self, c: Any, item: MemoryItem, vec: np.ndarray | None, indexed: bool,
                    author: str | None, reason: str | None) -> int:
        return self._insert(c, item, [self.snapshot(item, author, reason)], [], vec, indexed,
                            "an item with id {item_id!r} already exists; use update() to change it")

    def restore_item(self, c: Any, item: MemoryItem, versions: Sequence[MemoryVersion],
                     transitions: Sequence[Transition], vec: np.ndarray | None, indexed: bool) -> int:
        return self._insert(c, item, versions, transitions, vec, indexed,
                            "an item with id {item_id!r} already exists in the target cube")

    def _insert(self, c: Any, item: MemoryItem, versions: Sequence[MemoryVersion], transitions: Sequence[Transition],
                vec: np.ndarray | None, indexed: bool, dup: str) -> int:
        text = (item.index_text or item.content) if indexed else None
        errors = self._psycopg.errors
        p = self._params(item, text)
        p["vv"] = [v.version for v in versions]
        p["vs"] = [v.model_dump_json() for v in versions]
        p["vec"] = np.asarray(vec, dtype=np.float32).tobytes() if indexed and vec is not None else None
        # One round trip: the row, its versions, its embedding and its pending mark (a taken id raises, and the
        # caller's transaction rolls back as a whole, as on SQLite).
        try:
            sql = (_INSERT_INDEXED if vec is not None else _INSERT_WAITING) if indexed else _INSERT_PLAIN
            rowid = int(c.execute(sql, p).fetchone()[0])
        except errors.UniqueViolation:
            raise ValidationError(dup.format(item_id=item.id)) from None
        except (errors.UntranslatableCharacter, errors.CharacterNotInRepertoire) as exc:
            raise ValidationError(f"memory {item.id!r} holds text PostgreSQL cannot store: {exc}") from None
        cur = c.cursor()
        if transitions:
            from .sqlite import _ts

            cur.executemany(
                "INSERT INTO transitions(item_id, from_state, to_state, at, actor, reason) VALUES(%s,%s,%s,%s,%s,%s)",
                [(item.id, None if t.from_state is None else t.from_state.value, t.to_state.value, _ts(t.at),
                  t.actor, t.reason) for t in transitions])
        return rowid

    def add_items(self, c: Any, items: Sequence[MemoryItem], vecs: Sequence[np.ndarray | None],
                  indexed: Sequence[bool], actor: str | None, at: float) -> list[int]:
        """As the base method, in three batched statements (rows with versions, embeddings and pending marks;
        transitions; audit records) instead of three round trips per item."""
        if len(items) < 2:
            return super().add_items(c, items, vecs, indexed, actor, at)
        if len(items) >= _COPY_MIN_ROWS:
            return self._add_items_copy(c, items, vecs, indexed, actor, at)
        rows = []
        for item, vec, idx in zip(items, vecs, indexed):
            p = self._params(item, (item.index_text or item.content) if idx else None)
            p["vv"] = [item.version]
            p["vs"] = [self.snapshot(item, actor, "add").model_dump_json()]
            p["vec"] = np.asarray(vec, dtype=np.float32).tobytes() if idx and vec is not None else None
            p["idx"] = bool(idx)
            p["hasvec"] = vec is not None  # an indexed row without one waits for it (embeds_later)
            rows.append(p)
        cur = c.cursor()
        with self._batch_insert_errors():
            cur.executemany(_INSERT_ANY, rows, returning=True)
        rowids: list[int] = []
        while True:
            rowids.append(int(cur.fetchone()[0]))
            if not cur.nextset():
                break
        cur.executemany("INSERT INTO transitions(item_id, from_state, to_state, at, actor, reason) "
                        "VALUES(%s, NULL, %s, %s, %s, 'created')", [(it.id, it.state.value, at, actor) for it in items])
        self.append_events(c, [(at, actor, "add", it.id, "ok", {"version": 1}) for it in items])
        return rowids

    @contextmanager
    def _batch_insert_errors(self) -> Iterator[None]:
        """A batch of new items that PostgreSQL refuses: a taken id or text it cannot store is a
        :class:`ValidationError` naming it (the caller's transaction rolls back as a whole)."""
        errors = self._psycopg.errors
        try:
            yield
        except errors.UniqueViolation as exc:
            taken = re.search(r"\(id\)=\((.*)\)", getattr(exc.diag, "message_detail", None) or "")
            raise ValidationError(f"an item with id {taken.group(1) if taken else '(one of them)'!r} already exists; "
                                  "use update() to change it") from None
        except (errors.UntranslatableCharacter, errors.CharacterNotInRepertoire) as exc:
            raise ValidationError(f"a memory holds text PostgreSQL cannot store: {exc}") from None

    def _add_items_copy(self, c: Any, items: Sequence[MemoryItem], vecs: Sequence[np.ndarray | None],
                        indexed: Sequence[bool], actor: str | None, at: float) -> list[int]:
        """The bulk form of :meth:`add_items` (``_COPY_MIN_ROWS`` items or more): the same rows in the same
        transaction, written with ``COPY`` (one stream per table) instead of one statement per item.

        The rowids are taken from the items' own sequence first (one round trip; in item order, so a later item
        has a larger rowid, as with one INSERT per item), then the rows go in with their rowids: ``items`` (its
        tsvector column is computed and its row triggers fire as for an INSERT: the lexical postings), their first
        versions, the stored embeddings (the vector change log's trigger fires), the pending marks (one INSERT,
        ``vec_gen`` numbers in item order), the creation transitions and the ``add`` audit records. A taken id
        raises :class:`ValidationError` and the caller's transaction rolls back as a whole, as on the other path.
        """
        n = len(items)
        cur = c.cursor()
        rowids = sorted(int(r[0]) for r in cur.execute(
            "SELECT nextval(pg_get_serial_sequence('items', 'rowid')) FROM generate_series(1, %s)", (n,)).fetchall())
        if len(rowids) != n:
            raise RuntimeError("internal: the items sequence gave fewer rowids than asked for")
        cols = ("rowid", "id", "cube_id", "content", "index_text", "indexed_text", "form", "kind", "user_id",
                "agent_id", "session_id", "state", "version", "created_at", "updated_at", "event_time", "valid_until",
                "expires_at", "provenance", "tags", "metadata", "confidence", "access_count", "last_access",
                "created_by")
        with self._batch_insert_errors(), cur.copy(f"COPY items({', '.join(cols)}) FROM STDIN") as cp:
            for rowid, item, idx in zip(rowids, items, indexed):
                p = self._params(item, (item.index_text or item.content) if idx else None)
                p["rowid"] = rowid
                cp.write_row([p[k] for k in cols])
        with cur.copy("COPY versions(item_id, version, snapshot) FROM STDIN") as cp:
            for item in items:
                cp.write_row((item.id, item.version, self.snapshot(item, actor, "add").model_dump_json()))
        with cur.copy("COPY embeddings(item_rowid, version, vec) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int8", "int4", "bytea"])
            for rowid, item, vec, idx in zip(rowids, items, vecs, indexed):
                if idx and vec is not None:
                    cp.write_row((rowid, item.version, np.asarray(vec, dtype=np.float32).tobytes()))
        waiting = [r for r, idx in zip(rowids, indexed) if idx]
        if waiting:  # every indexed row is marked for the vector index (with or without its embedding yet)
            cur.execute("INSERT INTO vec_pending(item_rowid, gen) SELECT r, nextval('vec_gen') "
                        "FROM unnest(%s::bigint[]) WITH ORDINALITY AS t(r, o) ORDER BY o", (waiting,))
        with cur.copy("COPY transitions(item_id, from_state, to_state, at, actor, reason) FROM STDIN") as cp:
            for item in items:
                cp.write_row((item.id, None, item.state.value, at, actor, "created"))
        self.append_events(c, [(at, actor, "add", it.id, "ok", {"version": 1}) for it in items])
        return rowids

    def _put_vec(self, c: Any, rowid: int, version: int, vec: np.ndarray) -> None:
        c.execute("INSERT INTO embeddings(item_rowid, version, vec) VALUES(%s, %s, %s) ON CONFLICT(item_rowid) DO "
                  "UPDATE SET version=excluded.version, vec=excluded.vec, topic=NULL",
                  (rowid, version, np.asarray(vec, dtype=np.float32).tobytes()))
        self.mark_pending(c, rowid)

    def mark_pending(self, c: Any, rowid: int) -> None:
        c.execute("INSERT INTO vec_pending(item_rowid, gen) VALUES(%s, nextval('vec_gen')) ON CONFLICT(item_rowid) "
                  "DO UPDATE SET gen=excluded.gen", (int(rowid),))

    def replace_item(self, c: Any, rowid: int, item: MemoryItem, vec: np.ndarray | None,
                     indexed: bool, new_version: bool, author: str | None, reason: str | None) -> None:
        if indexed and vec is None:
            raise ValidationError("internal: an indexed item needs its embedding")
        p = self._params(item, (item.index_text or item.content) if indexed else None)
        p["rowid"] = int(rowid)
        p["prev"] = item.version - 1 if new_version else item.version
        # READ COMMITTED: a second writer waits for the first one's row lock, then re-checks the version.
        cur = c.execute(
            "UPDATE items SET content=%(content)s, index_text=%(index_text)s, indexed_text=%(indexed_text)s, "
            "form=%(form)s, kind=%(kind)s, user_id=%(user_id)s, agent_id=%(agent_id)s, session_id=%(session_id)s, "
            "state=%(state)s, version=%(version)s, updated_at=%(updated_at)s, event_time=%(event_time)s, "
            "valid_until=%(valid_until)s, expires_at=%(expires_at)s, provenance=%(provenance)s, tags=%(tags)s::jsonb, "
            "metadata=%(metadata)s::jsonb, confidence=%(confidence)s WHERE rowid=%(rowid)s AND version=%(prev)s", p)
        if cur.rowcount != 1:
            raise Conflict(f"memory {item.id!r} was changed by another writer (it is no longer at version "
                           f"{p['prev']}); read it again and retry")
        if new_version:
            c.execute("INSERT INTO versions(item_id, version, snapshot) VALUES(%s, %s, %s)",
                      (item.id, item.version, self.snapshot(item, author, reason).model_dump_json()))
        if indexed:
            self._put_vec(c, rowid, item.version, vec)  # type: ignore[arg-type]
        else:
            c.execute("DELETE FROM embeddings WHERE item_rowid=%s", (int(rowid),))
            self.mark_pending(c, rowid)

    def set_state(self, c: Any, rowid: int, item_id: str, old: LifecycleState | None, new: LifecycleState,
                  at: float, actor: str | None, reason: str | None) -> None:
        # one round trip: the state (checked against the one the caller read) and the transition record
        cur = c.execute(
            "WITH u AS (UPDATE items SET state=%s, updated_at=GREATEST(updated_at, %s) WHERE rowid=%s"
            + ("" if old is None else " AND state=%s") + " RETURNING 1) INSERT INTO transitions(item_id, from_state, "
            "to_state, at, actor, reason) SELECT %s, %s, %s, %s, %s, %s FROM u",
            (new.value, at, int(rowid), *(() if old is None else (old.value,)), item_id,
             None if old is None else old.value, new.value, at, actor, reason))
        if cur.rowcount != 1 and old is not None:
            raise Conflict(f"memory {item_id!r} is no longer {old.value} (another writer changed it); "
                           "read it again and retry")

    def unindex(self, c: Any, rowid: int) -> None:
        r = int(rowid)
        c.execute("UPDATE items SET indexed_text=NULL WHERE rowid=%s AND indexed_text IS NOT NULL", (r,))
        c.execute("DELETE FROM embeddings WHERE item_rowid=%s", (r,))
        self.mark_pending(c, r)

    def reindex_row(self, c: Any, rowid: int, item: MemoryItem, vec: np.ndarray) -> None:
        c.execute("UPDATE items SET indexed_text=%s WHERE rowid=%s", (item.index_text or item.content, int(rowid)))
        self._put_vec(c, int(rowid), item.version, vec)

    def refresh_expiry(self, c: Any, item_id: str, expires_at: float, now: float,
                       states: Sequence[LifecycleState]) -> bool:
        cur = c.execute("UPDATE items SET expires_at=%s WHERE id=%s AND expires_at IS NOT NULL AND expires_at > %s "
                        "AND state = ANY(%s)", (expires_at, item_id, now, [s.value for s in states]))
        return bool(cur.rowcount)

    def _count_erasure(self, c: Any) -> None:
        """One more erasure (forget, purge) in the cube's counter, in the erasing transaction: other processes'
        scope caches see it move at their next call (:attr:`erasures_seen`)."""
        c.execute("INSERT INTO meta(key, value) VALUES('erasures', '1') ON CONFLICT(key) DO UPDATE "
                  "SET value=(meta.value::bigint + 1)::text")

    def erase_content(self, c: Any, rowid: int, item_id: str) -> None:
        self._count_erasure(c)
        self.unindex(c, rowid)
        c.execute("UPDATE items SET content='', index_text=NULL, metadata='{}'::jsonb, tags='[]'::jsonb WHERE rowid=%s",
                  (int(rowid),))
        rows = c.execute("SELECT version, snapshot FROM versions WHERE item_id=%s", (item_id,)).fetchall()
        for ver, snap in rows:
            v = json.loads(snap)
            v.update(content="", index_text=None, metadata={}, tags=[])
            c.execute("UPDATE versions SET snapshot=%s WHERE item_id=%s AND version=%s",
                      (canonical_json(v), item_id, ver))

    def erase_item(self, c: Any, rowid: int, item_id: str) -> None:
        r = int(rowid)
        # the row first: a deferred embedding being stored for it (put_embeddings) commits before we go on, so the
        # deletes below see it and remove it
        c.execute("SELECT 1 FROM items WHERE rowid=%s FOR UPDATE", (r,))
        c.execute("DELETE FROM vec_pending WHERE item_rowid=%s", (r,))
        c.execute("DELETE FROM embeddings WHERE item_rowid=%s", (r,))
        c.execute("DELETE FROM versions WHERE item_id=%s", (item_id,))
        c.execute("DELETE FROM transitions WHERE item_id=%s", (item_id,))
        c.execute("DELETE FROM items WHERE rowid=%s", (r,))
        self._count_erasure(c)
        with self._buf_lock:
            self._usage.pop(r, None)
            self._pending_done.pop(r, None)
            self._pending_seen.pop(r, None)

    # ------------------------------------------------------------------ usage
    def record_usage(self, rowids: Iterable[int], at: float) -> None:
        with self._buf_lock:
            for r in rowids:
                n, _ = self._usage.get(int(r), (0, 0.0))
                self._usage[int(r)] = (n + 1, at)
            big = len(self._usage) >= 512
        if big and getattr(self._tls, "conn", None) is None:
            self._flush_in_background()

    # ------------------------------------------------------------------ audit chain
    def append_event(self, c: Any, at: float, actor: str | None, op: str, item_id: str | None,
                     outcome: str = "ok", detail: Mapping[str, Any] | None = None) -> str:
        # One chain per cube with writers on many hosts: the advisory lock is held until this transaction ends,
        # so after the first append of a transaction the head it read stays the head (kept per thread).
        chain = getattr(self._tls, "chain", None)
        if chain is not None and chain[0] is c:
            top, prev = chain[1], chain[2]
        else:
            row = self._lock_chain(c)
            top = max(int(row[0] or 0), int(row[2] or 0))
            prev = row[1] or GENESIS_HASH
        seq = top + 1
        d = canonical_json(dict(detail or {}))
        h = event_hash(prev, seq, at, actor, op, item_id, outcome, d)
        # the record, the sequence high-water mark and the head kept as evidence (governance/audit.py: a cut
        # tail shows), in one statement
        c.execute(f"WITH e AS (INSERT INTO events({_EVENT_COLS}) VALUES(%s,%s,%s,%s,%s,%s,%s,%s,%s)) "
                  "INSERT INTO meta(key, value) VALUES('events_counter', %s), ('audit_head', %s) "
                  "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                  (seq, at, actor, op, item_id, outcome, d, prev, h, str(seq), f"{seq}:{h}"))
        self._tls.chain = (c, seq, h)
        return h

    def _lock_chain(self, c: Any) -> Any:
        """Take the cube's chain lock (held until this transaction ends), then read the chain's head: two
        statements, so the read's snapshot is taken after the lock is held (a fresh one, READ COMMITTED), sent in
        one pipeline (one round trip instead of two). Returns (top seq, top hash, events_counter)."""
        with c.pipeline():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
            cur = c.execute("SELECT (SELECT seq FROM events ORDER BY seq DESC LIMIT 1), (SELECT hash FROM events "
                            "ORDER BY seq DESC LIMIT 1), (SELECT value FROM meta WHERE key='events_counter')")
        return cur.fetchone()

    def append_events(self, c: Any, records: Sequence[tuple[float, str | None, str, str | None, str,
                                                             Mapping[str, Any]]]) -> list[str]:
        """Append several records (at, actor, op, item_id, outcome, detail) in order, in one batch."""
        if not records:
            return []
        chain = getattr(self._tls, "chain", None)
        if chain is not None and chain[0] is c:
            top, prev = chain[1], chain[2]
        else:
            row = self._lock_chain(c)
            top = max(int(row[0] or 0), int(row[2] or 0))
            prev = row[1] or GENESIS_HASH
        out: list[tuple[Any, ...]] = []
        hashes: list[str] = []
        for at, actor, op, item_id, outcome, detail in records:
            top += 1
            d = canonical_json(dict(detail or {}))
            h = event_hash(prev, top, at, actor, op, item_id, outcome, d)
            out.append((top, at, actor, op, item_id, outcome, d, prev, h))
            hashes.append(h)
            prev = h
        c.cursor().executemany(f"INSERT INTO events({_EVENT_COLS}) VALUES(%s,%s,%s,%s,%s,%s,%s,%s,%s)", out)
        c.execute("INSERT INTO meta(key, value) VALUES('events_counter', %s), ('audit_head', %s) "
                  "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(top), f"{top}:{prev}"))
        self._tls.chain = (c, top, prev)
        return hashes

    def append_event_alone(self, at: float, actor: str | None, op: str, item_id: str | None,
                           outcome: str, detail: Mapping[str, Any]) -> str:
        cur = getattr(self._tls, "conn", None)
        if cur is not None:  # inside this thread's open transaction: recorded (and kept) with it, as on SQLite
            with self._savepoint(cur):
                return self.append_event(cur, at, actor, op, item_id, outcome, detail)
        try:
            with self._guard(), self._pool.connection() as conn, conn.transaction():
                return self.append_event(conn, at, actor, op, item_id, outcome, detail)
        finally:
            self._tls.chain = None

    def raw_events(self, item_id: str | None = None, limit: int | None = None) -> list[Any]:
        q = f"SELECT {_EVENT_COLS} FROM events"
        args: list[Any] = []
        if item_id is not None:
            q += " WHERE item_id=%s"
            args.append(item_id)
        q += " ORDER BY seq"
        if limit is not None:
            q += " LIMIT %s"
            args.append(limit)
        with self._conn() as conn:
            return [tuple(r) for r in conn.execute(q, args).fetchall()]

    def event_counter(self) -> int | None:
        raw = self.get_meta("events_counter")
        return None if raw is None else int(raw)

    def has_events(self, c: Any = None) -> bool:
        with self._conn(c) as conn:
            return conn.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None

    def audit_head(self) -> tuple[int, str] | None:
        with self._conn() as conn:
            row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), row[1])

    def restore_events(self, c: Any, rows: Sequence[Sequence[Any]]) -> bool:
        self._tls.chain = None
        c.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
        if c.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None:
            return False
        rows = [tuple(r) for r in rows]
        if rows:
            c.cursor().executemany(f"INSERT INTO events({_EVENT_COLS}) VALUES(%s,%s,%s,%s,%s,%s,%s,%s,%s)", rows)
            self.set_meta(c, "events_counter", str(max(int(r[0]) for r in rows)))
            self.set_meta(c, "audit_head", f"{rows[-1][0]}:{rows[-1][8]}")
        return True

    # ------------------------------------------------------------------ filters
    def compile_filter(self, f: SearchFilter, states: Sequence[LifecycleState], now: float) -> CompiledFilter:
        """The filter as a ``WHERE`` fragment over ``items`` with ``%s`` parameters. Keys are validated by
        :class:`SearchFilter`; values (and metadata paths) are bound. Same semantics as the SQLite backend:
        equality treats booleans as 0/1, order comparisons only match values of the same JSON type,
        ``$ne``/``$nin`` match memories without the key."""
        where = ["items.state = ANY(%s)", "(items.expires_at IS NULL OR items.expires_at > %s)"]
        args: list[Any] = [[s.value for s in states], now]
        for col in ("user_id", "agent_id", "session_id"):
            val = getattr(f, col)
            if val is not None:
                where.append(f"items.{col} = %s")
                args.append(val)
        if f.kinds:
            where.append("items.kind = ANY(%s)")
            args.append([k.value for k in f.kinds])
        if f.forms:
            where.append("items.form = ANY(%s)")
            args.append([k.value for k in f.forms])
        if f.ids:
            where.append("items.id = ANY(%s)")
            args.append(list(f.ids))
        if f.event_after is not None:
            where.append("items.event_time >= %s")
            args.append(f.event_after.timestamp())
        if f.event_before is not None:
            where.append("items.event_time <= %s")
            args.append(f.event_before.timestamp())
        if f.tags_any:
            where.append("items.tags ?| %s::text[]")
            args.append(list(f.tags_any))
        for tag in f.tags_all or []:
            where.append("items.tags @> %s::jsonb")
            args.append(json.dumps([tag]))
        for key, cond in (f.metadata or {}).items():
            path = key.split(".")
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            for op, val in ops.items():
                e = "(items.metadata #> %s::text[])"
                if op == "$exists":
                    where.append(f"{e} IS {'NOT ' if val else ''}NULL")
                    args.append(path)
                elif op in ("$eq", "$ne"):
                    sql, a = self._eq(e, path, val)
                    where.append(f"COALESCE({sql}, false)" if op == "$eq" else f"NOT COALESCE({sql}, false)")
                    args += a
                elif op in ("$in", "$nin"):
                    parts: list[str] = []
                    for v in val:
                        if v is None:  # as SQL IN: a NULL in the list never matches
                            continue
                        sql, a = self._eq(e, path, v)
                        parts.append(sql)
                        args += a
                    body = " OR ".join(parts) or "false"
                    where.append(f"COALESCE(({body}), false)" if op == "$in" else f"NOT COALESCE(({body}), false)")
                else:
                    sql_op = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
                    if isinstance(val, (int, float)):
                        where.append(f"(jsonb_typeof({e}) = 'number' AND ({e} #>> '{{}}')::numeric {sql_op} %s)")
                        args += [path, path, val]
                    else:
                        where.append(f"(jsonb_typeof({e}) = 'string' AND ({e} #>> '{{}}') COLLATE \"C\" {sql_op} %s)")
                        args += [path, path, val]
        return CompiledFilter(" AND ".join(where), args)

    @staticmethod
    def _eq(e: str, path: list[str], val: Any) -> tuple[str, list[Any]]:
        """SQL (may be NULL) that is true when the JSON value at ``path`` equals ``val`` as SQLite's
        ``json_extract(...) IS ?`` decides: booleans compare as 0/1 with numbers, null matches a missing key."""
        if val is None:
            return f"({e} IS NULL OR {e} = 'null'::jsonb)", [path, path]
        if isinstance(val, (bool, int, float)):
            num = float(int(val)) if isinstance(val, bool) else val
            if isinstance(num, float) and not math.isfinite(num):
                return "false", []
            return (f"(CASE jsonb_typeof({e}) WHEN 'number' THEN ({e} #>> '{{}}')::numeric "
                    f"WHEN 'boolean' THEN (CASE WHEN {e} = 'true'::jsonb THEN 1 ELSE 0 END) END = %s::numeric)",
                    [path, path, path, num])
        return f"(jsonb_typeof({e}) = 'string' AND ({e} #>> '{{}}') = %s)", [path, path, str(val)]

    # ------------------------------------------------------------------ lexical search (BM25 over tsvector)
    def _index_stats(self, conn: Any) -> tuple[int, float]:
        """(rows, average lexemes per row), refreshed every 30 s; BM25 needs them only roughly. The row count is
        the highest rowid (an index lookup; forgotten rows still count, as they do for SQLite's work budget) and
        the average comes from the newest 2,000 indexed rows, so the cost does not grow with the cube."""
        st = self._stats
        now = time.monotonic()
        if st is None or now - st[0] > 30.0:
            n, avg = conn.execute(
                "SELECT (SELECT COALESCE(MAX(rowid), 0) FROM items), (SELECT COALESCE(AVG(length(tsv)), 0) FROM "
                "(SELECT tsv FROM items WHERE indexed_text IS NOT NULL ORDER BY rowid DESC LIMIT 2000) AS s)"
            ).fetchone()
            st = self._stats = (now, int(n), float(avg))
        return st[1], max(st[2], 1.0)

    def _lexemes(self, conn: Any, terms: list[str], stamp: int) -> list[str]:
        """The distinct lexemes (english configuration: stemmed, stopwords dropped) of the query terms, in
        order; memoised per term. The lexemes of terms seen for the first time come with their document counts
        (as :meth:`_dfs`, cached the same way) in the same query: a new term costs one round trip, not two."""
        todo = [t for t in terms if t not in self._lex_cache]
        if todo:
            if len(self._lex_cache) > 50_000:
                self._lex_cache.clear()
            if len(self._df_cache) > 50_000:
                self._df_cache.clear()
            got: dict[str, list[str]] = {t: [] for t in todo}
            for t, lx, df in conn.execute(
                    "SELECT t.t, x.l, (SELECT COUNT(*) FROM (SELECT 1 FROM lex_terms WHERE lexeme = x.l LIMIT %s) AS m) "
                    "FROM unnest(%s::text[]) WITH ORDINALITY AS t(t, i) CROSS JOIN LATERAL unnest(tsvector_to_array("
                    "to_tsvector('english'::regconfig, t.t))) WITH ORDINALITY AS x(l, o) ORDER BY t.i, x.o",
                    (self.lexical_match_budget + 1, todo)).fetchall():
                got[t].append(lx)
                self._df_cache[lx] = (int(df), stamp)
            self._lex_cache.update(got)
        out: dict[str, None] = {}
        for t in terms:
            for lx in self._lex_cache.get(t, []):
                out.setdefault(lx, None)
        return list(out)

    def _dfs(self, conn: Any, lexemes: list[str], stamp: int) -> dict[str, int]:
        """Rows matching each lexeme, capped just above the work budget; cached until the cube grows 10%."""
        out: dict[str, int] = {}
        todo: list[str] = []
        for lx in lexemes:
            hit = self._df_cache.get(lx)
            if hit is not None and hit[1] * 1.1 >= stamp:
                out[lx] = hit[0]
            else:
                todo.append(lx)
        if todo:
            if len(self._df_cache) > 50_000:
                self._df_cache.clear()
            rows = conn.execute(
                "SELECT q, (SELECT COUNT(*) FROM (SELECT 1 FROM lex_terms WHERE lexeme = q LIMIT %s) AS m) "
                "FROM unnest(%s::text[]) AS q", (self.lexical_match_budget + 1, todo)).fetchall()
            for lx, (_, df) in zip(todo, rows):
                out[lx] = int(df)
                self._df_cache[lx] = (int(df), stamp)
        return out

    def lexical(self, match: str, cf: CompiledFilter, k: int) -> list[tuple[int, float]]:
        """BM25 (k1=1.2, b=0.75) computed inside PostgreSQL over the rows holding a kept query lexeme, from the
        lexical postings (``lex_terms``); only the best ``k`` rows come back. Document frequencies are counted in
        the postings (capped just above the work budget, cached), term frequencies are the lexeme's positions in
        the row's tsvector, row length is the row's lexeme count."""
        return [(int(r[0]), float(r[1])) for r in self._lexical(match, cf, k, None)]

    def lexical_rows(self, match: str, cf: CompiledFilter, k: int, key: str, *, with_items: bool = False
                     ) -> tuple[list[tuple[int, float]], CandidateReads]:
        ranked: list[tuple[int, float]] = []
        out: dict[int, tuple[bytes | None, str, Any]] = {}
        items: dict[int, Callable[[], MemoryItem]] = {}
        topics: dict[int, bytes | None] = {}
        for row in self._lexical(match, cf, k, (key, with_items)):
            r, vec, raw = int(row[0]), row[2], row[4]
            ranked.append((r, float(row[1])))
            v = None if raw is None else json.loads(raw)
            out[r] = (None if vec is None else bytes(vec), row[3], int(v) if isinstance(v, bool) else v)
            if with_items:
                items[r] = functools.partial(self._row_to_item, row[5:5 + _N_ITEM_COLS])
                topics[r] = None if row[-1] is None else bytes(row[-1])
        return ranked, CandidateReads({}, out, items, topics)

    def _lexical(self, match: str, cf: CompiledFilter, k: int, rows: tuple[str, bool] | None) -> list[Any]:
        """The rows of :meth:`lexical` (rowid, score) with a positive score, best first; with ``rows`` (metadata
        key, with items) also each row's embedding, content, metadata value (and item columns)."""
        terms = match_terms(match) if match else []
        if not terms:
            return []
        with self._conn() as conn:
            if conn is getattr(self._tls, "conn", None):  # inside this thread's transaction: a savepoint
                with conn.transaction():
                    conn.execute("SET LOCAL enable_seqscan = off")
                    q = self._bm25_query(conn, terms, cf, k, rows)
                    found = conn.cursor(binary=True).execute(*q[:2]).fetchall() if q else []
            else:
                # Pipelined: BEGIN, SET LOCAL, the query and COMMIT travel together, one round trip when the
                # lexemes and document counts are cached (a lookup they need costs one more).
                try:
                    with conn.pipeline():
                        conn.execute("BEGIN")
                        # the GIN index, not a scan of every row: the planner's estimate for an OR of terms is
                        # often far off
                        conn.execute("SET LOCAL enable_seqscan = off")
                        q = self._bm25_query(conn, terms, cf, k, rows)
                        # binary results: embeddings and topic vectors come as bytes, not hex text
                        cur = conn.cursor(binary=True).execute(*q[:2]) if q else None
                        conn.execute("COMMIT")
                except BaseException:
                    self._rollback_quietly(conn)
                    raise
                found = cur.fetchall() if cur is not None else []
            if q and q[2] is not None and len(found) < k:
                # over the budget, the filter passed fewer than k of the newest rows: rank every matching row
                with conn.transaction():
                    conn.execute("SET LOCAL enable_seqscan = off")
                    found = conn.cursor(binary=True).execute(*q[2]).fetchall()
        return [r for r in found if r[1] > 0]

    def _bm25_query(self, conn: Any, terms: list[str], cf: CompiledFilter, k: int,
                    rows: tuple[str, bool] | None = None
                    ) -> tuple[str, tuple[Any, ...], tuple[str, tuple[Any, ...]] | None] | None:
        """The BM25 query of :meth:`lexical` (``None`` when no term has a lexeme), looking up what the caches
        lack (lexemes, document counts, row statistics) on ``conn``: ``(sql, params, fallback)``. It reads the
        kept lexemes' postings (``lex_terms``: term frequency and row length per row, one index range per lexeme),
        scores every row holding one, and checks the best ``max(8k, 200)`` against the filter (every scored row
        only when fewer than ``k`` of those pass), so a wide ``items`` row is read only for the rows that can be
        returned. With ``rows`` (metadata key, with items) the query also returns what :meth:`lexical_rows` reads.

        As on SQLite (:attr:`lexical_match_budget`): above the work budget only the rarest lexemes are kept, and
        when even the rarest one alone matches more rows than the budget, only its newest ``budget`` rows (by
        rowid: the index range read backwards, so the cost stays flat as the cube grows) are ranked; ``fallback``
        is then the query over every matching row, for a filter that passes fewer than ``k`` of the newest ones
        (else ``None``)."""
        where, args = cf
        n_docs, avgdl = self._index_stats(conn)
        lexemes = self._lexemes(conn, terms, max(n_docs, 1))
        if not lexemes:
            return None
        dfs = self._dfs(conn, lexemes, max(n_docs, 1))
        budget = self.lexical_match_budget
        keep = lexemes
        if sum(dfs.values()) > budget and len(lexemes) > 1:
            keep, used = [], 0
            for lx in sorted(lexemes, key=lambda x: (dfs[x], x)):
                # `used`, not `keep`: a lexeme that occurs nowhere costs nothing and must not stand in for the
                # rarest one that does occur (the query would match no row at all)
                if used and used + dfs[lx] > budget:
                    break
                keep.append(lx)
                used += dfs[lx]
        over = sum(dfs[lx] for lx in keep) > budget  # the rarest kept lexeme alone is over the budget
        if over:  # the others kept occur nowhere: the one that does is read newest first, as one index range
            keep = [lx for lx in keep if dfs[lx] > 0]
        # the row count is refreshed every 30 s while document counts are fresher: never below them
        n = max(n_docs, max(dfs.values(), default=0), 1)
        idfs = [max(math.log(max((n - dfs[lx] + 0.5) / (dfs[lx] + 0.5), 1e-12)), 1e-6) * (_BM25_K1 + 1)
                for lx in keep]
        wide = max(k * 8, 200)
        kk, kb = _BM25_K1 * (1 - _BM25_B), _BM25_K1 * _BM25_B / avgdl  # tf / (tf + k1 (1 - b + b dl / avgdl))
        tsq = " | ".join(_tsq(lx) for lx in keep)
        scoped = any(f"items.{col} = %s" in where for col in ("user_id", "agent_id", "session_id"))

        def query(newest: bool) -> tuple[str, tuple[Any, ...]]:
            # m: BM25 of every row holding a kept lexeme (their postings: tf and the row's length in lexemes);
            # a: the best `wide` of them that pass the filter (an index lookup each), enough unless the filter is
            # selective; b: all of them that pass the filter, run only when a holds fewer than k rows: the rows
            # passing the filter and the text match found as the planner sees fit (e.g. the user index AND the
            # GIN index for a user's scope), not one lookup per scored row
            # one index range per kept lexeme (newest first over the budget), its BM25 term per row, summed per row
            one = "SELECT rowid, %s * tf / (tf + %s + %s * dl) AS s FROM lex_terms WHERE lexeme = %s"
            if newest:
                one += " ORDER BY rowid DESC LIMIT %s"
            postings = " UNION ALL ".join(f"({one})" for _ in keep)
            m = f"WITH m AS MATERIALIZED (SELECT rowid, SUM(s) AS score FROM ({postings}) AS p GROUP BY rowid)"
            by_rows = [x for lx, idf in zip(keep, idfs) for x in (idf, kk, kb, lx, *((budget,) if newest else ()))]
            b = (f"b AS (SELECT m.rowid, m.score FROM m JOIN (SELECT items.rowid FROM items WHERE items.tsv @@ "
                 f"%s::tsquery AND {where}) AS f ON f.rowid = m.rowid ORDER BY m.score DESC, m.rowid LIMIT %s)")
            if scoped:  # a user's (agent's, session's) rows: few of the scored ones pass, so straight to b
                sql = f"{m}, {b} SELECT rowid, score FROM b ORDER BY score DESC, rowid"
                params: tuple[Any, ...] = (*by_rows, tsq, *args, k)
            else:
                sql = (
                    f"{m}, a AS MATERIALIZED (SELECT m.rowid, m.score FROM (SELECT rowid, score FROM m ORDER BY "
                    f"score DESC, rowid LIMIT %s) AS m JOIN items ON items.rowid = m.rowid WHERE {where} "
                    f"ORDER BY m.score DESC, m.rowid LIMIT %s), {b} "
                    "SELECT rowid, score FROM (SELECT rowid, score FROM a WHERE (SELECT COUNT(*) FROM a) >= %s UNION "
                    "ALL SELECT rowid, score FROM b WHERE (SELECT COUNT(*) FROM a) < %s) AS r ORDER BY score DESC, rowid")
                params = (*by_rows, wide, *args, k, tsq, *args, k, k, k)
            if rows is None:
                return sql, params
            key, with_items = rows
            return (f"WITH s AS ({sql}) SELECT s.rowid, s.score, e.vec, items.content, (items.metadata #> "
                    f"%s::text[])::text{', ' + _ITEM_COLS_Q + ', e.topic' if with_items else ''} FROM s "
                    "JOIN items ON items.rowid = s.rowid LEFT JOIN embeddings e ON e.item_rowid = s.rowid "
                    "ORDER BY s.score DESC, s.rowid", (*params, key.split(".")))

        return (*query(over), query(False) if over else None)

    # ------------------------------------------------------------------ dense reads and other filtered reads
    def filtered_vectors(self, cf: CompiledFilter, limit: int, *, pending_only: bool = False
                         ) -> tuple[list[int], list[bytes]]:
        where, args = cf
        if pending_only:
            where = f"({where}) AND items.rowid IN (SELECT item_rowid FROM vec_pending)"
        with self._conn() as conn:
            # binary: the embeddings as bytes, not hex text (a scoped search reads thousands of them)
            rows = conn.cursor(binary=True).execute(
                f"SELECT items.rowid, e.vec FROM items JOIN embeddings e ON e.item_rowid = items.rowid "
                f"WHERE {where} LIMIT %s", (*args, limit)).fetchall()
        return [r[0] for r in rows], [bytes(r[1]) for r in rows]

    def pending_with_waiting(self, cf: CompiledFilter) -> tuple[list[int], list[bytes], bool]:
        # one round trip: the pending rows passing the filter with their embeddings, then one marker row (rowid
        # NULL) when any pending indexed row of the cube has no embedding yet (waiting, any worker's)
        where, args = cf
        with self._conn() as conn:
            rows = conn.cursor(binary=True).execute(
                f"(SELECT items.rowid, e.vec FROM items JOIN embeddings e ON e.item_rowid = items.rowid WHERE ({where}) "
                "AND items.rowid IN (SELECT item_rowid FROM vec_pending)) UNION ALL (SELECT NULL, NULL FROM vec_pending v "
                "JOIN items i ON i.rowid = v.item_rowid WHERE i.indexed_text IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM embeddings w WHERE w.item_rowid = v.item_rowid) LIMIT 1)", tuple(args)).fetchall()
        waiting = any(r[0] is None for r in rows)
        rows = [r for r in rows if r[0] is not None]
        return [r[0] for r in rows], [bytes(r[1]) for r in rows], waiting

    def embeddings_of(self, rowids: Sequence[int]) -> tuple[list[int], list[bytes]]:
        if not rowids:
            return [], []
        with self._conn() as conn:
            rows = conn.cursor(binary=True).execute("SELECT item_rowid, vec FROM embeddings WHERE item_rowid = ANY(%s)",
                                                    ([int(r) for r in rowids],)).fetchall()
        return [r[0] for r in rows], [bytes(r[1]) for r in rows]

    def rowids_passing(self, ids: Sequence[str], cf: CompiledFilter) -> dict[str, int]:
        if not ids:
            return {}
        where, args = cf
        with self._conn() as conn:
            rows = conn.execute(f"SELECT id, rowid FROM items WHERE id = ANY(%s) AND {where}",
                                (list(ids), *args)).fetchall()
        return {r[0]: r[1] for r in rows}

    def contents(self, rowids: Sequence[int]) -> dict[int, str]:
        if not rowids:
            return {}
        with self._conn() as conn:
            return {r[0]: r[1] for r in conn.execute("SELECT rowid, content FROM items WHERE rowid = ANY(%s)",
                                                     ([int(r) for r in rowids],))}

    def contents_with(self, rowids: Sequence[int], key: str) -> dict[int, tuple[str, Any]]:
        if not rowids:
            return {}
        out: dict[int, tuple[str, Any]] = {}
        with self._conn() as conn:
            for r, c, raw in conn.execute("SELECT rowid, content, (metadata #> %s::text[])::text FROM items "
                                          "WHERE rowid = ANY(%s)", (key.split("."), [int(x) for x in rowids])):
                v = None if raw is None else json.loads(raw)
                out[r] = (c, int(v) if isinstance(v, bool) else v)  # as SQLite's json_extract
        return out

    def candidate_rows(self, rowids: Sequence[int], key: str) -> dict[int, tuple[bytes | None, str, Any]]:
        if not rowids:
            return {}
        out: dict[int, tuple[bytes | None, str, Any]] = {}
        with self._conn() as conn:
            for r, vec, c, raw in conn.cursor(binary=True).execute(
                    "SELECT i.rowid, e.vec, i.content, (i.metadata #> %s::text[])::text FROM items i LEFT JOIN "
                    "embeddings e ON e.item_rowid = i.rowid WHERE i.rowid = ANY(%s) ORDER BY i.rowid",
                    (key.split("."), sorted({int(x) for x in rowids}))):
                v = None if raw is None else json.loads(raw)
                out[r] = (None if vec is None else bytes(vec), c, int(v) if isinstance(v, bool) else v)
        return out

    def candidates_passing(self, ids: Sequence[str], rowids: Sequence[int], cf: CompiledFilter, key: str, *,
                           with_items: bool = False) -> CandidateReads:
        where, args = cf
        passing: dict[str, int] = {}
        out: dict[int, tuple[bytes | None, str, Any]] = {}
        items: dict[int, Callable[[], MemoryItem]] = {}
        topics: dict[int, bytes | None] = {}
        if not ids and not rowids:
            return CandidateReads(passing, out, items)
        with self._conn() as conn:
            rows = conn.cursor(binary=True).execute(  # binary: embeddings and topic vectors as bytes, not hex text
                f"SELECT items.rowid, items.id, (items.id = ANY(%s) AND ({where})), e.vec, items.content, (items."
                f"metadata #> %s::text[])::text{', ' + _ITEM_COLS_Q + ', e.topic' if with_items else ''} FROM items "
                f"LEFT JOIN embeddings e ON e.item_rowid = items.rowid WHERE (items.id = ANY(%s) AND ({where})) "
                "OR items.rowid = ANY(%s) ORDER BY items.rowid",
                (list(ids), *args, key.split("."), list(ids), *args, sorted({int(x) for x in rowids}))).fetchall()
        for row in rows:
            r, item_id, hit, vec, c, raw = row[:6]
            if hit:
                passing[item_id] = r
            v = None if raw is None else json.loads(raw)
            out[r] = (None if vec is None else bytes(vec), c, int(v) if isinstance(v, bool) else v)
            if with_items:
                items[r] = functools.partial(self._row_to_item, row[6:6 + _N_ITEM_COLS])
                topics[r] = None if row[-1] is None else bytes(row[-1])
        return CandidateReads(passing, out, items, topics)

    def list_rowids(self, cf: CompiledFilter, order: str, limit: int, offset: int) -> list[int]:
        where, args = cf
        col = "rowid" if order == "created" else "COALESCE(event_time, created_at), rowid"
        with self._conn() as conn:
            return [r[0] for r in conn.execute(f"SELECT rowid FROM items WHERE {where} ORDER BY {col} "
                                               "LIMIT %s OFFSET %s", (*args, limit, offset))]

    def distinct_metadata(self, key: str, cf: CompiledFilter, limit: int) -> list[Any]:
        where, args = cf
        path = key.split(".")
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT DISTINCT (items.metadata #> %s::text[])::text FROM items WHERE {where} "
                "AND items.metadata #> %s::text[] IS NOT NULL LIMIT %s", (path, *args, path, limit)).fetchall()
        out: list[Any] = []
        for (raw,) in rows:
            v = json.loads(raw)
            # as SQLite's json_extract: scalars as values (booleans as 0/1), objects/arrays as compact JSON text
            if isinstance(v, bool):
                v = int(v)
            elif isinstance(v, (dict, list)):
                v = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
            out.append(v)
        return out

    # ------------------------------------------------------------------ vector-index bookkeeping
    def embedding(self, rowid: int) -> np.ndarray | None:
        with self._conn() as conn:
            row = conn.execute("SELECT vec FROM embeddings WHERE item_rowid=%s", (int(rowid),)).fetchone()
        return None if row is None else np.frombuffer(bytes(row[0]), dtype=np.float32)

    def all_embeddings(self, batch: int = 5000) -> Iterator[list[tuple[int, str, np.ndarray]]]:
        last = 0
        while True:
            with self._conn() as conn:
                rows = conn.execute("SELECT e.item_rowid, i.id, e.vec FROM embeddings e JOIN items i ON "
                                    "i.rowid=e.item_rowid WHERE e.item_rowid>%s ORDER BY e.item_rowid LIMIT %s",
                                    (last, batch)).fetchall()
            if not rows:
                return
            yield [(r[0], r[1], np.frombuffer(bytes(r[2]), dtype=np.float32)) for r in rows]
            last = rows[-1][0]

    def embedding_count(self) -> int:
        with self._conn() as conn:
            return int(conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def waiting_embeddings(self, limit: int = 10_000) -> list[tuple[int, str]]:
        with self._conn() as conn:
            return [(int(r[0]), r[1]) for r in conn.execute(
                "SELECT v.item_rowid, i.indexed_text FROM vec_pending v JOIN items i ON i.rowid = v.item_rowid "
                "WHERE i.indexed_text IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM embeddings e WHERE e.item_rowid = v.item_rowid) ORDER BY v.item_rowid LIMIT %s",
                (int(limit),))]

    def put_embeddings(self, c: Any, rows: Sequence[tuple[int, str, np.ndarray]]) -> list[int]:
        done: list[int] = []
        for rowid, text, vec in rows:
            # ON CONFLICT: a writer that stored an embedding meanwhile (an update) wins, committed or not yet.
            # FOR SHARE SKIP LOCKED: a row a writer holds (a forget, delete or update in flight) is skipped, not
            # read as it was before that writer (READ COMMITTED): storing then would leave the embedding of a
            # forgotten memory behind; the row stays waiting if it still is. Once we hold the row, such a writer
            # waits for our commit (erase_item locks the row first) and then removes what we stored.
            got = c.execute(
                "WITH it AS (SELECT rowid, version FROM items WHERE rowid=%s AND indexed_text=%s "
                "FOR SHARE SKIP LOCKED) INSERT INTO embeddings(item_rowid, version, vec) SELECT rowid, version, %s "
                "FROM it ON CONFLICT (item_rowid) DO NOTHING RETURNING item_rowid",
                (int(rowid), text, np.asarray(vec, dtype=np.float32).tobytes())).fetchone()
            if got is not None:
                self.mark_pending(c, rowid)
                done.append(int(rowid))
        return done

    def put_topics(self, c: Any, rows: Sequence[tuple[int, int, bytes]]) -> None:
        if rows:
            c.cursor().executemany("UPDATE embeddings SET topic=%s WHERE item_rowid=%s AND version=%s",
                                   [(bytes(blob), int(r), int(v)) for r, v, blob in rows])

    def topic_vectors(self, rowids: Sequence[int]) -> dict[int, bytes]:
        if not rowids:
            return {}
        with self._conn() as conn:
            rows = conn.cursor(binary=True).execute("SELECT item_rowid, topic FROM embeddings WHERE topic IS NOT NULL "
                                                    "AND item_rowid = ANY(%s)", ([int(r) for r in rowids],)).fetchall()
        return {int(r[0]): bytes(r[1]) for r in rows}

    def missing_topics(self, limit: int = 10_000) -> list[tuple[int, int]]:
        with self._conn() as conn:
            return [(int(r[0]), int(r[1])) for r in conn.execute(
                "SELECT item_rowid, version FROM embeddings WHERE topic IS NULL ORDER BY item_rowid LIMIT %s",
                (int(limit),))]

    def missing_embeddings(self, states: Sequence[LifecycleState]) -> list[int]:
        with self._conn() as conn:
            return [r[0] for r in conn.execute(
                "SELECT rowid FROM items i WHERE state = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM embeddings e WHERE e.item_rowid = i.rowid) ORDER BY rowid",
                ([s.value for s in states],))]

    def pending_vectors(self) -> list[int]:
        with self._conn() as conn:
            rows = conn.execute("SELECT item_rowid, gen FROM vec_pending ORDER BY item_rowid").fetchall()
        out = []
        with self._buf_lock:
            for r, g in rows:
                if self._pending_done.get(r) == g:
                    continue  # applied by this process, only its mark's deletion is still buffered (_flush_soft)
                self._pending_seen[r] = g
                out.append(r)
        return out

    def index_rows(self, rowids: Sequence[int]) -> list[IndexRow]:
        if not rowids:
            return []
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT i.rowid, i.id, i.state, i.kind, i.user_id, i.agent_id, i.session_id, e.vec FROM items i "
                "LEFT JOIN embeddings e ON e.item_rowid = i.rowid WHERE i.rowid = ANY(%s) ORDER BY i.rowid",
                ([int(r) for r in rowids],)).fetchall()
        return [IndexRow(*r[:7], None if r[7] is None else bytes(r[7])) for r in rows]

    # ------------------------------------------------------------------ the vector change log (schema 5: _V5)
    #: a reader further behind than this many changed rows starts again rather than replaying them
    _VEC_LOG_REPLAY = 50_000
    #: the log keeps about this many newest rows ...
    _VEC_LOG_KEEP = 65_536
    #: ... trimmed after every this many write transactions of this store
    _VEC_LOG_TRIM_EVERY = 64

    def vector_changes(self, since: Any) -> tuple[Any, list[int] | None] | None:
        """See :meth:`RecordStore.vector_changes`. The position is opaque here: ``(log epoch, snapshot text)``,
        the snapshot the log was read under (``pg_current_snapshot()``; inside :meth:`read_snapshot` the one every
        read of that block sees). The changes after it are the log rows visible now that were not visible in it:
        exact with writers on many hosts committing out of order (see ``_V5``). ``None``: a store opened at an
        older schema (tests), which has no log."""
        if not self._has_vec_log:
            return None
        with self._conn() as conn:
            if since is None:
                row = conn.execute("SELECT epoch, pg_current_snapshot()::text FROM vec_log").fetchone()
                return (row[0], row[1]), []
            if not (isinstance(since, tuple) and len(since) == 2 and all(isinstance(x, str) for x in since)):
                row = conn.execute("SELECT epoch, pg_current_snapshot()::text FROM vec_log").fetchone()
                return (row[0], row[1]), None  # not a position of this backend: start again
            epoch, prev = since
            # one statement, so one snapshot, also outside read_snapshot
            row = conn.execute(
                "WITH s AS (SELECT l.epoch, l.trimmed_below, pg_current_snapshot() AS now, %s::pg_snapshot AS prev "
                "FROM vec_log l) SELECT s.epoch, s.now::text, (s.epoch = %s AND s.trimmed_below <= "
                "pg_snapshot_xmin(s.prev) AND pg_snapshot_xmax(s.prev) <= pg_snapshot_xmax(s.now)), "
                "ARRAY(SELECT DISTINCT c.item_rowid FROM vec_changes c WHERE c.xid >= pg_snapshot_xmin(s.prev) "
                "AND NOT pg_visible_in_snapshot(c.xid, s.prev) LIMIT %s) FROM s",
                (prev, epoch, self._VEC_LOG_REPLAY + 1)).fetchone()
        pos = (row[0], row[1])
        if not row[2] or len(row[3]) > self._VEC_LOG_REPLAY:
            return pos, None  # another log, trimmed past ``since``, or too far behind: start again
        return pos, sorted(int(r) for r in row[3])

    def _trim_vec_log(self) -> None:
        """Delete the log rows older than about the newest :attr:`_VEC_LOG_KEEP` (in a short transaction of its own
        after a write committed; one trimmer per cube at a time). The watermark written with the deletion tells a
        reader whose position is older to start again. Best effort: a failure leaves the log longer, nothing else."""
        try:
            with self._guard(), self._pool.connection() as conn, conn.transaction():
                if not conn.execute("SELECT pg_try_advisory_xact_lock(%s)",
                                    (self._lock_key ^ 0x7665635F6C6F67,)).fetchone()[0]:
                    return  # another worker is trimming
                row = conn.execute("SELECT xid::text FROM vec_changes WHERE seq <= (SELECT max(seq) FROM vec_changes) "
                                   "- %s ORDER BY seq DESC LIMIT 1", (self._VEC_LOG_KEEP,)).fetchone()
                if row is None:
                    return
                conn.execute("UPDATE vec_log SET trimmed_below = %s::xid8 WHERE trimmed_below < %s::xid8",
                             (row[0], row[0]))
                conn.execute("DELETE FROM vec_changes WHERE xid < %s::xid8", (row[0],))
        except Exception as exc:  # noqa: BLE001 - the write committed; a longer log is harmless
            _log.warning("trimming the vector change log of cube %s failed: %s", self.cube, exc)

    def scope_vectors(self, user_id: str | None, agent_id: str | None, session_id: str | None
                      ) -> tuple[list[int], list[bytes]]:
        where = " AND ".join(f"i.{col} = %s" for col, v in (("user_id", user_id), ("agent_id", agent_id),
                                                           ("session_id", session_id)) if v is not None) or "TRUE"
        args = [v for v in (user_id, agent_id, session_id) if v is not None]
        with self._conn() as conn:
            rows = conn.cursor(binary=True).execute(
                f"SELECT e.item_rowid, e.vec FROM items i JOIN embeddings e ON e.item_rowid = i.rowid WHERE {where}",
                args).fetchall()
        return [r[0] for r in rows], [bytes(r[1]) for r in rows]

    def passing_rowids(self, rowids: Sequence[int], cf: CompiledFilter) -> set[int]:
        if not rowids:
            return set()
        where, args = cf
        with self._conn() as conn:
            rows = conn.execute(f"SELECT rowid FROM items WHERE items.rowid = ANY(%s) AND ({where})",
                                ([int(r) for r in rowids], *args)).fetchall()
        return {r[0] for r in rows}

    def mark_vectors_applied(self, rowids: Iterable[int]) -> None:
        """Clears only the marks as they were listed: a row pending again since (another worker wrote it)
        stays pending."""
        with self._buf_lock:
            for r in rowids:
                g = self._pending_seen.pop(int(r), None)
                if g is not None:
                    self._pending_done[int(r)] = g

    # ------------------------------------------------------------------ governance tables (created in schema v1)
    def governance_ready(self) -> bool:
        with self._conn() as conn:
            return conn.execute("SELECT 1 FROM gov_acl LIMIT 1").fetchone() is not None

    def bootstrap_governance(self, c: Any, owner: str, owner_kind: str, now: float, redaction_key: str) -> bool:
        c.execute("LOCK TABLE gov_acl IN SHARE ROW EXCLUSIVE MODE")  # two workers opening a new cube at once
        if c.execute("SELECT 1 FROM gov_acl LIMIT 1").fetchone() is not None:
            return False
        c.execute("INSERT INTO gov_principals(id, kind, created_at, created_by) VALUES(%s,%s,%s,%s) "
                  "ON CONFLICT(id) DO NOTHING", (owner, owner_kind, now, owner))
        c.execute("INSERT INTO gov_acl(principal, role, granted_by, granted_at) VALUES(%s,%s,%s,%s)",
                  (owner, "owner", owner, now))
        c.execute("INSERT INTO gov_settings(key, value) VALUES('redaction_key', %s) ON CONFLICT(key) DO NOTHING",
                  (redaction_key,))
        return True

    def grants(self, c: Any = None, principal: str | None = None) -> list[tuple[str, str, str, str | None, float]]:
        q = ("SELECT a.principal, COALESCE(p.kind, 'user'), a.role, a.granted_by, a.granted_at FROM gov_acl a "
             "LEFT JOIN gov_principals p ON p.id = a.principal")
        args: tuple[Any, ...] = ()
        if principal is not None:
            q += " WHERE a.principal=%s"
            args = (principal,)
        with self._conn(c) as conn:
            return [tuple(r) for r in conn.execute(q + " ORDER BY a.principal", args)]  # type: ignore[misc]

    def role(self, principal: str, c: Any = None) -> str | None:
        with self._conn(c) as conn:
            row = conn.execute("SELECT role FROM gov_acl WHERE principal=%s", (principal,)).fetchone()
        return None if row is None else row[0]

    def access(self, principal: str) -> tuple[str | None, dict[str, str]]:
        # one statement, one round trip: the role row (tagged 0) and every settings row (tagged 1)
        # (and the erasure counter, tagged 2: base.RecordStore.erasures_seen)
        with self._conn() as conn:
            rows = conn.execute("SELECT 0, role, NULL FROM gov_acl WHERE principal=%s "
                                "UNION ALL SELECT 1, key, value FROM gov_settings "
                                "UNION ALL SELECT 2, value, NULL FROM meta WHERE key='erasures'", (principal,)).fetchall()
        role = next((r[1] for r in rows if r[0] == 0), None)
        self.erasures_seen = next((int(r[1]) for r in rows if r[0] == 2), 0)
        return role, {r[1]: r[2] for r in rows if r[0] == 1}

    def count_role(self, c: Any, role: str) -> int:
        return int(c.execute("SELECT COUNT(*) FROM gov_acl WHERE role=%s", (role,)).fetchone()[0])

    def principal_kind(self, c: Any, principal: str) -> str | None:
        row = c.execute("SELECT kind FROM gov_principals WHERE id=%s", (principal,)).fetchone()
        return None if row is None else row[0]

    def add_principal(self, c: Any, principal: str, kind: str, now: float, created_by: str | None) -> None:
        c.execute("INSERT INTO gov_principals(id, kind, created_at, created_by) VALUES(%s,%s,%s,%s)",
                  (principal, kind, now, created_by))

    def put_grant(self, c: Any, principal: str, role: str, granted_by: str | None, at: float) -> None:
        c.execute("INSERT INTO gov_acl(principal, role, granted_by, granted_at) VALUES(%s,%s,%s,%s) "
                  "ON CONFLICT(principal) DO UPDATE SET role=excluded.role, granted_by=excluded.granted_by, "
                  "granted_at=excluded.granted_at", (principal, role, granted_by, at))

    def delete_grant(self, c: Any, principal: str) -> None:
        c.execute("DELETE FROM gov_acl WHERE principal=%s", (principal,))

    def governance_settings(self) -> dict[str, str]:
        with self._conn() as conn:
            return {r[0]: r[1] for r in conn.execute("SELECT key, value FROM gov_settings")}

    def put_settings(self, c: Any, values: Mapping[str, str]) -> None:
        c.cursor().executemany("INSERT INTO gov_settings(key, value) VALUES(%s, %s) ON CONFLICT(key) DO UPDATE SET "
                               "value=excluded.value", list(values.items()))

    def add_forget_pending(self, c: Any, ids: Sequence[str]) -> None:
        c.cursor().executemany("INSERT INTO gov_forget_pending(item_id) VALUES(%s) ON CONFLICT DO NOTHING",
                               [(i,) for i in ids])

    def forget_pending(self) -> list[str]:
        with self._conn() as conn:
            return [r[0] for r in conn.execute("SELECT item_id FROM gov_forget_pending ORDER BY item_id")]

    def clear_forget_pending(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        with self.transaction() as c:
            c.execute("DELETE FROM gov_forget_pending WHERE item_id = ANY(%s)", (list(ids),))

    # ------------------------------------------------------------------ maintenance
    def compact_erased(self) -> None:
        """VACUUM the tables an erase touched, so the dead tuples holding erased content are reclaimed (the
        space is marked free for reuse; it is overwritten as PostgreSQL reuses it, not zeroed now). WAL
        segments and base backups still hold the content until they are recycled: see the README."""
        if self._closed:
            return
        # Best effort, after the erasure committed: if the server is unreachable now, autovacuum reclaims the
        # dead tuples later; the forget itself succeeded and must not be reported as failed.
        try:
            self.flush()
            with self._guard(), self._pool.connection() as conn:
                for table in ("items", "versions", "transitions", "embeddings", "vec_pending", "lex_terms"):
                    conn.execute(self._sql.SQL("VACUUM {}").format(self._sql.Identifier(self.schema, table)))
        except BackendUnavailable as exc:
            _log.warning("VACUUM after an erasure skipped (%s); autovacuum will reclaim the dead tuples", exc)

    def drop_schema(self) -> None:
        """Delete this cube's schema and everything in it (tests, ``memos migrate`` targets); irreversible."""
        with self._guard(), self._pool.connection() as conn:
            conn.execute(self._sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(self._sql.Identifier(self.schema)))


def _tsq(lexeme: str) -> str:
    """A lexeme as a tsquery operand (quoted, no normalisation: it already is one)."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"
