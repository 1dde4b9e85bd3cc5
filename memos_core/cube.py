"""MemCube: a folder holding memories (content + metadata), their versions, lifecycle and indexes.

Layout of a cube folder::

    cube.json          manifest: schema version, cube id, embedder name and dimension, index settings
    records.sqlite3    system of record (items, versions, transitions, event log, lexical index, embeddings)
    chroma/            vector index (derived; rebuildable with ``memos reindex``)
    activation/        KV caches built from memories (activation memory)
    parametric/        LoRA adapters trained from memories (parametric memory)

Guarantees:

* ``add``/``update``/``delete``/``rollback``/``transition`` are each one fsync'd transaction on the records;
  when they return, the change survives a crash. The vector index is updated right after; if the process dies
  in between, the next open repairs it from the records.
* Updates and rollbacks create new versions; nothing is overwritten. Delete is a tombstone; only ``purge``
  erases content.
* Search never returns deleted, purged or expired memories, and only archived/merged ones when asked.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np

from . import forksafe, lifecycle
from .embedding import Embedder, one_core, one_core_active, resolve_embedder
from .log import Progress, get_logger
from .log import progress as progress_iter
from .errors import (
    BackendUnavailable,
    Conflict,
    CorruptData,
    EmbeddingDimensionError,
    MemOSError,
    NotFound,
    SchemaVersionError,
    ValidationError,
)
from .items import (
    MAX_CONTENT_CHARS_DEFAULT,
    LifecycleState,
    MemoryItem,
    MemoryKind,
    MemoryVersion,
    Provenance,
    Scope,
    SearchFilter,
    SearchHit,
    Transition,
    check_id,
    check_text,
    new_id,
    to_utc,
    ttl_seconds,
    utcnow,
)
from .plaintext import ChromaVectorIndex
from .plaintext.vector import IndexFilesDamaged
from .plaintext.retrieval import Retriever, embedder_down, embedder_failed, search_pool
from .plaintext import scope_cache
from .records import RecordStore, SQLiteRecordStore
from .records.migrate import MANIFEST_META_KEY, is_store_url, open_record_store
from .erasure import Erasure
from .governance import Governance, Right
from .governance.core import query_digest
from .governance.retention import RetentionAction
from .governance.roles import check_principal_id

__all__ = ["MemCube", "CUBE_SCHEMA_VERSION", "SearchMode", "RetrievalConfig"]

log = get_logger(__name__)

CUBE_SCHEMA_VERSION = 1
MANIFEST = "cube.json"
SearchMode = Literal["hybrid", "dense", "lexical"]

_S = LifecycleState
_UPDATABLE_FIELDS = {"content", "index_text", "kind", "tags", "metadata", "event_time", "valid_until",
                     "expires_at", "confidence", "provenance"}


class RetrievalConfig:
    """Tunable retrieval settings. Defaults were tuned on the benchmarks in ``benchmarks/`` (see README).

    * ``fusion``: ``"zscore"`` (default) standardises each retriever's scores over the candidate set and adds
      them weighted, so score margins survive (an exact rare-name BM25 match stays far ahead); ``"rrf"`` is
      weighted reciprocal rank fusion, which keeps only ranks.
    * ``dense_weight`` / ``lexical_weight``: the retrievers' weights in the fusion. ``None`` picks the default
      of the fusion (z-score: dense 1.0, lexical *adaptive*, see below; RRF: 1.0 / 0.8). A number given for
      ``lexical_weight`` fixes it for every query.
    * ``question_lexical_weight`` / ``dialogue_lexical_weight``: the adaptive lexical weight of z-score fusion
      for a short query (a question or keywords: names, things and dates that BM25 matches exactly) and for a
      pasted dialogue (long, chatty: the embedder reads it better). Each is then scaled by the retrievers'
      confidence on this query.
    * ``confidence_weight``: how much that scaling counts: ``1 + confidence_weight * (peak(BM25) -
      peak(dense)) / 2`` within [0.5, 2], where a retriever's peak is how far its best score stands above its
      next nine in standard deviations (:func:`memos_core.plaintext.fusion.lexical_weight`). 0 disables it.
    * ``act_weight``: how strongly a memory's ``metadata["recall_weight"]`` (in (0, 1]; the offline reader sets
      it below 1 for questions, acknowledgements, "I don't know" replies, echoes and small talk) pushes it down:
      ``act_weight * ln(recall_weight)`` standard deviations. 0 ignores it.
    * ``entity_weight``: bonus (in standard deviations, z-score fusion only) for a memory that contains the
      names the query mentions (speakers of a pasted dialogue, capitalised non-initial words), scaled by the
      share of those names it contains.
    * ``topical_weight``: weight of the topical leg of z-score fusion for a question or keywords naming people
      (:attr:`memos_core.plaintext.query.QueryPlan.topic`): each candidate's *topic vector* (the embedding of
      its own words, without speaker tag, date or reply context, stored beside its embedding) is compared with
      the vector of the question without its names and fused as a third leg. Default
      :data:`memos_core.plaintext.fusion.TOPICAL_WEIGHT` (plus :data:`~memos_core.plaintext.fusion.TOPICAL_SHIFT` of
      the dense weight); 0 turns the leg off. Memories stored before topic vectors existed have none until
      re-embedded (``reindex(reembed=True)``). ``topical_query``: what the topic vectors are compared with:
      ``"topic"`` (default) a vector of the question without its names (the default embedder embeds it in the same
      call as the query: ~2 ms more per such search on a CPU), ``"full"`` the query vector itself (no extra text
      embedded; lower recall, see the README). ``topical_shift``: the share of the dense weight moved to the
      topical leg for such a question (default :data:`memos_core.plaintext.fusion.TOPICAL_SHIFT`).
    * ``name_free_dense_scale`` / ``name_free_lexical_weight``: for a question or keywords naming no one, the dense
      weight is multiplied by the first and the lexical leg starts from the second (defaults
      :data:`~memos_core.plaintext.fusion.NAME_FREE_DENSE_SCALE`,
      :data:`~memos_core.plaintext.fusion.NAME_FREE_LEXICAL_WEIGHT`).
    * ``focus_weight``: when the query is a pasted user <-> assistant dialogue, weight of its last user turn
      added to the query embedding (one extra text in the same embedding batch; 0 disables it).
    * ``query_cache``: how many query vectors to keep per embedder (LRU; 0 disables). Agents repeat queries:
      memory middleware searches with the same message before every model call of a tool loop.
    * ``rrf_k``: the RRF constant (larger flattens rank differences).
    * ``candidates``: how many results each retriever contributes to fusion (at least ``k``).
    * ``exact_below``: when a filter narrows the search to at most this many items, dense scores are computed
      exactly from stored embeddings instead of through the ANN index. (A search scoped to a user, agent or
      session is exact at any size where the process holds the scope's vectors: the scope cache,
      :mod:`memos_core.plaintext.scope_cache`.)
    * ``reranker`` (default ``None``: off, retrieval unchanged): a :class:`memos_core.plaintext.rerank.Reranker`
      (``score(query, texts) -> scores``, e.g. :class:`~memos_core.plaintext.rerank.QueryLikelihoodReranker` or a
      wrapped cross-encoder in :class:`~memos_core.plaintext.rerank.CallableReranker`). For a query in
      ``rerank_scope`` (``"named"``: questions naming someone, the measured default; ``"questions"``: every
      question; ``"all"``: pasted dialogues too), search reorders the fusion's best ``max(k, rerank_k)`` candidates
      by ``fused + rerank_weight * z(reranker scores)`` and then cuts to ``k``; nothing outside them moves.
      ``hit.score`` stays the calibrated score (so the order can then differ from score order, more than it
      already may); the reranker's raw score is in ``hit.retrievers["rerank"]``. A reranker that raises makes the
      search raise :class:`~memos_core.errors.BackendUnavailable` (a wrong answer: ``ValidationError``); it is
      never silently skipped. Measured gain and cost: README, "Reranking (opt-in)".
    """

    def __init__(self, dense_weight: float | None = None, lexical_weight: float | None = None,
                 rrf_k: float = 60.0, candidates: int = 60, exact_below: int = 4000,
                 fusion: Literal["zscore", "rrf"] = "zscore", entity_weight: float = 0.3,
                 focus_weight: float = 0.5, query_cache: int = 256, question_lexical_weight: float = 0.5,
                 dialogue_lexical_weight: float = 0.3, act_weight: float = 2.0,
                 confidence_weight: float = 1.0, topical_weight: float | None = None,
                 topical_query: Literal["full", "topic"] = "topic", topical_shift: float | None = None,
                 name_free_dense_scale: float | None = None,
                 name_free_lexical_weight: float | None = None, reranker: Any = None, rerank_k: int = 20,
                 rerank_weight: float = 2.0, rerank_scope: Literal["named", "questions", "all"] = "named") -> None:
        if fusion not in ("zscore", "rrf"):
            raise ValidationError(f"fusion must be 'zscore' or 'rrf', not {fusion!r}")
        self.fusion = fusion
        self.dense_weight = 1.0 if dense_weight is None else dense_weight
        #: ``None`` (z-score fusion): adaptive per query
        self.lexical_weight: float | None = (None if fusion == "zscore" else 0.8) if lexical_weight is None \
            else lexical_weight
        self.question_lexical_weight = question_lexical_weight
        self.dialogue_lexical_weight = dialogue_lexical_weight
        self.act_weight = act_weight
        self.confidence_weight = confidence_weight
        if topical_weight is None:
            from .plaintext.fusion import TOPICAL_WEIGHT

            topical_weight = TOPICAL_WEIGHT
        self.topical_weight = float(topical_weight)
        if topical_query not in ("full", "topic"):
            raise ValidationError(f"topical_query must be 'full' or 'topic', not {topical_query!r}")
        self.topical_query = topical_query
        from .plaintext import fusion as _fusion

        self.topical_shift = float(_fusion.TOPICAL_SHIFT if topical_shift is None else topical_shift)
        self.name_free_dense_scale = float(
            _fusion.NAME_FREE_DENSE_SCALE if name_free_dense_scale is None else name_free_dense_scale)
        self.name_free_lexical_weight = float(
            _fusion.NAME_FREE_LEXICAL_WEIGHT if name_free_lexical_weight is None else name_free_lexical_weight)
        self.entity_weight = entity_weight
        self.focus_weight = focus_weight
        if not isinstance(query_cache, int) or isinstance(query_cache, bool) or query_cache < 0:
            raise ValidationError(f"query_cache must be a non-negative integer, not {query_cache!r}")
        self.query_cache = query_cache
        self.rrf_k = rrf_k
        self.candidates = candidates
        self.exact_below = exact_below
        from .plaintext.rerank import RERANK_SCOPES

        if reranker is not None and not callable(getattr(reranker, "score", None)):
            raise ValidationError("reranker must have a score(query, texts) method (wrap a function in "
                                  "memos_core.plaintext.rerank.CallableReranker), not "
                                  f"{type(reranker).__name__}")
        if not isinstance(rerank_k, int) or isinstance(rerank_k, bool) or not 2 <= rerank_k <= 1000:
            raise ValidationError(f"rerank_k must be an integer between 2 and 1000, not {rerank_k!r}")
        if isinstance(rerank_weight, bool) or not isinstance(rerank_weight, (int, float)) \
                or not 0 <= float(rerank_weight) < float("inf"):
            raise ValidationError(f"rerank_weight must be a finite number >= 0, not {rerank_weight!r}")
        if rerank_scope not in RERANK_SCOPES:
            raise ValidationError(f"rerank_scope must be one of {', '.join(RERANK_SCOPES)}, not {rerank_scope!r}")
        self.reranker = reranker
        self.rerank_k = rerank_k
        self.rerank_weight = float(rerank_weight)
        self.rerank_scope = rerank_scope


def _json_manifest_load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptData(f"cube manifest {path} is unreadable: {exc}") from exc
    if not isinstance(data, dict) or "schema_version" not in data or "cube_id" not in data:
        raise CorruptData(f"cube manifest {path} is missing schema_version/cube_id")
    return data


def _resolve_index(store_url: str | None, chroma_url: str | None, index: str | None) -> str | None:
    """The Chroma server URL to use (None: embedded Chroma in the cube's folder)."""
    if index is not None and chroma_url is not None and index != chroma_url:
        raise ValidationError("give the vector index once: index= or chroma_url=")
    url = chroma_url if chroma_url is not None else index
    if url == "embedded":
        return None
    if store_url is not None and url is None:
        raise ValidationError(
            "a cube on PostgreSQL is shared by workers that must share its vector index too: pass "
            "index='http://host:port' (a Chroma server), or index='embedded' for a single process")
    if url is not None:  # a mistyped server URL is refused here, before anything is opened or created
        from .plaintext.vector import check_chroma_url

        check_chroma_url(url, "chroma_url" if chroma_url is not None else "index")
    return url


def _workdir(store_url: str, workdir: str | os.PathLike[str] | None) -> Path:
    """The local folder of a cube whose records live on a server: this worker's KV caches, adapters and
    scheduler state (and embedded Chroma with ``index='embedded'``)."""
    if workdir is not None:
        return Path(workdir)
    import hashlib

    from .records.postgres import redact_url

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "memos" / "stores" / hashlib.sha256(redact_url(store_url).encode()).hexdigest()[:16]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        dfd = os.open(str(path.parent), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass


class MemCube:
    """A memory cube in a folder. Create or open with ``MemCube(path)``.

    Parameters
    ----------
    path:
        The cube folder. Created (with a manifest) when it does not exist and ``create`` is true.
    embedder:
        ``None`` for the offline default (all-MiniLM-L6-v2), or any LangChain ``Embeddings``, LlamaIndex
        ``BaseEmbedding``, or callable ``list[str] -> list[list[float]]``. Its dimension must match the cube's.
    chroma_url:
        Use a Chroma server at this URL for the vector index instead of the embedded folder.
    clock:
        A zero-argument callable returning an aware ``datetime`` (tests inject a fake clock).
    actor:
        The principal this handle acts as when an operation is not given ``actor=`` (``"local"``). A new cube
        is owned by it. Every operation checks the acting principal's role on this cube (see
        :mod:`memos_core.governance`): share the cube (``cube.share("ann", "writer")``) before acting as
        someone else.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        embedder: Any = None,
        create: bool = True,
        cube_id: str | None = None,
        name: str | None = None,
        chroma_url: str | None = None,
        index: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        clock: Callable[[], datetime] | None = None,
        actor: str = "local",
        max_content_chars: int = MAX_CONTENT_CHARS_DEFAULT,
        retrieval: RetrievalConfig | None = None,
        vector_sync: Literal["immediate", "deferred"] | None = None,
        embed_sync: Literal["immediate", "deferred"] | None = None,
    ) -> None:
        from .places import check_place

        check_place(path, "MemCube")  # a wrong type, an empty path or a mistyped URL: refused before anything is created
        #: the system of record's URL when it is a server (PostgreSQL); None for a cube folder
        self.store_url: str | None = str(path) if is_store_url(path) else None
        chroma_url = _resolve_index(self.store_url, chroma_url, index)
        self.path = Path(path) if self.store_url is None else _workdir(self.store_url, workdir)
        self.vector_sync = _vector_sync_mode(vector_sync)
        self._index_degraded = False
        self._unapplied = 0  # rows written since the vector index was last brought up to date (deferred sync)
        self._count_lock = threading.Lock()  # guards _unapplied
        self._index_lock = threading.RLock()  # one apply at a time: read pending rows -> upsert -> mark applied
        self._flush_job: Any = None  # the deferred batch being applied on the background thread
        self._embed_sync = _sync_mode(embed_sync, "embed_sync", "MEMOS_EMBED_SYNC")
        self._waiting = 0  # rows this process committed without their embedding, not yet embedded (guarded by _count_lock)
        self._embed_lock = threading.Lock()  # one thread lists and claims waiting rows at a time
        self._embed_claimed: set[int] = set()  # rowids a thread is embedding now (guarded by _embed_lock)
        self._embed_done = threading.Condition(self._embed_lock)  # notified when a claim ends
        self._embed_job: Any = None  # waiting rows being embedded on the background thread
        self._clock = clock or utcnow
        self.actor = check_principal_id(actor, "actor")
        self.max_content_chars = max_content_chars
        self.retrieval = retrieval or RetrievalConfig()
        self._lock = threading.RLock()
        self._pid = forksafe.register(self)  # used in a forked child, it refuses (memos_core.forksafe)
        self._embedder: Embedder = resolve_embedder(embedder)
        _preload(self._embedder)  # the embedding model loads while the rest of the cube opens
        manifest_path = self.path / MANIFEST
        is_new = not manifest_path.exists()
        self.records: RecordStore
        if self.store_url is not None:  # the manifest lives in the store (meta), the folder holds local artefacts
            self.records = open_record_store(self.store_url)
            try:
                is_new = self.records.get_meta(MANIFEST_META_KEY) is None
                self.manifest = self._store_manifest(create, cube_id, name)
            except BaseException:
                self.records.close()
                raise
        elif manifest_path.exists():
            self.manifest = _json_manifest_load(manifest_path)
            ver = self.manifest.get("schema_version")
            if not isinstance(ver, int) or ver > CUBE_SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"cube {self.path} has schema version {ver!r}; this MemOS understands up to "
                    f"{CUBE_SCHEMA_VERSION}. Upgrade memos-langchain-llamaindex to open it."
                )
            if cube_id is not None and cube_id != self.manifest["cube_id"]:
                raise ValidationError(f"cube at {self.path} has id {self.manifest['cube_id']!r}, not {cube_id!r}")
            from .bundle import clean_stale_imports

            clean_stale_imports(self.path.parent, self.path.name)  # staging folders of a killed `memos import`
        else:
            if not create:
                raise NotFound(f"no cube at {self.path} (no {MANIFEST}); pass create=True or run `memos init`")
            if self.path.exists() and not self.path.is_dir():
                raise ValidationError(f"{self.path} exists and is not a folder; choose a new or empty folder for the cube")
            if self.path.exists() and any(self.path.iterdir()):
                raise ValidationError(f"{self.path} exists, is not empty and holds no cube manifest; choose an empty folder")
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file where a parent folder should be, no permission, ...
                raise ValidationError(f"cannot create the cube folder {self.path}: {exc.strerror or exc}") from None
            dim = self._embedder.dim
            self.manifest = {
                "schema_version": CUBE_SCHEMA_VERSION,
                "cube_id": cube_id or new_id(),
                "name": name or self.path.name,
                "created_at": self._now().isoformat(),
                "embedder": {"name": self._embedder.name, "dim": dim},
                "vector_index": {"backend": "chroma", "collection": "memos"},
            }
            _atomic_write(manifest_path, json.dumps(self.manifest, indent=2))
        self.cube_id: str = self.manifest["cube_id"]
        self.name: str = self.manifest.get("name", self.path.name)
        try:
            self._check_embedder()
        except BaseException:
            if self.store_url is not None:
                self.records.close()
            raise
        if self.store_url is None:
            self.records = SQLiteRecordStore(self.path / "records.sqlite3")
        if is_new:  # an empty vector index: no vector a plain delete left behind (memos_core/erasure.py)
            from .erasure import VECTOR_SCRUBBED_KEY

            with self.records.transaction() as c:
                self.records.set_meta(c, VECTOR_SCRUBBED_KEY, "1")
        collection = self.manifest.get("vector_index", {}).get("collection", "memos")
        if chroma_url is not None:
            index = ChromaVectorIndex(url=chroma_url, collection=f"{collection}-{self.cube_id}")
        else:
            index = ChromaVectorIndex(path=self.path / "chroma", collection=collection)
        self.index: ChromaVectorIndex = _IndexView(index, self)  # type: ignore[assignment]
        self.index_degraded = False
        #: callables ``(query, hits)`` told about every search (e.g. the MemScheduler's usage tracking)
        self.listeners: list[Callable[[str, list[SearchHit]], None]] = []
        self._index_checked = False  # before the erasure resumes: finishing an interrupted forget uses the index
        #: access control, policies, audit chain (tables live in the records database); it holds no cube
        self.governance = Governance(self.records, cube_id=self.cube_id, name=self.name, actor=self.actor,
                                     clock=self._clock, missing=self._missing)
        #: forget, purge's re-derivation and their after-commit work (memos_core/erasure.py)
        self._erasure = Erasure(self)
        self._erasure.resume()  # an erasure a dead process left unfinished, ids a down index missed
        # The vector index is checked against the records (repair_index) before its first use, not here: opening
        # the index costs a second or more (importing Chroma), and a scoped search on a small cube never needs it.
        # Rows a crash left pending are applied now, so the index is never behind what earlier runs acknowledged.
        if self.records.pending_vectors():
            self._ensure_index_checked()
        else:
            _warm_chroma()
            _warm_index(index)
        log.info("opened cube %s (%s) at %s", self.name, self.cube_id, self.path)

    def _ensure_index_checked(self) -> None:
        """Run the open-time consistency check of the vector index once, before its first use."""
        if self._index_checked:
            return
        with self._lock:
            if self._index_checked:
                return
            self._index_checked = True  # first: the check itself uses the index
            try:
                try:
                    self.repair_index()
                except IndexFilesDamaged:
                    # files a killed process left unreadable: the index is derived data, so its folder is moved
                    # aside (with a WARNING) and the check rebuilds it from the stored embeddings; once rebuilt,
                    # the old folder is deleted: it may hold vectors of memories forgotten since it was written,
                    # and forget must leave no derived copy (DESIGN: forget removes index rows)
                    inner = getattr(self.index, "_inner", self.index)
                    aside = inner.set_aside()
                    self.repair_index()
                    shutil.rmtree(aside, ignore_errors=True)
                    log.warning("vector index rebuilt from the records; the damaged folder %s was deleted", aside)
            except BackendUnavailable as exc:
                self._index_degraded = True
                log.warning("vector index unavailable (%s); lexical search still works, pending writes will be "
                            "applied when it returns", exc)

    # ------------------------------------------------------------------ a cube on a server (PostgreSQL)
    def _store_manifest(self, create: bool, cube_id: str | None, name: str | None) -> dict[str, Any]:
        """The manifest kept in the store's meta table (created there when missing and ``create``)."""
        where = f"cube {getattr(self.records, 'cube', '?')!r} at {getattr(self.records, 'url', self.store_url)}"
        raw = self.records.get_meta(MANIFEST_META_KEY)
        if raw is None:
            if not create:
                raise NotFound(f"no {where}; pass create=True or run `memos init --store URL`")
            fresh = {
                "schema_version": CUBE_SCHEMA_VERSION,
                "cube_id": cube_id or new_id(),
                "name": name or getattr(self.records, "cube", "default"),
                "created_at": self._now().isoformat(),
                "embedder": {"name": self._embedder.name, "dim": self._embedder.dim},
                "vector_index": {"backend": "chroma", "collection": "memos"},
            }
            raw = self.records.setdefault_meta(MANIFEST_META_KEY, json.dumps(fresh))  # concurrent creators agree
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise CorruptData(f"the manifest of {where} is unreadable: {exc}") from exc
        if not isinstance(data, dict) or "schema_version" not in data or "cube_id" not in data:
            raise CorruptData(f"the manifest of {where} is missing schema_version/cube_id")
        ver = data.get("schema_version")
        if not isinstance(ver, int) or ver > CUBE_SCHEMA_VERSION:
            raise SchemaVersionError(f"{where} has schema version {ver!r}; this MemOS understands up to "
                                     f"{CUBE_SCHEMA_VERSION}. Upgrade memos-langchain-llamaindex to open it.")
        if cube_id is not None and cube_id != data["cube_id"]:
            raise ValidationError(f"{where} has id {data['cube_id']!r}, not {cube_id!r}")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValidationError(f"cannot create the local folder {self.path}: {exc.strerror or exc}") from None
        return data

    def _save_manifest(self) -> None:
        if self.store_url is None:
            _atomic_write(self.path / MANIFEST, json.dumps(self.manifest, indent=2))
        else:
            with self.records.transaction() as c:
                self.records.set_meta(c, MANIFEST_META_KEY, json.dumps(self.manifest))

    # ------------------------------------------------------------------ basics
    def _now(self) -> datetime:
        now = self._clock()
        return to_utc(now) or utcnow()

    def _missing(self, item_id: str) -> NotFound:
        """The one NotFound for an unknown id; also what a caller gets for ids in a cube it may not read."""
        return NotFound(f"no memory with id {item_id!r} in cube {self.name!r}")

    def _authorize(self, actor: str | None, right: Right, op: str, item_id: str | None = None,
                   filter: Any = None) -> str:
        """Check that ``actor`` (default :attr:`actor`) holds ``right`` here and return it. Refusals are
        audited and raised as PermissionDenied (NotFound for an item in a cube the actor may not read)."""
        forksafe.check(self._pid, f"cube {self.name!r}")  # first: nothing of a parent's handle is used in a child
        actor = self.governance.authorize(actor, right, op, item_id, filter)
        # a forget/purge by another process since the last call: its vectors leave the scope cache now (the check
        # above read the erasure counter with the role; nothing more is read unless it moved)
        scope_cache.after_call(self.records)
        return actor

    def _check_embedder(self) -> None:
        want = self.manifest.get("embedder", {})
        dim = int(want.get("dim", 0))
        try:
            have = self._embedder.dim
        except MemOSError:
            raise
        if dim and have != dim:
            raise EmbeddingDimensionError(
                f"cube {self.path} was built with embedder {want.get('name')!r} of dimension {dim}; the embedder "
                f"given ({self._embedder.name!r}) has dimension {have}. Use the same embedder, or create a new cube "
                f"and migrate."
            )
        if want.get("name") and want.get("name") != self._embedder.name:
            log.warning("cube %s was embedded with %r; now using %r (same dimension). Run `memos reindex "
                        "--reembed` if the models differ.", self.path, want.get("name"), self._embedder.name)

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def index_degraded(self) -> bool:
        """True while the vector index is unreachable (dense search then scans stored embeddings exactly).
        Reading it first checks the index (once per open) and applies the vectors of deferred writes."""
        self._ensure_index_checked()
        self._flush_deferred()
        return self._index_degraded

    @index_degraded.setter
    def index_degraded(self, value: bool) -> None:
        self._index_degraded = bool(value)

    def close(self) -> None:
        if forksafe.inherited(self._pid):  # in a forked child: the parent's connections and threads, left alone
            return
        if self.records.closed:  # closed already: nothing is left to embed or apply
            return
        for job in (self._embed_job, self._flush_job):
            if job is not None:  # before the cube lock: the job may be waiting for a records lock held under it
                try:
                    job.result()
                except Exception:  # noqa: BLE001 - logged by the job
                    pass
        with self._lock:
            try:
                self._flush_deferred()
            except Exception:  # noqa: BLE001 - the rows stay pending in the records; the next open applies them
                log.exception("applying deferred vectors on close of cube %s failed", self.name)
            scope_cache.drop(self.records)  # no copy of a stored vector outlives the handle
            self.records.close()
            self.index.close()

    def __enter__(self) -> "MemCube":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemCube(path={str(self.path)!r}, cube_id={self.cube_id!r})"

    # ------------------------------------------------------------------ validation helpers
    def _check_content(self, content: Any, field: str = "content") -> str:
        if not isinstance(content, str):
            raise ValidationError(f"{field} must be a string, got {type(content).__name__}")
        check_text(content, field)
        if not content.strip():
            raise ValidationError("content is empty; a memory needs some text")
        if len(content) > self.max_content_chars:
            raise ValidationError(
                f"content has {len(content)} characters; the cube's limit is {self.max_content_chars}. "
                "Split it into several memories (or raise max_content_chars)."
            )
        if "\x00" in content:
            raise ValidationError("content contains a NUL character")
        return content

    def _build_item(self, spec: Any, defaults: Mapping[str, Any]) -> MemoryItem:
        from pydantic import ValidationError as PydanticError

        if isinstance(spec, MemoryItem):
            data = spec.model_dump()
        elif isinstance(spec, str):
            data = {"content": spec}
        elif isinstance(spec, Mapping):
            data = dict(spec)
        else:
            raise ValidationError(f"a memory must be a string, a dict or a MemoryItem, got {type(spec).__name__}")
        for key, val in defaults.items():
            if val is not None and data.get(key) is None:
                data[key] = val
        scope = data.get("scope") or {}
        if isinstance(scope, Scope):
            scope = scope.model_dump()
        if not isinstance(scope, Mapping):
            raise ValidationError(f"scope must be a dict or Scope, got {type(scope).__name__}")
        for axis in ("user_id", "agent_id", "session_id"):
            if axis in data:
                val = data.pop(axis)
                if val is not None:
                    scope = {**scope, axis: val}
        data["scope"] = scope
        self._check_content(data.get("content"))
        if data.get("index_text") is not None:
            self._check_content(data["index_text"], "index_text")
        now = self._now()
        data["cube_id"] = self.cube_id
        data["version"] = 1
        data["created_at"] = data.get("created_at") or now
        data["updated_at"] = now
        data["usage"] = {}
        data.setdefault("id", None)
        if not data["id"]:
            data["id"] = new_id()
        else:
            check_id(data["id"])  # non-empty, at most 128 characters, valid Unicode, no control characters
        state = data.get("state") or _S.ACTIVATED
        try:
            first = LifecycleState(state)
        except (ValueError, TypeError):
            raise ValidationError(f"unknown state {str(state)[:40]!r}; a new memory starts as generated, activated "
                                  "or archived") from None
        if first not in (_S.GENERATED, _S.ACTIVATED, _S.ARCHIVED):
            raise ValidationError("a new memory starts as generated, activated or archived")
        data["state"] = state
        try:
            item = MemoryItem.model_validate(data)
        except PydanticError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ValidationError(f"invalid memory field {loc!r}: {err['msg']}") from None
        if item.updated_at < item.created_at:  # a created_at given in the future: never updated before created
            item = item.model_copy(update={"updated_at": item.created_at})
        return item

    def _index_batch(self, batch: Sequence[tuple[int, str, np.ndarray]]
                     ) -> tuple[list[str], np.ndarray, list[dict[str, Any]]]:
        """``(ids, vectors, metadata)`` for the vector index of stored embeddings ``(rowid, item id, vector)``
        (as :meth:`RecordStore.all_embeddings` yields them), metadata from the records' index rows; rows
        forgotten meanwhile are left out."""
        rows = {r.rowid: r for r in self.records.index_rows([b[0] for b in batch])}
        keep = [b for b in batch if b[0] in rows]
        metas = [_index_meta(r.state, r.kind, r.user_id, r.agent_id, r.session_id) for r in (rows[b[0]] for b in keep)]
        vecs = np.stack([b[2] for b in keep]) if keep else np.zeros((0, 0), dtype=np.float32)
        return [b[1] for b in keep], vecs, metas

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        vecs = self._embedder.embed_documents(list(texts))
        if vecs.shape[0] != len(texts):
            raise ValidationError(f"embedder returned {vecs.shape[0]} vectors for {len(texts)} texts")
        dim = int(self.manifest["embedder"]["dim"])
        if len(texts) and vecs.shape[1] != dim:
            raise EmbeddingDimensionError(f"embedder returned dimension {vecs.shape[1]}, cube expects {dim}")
        return vecs

    def _embed_items(self, items: Sequence[MemoryItem], embed: Callable[[list[str]], np.ndarray] | None = None
                     ) -> tuple[np.ndarray, list[bytes]]:
        """The embeddings of ``items``' dense texts (:func:`_dense_texts`) and their topic vectors (see
        :meth:`_topic_blobs`), in one embedder call (``embed``: default :meth:`_embed`)."""
        dense = _dense_texts(items)
        topics = _topic_texts(items, dense)
        extra = [t for t in topics if t is not None]
        vecs = (embed or self._embed)(dense + extra)
        return vecs[:len(items)], _topic_blobs(topics, vecs[len(items):])

    def _topic_blobs(self, items: Sequence[MemoryItem], embedded_from: Sequence[str] | None = None) -> list[bytes]:
        """Each item's topic vector for :meth:`RecordStore.put_topics`: float32 bytes of the embedding of its own
        words (:func:`memos_core.reader.offline.topic_text`), or ``b""`` when those are the text its stored
        embedding was made from (``embedded_from``; default its dense text): the topic vector is then the
        embedding itself, nothing more is embedded. A caller that does not know which text an existing embedding
        came from passes the index texts: ``b""`` then only where the own words are the whole index text, which
        every rule embeds as it is."""
        topics = _topic_texts(items, embedded_from)
        extra = [t for t in topics if t is not None]
        return _topic_blobs(topics, self._embed(extra) if extra else np.zeros((0, 0), np.float32))

    def _fill_topics(self, batch: int = 256) -> int:
        """Store the topic vectors of stored embeddings that have none (an imported bundle, or a cube written
        before topic vectors existed, re-embedded); returns how many were stored."""
        done = 0
        skipped: set[int] = set()
        while True:
            rows = [(r, v) for r, v in self.records.missing_topics(batch + len(skipped)) if r not in skipped]
            if not rows:
                return done
            items = self.records.get_many_by_rowid([r for r, _ in rows])
            todo = [(r, v, items[r]) for r, v in rows if r in items and items[r].version == v]
            skipped.update(r for r, v in rows if not (r in items and items[r].version == v))
            if todo:
                # embeddings stored before topic vectors (or whose topic text was refused): made from the index text
                # by an older rule, or from the dense text; the index texts decide b"" safely for both
                blobs = self._topic_blobs([it for _, _, it in todo], [it.index_text or it.content for _, _, it in todo])
                with self.records.derived_transaction() as c:
                    self.records.put_topics(c, [(r, v, b) for (r, v, _), b in zip(todo, blobs)])
                done += len(todo)
                skipped.update(r for r, _, _ in todo)  # never twice, even if a writer changed one meanwhile

    # ------------------------------------------------------------------ vector index sync
    def _apply_pending(self) -> None:
        """Push pending rows to the vector index. Safe to call any time; idempotent."""
        self._ensure_index_checked()  # the first use of the index checks it (and applies what is pending)
        with self._index_lock:  # never taken before the cube lock by a thread that holds it
            with self._count_lock:
                taken = self._unapplied
            self._apply_pending_locked(taken)

    def _apply_pending_locked(self, taken: int) -> None:
        pending = self.records.pending_vectors()
        if not pending:
            with self._count_lock:
                self._unapplied = max(0, self._unapplied - taken)
            return
        # One query per 900 rows for exactly what the index needs (no MemoryItem per row, no query per
        # embedding): this runs after every write, so it is on the ingest path.
        rows = self.records.index_rows(pending)
        waiting = self._push_rows(rows)
        # Another worker (a process, or a thread of this one) may have written one of these rows and applied its
        # new vector between our read and our upsert, and cleared its pending mark: our upsert then replaced the
        # new vector with the old one. So read the rows again after the upsert and push whatever changed since the
        # first read (a row gone meanwhile, forgotten, is erased); a write committed after this re-read marks
        # its row pending again, and whoever applies that mark upserts after it. Repeated while rows keep
        # changing; rows still changing after that are marked pending again for the next apply.
        for _ in range(3):
            seen = {r.rowid: r for r in rows if r.rowid not in waiting}
            now = {r.rowid: r for r in self.records.index_rows(list(seen))} if seen else {}
            changed = [r for rowid, r in now.items() if r != seen[rowid]]
            # gone: forgotten meanwhile, or its SQLite rowid already reused by a new memory (another id)
            gone = [seen[rowid].id for rowid in seen if rowid not in now or now[rowid].id != seen[rowid].id]
            if gone:
                from .plaintext.vector import erase_rows

                erase_rows(self.index, gone)
            if not changed:
                break
            rows = changed
            waiting |= self._push_rows(rows)
        else:
            with self.records.transaction() as c:
                for r in rows:
                    self.records.mark_pending(c, r.rowid)
        self.records.mark_vectors_applied([r for r in pending if r not in waiting] if waiting else pending)
        self.index_degraded = False
        with self._count_lock:  # rows written meanwhile stay counted
            self._unapplied = max(0, self._unapplied - taken)

    def _push_rows(self, rows: Sequence[Any]) -> set[int]:
        """Upsert or erase these index rows (:meth:`RecordStore.index_rows`) in the vector index; returns the
        rowids left alone because their embedding is still to come (``embed_sync="deferred"``: their mark stays,
        and storing the embedding marks them again)."""
        indexed = {s.value for s in lifecycle.INDEXED}
        upsert_ids: list[str] = []
        upsert_vecs: list[np.ndarray] = []
        upsert_meta: list[dict[str, Any]] = []
        delete_ids: list[str] = []
        waiting: set[int] = set()
        for rowid, item_id, state, kind, user_id, agent_id, session_id, blob in rows:
            if blob is None and state in indexed:
                waiting.add(rowid)
                continue
            if blob is None or state not in indexed:
                delete_ids.append(item_id)
                continue
            upsert_ids.append(item_id)
            upsert_vecs.append(np.frombuffer(blob, dtype=np.float32))
            upsert_meta.append(_index_meta(state, kind, user_id, agent_id, session_id))
        if delete_ids:  # overwritten first: a plain delete leaves the vector in Chroma's files (purge, forget)
            from .plaintext.vector import erase_rows

            erase_rows(self.index, delete_ids)
        if upsert_ids:
            self.index.upsert(upsert_ids, np.stack(upsert_vecs), upsert_meta)
        log.debug("vector index of cube %s: %d upserted, %d removed", self.name, len(upsert_ids), len(delete_ids))
        return waiting

    def _sync_after_write(self) -> None:
        try:
            self._apply_pending()
        except BackendUnavailable as exc:
            self.index_degraded = True
            self._unapplied = 0  # still pending in the records: the next write, or the next open, applies them
            log.warning("write is durable in the records but the vector index is unavailable: %s", exc)

    def _flush_deferred(self) -> None:
        """Apply the vectors of writes whose index update was deferred (``vector_sync="deferred"``), waiting for
        a batch being applied in the background first; rows still waiting for their embedding
        (``embed_sync="deferred"``) are embedded first.

        Inside a records transaction of this thread (a search or an index inspection from a hook, or within
        ``records.transaction()``) a background job still running is not waited for: it may itself be waiting for
        that transaction's lock (a deadlock). Its rows stay pending -- search scores them exactly -- and the job
        finishes once the transaction ends."""
        owned = self.records.in_transaction()
        busy = False
        if not owned:  # embed beside the background thread rather than wait for it (see _embed_waiting)
            self._embed_waiting_or_warn("applying deferred vectors")
        for job in (self._embed_job, self._flush_job):
            if job is not None:
                if owned and not job.done():
                    busy = True
                    continue
                try:
                    job.result()
                except Exception:  # noqa: BLE001 - logged by the job; the rows are still pending in the records
                    pass
        self._embed_waiting_or_warn("applying deferred vectors")
        if busy:
            return
        if self._unapplied:
            with self._lock:
                if self._unapplied:
                    self._sync_after_write()

    def _flush_in_background(self) -> None:
        """Apply the deferred batch on a background thread: the Chroma upsert (the costly part) then runs on
        another core while this thread returns to the caller. Search meanwhile scores the pending rows exactly."""
        job = self._flush_job
        if job is not None and not job.done():
            return  # one batch at a time; rows written meanwhile go with the next
        self._ensure_index_checked()  # here, under the caller's cube lock: the job then never needs that lock

        def run() -> None:
            try:
                self._sync_after_write()
            except Exception:  # noqa: BLE001 - the rows stay pending: the next write, flush or open applies them
                log.exception("background vector-index update of cube %s failed", self.name)

        self._flush_job = _index_pool().submit(run)

    # ------------------------------------------------------------------ deferred embeddings (embed_sync="deferred")
    def _embed_waiting(self, batches: int | None = None, one_by_one: bool = False) -> int:
        """Embed the rows that were committed without their embedding (``embed_sync="deferred"``, by this process
        or another one, or by one that died) and store the vectors; returns how many were stored.

        Whatever needs every acknowledged write's vector calls it first: search, inspecting or rebuilding the
        vector index, export, close, and the open-time repair. A row changed meanwhile (updated, deleted,
        forgotten) keeps what that write stored (:meth:`RecordStore.put_embeddings` checks the text). At most
        ``batches`` batches of :data:`_EMBED_BATCH` rows (None: until none is left). ``one_by_one`` embeds each
        text in its own call. The background thread calls it inside :func:`memos_core.embedding.one_core`: the
        rows' index and topic texts go in length-sorted batches on one core, leaving the other to the caller.

        Several threads may call it at once: each claims a batch of rows no other thread holds (listing and
        claiming under ``_embed_lock``), embeds it outside the lock and stores it. A caller that needs the rows
        (a search) thus embeds beside the background thread, on one core of its own (:func:`one_core`), instead
        of waiting while a core idles; when every waiting row is claimed by
        another thread it waits for them, so it returns only once the rows it found are stored (or refused)."""
        if not self.records.embeds_later:
            return 0
        stored = 0
        done_batches = 0
        refused: dict[int, str] = {}  # rows whose text the embedder refused in this call: they stay waiting
        # A caller holding the records' transaction (a search inside a write's transaction) must not wait for the
        # lock or for rows another thread claimed: that thread (the background embedder) may be waiting for the
        # records. Then those rows stay waiting (found by the lexical leg) and are embedded once the transaction ends.
        wait = not self.records.in_transaction()
        while batches is None or done_batches < batches:
            with _lock_turn(self._embed_lock, wait) as mine:  # listing and claiming: one thread at a time
                if not mine:
                    break
                while True:
                    asked = _EMBED_BATCH + len(refused) + len(self._embed_claimed)
                    listed = self.records.waiting_embeddings(asked)
                    rows = [(r, t) for r, t in listed
                            if refused.get(r) != t and r not in self._embed_claimed][:_EMBED_BATCH]
                    if rows or not wait or not any(r in self._embed_claimed for r, _ in listed):
                        break
                    self._embed_done.wait()  # the rest is being embedded by another thread: until it is stored
                if not rows:
                    if not listed:
                        with self._count_lock:
                            self._waiting = 0
                    break
                beside = bool(self._embed_claimed)  # another thread is embedding now
                held = wait and any(r in self._embed_claimed for r, _ in listed)  # rows to wait for after these
                self._embed_claimed.update(r for r, _ in rows)
            try:
                # each row's topic text (its own words) rides in the same embedder call, keyed by -rowid
                items = self.records.get_many_by_rowid([r for r, _ in rows])
                with_item = [(r, items[r]) for r, _ in rows if r in items]
                topics = dict(zip((r for r, _ in with_item), _topic_texts([it for _, it in with_item])))
                # each row's dense text is cut from the indexed text it was listed with (put_embeddings below
                # still checks that text: a row changed meanwhile is skipped)
                dense = [(r, _dense_text(t, items[r].content, _speaker(items[r])) if r in items else t)
                         for r, t in rows]
                # a caller beside the background thread: one core of its own (the same batching and session)
                with one_core() if beside and not one_core_active() else nullcontext():
                    got = self._embed_rows(dense + [(-r, t) for r, t in topics.items() if t is not None], one_by_one)
                refused.update((r, t) for r, t in rows if r not in got)
                put_topics = [(r, items[r].version, b"" if topics[r] is None else
                               np.asarray(got[-r], dtype=np.float32).tobytes())
                              for r, _ in rows if r in got and r in topics and (topics[r] is None or -r in got)]
                # derived data: no fsync of its own (a lost embedding leaves the row waiting; it is embedded again)
                with self.records.derived_transaction() as c:
                    done = self.records.put_embeddings(c, [(r, t, got[r]) for r, t in rows if r in got])
                    stored_now = set(done)
                    self.records.put_topics(c, [row for row in put_topics if row[0] in stored_now])
                with self._count_lock:
                    self._waiting = max(0, self._waiting - len(rows))
                    self._unapplied += len(done)
            finally:
                with self._embed_done:  # the claim ends (stored, refused or failed): a thread waiting looks again
                    self._embed_claimed.difference_update(r for r, _ in rows)
                    self._embed_done.notify_all()
            stored += len(done)
            done_batches += 1
            if (len(listed) < asked or not done) and not held:  # none left after these, or every row changed
                break
        if stored:
            log.debug("cube %s: stored %d deferred embeddings", self.name, stored)
        return stored

    def _embed_rows(self, rows: Sequence[tuple[int, str]], one_by_one: bool) -> dict[int, np.ndarray]:
        """``{rowid: vector}`` for waiting ``(rowid, text)`` rows. A text the embedder refuses (an API's input
        limit, NaN from a model) must not keep the others waiting: when a batch fails, each text is embedded in
        its own call and the refused ones are left out (logged; they stay waiting, found by the lexical index,
        and are tried again later). When the embedder itself is down (a short probe text fails too) or every
        text fails, its error is raised: an outage costs one more call, not one per text."""
        probed = not one_by_one
        if not one_by_one:
            try:
                return dict(zip((r for r, _ in rows), self._embed([t for _, t in rows])))
            except MemOSError:
                if len(rows) == 1:
                    raise
                self._embed(["embedding probe"])  # raises in an outage
        got: dict[int, np.ndarray] = {}
        first: MemOSError | None = None
        for rowid, text in rows:
            try:
                got[rowid] = self._embed([text])[0]
            except MemOSError as exc:
                if not probed:
                    probed = True
                    self._embed(["embedding probe"])  # raises in an outage
                first = first or exc
                log.warning("cube %s: the embedder refused the text of a memory waiting for its embedding (row "
                            "%d): %s; lexical search finds it, and it is tried again later", self.name, rowid, exc)
        if not got and first is not None:
            raise first
        return got

    def _embed_in_background(self) -> None:
        """Embed waiting rows on the background thread (one job at a time per cube), then hand their vectors to
        the deferred vector-index batch. A failure leaves the rows waiting: the next write, search or open retries."""
        job = self._embed_job
        if job is not None and not job.done():
            return

        def run() -> None:
            try:
                # every waiting row's index and topic texts in length-sorted batches on one core (the default
                # embedder's one-thread session): the other core stays with the caller's next write
                with one_core():
                    self._embed_waiting()
            except Exception as exc:  # noqa: BLE001 - the rows stay waiting in the records
                if embedder_down(exc):  # an outage: one WARNING for all of it, not a traceback per write
                    embedder_failed(self._embedder, exc)
                else:
                    log.exception("background embedding of cube %s failed", self.name)

        self._embed_job = _embed_pool().submit(run)

    def _embed_before_search(self) -> None:
        """Search sees every acknowledged write: rows still waiting for their embedding are embedded first (an
        embedder failure is logged; such rows are then found by the lexical index only, until it recovers)."""
        self._embed_waiting_or_warn("a search")

    def _embed_waiting_or_warn(self, before: str) -> None:
        """:meth:`_embed_waiting`, with an embedder failure logged instead of raised: the rows stay waiting (and
        marked pending) in the records, and the next search, write, close or open tries again."""
        try:
            self._embed_waiting()
        except MemOSError as exc:
            if embedder_down(exc):  # an outage: one WARNING for all of it (embedder_failed), not one per call
                embedder_failed(self._embedder, exc)
                return
            log.warning("cube %s: could not embed the rows waiting for their embedding before %s: %s",
                        self.name, before, exc)

    def _applied_but_waiting(self, pending: list[int]) -> list[int]:
        """``pending`` without the rows still waiting for their embedding (their mark must stay)."""
        if not self.records.embeds_later:
            return pending
        waiting = {r for r, _ in self.records.waiting_embeddings()}
        return [r for r in pending if r not in waiting] if waiting else pending

    def repair_index(self) -> dict[str, int]:
        """Bring the vector index in line with the records (run once per open, before the index is first used).

        Applies pending rows left by a crash, then compares the index with the records' embeddings and
        re-adds/removes whatever differs. Returns counts of what was fixed.
        """
        with self._lock:
            self._embed_waiting_or_warn("the index check")  # rows a dead process left waiting (embed_sync)
            pending = len(self.records.pending_vectors())
            self._apply_pending()
            fixed = {"pending": pending, "added": 0, "removed": 0}
            expected = self.records.embedding_count()
            if self.index.count() != expected:
                fixed.update(self._resync_full())
            self.records.flush()
            if pending or fixed["added"] or fixed["removed"]:
                log.info("repaired the vector index of cube %s: %d pending applied, %d added, %d removed",
                         self.name, pending, fixed["added"], fixed["removed"])
            return fixed

    def _resync_full(self) -> dict[str, int]:
        have = self.index.ids()
        want: set[str] = set()
        added = 0
        for batch in self.records.all_embeddings():
            ids = [b[1] for b in batch]
            want.update(ids)
            missing = [b for b in batch if b[1] not in have]
            if missing:
                ids, vecs, metas = self._index_batch(missing)
                if ids:
                    self.index.upsert(ids, vecs, metas)
                added += len(ids)
        extra = sorted(have - want)
        from .plaintext.vector import erase_rows

        erase_rows(self.index, extra)
        return {"added": added, "removed": len(extra)}

    def reindex(self, *, reembed: bool = False, batch_size: int = 256, progress: bool | None = None,
                actor: str | None = None) -> dict[str, int]:
        """Rebuild the vector index from the records (needs **administer**).

        With ``reembed`` every indexed memory is embedded again with the current embedder (use after
        changing the embedding model); otherwise the stored embeddings are reused.
        """
        with self._write("reindex", actor) as w:
            actor = w.authorize(Right.ADMINISTER)
            with self._lock:
                if not reembed:
                    self._embed_waiting()  # every indexed row has its embedding before the rebuild reads them
                if reembed:
                    rows = [(self.records.rowid(it.id), it) for it in self.records.iter_items(states=lifecycle.INDEXED)]
                    it_range: Iterable[int] = progress_iter(range(0, len(rows), batch_size), "re-embedding",
                                                            unit="batch", progress=progress, minimum=2)
                    for s in it_range:
                        chunk = rows[s:s + batch_size]
                        vecs, topics = self._embed_items([it for _, it in chunk])
                        with w.commit(sync=None) as c:  # the index is rebuilt below
                            for (rowid, it), vec in zip(chunk, vecs):
                                assert rowid is not None
                                self.records.reindex_row(c, rowid, it, vec)
                            self.records.put_topics(c, [(rowid, it.version, b)  # type: ignore[misc]
                                                        for (rowid, it), b in zip(chunk, topics)])
                            w.record(c, time.time(), {"reembedded": len(chunk)})
                    self.manifest["embedder"] = {"name": self._embedder.name, "dim": self._embedder.dim}
                    self._save_manifest()
                self.index.reset()
                total = 0
                for batch in self.records.all_embeddings():
                    ids, vecs, metas = self._index_batch(batch)
                    if ids:
                        self.index.upsert(ids, vecs, metas)
                    total += len(ids)
                self.records.mark_vectors_applied(self._applied_but_waiting(self.records.pending_vectors()))
                self.records.flush()
                self.index_degraded = False
                self._unapplied = 0
                if not reembed:  # a re-embedding recorded each of its chunks above
                    with w.commit(sync=None) as c:
                        w.record(c, time.time(), {"indexed": total})
                log.info("rebuilt the vector index of cube %s: %d vectors%s", self.name, total,
                         " (re-embedded)" if reembed else "")
                return {"indexed": total}

    def compact_index(self, *, actor: str | None = None) -> dict[str, int]:
        """Compact the vector index (needs **administer**): rebuild it from the records' stored embeddings so
        that no vector of an erased memory is left in any file of the embedded Chroma folder. Forget and purge
        scrub their vectors in place; this is only needed when they recorded a pending compaction
        (:meth:`vector_compaction_pending`: a large cube written before in-place scrubbing, or a Chroma release
        where it is not verified), and costs the whole index (about 1-2 s per 1,000 vectors). Batch it: run it
        once after many forgets. Returns ``{"indexed": n, "erased_ids": ids that were waiting}``."""
        with self._write("compact_index", actor) as w:
            actor = w.authorize(Right.ADMINISTER)
            with self._lock:
                waiting = self.vector_compaction_pending()
                n = self._compact_index()
                with w.commit(sync=None) as c:
                    w.record(c, time.time(), {"indexed": n, "erased_ids": waiting})
                return {"indexed": n, "erased_ids": waiting}

    def vector_compaction_pending(self) -> int:
        """How many erased memories' vectors may still be in the vector index's files, waiting for
        :meth:`compact_index` (0: none; their text is gone from every file in any case)."""
        from .erasure import compaction_pending

        return compaction_pending(self)

    def _compact_index(self) -> int:
        """Rebuild the vector index from the records (no authorization: forget/purge call it when it is cheap)."""
        from .erasure import VECTOR_COMPACTION_KEY, VECTOR_SCRUBBED_KEY

        with self._lock:
            self._embed_waiting_or_warn("a compaction")  # rows still waiting keep their mark (below)

            def batches() -> Iterable[tuple[list[str], np.ndarray, list[dict[str, Any]]]]:
                for batch in self.records.all_embeddings():
                    ids, vecs, metas = self._index_batch(batch)
                    if ids:
                        yield ids, vecs, metas

            compact = getattr(self.index, "compact", None)
            if compact is not None:
                n = compact(batches())
            else:  # an index with only the basic methods (an in-memory stand-in): refill it
                self.index.reset()
                n = 0
                for ids, vecs, metas in batches():
                    self.index.upsert(ids, vecs, metas)
                    n += len(ids)
            self.records.mark_vectors_applied(self._applied_but_waiting(self.records.pending_vectors()))
            self.records.flush()
            with self.records.transaction() as c:
                self.records.set_meta(c, VECTOR_COMPACTION_KEY, "")
                self.records.set_meta(c, VECTOR_SCRUBBED_KEY,
                                      "1" if getattr(self.index, "scrubs_in_place", False) else "")
            self.index_degraded = False
            self._unapplied = 0
            log.info("compacted the vector index of cube %s: %d vectors", self.name, n)
            return n

    # ------------------------------------------------------------------ writes
    def _write(self, op: str, actor: str | None, item_id: str | None = None,
               detail: Mapping[str, Any] | None = None) -> "_Write":
        """The pipeline of every write method (``with self._write("update", actor, item_id) as w: ...``): the
        attempt is audited, ``w.authorize()`` checks the right, ``w.commit()`` is the one records transaction
        (under the cube lock) in which ``w.record()`` appends the audit event, and the vector index is synced
        after the commit. See :class:`_Write`."""
        return _Write(self, op, actor, item_id, detail)

    @property
    def embed_sync(self) -> str:
        """``"deferred"`` when a small add commits without its embedding and the background thread embeds it
        right after (``embed_sync="deferred"``, MemOS's default; needs ``vector_sync="deferred"`` and a record
        store that supports it, :attr:`RecordStore.embeds_later`: SQLite and PostgreSQL do; else
        ``"immediate"``: the add embeds before it commits). On a store shared by workers, any worker's search
        (or open) embeds the rows another worker left waiting.

        What holds either way: an add is durable when it returns; search embeds any row still waiting before it
        scores (it sees every acknowledged write, dense included); inspecting the vector index, reindex, export
        and close embed them too; a crash leaves them waiting in the records (marked pending, with their text),
        and the next open embeds them. At most :data:`_EMBED_BACKLOG` rows of a process wait at a time; past
        that an add embeds inline again."""
        if self._embed_sync == "deferred" and self.vector_sync == "deferred" and self.records.embeds_later:
            return "deferred"
        return "immediate"

    def _defer_embedding(self, n: int) -> bool:
        """Whether an add of ``n`` memories commits without their embeddings (see :attr:`embed_sync`)."""
        if n > _EMBED_BATCH or self.embed_sync != "deferred":
            return False
        with self._count_lock:
            return self._waiting + n <= _EMBED_BACKLOG

    def _after_add(self, rows: int, waiting: bool) -> None:
        """After an add's commit (under the cube lock): the vector index now, or a batch later; rows committed
        without their embedding go to the background thread first."""
        if self.vector_sync == "immediate":
            self._sync_after_write()
            return
        with self._count_lock:
            if waiting:
                self._waiting += rows
            else:
                self._unapplied += rows
            due = self._unapplied >= _DEFER_MAX
            behind = self._waiting > 0
        if behind:  # also after an inline add: rows may still wait (a full backlog, a job that just ended)
            self._embed_in_background()
        if due:
            self._flush_in_background()

    def add(self, content: str | Mapping[str, Any] | MemoryItem, *, kind: MemoryKind | str | None = None,
            user_id: str | None = None, agent_id: str | None = None, session_id: str | None = None,
            event_time: Any = None, expires_at: Any = None, ttl: timedelta | float | None = None,
            tags: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None,
            provenance: Provenance | Mapping[str, Any] | None = None, confidence: float | None = None,
            index_text: str | None = None, state: LifecycleState | str | None = None, id: str | None = None,
            actor: str | None = None) -> MemoryItem:
        """Add one memory and return it (durable on return).

        ``content`` may be a string (with the keyword fields) or a dict / :class:`MemoryItem` with the same
        fields. ``ttl`` (seconds or a timedelta) sets ``expires_at`` relative to now.
        """
        with self._write("add", actor, id):  # add_many below authorizes and commits (a nested write)
            spec: dict[str, Any]
            if isinstance(content, str):
                spec = {"content": content}
            elif isinstance(content, MemoryItem):
                spec = content.model_dump()
            elif isinstance(content, Mapping):
                spec = dict(content)
            else:
                raise ValidationError(f"content must be a string, dict or MemoryItem, got {type(content).__name__}")
            if isinstance(tags, (str, bytes)) or (tags is not None and not isinstance(tags, Iterable)):
                # list("home") would store the tags ['e', 'h', 'm', 'o']
                raise ValidationError(f"tags must be a list of strings, not {type(tags).__name__} (e.g. tags=['home'])")
            overrides = dict(kind=kind, user_id=user_id, agent_id=agent_id, session_id=session_id, event_time=event_time,
                             expires_at=expires_at, tags=list(tags) if tags is not None else None, metadata=metadata,
                             provenance=provenance, confidence=confidence, index_text=index_text, state=state, id=id)
            for k, v in overrides.items():
                if v is not None:
                    spec[k] = v
            if ttl is not None:
                spec["ttl"] = ttl
            return self.add_many([spec], actor=actor)[0]

    def add_many(self, memories: Sequence[str | Mapping[str, Any] | MemoryItem], *, actor: str | None = None,
                 progress: bool | None = None, **defaults: Any) -> list[MemoryItem]:
        """Add several memories in one transaction (all or nothing); embeddings are computed in one batch.

        ``defaults`` (e.g. ``user_id=...``, ``kind=...``) apply to every memory that does not set the field.
        ``progress``: a progress bar while a large batch is embedded (default: in a terminal, unless
        ``MEMOS_PROGRESS=0``; see :mod:`memos_core.log`).

        With ``embed_sync="deferred"`` (see :attr:`embed_sync`) a small add commits without its embedding, which
        the background thread computes right after; search embeds whatever is still waiting first, so it sees
        the write at once.
        """
        with self._write("add", actor, None, _count(memories)) as w:
            if isinstance(memories, (str, bytes)) or not isinstance(memories, Sequence):
                raise ValidationError("add_many expects a list of memories")
            unknown = set(defaults) - {"kind", "user_id", "agent_id", "session_id", "event_time", "expires_at", "tags",
                                       "metadata", "provenance", "confidence", "state", "ttl"}
            if unknown:
                raise ValidationError(f"add_many: unknown default field(s) {sorted(unknown)}")
            actor = w.authorize()
            items: list[MemoryItem] = []
            now = self._now()
            seen: set[str] = set()
            fields = {k: v for k, v in defaults.items() if k != "ttl"}
            fresh = _new_ids(len(memories))  # the ids of memories that bring none, from one urandom call
            for spec, fresh_id in zip(memories, fresh):
                ttl = None
                if isinstance(spec, Mapping):
                    spec = dict(spec)
                    ttl = spec.pop("ttl", None)
                if ttl is None:
                    ttl = defaults.get("ttl")
                item = self._build_item(spec, {**fields, "id": fresh_id})
                if ttl is not None:
                    seconds = ttl_seconds(ttl)  # positive, finite, at most MAX_TTL_SECONDS
                    try:
                        expires = now + timedelta(seconds=seconds)
                    except OverflowError:
                        raise ValidationError(f"ttl of {seconds:.3g} s ends after the year 9999") from None
                    item = item.model_copy(update={"expires_at": expires})
                if item.id in seen:
                    raise ValidationError(f"duplicate id {item.id!r} in one add_many call")
                seen.add(item.id)
                items.append(item)
            if not items:
                return []
            # forged principals refused, default TTL, redaction policy (memos_core.governance), before embedding
            items = [it.model_copy(update={"created_by": actor}) for it in self.governance.prepare_add(items, actor, now)]
            later = self._defer_embedding(len(items))
            vecs: Sequence[np.ndarray | None] = [None] * len(items)
            topics: list[bytes] = []
            if not later:  # index texts and topic texts in one embedder call
                vecs, topics = self._embed_items(items, lambda texts: self._embed_bulk(texts, progress))
            # one transaction: the rows, their first versions, transitions and "add" audit records (add_items)
            with w.commit(sync="add", rows=len(items), waiting=later) as c:
                indexed = [it.state in lifecycle.INDEXED for it in items]
                rowids = self.records.add_items(c, items, vecs, indexed, actor, now.timestamp())
                if topics:
                    self.records.put_topics(c, [(r, it.version, b) for r, it, b, i
                                                in zip(rowids, items, topics, indexed) if i])
            if log.isEnabledFor(logging.INFO):
                log.info("added %d memories to cube %s by %s: %s", len(items), self.name, actor,
                         ", ".join(it.id for it in items[:20]) + (" ..." if len(items) > 20 else ""))
            return items

    def _embed_bulk(self, texts: list[str], progress: bool | None) -> np.ndarray:
        """:meth:`_embed` in batches with a progress bar for a large ingest (see :mod:`memos_core.log`)."""
        step = _EMBED_CHUNK
        with Progress(len(texts), "embedding memories", unit="memory", progress=progress) as bar:
            if not bar.shown or len(texts) <= step:
                out = self._embed(texts)
                bar.update(len(texts))  # one batch: the bar still ends full, not at 0/N
                return out
            parts = []
            for s in range(0, len(texts), step):
                parts.append(self._embed(texts[s:s + step]))
                bar.update(len(parts[-1]))
            return np.concatenate(parts)

    def _load(self, item_id: str) -> tuple[int, MemoryItem]:
        if not isinstance(item_id, str) or not item_id:
            raise ValidationError("item id must be a non-empty string")
        check_text(item_id, "item id")
        got = self.records.load(item_id)  # (rowid, item): one statement on a server
        if got is None:
            raise self._missing(item_id)
        return got

    def update(self, item_id: str, content: str | None = None, *, reason: str | None = None,
               actor: str | None = None, expected_version: int | None = None, **fields: Any) -> MemoryItem:
        """Write a new version of a memory. Only the fields given change; history keeps every version.

        ``expected_version`` makes the update conditional (optimistic concurrency): if the memory has moved
        on, :class:`Conflict` is raised and nothing changes. New ``content`` without a new ``index_text``
        re-derives the index text: the old content inside it is replaced by the new one (context such as an
        "in reply to ..." suffix stays), or, where that is not possible, the new content is indexed alone.
        """
        with self._write("update", actor, item_id) as w:
            unknown = set(fields) - _UPDATABLE_FIELDS
            if unknown:
                raise ValidationError(f"update: unknown or read-only field(s) {sorted(unknown)}; "
                                      f"updatable: {sorted(_UPDATABLE_FIELDS)}")
            if content is not None:
                fields["content"] = content
            if not fields:
                raise ValidationError("update: nothing to change")
            actor = w.authorize()
            with self._lock:
                rowid, item = self._load(item_id)
                if item.state not in lifecycle.WRITABLE:
                    raise Conflict(f"memory {item_id!r} is {item.state.value} and cannot be updated"
                                   + (" (lift the hold first)" if item.state == _S.FROZEN else ""))
                if expected_version is not None and expected_version != item.version:
                    raise Conflict(f"memory {item_id!r} is at version {item.version}, not {expected_version}")
                new = self.governance.prepare_update(item, self._revise(item, fields), actor)
                vecs, topics = self._embed_items([new])
                vec = vecs[0]
                with w.commit() as c:
                    # Read again inside the write transaction: a writer that deleted, froze or archived the memory
                    # after we read it must not have its state overwritten by ours (replace_item checks the
                    # version; a state change keeps the version).
                    now_item = self.records.get(item_id)
                    if now_item is None or now_item.state != item.state:
                        raise Conflict(f"memory {item_id!r} was changed by another writer (it is now "
                                       f"{'gone' if now_item is None else now_item.state.value}); read it again")
                    self.records.replace_item(c, rowid, new, vec, new.state in lifecycle.INDEXED, True, actor,
                                              reason or "update")
                    if new.state in lifecycle.INDEXED:
                        self.records.put_topics(c, [(rowid, new.version, topics[0])])
                    w.record(c, new.updated_at.timestamp(), {"version": new.version, "reason": reason})
                return new

    def _revise(self, item: MemoryItem, fields: Mapping[str, Any]) -> MemoryItem:
        from pydantic import ValidationError as PydanticError

        data = item.model_dump()
        fields = dict(fields)
        new_content = fields.get("content")
        if (isinstance(new_content, str) and "index_text" not in fields and item.index_text is not None
                and new_content != item.content):
            # New content re-derives what retrieval indexes: an index text that holds the old content once with
            # context around it (an episode's date prefix, an "in reply to ..." suffix) gets the new content in
            # its place; any other index text is dropped (the new content is indexed). So the old text no longer
            # finds the memory, and the new text does.
            old = item.index_text
            derived = old.replace(item.content, new_content) if old.count(item.content) == 1 else None
            if derived is not None and len(derived) > self.max_content_chars:
                derived = None
            fields["index_text"] = derived
        for k, v in fields.items():
            if k in ("content", "index_text") and v is not None:
                self._check_content(v, k)
            if k == "tags" and isinstance(v, (str, bytes)):
                raise ValidationError(f"tags must be a list of strings, not {type(v).__name__} (e.g. tags=['home'])")
            data[k] = v.model_dump() if hasattr(v, "model_dump") else v
        data["version"] = item.version + 1
        data["updated_at"] = self._now()
        try:
            return MemoryItem.model_validate(data)
        except PydanticError as exc:
            err = exc.errors()[0]
            raise ValidationError(f"invalid memory field {'.'.join(map(str, err['loc']))!r}: {err['msg']}") from None

    def transition(self, item_id: str, state: LifecycleState | str, *, reason: str | None = None,
                   actor: str | None = None) -> MemoryItem:
        """Move a memory to another lifecycle state (checked by :mod:`memos_core.lifecycle`)."""
        with self._write("transition", actor, item_id, {"to": _state_value(state)}) as w:
            try:
                target = LifecycleState(state)
            except ValueError:
                raise ValidationError(f"unknown state {state!r}; one of {[s.value for s in LifecycleState]}") from None
            if target == _S.PURGED:
                return self.purge(item_id, reason=reason, actor=actor)
            actor = w.authorize()
            with self._lock:
                rowid, item = self._load(item_id)
                if _S.FROZEN in (item.state, target):  # placing or lifting a legal hold
                    w.authorize(Right.ADMINISTER, "legal_hold")
                lifecycle.check_transition(item.state, target)
                now = self._now()
                new = item.model_copy(update={"state": target, "updated_at": now})
                was_indexed = item.state in lifecycle.INDEXED
                will_index = target in lifecycle.INDEXED
                vec = None
                topic: list[tuple[int, int, bytes]] = []
                if will_index and not was_indexed:
                    vec = self.records.embedding(rowid)
                    if vec is None:
                        vecs, topics = self._embed_items([item])
                        vec, topic = vecs[0], [(rowid, new.version, topics[0])]
                with w.commit() as c:
                    self.records.set_state(c, rowid, item_id, item.state, target, now.timestamp(), actor, reason)
                    if was_indexed and not will_index:
                        self.records.unindex(c, rowid)
                    elif will_index and not was_indexed:
                        self.records.reindex_row(c, rowid, new, vec)
                        if topic:
                            self.records.put_topics(c, topic)
                    elif will_index:  # metadata in the vector index carries the state
                        self.records.mark_pending(c, rowid)
                    w.record(c, now.timestamp(), {"from": item.state.value, "to": target.value, "reason": reason})
                return new

    def delete(self, item_id: str, *, reason: str | None = None, actor: str | None = None) -> MemoryItem:
        """Tombstone a memory: hidden from search and get (unless asked), kept with its history until purged."""
        with self._write("delete", actor, item_id) as w:
            actor = w.authorize()
            with self._lock:
                _, item = self._load(item_id)
                if item.state == _S.FROZEN:
                    raise Conflict(f"memory {item_id!r} is frozen (legal hold) and cannot be deleted until unfrozen")
                if item.state in (_S.DELETED, _S.PURGED):
                    raise Conflict(f"memory {item_id!r} is already {item.state.value}")
                return self.transition(item_id, _S.DELETED, reason=reason or "delete", actor=actor)

    def restore(self, item_id: str, *, reason: str | None = None, actor: str | None = None) -> MemoryItem:
        """Undo a delete (tombstone -> activated)."""
        with self._write("restore", actor, item_id) as w:
            actor = w.authorize()
            return self.transition(item_id, _S.ACTIVATED, reason=reason or "restore", actor=actor)

    def purge(self, item_id: str, *, reason: str | None = None, actor: str | None = None) -> MemoryItem:
        """Erase the content of a tombstoned memory and every version of it (irreversible).

        The item id, its lifecycle record and the event log stay (they hold no content). Needs
        **administer**; see also :meth:`forget`, which removes the item entirely.
        """
        with self._write("purge", actor, item_id) as w:
            actor = w.authorize(Right.ADMINISTER)
            with self._lock:
                rowid, item = self._load(item_id)
                lifecycle.check_transition(item.state, _S.PURGED)
                now = self._now()
                with w.commit() as c:
                    # neighbours whose index text quotes this memory are re-derived first (memos_core/erasure.py)
                    plan = self._erasure.plan_purge(c, item)
                    self.records.erase_content(c, rowid, item_id)
                    self.records.set_state(c, rowid, item_id, item.state, _S.PURGED, now.timestamp(), actor, reason)
                    detail: dict[str, Any] = {"reason": reason}
                    if plan.rederive:
                        detail["rederived"] = sorted(plan.rederive)
                    w.record(c, now.timestamp(), detail)
                self.records.optimize_lexical()
                self._erasure.finish_unless_deferred()
                got = self.records.get(item_id)
                assert got is not None
                return got

    def rollback(self, item_id: str, version: int, *, reason: str | None = None,
                 actor: str | None = None) -> MemoryItem:
        """Restore the content of an earlier version as a *new* version (history is never rewritten)."""
        asked = {"version": version if type(version) is int else None}
        with self._write("rollback", actor, item_id, asked) as w:
            if type(version) is not int or not -(2**62) < version < 2**62:  # 0 or -1: NotFound below
                raise ValidationError(f"version must be a whole number, not {str(version)[:40]!r}")
            actor = w.authorize()
            with self._lock:
                _, item = self._load(item_id)
                old = self.records.version(item_id, version)
                if old is None:
                    raise NotFound(f"memory {item_id!r} has no version {version}; it has 1..{item.version}")
                if item.state == _S.PURGED:
                    raise Conflict(f"memory {item_id!r} was purged; its versions hold no content")
                fields = {"content": old.content, "index_text": old.index_text, "kind": old.kind, "tags": old.tags,
                          "metadata": old.metadata, "event_time": old.event_time, "valid_until": old.valid_until,
                          "confidence": old.confidence}
                return self.update(item_id, reason=reason or f"rollback to v{version}", actor=actor, **fields)

    # ------------------------------------------------------------------ reads
    def get(self, item_id: str, *, include_deleted: bool = False, actor: str | None = None) -> MemoryItem:
        """The current version of a memory. Tombstoned/purged ones raise :class:`NotFound` unless asked for
        (``include_deleted`` needs the **history** right)."""
        actor = self._authorize(actor, Right.HISTORY if include_deleted else Right.READ, "get", item_id)
        _, item = self._load(item_id)
        if not include_deleted and item.state in (_S.DELETED, _S.PURGED):
            raise NotFound(f"memory {item_id!r} was {item.state.value}; pass include_deleted=True to see it")
        self.governance.audit_read(actor, "get", [item_id])
        return item

    def lookup(self, item_id: str, *, actor: str | None = None) -> MemoryItem | None:
        """The item in any state, or ``None`` when the id is unknown or forgotten (for staleness checks of
        artefacts; needs **read**, raises PermissionDenied otherwise; not read-audited)."""
        self._authorize(actor, Right.READ, "lookup")
        check_text(item_id, "item id")
        return self.records.get(item_id)

    def history(self, item_id: str, *, actor: str | None = None) -> list[MemoryVersion]:
        """Every version of a memory, oldest first (needs **history**)."""
        actor = self._authorize(actor, Right.HISTORY, "history", item_id)
        self._load(item_id)
        out = self.records.versions(item_id)
        self.governance.audit_read(actor, "history", [item_id])
        return out

    def transitions(self, item_id: str, *, actor: str | None = None) -> list[Transition]:
        """Every lifecycle transition of a memory, oldest first (who, when, why; needs **history**)."""
        self._authorize(actor, Right.HISTORY, "transitions", item_id)
        self._load(item_id)
        return self.records.transitions(item_id)

    def events(self, item_id: str | None = None, limit: int | None = None, *,
               actor: str | None = None) -> list[dict[str, Any]]:
        """The hash-chained audit log (optionally for one item; needs **administer**)."""
        self._authorize(actor, Right.ADMINISTER, "audit.read")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or not 0 <= limit < 2**62):
            raise ValidationError(f"limit must be an integer >= 0 (or None for all), not {str(limit)[:40]!r}")
        if item_id is not None:
            check_text(item_id, "item id")
        return self.records.events(item_id, limit)

    def count(self, *, include_deleted: bool = False, actor: str | None = None) -> int:
        """How many memories the cube holds: live ones (not deleted, purged or expired: expired ones are hidden
        from get/list/search even before a retention sweep handles them), or with ``include_deleted`` every
        stored row, tombstones and expired ones included (needs **history**)."""
        self._authorize(actor, Right.HISTORY if include_deleted else Right.READ, "count")
        if include_deleted:
            return self.records.count()
        live = [s for s in LifecycleState if s not in (_S.DELETED, _S.PURGED)]
        return self.records.count(live) - len(self.records.expired_ids(self._now().timestamp(), live))

    def list(self, filter: SearchFilter | Mapping[str, Any] | None = None, *, limit: int = 100, offset: int = 0,
             order: Literal["created", "event_time"] = "created", actor: str | None = None) -> list[MemoryItem]:
        """Memories matching a filter (no query), oldest first by creation or event time."""
        actor = self._authorize(actor, Right.READ, "list", filter=filter)
        f = SearchFilter.coerce(filter)
        for name, val in (("limit", limit), ("offset", offset)):
            if not isinstance(val, int) or isinstance(val, bool) or not 0 <= val < 2**62:
                raise ValidationError(f"{name} must be an integer >= 0, not {str(val)[:40]!r}")
        if order not in ("created", "event_time"):
            raise ValidationError(f"order must be 'created' or 'event_time', not {str(order)[:40]!r}")
        cf = self.records.compile_filter(f, self._states(f), self._now().timestamp())
        rowids = self.records.list_rowids(cf, order, limit, offset)
        got = self.records.get_many_by_rowid(rowids)
        out = [got[r] for r in rowids if r in got]
        self.governance.audit_read(actor, "list", [it.id for it in out])
        return out

    def distinct_metadata(self, key: str, filter: SearchFilter | Mapping[str, Any] | None = None, *,
                          limit: int = 100_000, actor: str | None = None) -> list[Any]:
        """Distinct values of one metadata key (a dotted path) among the memories ``filter`` selects.

        Same visibility as :meth:`list` (live, unexpired memories unless ``filter.states`` asks otherwise);
        memories without the key are skipped. Scalars come back as Python values, objects and arrays as JSON
        text. Adapters use it to enumerate e.g. LangGraph namespaces without loading every memory.
        """
        self._authorize(actor, Right.READ, "distinct_metadata", filter=filter)
        SearchFilter.coerce({"metadata": {key: {"$exists": True}}})  # validates the key
        f = SearchFilter.coerce(filter)
        cf = self.records.compile_filter(f, self._states(f), self._now().timestamp())
        return self.records.distinct_metadata(key, cf, limit)

    def refresh_expiry(self, ttls: Mapping[str, float | timedelta], *, actor: str | None = None) -> int:
        """Sliding TTL: set ``expires_at = now + ttl`` for live memories that carry an expiry not yet passed.

        Retention metadata only: no new version, content and index untouched; one transaction and one audit
        event. Memories without an expiry, already expired, or not generated/activated are left alone (an
        expired memory is never revived by a read). Returns how many changed. Needs **write**.
        """
        with self._write("refresh_expiry", actor, None, _count(ttls)) as w:
            actor = w.authorize()
            now = self._now()
            at = now.timestamp()
            changed: list[str] = []
            with w.commit(sync=None) as c:  # retention metadata only: nothing for the vector index
                if not isinstance(ttls, Mapping):
                    raise ValidationError(f"ttls must map item ids to seconds, not {type(ttls).__name__}")
                for item_id, ttl in ttls.items():
                    check_text(item_id, "item id")
                    seconds = ttl_seconds(ttl)  # positive, finite, at most MAX_TTL_SECONDS
                    if self.records.refresh_expiry(c, item_id, at + seconds, at, (_S.GENERATED, _S.ACTIVATED)):
                        changed.append(item_id)
                if changed:
                    w.record(c, at, {"ids": changed})
            return len(changed)

    @staticmethod
    def _states(f: SearchFilter) -> list[LifecycleState]:
        if f.states:
            bad = [s for s in f.states if s not in lifecycle.INDEXED]
            if bad:
                raise ValidationError(f"search cannot return {[s.value for s in bad]} memories; "
                                      "use get(..., include_deleted=True) or history()")
            return list(f.states)
        return sorted(lifecycle.SEARCHABLE_DEFAULT, key=lambda s: s.value)

    def search(self, query: str, *, k: int = 10, filter: SearchFilter | Mapping[str, Any] | None = None,
               mode: SearchMode = "hybrid", user_id: str | None = None, agent_id: str | None = None,
               session_id: str | None = None, record_usage: bool = True, min_score: float | None = None,
               actor: str | None = None) -> list[SearchHit]:
        """Hybrid search: dense + BM25 over a normalised query, fused with weights that adapt to the query (see
        :func:`memos_core.plaintext.fusion.fuse` and :class:`RetrievalConfig`; ``fusion="rrf"`` for reciprocal
        rank fusion).

        Returns at most ``k`` hits in the fusion's order (``hit.rank``), each with its absolute score in [0, 1]
        (``hit.score``: it depends on the query and that memory only, not on what else the cube holds; see
        :mod:`memos_core.plaintext.calibration`), the fusion's own value (``hit.fused``) and the per-retriever
        scores and ranks that found it. ``min_score`` drops hits scoring below it: it means the same at any
        cube size. Deleted, purged and expired memories never appear; archived/merged ones only when
        ``filter.states`` asks for them. Needs **read** (``actor``, default the cube's default actor).
        """
        if self.records.concurrent_reads and not self.records.in_transaction():
            # A database server: the role lookup runs beside the search (both wait on the network). Nothing is
            # returned, recorded or audited as a read before it passed, and its refusal wins over any error the
            # search raised meanwhile.
            # Whether reads are audited is read there too (after the check passed).
            def check() -> tuple[str, bool]:
                who = self._authorize(actor, Right.READ, "search", None, filter)
                return who, self.governance.reads_audited("search", who)  # read with the role: no 2nd round trip

            auth = search_pool().submit(check)
            try:
                hits, used, now = self._search(query, k, filter, mode, user_id, agent_id, session_id, min_score)
            except BaseException:
                auth.result()
                raise
            actor, audited = auth.result()
        else:
            actor = self._authorize(actor, Right.READ, "search", filter=filter)
            hits, used, now = self._search(query, k, filter, mode, user_id, agent_id, session_id, min_score)
            audited = None
        if record_usage and hits:
            self.records.record_usage(used, now)
        self.governance.audit_read(actor, "search", [h.item.id for h in hits],
                                   {"query_sha256": query_digest(query), "k": k}, audited=audited)
        for listener in list(self.listeners):
            try:
                listener(query, hits)
            except Exception:  # noqa: BLE001 - an observer must never break search
                log.exception("search listener %r failed", listener)
        return hits

    def _search(self, query: Any, k: Any, filter: Any, mode: Any, user_id: str | None, agent_id: str | None,
                session_id: str | None, min_score: Any) -> tuple[list[SearchHit], list[int], float]:
        """Validate a search's arguments and run it: (hits, their rowids, the time it ran at)."""
        if not isinstance(query, str) or not query.strip():
            raise ValidationError("query must be a non-empty string")
        check_text(query, "query")
        if not isinstance(k, int) or isinstance(k, bool) or not (1 <= k <= 1000):
            raise ValidationError("k must be an integer between 1 and 1000")
        if mode not in ("hybrid", "dense", "lexical"):
            raise ValidationError(f"mode must be 'hybrid', 'dense' or 'lexical', not {mode!r}")
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or not 0.0 <= float(min_score) <= 1.0):
            raise ValidationError(f"min_score must be a number between 0 and 1 (scores are in [0, 1]), not {min_score!r}")
        f = SearchFilter.coerce(filter)
        scope_over = {a: v for a, v in (("user_id", user_id), ("agent_id", agent_id), ("session_id", session_id))
                      if v is not None}
        if scope_over:
            f = SearchFilter.coerce({**f.model_dump(exclude_none=True), **scope_over})  # validated, not just copied
        states = self._states(f)
        now = self._now().timestamp()
        cf = self.records.compile_filter(f, states, now)  # passed on unopened: only the store reads it
        retriever = self.retriever
        if not retriever.folds_waiting(mode):  # on a database server the retriever asks beside its pending read
            self._embed_before_search()  # rows committed without their embedding yet (embed_sync="deferred")
        hits, used = retriever.search(query, mode, f, cf, k, min_score)
        return hits, used, now

    _retriever: Retriever | None = None

    @property
    def retriever(self) -> Retriever:
        """The cube's retrieval pipeline (:class:`memos_core.plaintext.retrieval.Retriever`) over its records,
        vector index, embedder and :attr:`retrieval` settings; rebuilt when the settings object is replaced."""
        r = self._retriever
        dim = int(self.manifest["embedder"]["dim"])
        if r is None or r.config is not self.retrieval or r.embedder is not self._embedder or r.dim != dim:
            r = self._retriever = Retriever(self.records, self.index, self._embedder, self.retrieval, dim=dim,
                                            degraded=lambda: self._index_degraded,
                                            on_index_down=self._index_down)
            r.embed_waiting = self._embed_before_search
        return r

    def _index_down(self, exc: BaseException) -> None:
        self.index_degraded = True

    # ------------------------------------------------------------------ maintenance
    def expire(self, *, action: RetentionAction | str | None = None, actor: str | None = None) -> list[str]:
        """Sweep memories whose ``expires_at`` has passed (needs **administer**; see
        :mod:`memos_core.governance.retention` for scheduling).

        ``action`` (default: the cube's retention policy, ``archive`` unless configured): ``archive``,
        ``delete`` (tombstone), ``purge`` (tombstone + erase content) or ``forget`` (erase entirely). Frozen
        memories (legal hold) are skipped. Returns the ids that changed.
        """
        with self.governance.attempt(actor, "expire"):
            actor = self._authorize(actor, Right.ADMINISTER, "expire")
            try:
                act = RetentionAction(action) if action is not None else self.governance.retention_policy().action
            except ValueError:
                raise ValidationError(f"expiry action must be one of {[a.value for a in RetentionAction]}") from None
            G, A, AR, M, D, P = _S.GENERATED, _S.ACTIVATED, _S.ARCHIVED, _S.MERGED, _S.DELETED, _S.PURGED
            states = {RetentionAction.ARCHIVE: (G, A, M), RetentionAction.DELETE: (G, A, AR),
                      RetentionAction.PURGE: (G, A, AR, M, D), RetentionAction.FORGET: (G, A, AR, M, D, P)}[act]
            now = self._now().timestamp()
            ids = self.records.expired_ids(now, states)
            done: list[str] = []
            with self._erasure.deferred():  # one index scrub/compaction for the whole sweep
                for item_id in ids:
                    try:
                        if act == RetentionAction.FORGET:
                            self.forget(item_id, actor=actor, reason="expired (retention)", cascade=False)
                        elif act == RetentionAction.PURGE:
                            if self.records.get(item_id).state != D:  # type: ignore[union-attr]
                                self.transition(item_id, D, reason="expired (retention)", actor=actor)
                            self.purge(item_id, reason="expired (retention)", actor=actor)
                        else:
                            target = AR if act == RetentionAction.ARCHIVE else D
                            self.transition(item_id, target, reason="expired (retention)", actor=actor)
                    except (NotFound, Conflict) as exc:  # changed under us (e.g. put on hold meanwhile)
                        log.info("expiry of %s skipped: %s", item_id, exc)
                        self.governance.note_failure(actor, "expire", item_id, exc, {"action": act.value})
                        continue
                    done.append(item_id)
            return done

    def stats(self, *, actor: str | None = None) -> dict[str, Any]:
        self._authorize(actor, Right.READ, "stats")
        by_state = self.records.count_by_state()
        return {"cube_id": self.cube_id, "name": self.name, "path": str(self.path), "by_state": by_state,
                "indexed_vectors": self.index.count() if not self.index_degraded else None,
                "embedder": self.manifest.get("embedder")}

    # ------------------------------------------------------------------ governance (memos_core.governance)
    def share(self, principal: str, role: str, *, actor: str | None = None, kind: str | None = None) -> Any:
        """Grant ``principal`` a role (owner/admin/writer/reader/guest); see :meth:`Governance.share`."""
        return self.governance.share(principal, role, actor=actor, kind=kind)

    def revoke(self, principal: str, *, actor: str | None = None) -> None:
        """Remove ``principal``'s role; see :meth:`Governance.revoke`."""
        self.governance.revoke(principal, actor=actor)

    def forget(self, item_id: str, *, actor: str | None = None, reason: str | None = None,
               cascade: bool = True, drop_artifacts: bool = True) -> list[str]:
        """Erase a memory and everything derived from it, for good. Needs **administer**.

        Removes the item row, every version, its lifecycle transitions, its embedding, its lexical-index
        entries and its vector-index row, and removes its text from what was derived from it
        (:mod:`memos_core.erasure` says exactly what): neighbours whose index text quotes it are
        re-derived and re-embedded; with ``cascade`` (default) memories derived from it (``parent_ids`` /
        ``parent_versions``, duplicates merged into it, facts extracted from the turn it records) are erased
        too, and facts that only cited its turn lose that citation. Then the lexical index is merged, the
        erased vectors overwritten and deleted in the vector index and its files scrubbed (see
        :func:`memos_core.erasure.scrub_vectors`: a compaction may be left pending in a large cube written before
        this release; :meth:`compact_index`), the WAL checkpointed and truncated, so the bytes leave every file
        of the cube folder. Activation and parametric artefacts built from erased memories become stale
        (:func:`memos_core.artifacts.stale_sources` finds the id gone); with ``drop_artifacts`` (default) those
        stored in the cube (``activation/`` KV caches, whose token ids encode the text, and ``parametric/`` LoRA
        adapters, whose weights were trained on it) are deleted as well. Artefacts kept in folders outside the
        cube are the caller's to delete (``KVCacheStore.delete_for_items``,
        ``AdapterStore.forget_items(..., delete=True)``).

        The records change in one transaction; the work after it (vector scrub, compaction, artefacts) is
        resumed on the next open if the process dies first (:meth:`deferred_erasure` batches it). The audit
        record keeps the ids, who and when, never the content. A memory under legal hold (or a memory the
        erasure would change under hold) cannot be forgotten: :class:`Conflict`, nothing changes. Returns the
        ids erased.
        """
        return self._erasure.forget(item_id, actor=actor, reason=reason, cascade=cascade,
                                    drop_artifacts=drop_artifacts)

    def deferred_erasure(self) -> Any:
        """``with cube.deferred_erasure(): ...`` runs several forgets and purges on this thread, then their
        after-commit work (vector-index scrub, lexical merge, WAL checkpoint) once at the end (expiry sweeps use
        it). Each forget's records are committed (and durable) when it returns, as without it."""
        return self._erasure.deferred()

    def legal_hold(self, item_id: str, *, actor: str | None = None, reason: str | None = None) -> MemoryItem:
        """Put a memory under legal hold (the frozen state): no update, delete, expiry, purge or forget until
        :meth:`lift_hold`. Needs **administer**."""
        with self.governance.attempt(actor, "legal_hold", item_id):
            return self.transition(item_id, _S.FROZEN, actor=actor, reason=reason or "legal hold")

    def lift_hold(self, item_id: str, *, actor: str | None = None, reason: str | None = None) -> MemoryItem:
        """Lift a legal hold (needs **administer**); the memory returns to the state it was in (activated, or
        archived if it was)."""
        with self.governance.attempt(actor, "release", item_id):
            actor = self._authorize(actor, Right.ADMINISTER, "release", item_id)
            back = _S.ACTIVATED
            for t in reversed(self.records.transitions(item_id)):
                if t.to_state == _S.FROZEN:
                    if t.from_state == _S.ARCHIVED:
                        back = _S.ARCHIVED
                    break
            return self.transition(item_id, back, actor=actor, reason=reason or "legal hold lifted")


