"""Vector index over a cube's embeddings: Chroma, embedded (a local folder) or a Chroma server (HTTP).

The index is *derived* data. It stores no memory content, only ids, vectors and the few metadata fields
used to pre-filter (scope, state, kind). It can always be rebuilt from the records (``memos reindex``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np

from ..log import get_logger
from ..errors import BackendUnavailable, ValidationError

__all__ = ["ChromaVectorIndex"]

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
        self.url = url
        self.collection_name = collection
        self._hnsw = {"space": "cosine", "ef_construction": 128, "ef_search": 128, "max_neighbors": 16}
        self._hnsw.update(hnsw or {})
        self._client: Any = None
        self._col: Any = None

    # ------------------------------------------------------------------ connection
    def _collection(self) -> Any:
        if self._col is not None:
            return self._col
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
                with _EMBEDDED_CLIENTS:
                    self._client = chromadb.PersistentClient(path=str(self.path), settings=settings)
            self._col = self._client.get_or_create_collection(
                self.collection_name, configuration={"hnsw": self._hnsw}, embedding_function=None
            )
        except ValidationError:
            raise
        except Exception as exc:
            self._client = self._col = None
            raise BackendUnavailable(f"vector index (Chroma at {self.url or self.path}) is unavailable: {exc}") from exc
        return self._col

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ValidationError, BackendUnavailable):
            raise
        except Exception as exc:
            # fetch the collection again next time: a server may have restarted, and another handle on the same
            # folder may have rebuilt the collection (forget rebuilds it so no erased vector stays in its files)
            self._col = None
            raise BackendUnavailable(f"vector index {what} failed ({type(exc).__name__}: {exc}); "
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

    def reset(self) -> None:
        """Drop and recreate the collection (used by a full reindex)."""
        self._collection()
        try:
            self._client.delete_collection(self.collection_name)
        except Exception as exc:  # noqa: BLE001 - a missing collection is fine
            log.debug("delete_collection: %s", exc)
        self._col = None
        self._collection()

    def close(self) -> None:
        # Release Chroma's process-wide shared system for this folder. Merely dropping the reference keeps
        # it cached with its in-memory HNSW, so a later reopen in this process (after another process wrote
        # to the cube, e.g. `memos add`) would query a stale index ("Error finding id").
        client, self._col, self._client = self._client, None, None
        if client is not None and hasattr(client, "close"):
            try:
                with _EMBEDDED_CLIENTS:  # see _EMBEDDED_CLIENTS: never while another thread opens this folder
                    client.close()
            except Exception as exc:  # noqa: BLE001 - closing must not fail the caller
                log.debug("chroma client close: %s", exc)
