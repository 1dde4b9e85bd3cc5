"""Vector index over a cube's embeddings: Chroma, embedded (a local folder) or a Chroma server (HTTP).

The index is *derived* data. It stores no memory content, only ids, vectors and the few metadata fields
used to pre-filter (scope, state, kind). It can always be rebuilt from the records (``memos reindex``).
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np

from ..log import get_logger
from ..errors import BackendUnavailable, ValidationError

__all__ = ["ChromaVectorIndex", "IndexFilesDamaged", "erase_rows"]

log = get_logger(__name__)

_BATCH = 4000

#: Serialises creating and closing embedded Chroma clients in this process. chromadb keeps one shared ``System``
#: per folder in a class-level dict (``SharedSystemClient``) and neither its creation nor its release is atomic:
#: the new System is published in the dict *before* ``start()`` gives its ``RustBindingsAPI`` the ``bindings``
#: attribute, and the lookup and the reference-count increment are separate steps. A second thread opening the
#: same folder meanwhile (or a thread closing the last client of it) then gets a System that is not started
#: yet (or already stopped): "'RustBindingsAPI' object has no attribute 'bindings'" or "Could not connect to
#: tenant default_tenant", and the cube opens degraded. Every embedded client of this process is created and
#: closed through this lock, so that never happens. (HTTP clients share no System: each gets its own.)
_EMBEDDED_CLIENTS = threading.RLock()


class _FolderGuard:
    """Chroma calls on one embedded folder (shared) versus this module's own SQL on its ``chroma.sqlite3``
    (exclusive: the free-page scrub after an erasure, the vacuum of a compaction). That SQL goes through Python's
    sqlite3, a second copy of the SQLite library in the process (Chroma's is built into its bindings), and two
    copies do not see each other's POSIX file locks: run while another thread was inside a Chroma call (a
    search's query), the scrub corrupted the file ("database disk image is malformed"). So it waits for the
    calls in progress to end and holds new ones back (a waiting scrub goes first). In this process only: an
    embedded folder is for one process (README)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._calls = 0
        self._own = False
        self._waiting = 0

    @contextmanager
    def call(self) -> Iterator[None]:
        with self._cond:
            while self._own or self._waiting:
                self._cond.wait()
            self._calls += 1
        try:
            yield
        finally:
            with self._cond:
                self._calls -= 1
                if not self._calls:
                    self._cond.notify_all()

    @contextmanager
    def own_sql(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            try:
                while self._own or self._calls:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._own = True
        try:
            yield
        finally:
            with self._cond:
                self._own = False
                self._cond.notify_all()


_GUARDS: dict[str, _FolderGuard] = {}
_GUARDS_LOCK = threading.Lock()


def _guard_of(folder: Path) -> _FolderGuard:
    key = str(folder.resolve())
    with _GUARDS_LOCK:
        guard = _GUARDS.get(key)
        if guard is None:
            guard = _GUARDS[key] = _FolderGuard()
        return guard


class IndexFilesDamaged(BackendUnavailable):
    """An embedded index folder's HNSW files cannot be read (a process killed while Chroma persisted them left
    one empty or cut short). The index is derived data: the cube sets the folder aside
    (:meth:`ChromaVectorIndex.set_aside`) and rebuilds it from the embeddings stored in the records."""


#: What chromadb (1.5) says, as ``chromadb.errors.InternalError``, on the first call to a collection whose segment
#: files are damaged: an empty or cut ``index_metadata.pickle`` -> "Error creating hnsw segment reader: Error
#: deserializing pickle file: ... EOF while parsing"; an empty ``header.bin`` -> "... Error loading hnsw index".
#: Only these are recovered from: a lock, a missing package or a server that is down keep raising BackendUnavailable.
_DAMAGED_HNSW = ("hnsw segment reader", "error loading hnsw index", "error deserializing pickle file")


def _damaged_files(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is chromadb's error for unreadable HNSW segment files."""
    try:
        from chromadb.errors import InternalError
    except Exception:  # noqa: BLE001 - no chromadb: nothing it raised
        return False
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, InternalError) and any(s in str(cur).lower() for s in _DAMAGED_HNSW):
            return True
        cur = cur.__cause__
    return False


def erase_rows(index: Any, ids: Sequence[str]) -> set[str]:
    """``index.erase(ids)`` (overwrite, then delete: :meth:`ChromaVectorIndex.erase`) for an index that has it;
    a plain ``delete`` for any other object with the vector-index methods (an in-memory stand-in keeps no files),
    which then reports every id as not reached."""
    erase = getattr(index, "erase", None)
    if erase is not None:
        return set(erase(ids))
    index.delete(list(ids))
    return set(ids)


def check_chroma_url(url: Any, what: str = "chroma_url") -> str:
    """``url`` if it has the form of a Chroma server URL (``http(s)://host[:port]``: a scheme http or https, a
    host, a port if given a number from 1 to 65535, no path beyond ``/``); otherwise :class:`ValidationError`
    saying how to write it. Only the form is checked: nothing connects here."""
    fix = "write the Chroma server as 'http://host:port' (or 'https://host[:port]')"
    if not isinstance(url, str):
        raise ValidationError(f"{what} must be a string URL; {fix}, got {type(url).__name__}")
    try:
        u = urlparse(url)
        port = u.port  # raises ValueError for a port that is not a number in range
    except ValueError:
        raise ValidationError(f"{what}={url!r}: the port is not a number from 1 to 65535; {fix}") from None
    if u.scheme not in ("http", "https"):
        got = f"the scheme {u.scheme!r}" if u.scheme and u.netloc else "no scheme"
        raise ValidationError(f"{what}={url!r} has {got}; {fix}")
    if not u.hostname:
        raise ValidationError(f"{what}={url!r} names no host; {fix}")
    if port == 0 or u.path not in ("", "/") or u.query or u.fragment:
        raise ValidationError(f"{what}={url!r} is not a server address; {fix}")
    return url


class ChromaVectorIndex:
    """A cosine HNSW collection in Chroma.

    ``path`` opens an embedded persistent client in that folder; ``url`` (``http://host:port``) talks to a
    Chroma server instead. Chroma is imported lazily.
    """

    def __init__(self, *, path: str | Path | None = None, url: str | None = None, collection: str = "memos",
                 hnsw: dict[str, Any] | None = None) -> None:
        if (path is None) == (url is None):
            raise ValidationError("ChromaVectorIndex needs exactly one of path= (embedded) or url= (server)")
        self.path = None if path is None else Path(path)
        self.url = None if url is None else check_chroma_url(url, "url")
        self.collection_name = collection
        self._hnsw = {"space": "cosine", "ef_construction": 128, "ef_search": 128, "max_neighbors": 16}
        self._hnsw.update(hnsw or {})
        self._client: Any = None
        self._col: Any = None
        # one thread opens (or closes) the client at a time: a background warm() and the first real call must not
        # both open one (the second client would never be closed: Chroma's shared System would outlive close())
        self._open_lock = threading.RLock()
        self._closed = False

    # ------------------------------------------------------------------ connection
    def _collection(self) -> Any:
        if self._col is not None:
            return self._col
        with self._open_lock:
            if self._col is not None:
                return self._col
            self._closed = False
            return self._open_collection()

    def _open_collection(self) -> Any:
        try:
            import chromadb
            from chromadb.config import Settings

            settings = Settings(anonymized_telemetry=False, allow_reset=True)
            if self.url is not None:
                u = urlparse(self.url)
                if u.scheme not in ("http", "https") or not u.hostname:
                    raise ValidationError(f"chroma url {self.url!r}: expected http(s)://host:port")
                self._client = chromadb.HttpClient(host=u.hostname, port=u.port or (443 if u.scheme == "https" else 8000),
                                                   ssl=u.scheme == "https", settings=settings)
            elif self._client is None:
                assert self.path is not None
                self.path.mkdir(parents=True, exist_ok=True)
                with _guard_of(self.path).call(), _EMBEDDED_CLIENTS:
                    self._client = chromadb.PersistentClient(path=str(self.path), settings=settings)
            with _guard_of(self.path).call() if self.path is not None else nullcontext():
                self._col = self._client.get_or_create_collection(
                    self.collection_name, configuration={"hnsw": self._hnsw}, embedding_function=None
                )
        except ValidationError:
            raise
        except Exception as exc:
            self._client = self._col = None
            err = IndexFilesDamaged if self.path is not None and _damaged_files(exc) else BackendUnavailable
            raise err(f"vector index (Chroma at {self.url or self.path}) is unavailable: {exc}") from exc
        return self._col

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            if self.path is not None:  # never beside this module's own SQL on the folder's file (_FolderGuard)
                with _guard_of(self.path).call():
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        except (ValidationError, BackendUnavailable):
            raise
        except Exception as exc:
            # fetch the collection again next time: a server may have restarted, and another handle on the same
            # folder may have rebuilt the collection (a compaction does: compact_index, after an erasure)
            self._col = None
            err = IndexFilesDamaged if self.path is not None and _damaged_files(exc) else BackendUnavailable
            raise err(f"vector index {what} failed ({type(exc).__name__}: {exc}); "
                      "the records are intact and the index will be repaired") from exc

    # ------------------------------------------------------------------ operations
    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict[str, Any]]) -> None:
        col = self._collection()
        for s in range(0, len(ids), _BATCH):
            self._call("upsert", col.upsert, ids=list(ids[s:s + _BATCH]),
                       embeddings=np.asarray(vectors[s:s + _BATCH], dtype=np.float32),
                       metadatas=list(metadatas[s:s + _BATCH]))

    def delete(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        col = self._collection()
        for s in range(0, len(ids), _BATCH):
            self._call("delete", col.delete, ids=list(ids[s:s + _BATCH]))

    def query(self, vector: np.ndarray, k: int, where: dict[str, Any] | None = None) -> list[tuple[str, float]]:
        """Nearest ids with cosine similarity (1 - cosine distance), best first."""
        col = self._collection()
        if k <= 0:
            return []
        # No count() first: Chroma returns fewer results when k exceeds the collection (and none when it is
        # empty), and a count per query costs milliseconds on a large collection.
        res = self._call("query", col.query, query_embeddings=[np.asarray(vector, dtype=np.float32)],
                         n_results=k, where=where or None, include=["distances"])
        ids = res["ids"][0]
        dists = res["distances"][0]
        return [(i, 1.0 - float(d)) for i, d in zip(ids, dists)]

    def count(self) -> int:
        return int(self._call("count", self._collection().count))

    def ids(self) -> set[str]:
        col = self._collection()
        out: set[str] = set()
        offset = 0
        while True:
            res = self._call("get", col.get, include=[], limit=_BATCH, offset=offset)
            batch = res["ids"]
            out.update(batch)
            if len(batch) < _BATCH:
                return out
            offset += _BATCH

    # ------------------------------------------------------------------ erasure (what forget relies on)
    def erase(self, ids: Sequence[str]) -> set[str]:
        """Delete ``ids`` so that their vectors do not stay in the index's memory: each id still in the index is
        first overwritten, in place, with a random unit vector, then deleted.

        A plain delete only *marks* an HNSW element: its vector stays in memory and, after the next persist, in
        ``data_level0.bin``. Upserting an existing id overwrites the element's vector in place (Chroma 1.5 keeps
        the label; :attr:`scrubs_in_place` says whether this Chroma is one where that was verified), so after the
        overwrite, the delete and the next persist (:meth:`scrub_files`) no byte of the old vector is left in the
        segment. Returns the ids that were *not* in the index: their elements (if an earlier, plain delete left
        any) cannot be reached this way, only by :meth:`compact`.
        """
        ids = list(dict.fromkeys(ids))
        if not ids:
            return set()
        col = self._collection()
        present: list[str] = []
        for s in range(0, len(ids), _BATCH):
            present += self._call("get", col.get, ids=ids[s:s + _BATCH], include=[])["ids"]
        if present:
            dim = None
            got = self._call("get", col.get, ids=present[:1], include=["embeddings"])
            emb = got.get("embeddings")
            if emb is not None and len(emb):
                dim = len(emb[0])
            if dim:
                rng = np.random.default_rng()
                for s in range(0, len(present), _BATCH):
                    chunk = present[s:s + _BATCH]
                    noise = rng.standard_normal((len(chunk), dim)).astype(np.float32)
                    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
                    # state "erased": a query racing with this never pre-filters it in (no state matches)
                    self._call("upsert", col.upsert, ids=chunk, embeddings=noise,
                               metadatas=[{"state": "erased"}] * len(chunk))
        self.delete(ids)
        present_set = set(present)
        return {i for i in ids if i not in present_set}

    @property
    def scrubs_in_place(self) -> bool:
        """Whether :meth:`erase` + :meth:`scrub_files` leave no erased vector in this index's files, without a
        rebuild: an embedded folder, with a Chroma release where that was verified on raw bytes (1.5.x: an upsert
        of an existing id overwrites its HNSW element in place). Anything else needs :meth:`compact`. (A Chroma
        server's disk is the server's to manage.)"""
        if self.path is None:
            return False
        try:
            import chromadb

            major, minor = (int(x) for x in str(chromadb.__version__).split(".")[:2])
        except Exception:  # noqa: BLE001 - unknown version: not verified
            return False
        return (major, minor) == (1, 5)

    def scrub_files(self) -> None:
        """Make what :meth:`erase` did reach the embedded folder's files, in time independent of the index size
        (apart from Chroma persisting its id map):

        * HNSW: Chroma persists a segment (``data_level0.bin`` ..., and its ``max_seq_id``) only after
          ``sync_threshold`` log records since the last persist. That many deletes of ids that do not exist (no
          change to the graph, nothing else touched) force it, so the overwritten vectors reach the file.
        * ``chroma.sqlite3``: once both segments have persisted, Chroma purges its log (``embeddings_queue``,
          which held every added vector); the freed pages still hold the bytes. Every free page is overwritten
          with zeros (a zero-filled blob takes every page of the freelist, then is dropped), so the cost is that
          of the freelist (about one log's worth of records), not of the file (``VACUUM`` rewrites all of it).

        No-op for a Chroma server. Raises :class:`BackendUnavailable` when the index cannot be reached.
        """
        if self.path is None:
            return
        col = self._collection()
        threshold = 1000
        try:
            conf = getattr(col, "configuration_json", None) or {}
            threshold = int((conf.get("hnsw") or {}).get("sync_threshold") or threshold)
        except Exception:  # noqa: BLE001 - the default threshold
            pass
        sentinels = [f"__memos_scrub_{n}__" for n in range(max(threshold, 1))]
        self.delete(sentinels)
        self._scrub_free_pages()

    def _scrub_free_pages(self) -> None:
        db = self.path / "chroma.sqlite3" if self.path is not None else None
        if db is None or not db.exists():
            return
        assert self.path is not None
        with _guard_of(self.path).own_sql():  # no Chroma call meanwhile: see _FolderGuard
            self._scrub_free_pages_now(db)

    def _scrub_free_pages_now(self, db: Path) -> None:
        try:
            conn = sqlite3.connect(str(db), timeout=30.0, isolation_level=None)
            try:
                free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                if free:
                    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        conn.execute("CREATE TABLE memos_scrub(b BLOB)")
                        # one byte more than the free pages hold: the blobs take every one of them (then grow
                        # the file by a page or two, freed again with the rest when the table is dropped); in
                        # pieces below SQLite's largest blob
                        left = free * page + 1
                        while left > 0:
                            n = min(left, 64 << 20)
                            conn.execute("INSERT INTO memos_scrub VALUES(zeroblob(?))", (n,))
                            left -= n
                        conn.execute("DROP TABLE memos_scrub")
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"could not scrub the free pages of {db}: {exc}") from exc

    def compact(self, batches: Any) -> int:
        """Rebuild the collection from ``batches`` (an iterable of ``(ids, vectors, metadatas)``; the cube gives
        its records' stored embeddings) so that no vector absent from them is left anywhere in the index: the
        collection is dropped and refilled; for an embedded folder, the segment folders Chroma no longer uses are
        removed and ``chroma.sqlite3`` is vacuumed (its freed pages kept vectors). Costs the whole index
        (measured in ``benchmarks/forget_scale.py``). Returns the number of vectors indexed."""
        self.reset()
        total = 0
        for ids, vectors, metas in batches:
            if len(ids):
                self.upsert(ids, vectors, metas)
                total += len(ids)
        if self.path is not None:
            # Release Chroma's shared system for this folder first: it still holds the dropped collection's
            # segment in memory and may write it back to its folder when released, i.e. after the folder was
            # removed (seen once in a full suite run: an erased vector back in an old segment's .bin). Released
            # now, nothing can write there after the clean-up; the next call reopens the folder.
            self.close()
            self._compact_folder()
        return total

    def _compact_folder(self) -> None:
        """Remove segment folders Chroma no longer uses and vacuum its SQLite file (freed pages kept vectors)."""
        assert self.path is not None
        folder = self.path
        db = folder / "chroma.sqlite3"
        if not db.exists():
            return
        try:
            with _guard_of(folder).own_sql():  # no Chroma call meanwhile (another handle): see _FolderGuard
                conn = sqlite3.connect(str(db), timeout=30.0)
                try:
                    live = {r[0] for r in conn.execute("SELECT id FROM segments")}
                    conn.execute("VACUUM")
                finally:
                    conn.close()
        except sqlite3.Error as exc:
            raise BackendUnavailable(f"could not compact the vector index folder {folder}: {exc}") from exc
        for sub in folder.iterdir():
            if sub.is_dir() and not sub.is_symlink() and len(sub.name) == 36 and sub.name.count("-") == 4 \
                    and sub.name not in live:
                shutil.rmtree(sub, ignore_errors=True)

    def reset(self) -> None:
        """Drop and recreate the collection (used by a full reindex)."""
        self._collection()
        try:
            with _guard_of(self.path).call() if self.path is not None else nullcontext():
                self._client.delete_collection(self.collection_name)
        except Exception as exc:  # noqa: BLE001 - a missing collection is fine
            log.debug("delete_collection: %s", exc)
        self._col = None
        self._collection()

    def set_aside(self) -> Path:
        """Move a damaged embedded folder aside and start an empty one in its place (:class:`IndexFilesDamaged`).

        The folder is renamed ``<name>.damaged-<UTC time>`` beside it and a WARNING says where; the caller rebuilds the index from the records (it holds no content, only ids, vectors and scope fields: the
        records can rebuild it, it cannot rebuild them) and then deletes the old folder (vectors of memories forgotten
        since may be in it). Returns the new place of the old folder. Embedded only."""
        import time

        if self.path is None:
            raise ValidationError("set_aside is for an embedded index (path=); a Chroma server keeps its own files")
        with self._open_lock:
            self._close_client()
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            dest = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
            n = 1
            while dest.exists():
                n += 1
                dest = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
            with _guard_of(self.path).own_sql():  # no Chroma call of this process is inside the folder
                try:
                    self.path.rename(dest)
                except OSError as exc:
                    raise BackendUnavailable(f"could not move the damaged vector index {self.path} aside: {exc}") \
                        from exc
            log.warning("the vector index at %s was damaged (its HNSW files could not be read: a process killed "
                        "while writing them?); moved it aside to %s and rebuilding it from the records (the "
                        "old folder is deleted once the rebuild succeeds: it may hold vectors of memories forgotten "
                        "since)", self.path, dest)
            return dest

    def persisted_bytes(self) -> int:
        """Bytes of the HNSW vectors persisted in an embedded folder (``data_level0.bin`` of each segment; 0 for a
        server or a folder not written yet): what loading the index on its first call reads. A stat per segment."""
        if self.path is None or not self.path.is_dir():
            return 0
        total = 0
        for seg in self.path.iterdir():
            try:
                total += (seg / "data_level0.bin").stat().st_size
            except OSError:
                continue
        return total

    def warm(self) -> float:
        """Open the collection and load its index now (Chroma reads an embedded folder's HNSW segment and id map on
        the collection's first call after the client opens: seconds for a large index), so that the first search
        or write does not wait for it. The cube calls this on a background thread when it opens a large embedded
        index (``MEMOS_PRELOAD=0`` turns it off). Returns the seconds it took; a failure is left to the first real
        call to report. Does nothing once :meth:`close` ran."""
        import time

        started = time.perf_counter()
        with self._open_lock:
            if self._closed:
                return 0.0
            try:
                self._call("count", self._collection().count)
            except Exception as exc:  # noqa: BLE001 - the first real call reports it
                log.debug("vector index warm-up failed: %s", exc)
        took = time.perf_counter() - started
        log.debug("vector index at %s warmed in %.2f s", self.path or self.url, took)
        return took

    def close(self) -> None:
        # Release Chroma's process-wide shared system for this folder. Merely dropping the reference keeps
        # it cached with its in-memory HNSW, so a later reopen in this process (after another process wrote
        # to the cube, e.g. `memos add`) would query a stale index ("Error finding id").
        with self._open_lock:  # never while warm() or another thread opens the client
            self._closed = True
            self._close_client()

    def _close_client(self) -> None:
        client, self._col, self._client = self._client, None, None
        if client is not None and hasattr(client, "close"):
            try:
                with _EMBEDDED_CLIENTS:  # see _EMBEDDED_CLIENTS: never while another thread opens this folder
                    client.close()
            except Exception as exc:  # noqa: BLE001 - closing must not fail the caller
                log.debug("chroma client close: %s", exc)