def _speaker(item: MemoryItem) -> str | None:
    return item.provenance.speaker if item.provenance is not None else None


def _dense_text(index_text: str, content: str, speaker: str | None) -> str:
    """The text a memory's dense vector is embedded from: :func:`memos_core.reader.offline.dense_text` (the one
    rule; BM25 indexes the whole ``index_text``)."""
    from .reader.offline import dense_text

    return dense_text(index_text, content, speaker)


def _dense_texts(items: Sequence[MemoryItem]) -> list[str]:
    """:func:`_dense_text` of each item (its index text, or its content when it has none)."""
    return [_dense_text(it.index_text or it.content, it.content, _speaker(it)) for it in items]


def _topic_texts(items: Sequence[MemoryItem], embedded_from: Sequence[str] | None = None) -> list[str | None]:
    """Each item's own words (:func:`memos_core.reader.offline.topic_text`), or ``None`` where they are the text
    its embedding is made from (``embedded_from``; default its dense text, :func:`_dense_texts`): its topic vector
    is then its embedding, and nothing is embedded twice."""
    from .reader.offline import topic_text

    out: list[str | None] = []
    for it, dense in zip(items, _dense_texts(items) if embedded_from is None else embedded_from):
        t = topic_text(it.content, _speaker(it))
        out.append(None if t == dense else t)
    return out


def _topic_blobs(topics: Sequence[str | None], vecs: np.ndarray) -> list[bytes]:
    """Topic blobs for :meth:`RecordStore.put_topics` from :func:`_topic_texts` and the vectors of its texts
    (in order): float32 bytes, or ``b""`` for an item whose topic vector is its embedding."""
    out: list[bytes] = []
    j = 0
    for t in topics:
        if t is None:
            out.append(b"")
        else:
            out.append(np.asarray(vecs[j], dtype=np.float32).tobytes())
            j += 1
    return out


def _state_value(state: Any) -> str | None:
    """The lifecycle state named by ``state``, or ``None`` (a failure record never echoes arbitrary input)."""
    try:
        return LifecycleState(state).value
    except (ValueError, TypeError):
        return None


def _count(batch: Any) -> dict[str, int]:
    """``{"count": n}`` for a failure record of a batch operation (the ids and content stay out of the log)."""
    return {"count": len(batch)} if isinstance(batch, (Sequence, Mapping)) and not isinstance(batch, (str, bytes)) \
        else {}


class _Write:
    """One governed write of a cube: the pipeline behind every write method (:meth:`MemCube._write`).

    1. The attempt is audited (:meth:`Governance.attempt`): if the block raises, one failure record is appended
       after the write's own transaction rolled back (a nested write, e.g. delete -> transition, leaves it to
       the outermost one).
    2. The method validates its arguments, then :meth:`authorize` checks the actor's right (a refusal is
       audited and raised as PermissionDenied, or NotFound for an item in a cube the actor may not read).
    3. :meth:`commit` takes the cube lock and opens one records transaction; the method writes its rows and
       :meth:`record` appends the audit event in that same transaction, so both commit (fsync'd) or neither.
    4. After the commit, still under the lock, the vector index is synced: ``sync="now"`` applies the pending
       rows at once, ``"add"`` counts them for a deferred batch (and hands rows committed without their
       embedding to the background thread), ``None`` leaves the index alone (nothing it holds changed).
    """

    __slots__ = ("cube", "op", "item_id", "given", "actor", "_attempt")

    def __init__(self, cube: MemCube, op: str, actor: str | None, item_id: str | None,
                 detail: Mapping[str, Any] | None) -> None:
        self.cube, self.op, self.item_id, self.given = cube, op, item_id, actor
        self.actor: str | None = None  # set by authorize()
        self._attempt = cube.governance.attempt(actor, op, item_id, detail)

    def __enter__(self) -> "_Write":
        self._attempt.__enter__()
        return self

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> bool:
        return bool(self._attempt.__exit__(typ, exc, tb))

    def authorize(self, right: Right = Right.WRITE, op: str | None = None) -> str:
        """Check that the acting principal holds ``right`` for this write (``op`` names the check in a refusal
        record, default the write's own op) and return it."""
        self.actor = self.cube._authorize(self.given, right, op or self.op, self.item_id)
        return self.actor

    @contextmanager
    def commit(self, sync: Literal["now", "add"] | None = "now", rows: int = 0,
               waiting: bool = False) -> Iterator[Any]:
        """The write's one records transaction (yields its handle), then the vector-index sync (see the class)."""
        cube = self.cube
        with cube._lock:
            with cube.records.transaction() as c:
                yield c
            # Durable now (the records commit above). The vector index is derived: updated right away, or with
            # "deferred" sync in batches (search scores rows still pending exactly).
            if sync == "now":
                cube._sync_after_write()
            elif sync == "add":
                cube._after_add(rows, waiting)

    def record(self, c: Any, at: float, detail: Mapping[str, Any] | None) -> None:
        """Append this write's audit event inside its transaction ``c`` (``detail`` never holds content)."""
        self.cube.records.append_event(c, at, self.actor, self.op, self.item_id, detail=dict(detail or {}))


def _new_ids(n: int) -> list[str]:
    """``n`` new item ids, as :func:`memos_core.items.new_id` makes them (random UUID4 hex), from one ``urandom``
    call: a bulk add makes thousands, and each call releases the GIL, which a busy background thread (the
    vector-index upsert of the previous batch) then holds for up to a switch interval (measured: ~0.3 ms per id)."""
    raw = os.urandom(16 * n)
    return [uuid.UUID(bytes=raw[i:i + 16], version=4).hex for i in range(0, 16 * n, 16)]


_POOL_LOCK = threading.Lock()


#: deferred vector sync: at most this many written rows wait for the index (then one batched upsert)
_DEFER_MAX = 64
#: deferred embeddings (embed_sync="deferred"): rows embedded per batch on the background thread
_EMBED_BATCH = 8
#: ... and at most this many rows of this process wait for their embedding (a search embeds those still waiting
#: first, so this bounds what it may have to do); past it an add embeds inline again
_EMBED_BACKLOG = 16
#: a large ingest embeds in chunks of this many texts when a progress bar is shown
_EMBED_CHUNK = 256


def _index_meta(state: str, kind: str, user_id: str | None, agent_id: str | None,
                session_id: str | None) -> dict[str, Any]:
    """What the vector index stores beside a vector and pre-filters on: the lifecycle state, the kind and each
    scope axis that is set (an unset one is left out: Chroma metadata holds no None). Every path that writes
    the index (a write applied after commit, the open-time repair, reindex, compaction) builds it here."""
    meta: dict[str, Any] = {"state": state, "kind": kind}
    for axis, val in (("user_id", user_id), ("agent_id", agent_id), ("session_id", session_id)):
        if val is not None:
            meta[axis] = val
    return meta


@contextmanager
def _lock_turn(lock: threading.Lock, wait: bool) -> Iterator[bool]:
    """Hold ``lock`` for the block; with ``wait=False`` only if it is free now. Yields whether it is held."""
    got = lock.acquire(blocking=wait)
    try:
        yield got
    finally:
        if got:
            lock.release()


def _vector_sync_mode(value: Any) -> str:
    return _sync_mode(value, "vector_sync", "MEMOS_VECTOR_SYNC")


def _sync_mode(value: Any, name: str, env: str) -> str:
    mode = value if value is not None else (os.environ.get(env) or "immediate")
    if mode not in ("immediate", "deferred"):
        raise ValidationError(f"{name} must be 'immediate' or 'deferred', not {mode!r}")
    return str(mode)


class _IndexView:
    """The cube's vector index as code outside the write path sees it: ``count`` and ``ids`` first apply the
    vectors of deferred writes, so what they report matches the records. Everything else is the index itself."""

    def __init__(self, inner: ChromaVectorIndex, cube: "MemCube") -> None:
        self._inner = inner
        self._cube = cube

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            self._cube._ensure_index_checked()
        return getattr(self._inner, name)

    def count(self) -> int:
        self._cube._ensure_index_checked()
        self._cube._flush_deferred()
        return self._inner.count()

    def ids(self) -> set[str]:
        self._cube._ensure_index_checked()
        self._cube._flush_deferred()
        return self._inner.ids()

    def close(self) -> None:
        self._inner.close()  # no check first: closing a cube whose index was never used opens nothing

    def __repr__(self) -> str:
        return repr(self._inner)


_POOLS: dict[str, ThreadPoolExecutor] = {}  # one single-thread pool per background purpose, by thread name


def _single_thread_pool(name: str) -> ThreadPoolExecutor:
    pool = _POOLS.get(name)
    if pool is None:
        with _POOL_LOCK:
            pool = _POOLS.get(name)
            if pool is None:
                pool = _POOLS[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
    return pool


def _index_pool() -> ThreadPoolExecutor:
    """One background thread per process for deferred vector-index batches (created on first use)."""
    return _single_thread_pool("memos-index")


def _embed_pool() -> ThreadPoolExecutor:
    """One background thread per process for deferred embeddings (created on first use). Not the vector-index
    thread: behind an index batch (a Chroma upsert of up to :data:`_DEFER_MAX` rows) the embedder would sit idle
    while rows wait for it; on their own threads the two overlap."""
    return _single_thread_pool("memos-embed")


_CHROMA_WARM: list[threading.Thread] = []


def _warm_chroma() -> None:
    """Import Chroma on a background thread (once per process): the first use of a vector index then finds it
    loaded. Importing is all it does (thread-safe; no client is opened here)."""
    with _PRELOAD_LOCK:
        if _CHROMA_WARM or os.environ.get("MEMOS_PRELOAD", "1") == "0":
            return

        def target() -> None:
            try:
                import chromadb  # noqa: F401
            except Exception as exc:  # noqa: BLE001 - the first real use reports it
                log.debug("chromadb preload failed: %s", exc)

        t = threading.Thread(target=target, name="memos-chroma-preload", daemon=False)
        _CHROMA_WARM.append(t)
        t.start()


#: an embedded index whose persisted HNSW vectors take at least this many bytes is loaded on a background thread
#: when its cube opens (about 2,700 vectors of 384 dimensions; smaller ones load in well under 0.1 s)
WARM_INDEX_BYTES = 4 << 20


def _warm_index(index: ChromaVectorIndex) -> None:
    """Open a large embedded vector index and load its HNSW segment on a background thread (``MEMOS_PRELOAD=0``
    turns it off), like the embedder preload: Chroma reads the segment on the collection's first call, which was
    the first search or write after opening (README, "One memory per call"). Not for a Chroma server (nothing to
    load here) or a small index; the open-time consistency check still runs before the index's first real use."""
    persisted, warm = getattr(index, "persisted_bytes", None), getattr(index, "warm", None)
    if not callable(persisted) or not callable(warm):  # another vector index (a test stand-in): nothing to load
        return
    if os.environ.get("MEMOS_PRELOAD", "1") == "0" or persisted() < WARM_INDEX_BYTES:
        return
    threading.Thread(target=warm, name="memos-index-warm", daemon=False).start()


_PRELOADING: set[int] = set()
_PRELOAD_LOCK = threading.Lock()


def _preload(embedder: Any) -> None:
    """Start loading ``embedder``'s model on a background thread (once per embedder; ``MEMOS_PRELOAD=0`` turns it
    off): a first add or search soon after opening then waits less, or not at all. The thread is not a daemon: a
    process ending meanwhile waits for it (a thread killed inside a native library can abort the interpreter)."""
    prepare = getattr(embedder, "prepare", None)
    if not callable(prepare) or os.environ.get("MEMOS_PRELOAD", "1") == "0":
        return
    with _PRELOAD_LOCK:
        if id(embedder) in _PRELOADING:
            return
        _PRELOADING.add(id(embedder))
    threading.Thread(target=prepare, name="memos-embedder-preload", daemon=False).start()
