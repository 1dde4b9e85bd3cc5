"""Retrieval orchestration: from a query and a compiled filter to ranked, scored hits.

:class:`Retriever` runs the retrievers of one cube -- dense (the vector index, with exact scoring from the stored
embeddings where that is cheaper or the index cannot answer) and lexical (BM25 inside the record store) -- takes
the union of their candidates, scores each exactly, fuses them (:mod:`.fusion`) and gives each hit its absolute
score (:mod:`.calibration`). It reads the record store and the vector index and writes nothing: validation,
authorization, usage recording, the audit record and listeners stay with the caller (``MemCube.search``).

Data flows one way: ``cube -> plaintext.retrieval -> {records, plaintext index, fusion, calibration}``; nothing
here imports the cube.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Callable, Literal, NamedTuple, Protocol, Sequence

import numpy as np

from ..embedding import cached_query_vector, peek_query_vector
from ..errors import BackendUnavailable, EmbeddingDimensionError, MemOSError
from ..items import MemoryItem, SearchFilter, SearchHit
from ..lifecycle import INDEXED as _INDEXED
from ..log import get_logger
from . import calibration, scope_cache
from .fusion import Candidates, fuse, rrf
from .lexical import fts_query
from .query import QueryPlan, analyze_query, entity_matcher
from .rerank import checked_scores, combine, in_scope

if TYPE_CHECKING:
    from ..records import RecordStore
    from ..records.base import CompiledFilter

__all__ = ["Retriever", "RetrievalSettings", "Fused", "Prefetched", "embedder_down"]

log = get_logger(__name__)

Ranked = dict[str, list[tuple[int, float]]]
#: what hybrid search reads about a candidate: (float32 embedding bytes or None, content, recall weight or None)
Row = tuple[bytes | None, str, Any]


class RetrievalSettings(Protocol):
    """What the retriever reads from its settings (``memos_core.cube.RetrievalConfig`` documents each)."""

    fusion: Literal["zscore", "rrf"]
    dense_weight: float
    lexical_weight: float | None
    rrf_k: float
    candidates: int
    exact_below: int
    focus_weight: float
    query_cache: int


@dataclass
class Prefetched:
    """What the legs of one search read about its candidates on the way (on a database server the BM25 query and
    the ANN hits' filter check return them in the same round trips): each candidate's row (embedding, text,
    recall weight), loaders of the full items and topic vectors (``None``: the row has none), so that the later
    steps need not read them again."""

    rows: dict[int, Row] = field(default_factory=dict)
    items: dict[int, Callable[[], MemoryItem]] = field(default_factory=dict)
    topics: dict[int, bytes | None] = field(default_factory=dict)


class Fused(NamedTuple):
    """One fused candidate: its record-store rowid, the fusion's value, each retriever's score and rank, and the
    exact cosine of its stored embedding to the query vector (``None`` in lexical-only mode)."""

    rowid: int
    value: float
    scores: dict[str, float]
    ranks: dict[str, int]
    cosine: float | None


class Retriever:
    """The retrieval pipeline of one cube (read-only; thread-safe as long as its store and index are).

    ``records`` is the system of record (filters, BM25, stored embeddings, contents), ``index`` the vector index
    (``query(qvec, n, where) -> [(id, score)]``), ``embedder`` embeds queries, ``config`` holds the weights and
    limits (read on every call, so changing an attribute takes effect at once). ``dim`` is the cube's embedding
    dimension. ``degraded()`` says whether the index is known to be unreachable (dense scores then come from an
    exact scan of the stored embeddings); ``on_index_down(exc)`` is called when a query to the index fails.
    """

    def __init__(self, records: "RecordStore", index: Any, embedder: Any, config: RetrievalSettings, *, dim: int,
                 degraded: Callable[[], bool] = lambda: False,
                 on_index_down: Callable[[BaseException], None] = lambda exc: None) -> None:
        self.records = records
        self.index = index
        self.embedder = embedder
        self.config = config
        self.dim = int(dim)
        self._degraded = degraded
        self._on_index_down = on_index_down

    # ------------------------------------------------------------------ the whole pipeline
    def search(self, query: str, mode: str, f: SearchFilter, cf: "CompiledFilter", k: int,
               min_score: float | None = None) -> tuple[list[SearchHit], list[int]]:
        """Hits for ``query`` among the rows passing the compiled filter ``cf`` (``RecordStore.compile_filter``),
        in the fusion's order, each with its absolute score; those scoring under ``min_score`` are dropped.
        Returns the hits and their rowids (for usage recording)."""
        pre = Prefetched()
        reranker = getattr(self.config, "reranker", None)
        if reranker is not None and not in_scope(analyze_query(query), self.config.rerank_scope):  # type: ignore
            reranker = None  # a query out of the reranker's scope is searched exactly as without one
        n = k if reranker is None else max(k, int(self.config.rerank_k))  # type: ignore[attr-defined]
        plan, fused = self.retrieve(query, mode, f, cf, n, pre)
        degraded = bool(skipped_legs())
        items = {r.rowid: pre.items[r.rowid]() for r in fused if r.rowid in pre.items}
        missing = [int(r.rowid) for r in fused if r.rowid not in items]
        if missing:
            items.update(self.records.get_many_by_rowid(missing))
        if reranker is not None:
            fused = self.rerank(reranker, query, mode, fused, items)[:k]
        return self.assemble(plan, mode, fused, items, min_score, degraded=degraded)

    def rerank(self, reranker: Any, query: str, mode: str, fused: Sequence[Fused], items: dict[int, MemoryItem]
               ) -> list[Fused]:
        """``fused`` (the best ``rerank_k`` or more, best first) reordered by ``value + rerank_weight *
        z(reranker scores)`` (:func:`.rerank.combine`; the fused value is first standardised over them unless it
        already is, i.e. outside z-score hybrid fusion); each gets its raw reranker score as ``scores["rerank"]``.
        Candidates whose item vanished meanwhile keep their place at the end (:meth:`assemble` skips them)."""
        cfg = self.config
        live = [r for r in fused if int(r.rowid) in items]
        if not live:
            return list(fused)
        raw = checked_scores(reranker, query, [items[int(r.rowid)].content for r in live])
        standardised = mode == "hybrid" and cfg.fusion == "zscore" and "dense" not in skipped_legs()
        order = combine([r.value for r in live], raw, float(cfg.rerank_weight),  # type: ignore[attr-defined]
                        standardise_fused=not standardised)
        out = [live[i]._replace(scores={**live[i].scores, "rerank": raw[i]}) for i in order]
        return out + [r for r in fused if int(r.rowid) not in items]

    @staticmethod
    def assemble(plan: QueryPlan, mode: str, fused: Sequence[Fused], items: dict[int, MemoryItem],
                 min_score: float | None, *, degraded: bool = False) -> tuple[list[SearchHit], list[int]]:
        """Hits from fused candidates and their items (a candidate whose item vanished meanwhile is skipped).
        ``degraded``: a retriever could not run for this search (marks every hit, :attr:`SearchHit.degraded`)."""
        score = calibration.scorer(plan.text, entity_matcher(plan.entities))
        hits: list[SearchHit] = []
        used: list[int] = []
        rank = 0
        for key, value, sc, rk, cos in fused:
            item = items.get(int(key))
            if item is None:
                continue
            rank += 1
            hit = SearchHit(item=item, score=score(mode, item.content, cos, calibration.recall_weight(item.metadata)),
                            retrievers=sc, ranks=rk, rank=rank, fused=value, degraded=degraded)
            if min_score is None or hit.score >= min_score:
                hits.append(hit)
                used.append(int(key))
        return hits, used

    def retrieve(self, query: str, mode: str, f: SearchFilter, cf: "CompiledFilter", k: int,
                 pre: Prefetched | None = None) -> tuple[QueryPlan, list[Fused]]:
        """Candidates from each retriever, fused. Returns the query plan and the best ``k`` :class:`Fused`
        candidates, best first.

        The query is first normalised (:func:`analyze_query`: dialogue markup, names). Hybrid search then takes
        the union of the dense and BM25 candidates, scores the BM25-only ones exactly against their stored
        embeddings (so every candidate has a dense score), and fuses them (:func:`fuse`). ``ranks`` are each
        retriever's own ranks. ``pre`` receives what the legs read about the candidates on the way.

        While the embedder is down (:func:`embedder_down`) a hybrid search runs its lexical leg alone: its hits are
        ranked and scored as a lexical-only search's, and :func:`skipped_legs` names the legs that could not run.
        """
        cfg = self.config
        pre = Prefetched() if pre is None else pre
        _SKIPPED.legs = set()
        plan = analyze_query(query)
        n_cand = max(cfg.candidates, k)
        ranked, qvec = self.gather(plan, mode, f, cf, n_cand, pre)
        weights = {"dense": cfg.dense_weight, "lexical": 0.8 if cfg.lexical_weight is None else cfg.lexical_weight}
        if mode != "hybrid" or cfg.fusion == "rrf" or qvec is None:
            top = rrf(ranked, weights, cfg.rrf_k)[:k]
            # the score's cosine comes from the stored embedding (exact), not the ANN's rounding
            cos = dict(self.exact_dense(qvec, [key for key, *_ in top], len(top))) if qvec is not None and top \
                else {}
            return plan, [Fused(key, v, sc, rk, cos.get(key)) for key, v, sc, rk in top]
        cands = self.candidates(plan, qvec, ranked, n_cand, pre.rows, pre.topics)
        return plan, [Fused(key, z, sc, rk, cands.dense.get(key)) for key, z, sc, rk in fuse(cands, plan, cfg)[:k]]

    # ------------------------------------------------------------------ the query vector
    def query_key(self, plan: QueryPlan) -> tuple[str, str | None, float]:
        fw = self.config.focus_weight
        return (plan.dense_text, plan.focus if fw > 0 else None, fw)

    def query_vector(self, plan: QueryPlan, *, with_topic: bool = True) -> np.ndarray:
        """The query embedding: the normalised query, plus its last user turn when it is a dialogue.
        ``with_topic`` (hybrid searches only: the only mode with a topical leg) embeds the name-free question in
        the same call when the topical leg will want it.

        Memoised per embedder (``query_cache`` entries; see :func:`memos_core.embedding.cached_query_vector`).
        ``query_cache=0`` means no memo at all for this cube: nothing read (not even a topic vector another cube
        with the same embedder cached), nothing written, and the name-free question still embedded in the same
        call as the query, once."""
        key = self.query_key(plan)
        text, focus, fw = key
        embedder = self.embedder

        size = self.config.query_cache
        many = getattr(embedder, "embed_queries", None)
        topic = plan.topic if with_topic and self._topic_query() else None

        def compute() -> np.ndarray:
            if focus:
                v = (many or embedder.embed_documents)([text, focus])
                qvec = v[0] + fw * v[1]
                return qvec / max(float(np.linalg.norm(qvec)), 1e-12)
            if topic and many is not None:
                known = peek_query_vector(embedder, ("topic", topic)) if size > 0 else None
                if known is None:
                    # the name-free question for the topical leg (`topical_query="topic"`), embedded in the same
                    # call: a batch of two short texts costs about as much as one (measured: README, "the topical
                    # leg"), where a second call would double the query's embedding time. Handed to
                    # :meth:`topical` on this thread, and kept in the query cache (when this cube has one) for the
                    # next search with the same question.
                    v = many([text, topic])
                    _TOPIC_VEC.last = (embedder, topic, v[1])
                    if size > 0:
                        cached_query_vector(embedder, ("topic", topic), lambda: v[1], size)
                    return v[0]
                # cached: handed to :meth:`topical` as it is now (an eviction meanwhile must not embed it again)
                _TOPIC_VEC.last = (embedder, topic, known)
            return embedder.embed_query(text)

        return cached_query_vector(embedder, key, compute, size)

    def _topic_query(self) -> bool:
        """Whether the topical leg compares the topic vectors with the name-free question's own vector."""
        cfg = self.config
        return getattr(cfg, "topical_query", "full") == "topic" and bool(float(getattr(cfg, "topical_weight", 0.0)
                                                                              or 0.0))

    # ------------------------------------------------------------------ the retrievers
    def gather(self, plan: QueryPlan, mode: str, f: SearchFilter, cf: "CompiledFilter", n_cand: int,
               pre: Prefetched | None = None) -> tuple[Ranked, np.ndarray | None]:
        """Each retriever's best ``n_cand`` (rowid, score) for the normalised query, and the query vector.
        ``pre``, when given, receives what :meth:`candidates` and the hits will need about the candidates when
        a leg could read it on the way (see :meth:`dense`)."""
        cfg = self.config
        ranked: Ranked = {}
        qvec = None
        if mode in ("hybrid", "dense") and cfg.query_cache:
            qvec = peek_query_vector(self.embedder, self.query_key(plan))
        lexical_job = None
        share = False
        owned = self.records.in_transaction()
        if mode == "hybrid" and not owned and (
                self.records.concurrent_reads
                or (qvec is None
                    and (_SPARE_CORES or (_OVERLAP_ENV != "0" and getattr(self.embedder, "overlaps_well", False))))):
            # The lexical leg runs on a worker thread while this one embeds the query and runs the dense leg.
            # On a database server (`concurrent_reads`: PostgreSQL) both legs mostly wait on sockets -- BM25 in
            # the server, the vector index over HTTP or in Chroma's native code -- so they always overlap.
            # With SQLite, BM25 overlaps the query embedding only: both release the GIL, so the lexical leg costs
            # little extra wall time. That holds with >= 4 cores, or when the embedder's threads do not busy-wait
            # (the default MiniLM's ONNX twin: `overlaps_well`). Not with PyTorch on 2-3 cores: its parallel
            # kernels then wait for the core SQLite took, and the overlap is slower than running one after the
            # other. Not when the query vector is cached (nothing to overlap). Never when this thread is inside a
            # records transaction, e.g. a search from a hook: the worker could not take the SQLite lock, and on a
            # server it would not see the transaction's writes.
            # On a server each leg also reads what fusion and the hits need about the rows it found (embedding,
            # text, weight, the item), in the same round trip: nothing is left to read after the legs.
            share = pre is not None and self.records.concurrent_reads
            lexical_job = search_pool().submit(
                self.records.lexical_rows if share else self.records.lexical, fts_query(plan.text), cf,
                n_cand, *(("recall_weight",) if share else ()), **({"with_items": True} if share else {}))
        embedded = False
        try:
            if mode in ("hybrid", "dense"):
                if self.folds_waiting(mode):
                    embedded = self.read_pending(cf)
                if qvec is None:
                    try:
                        qvec = self.query_vector(plan, with_topic=mode == "hybrid")
                    except Exception as exc:
                        # The embedder is down: a hybrid search still has its lexical leg (below, or already
                        # running beside this thread). A dense search has nothing else: it raises. A wrong
                        # dimension or an answer that is not vectors is a configuration error: it raises too.
                        if mode != "hybrid" or not embedder_down(exc):
                            raise
                        embedder_failed(self.embedder, exc)
                        skip_leg("dense")
                    else:
                        embedder_answered(self.embedder)
                if qvec is not None:
                    ranked["dense"] = self.dense(qvec, f, cf, n_cand, pre=pre if share else None)
        finally:
            _PENDING.read = None
            if lexical_job is not None:
                wait([lexical_job])  # also when the dense leg raised: no query is left running on the cube
        if lexical_job is not None:
            if share:
                ranked["lexical"], got = lexical_job.result()
                assert pre is not None
                rows = got.rows
                if embedded:  # the lexical leg may have read rows before their embeddings were stored: re-read
                    rows = {r: row for r, row in rows.items() if row[0] is not None}
                pre.rows.update(rows)
                pre.items.update(got.items)
                pre.topics.update((r, t) for r, t in got.topics.items() if r in rows)
            else:
                ranked["lexical"] = lexical_job.result()
        elif mode in ("hybrid", "lexical"):
            ranked["lexical"] = self.records.lexical(fts_query(plan.text), cf, n_cand)
        return ranked, qvec

    def candidates(self, plan: QueryPlan, qvec: np.ndarray, ranked: Ranked, n_cand: int,
                   rows: dict[int, Row] | None = None, topics: dict[int, bytes | None] | None = None) -> Candidates:
        """The union of the retrievers' candidates with what fusion needs to know about each: the exact dense
        score of every one (from its stored embedding, whichever retriever found it: fused scores then do not
        depend on the ANN's float rounding), BM25 where the lexical leg found it, and the memory's text.
        ``rows``: candidates' rows already read (:meth:`gather`); the others are read here, in one call.
        ``topics``: their topic vectors already read (for :meth:`topical`)."""
        lexical = dict(ranked["lexical"])
        complete = len(lexical) < n_cand
        keys = sorted({r for r, _ in ranked["dense"]} | set(lexical))
        known = rows or {}
        missing = [r for r in keys if r not in known]
        rows = {**known, **self.records.candidate_rows(missing, "recall_weight")} if missing else known
        scored = [r for r in keys if r in rows and rows[r][0] is not None]
        dense = dict(score_blobs(qvec, scored, [rows[r][0] for r in scored], len(scored)))  # type: ignore[misc]
        if dense:
            # A candidate whose stored embedding is gone was erased after a leg found it (a forget by another
            # handle or worker in between): it is no longer a memory, so it is not a candidate either. One whose
            # embedding is not stored *yet* (an acknowledged write still waiting for the embedder, e.g. a search
            # inside a records transaction while the background embedder is busy) stays, with BM25's score
            # alone, as a lexical-only search would return it.
            keep = set(dense) | self.waiting_for_embedding([r for r in lexical if r not in dense and r in rows])
            keys = [key for key in keys if key in keep]
            lexical = {key: v for key, v in lexical.items() if key in keep}
        else:
            dense = dict(ranked["dense"])
        texts: dict[int, str] = {}
        weights: dict[int, float] = {}
        for r in keys:
            if r not in rows:
                continue
            _, c, w = rows[r]
            texts[r] = c or ""
            if isinstance(w, (int, float)) and not isinstance(w, bool):
                weights[r] = float(w)
        return Candidates(keys=keys, dense=dense, lexical=lexical, lexical_complete=complete,
                          texts=texts,
                          dense_ranks={key: i for i, (key, _) in enumerate(ranked["dense"], 1) if key in dense},
                          lexical_ranks={key: i for i, (key, _) in enumerate(ranked["lexical"], 1) if key in lexical},
                          weights=weights, topical=self.topical(plan, qvec, keys, dense, rows, topics))

    def waiting_for_embedding(self, rowids: Sequence[int]) -> set[int]:
        """Those of ``rowids`` that are live, indexed memories with no stored embedding yet (waiting for the
        embedder), as opposed to rows erased or taken out of the index since a leg found them."""
        if not rowids:
            return set()
        return {r.rowid for r in self.records.index_rows(sorted(rowids)) if r.vec is None and r.state in _INDEXED}

    def topical(self, plan: QueryPlan, qvec: np.ndarray, keys: Sequence[int], dense: dict[int, float],
                rows: dict[int, Row] | None = None, topics: dict[int, bytes | None] | None = None
                ) -> dict[int, float]:
        """The topical leg (:attr:`Candidates.topical`) for a question naming people (``plan.topic``): the cosine
        of each candidate's stored topic vector to the vector of the question without its names (``plan.topic``;
        ``topical_query="topic"``, the default: embedded in the same call as the question by an embedder with
        ``embed_queries``, see :meth:`query_vector`) or to the query vector itself (``"full"``: no second text).

        A topic blob ``b""`` means the memory's own words *are* its index text (a plain fact, a store value: no
        speaker tag or context was added), so the names in it are its content; it is scored by its dense cosine
        to the full question, in both modes (the name-free question would lose the very word such a memory is
        found by: "Ann moved to Lisbon" for "Where did Ann move?"). So is a missing one when other candidates
        have theirs (memories written before schema 3). Empty when the leg is off (``topical_weight`` 0), for
        dialogues and queries naming no one, and when no candidate has a topic vector (a cube written before
        schema 3).

        ``topics``: topic vectors the legs already read (:class:`Prefetched`); only the others are read here."""
        topic = plan.topic
        if not topic or not float(getattr(self.config, "topical_weight", 0.0) or 0.0) or not keys:
            return {}
        known = topics or {}
        blobs = {r: t for r in keys if (t := known.get(r)) is not None}
        missing = [r for r in keys if r not in known]
        if missing:
            blobs.update(self.records.topic_vectors(missing))
        if not blobs:  # no candidate has one (a cube written before schema 3): no such leg, fusion as before
            return {}
        out: dict[int, float] = {}
        own = [r for r in keys if r in dense and blobs.get(r)]
        # b"": the embedding itself. A candidate with no topic vector at all (written before schema 3, in a cube
        # that has newer ones) is scored the same way rather than at the leg's floor: otherwise an upgraded cube
        # would rank every older memory below the newer ones on this leg.
        same = [r for r in keys if r in dense and not blobs.get(r)]
        if self._topic_query():
            emb = self.embedder
            last, _TOPIC_VEC.last = getattr(_TOPIC_VEC, "last", None), None
            if last is not None and last[0] is emb and last[1] == topic:  # embedded with the query (query_vector)
                tvec = last[2]
            else:
                try:
                    tvec = cached_query_vector(emb, ("topic", topic), lambda: emb.embed_query(topic),
                                               self.config.query_cache)
                except Exception as exc:  # the embedder went down after the query vector (or that was cached)
                    if not embedder_down(exc):
                        raise
                    embedder_failed(emb, exc)
                    skip_leg("topical")
                    return {}
            qvec = tvec
        out.update((r, dense[r]) for r in same)
        if own:
            out.update(score_blobs(qvec, own, [blobs[r] for r in own], len(own)))
        return out

    def dense(self, query: str | np.ndarray, f: SearchFilter, cf: "CompiledFilter", n: int, *,
              pre: Prefetched | None = None) -> list[tuple[int, float]]:
        """The best ``n`` (rowid, cosine) passing the filter: exact over stored embeddings when the filter narrows
        the search to at most ``exact_below`` rows or the index is down, else the ANN index checked against the
        filter in the store, plus rows whose vectors the index has not received yet (scored exactly).

        With ``pre``, the filter check of the ANN hits also reads those hits and the pending rows into ``pre``
        (their rows and full items), in one call (:meth:`RecordStore.candidates_passing`: one round trip on a
        server)."""
        qvec = self.embedder.embed_query(query) if isinstance(query, str) else query
        if qvec.shape[-1] != self.dim:
            raise EmbeddingDimensionError(f"query embedding has dimension {qvec.shape[-1]}")
        cfg = self.config
        if (f.user_id is not None or f.agent_id is not None or f.session_id is not None) \
                and not self.records.in_transaction():
            got = self.scoped_dense(qvec, (f.user_id, f.agent_id, f.session_id), cf, n)
            if got is not None:
                return got
        narrowed = any(v is not None for v in (f.tags_any, f.tags_all, f.metadata, f.ids, f.event_after,
                                                 f.event_before, f.forms, f.user_id, f.agent_id, f.session_id))
        degraded = self._degraded()
        if narrowed or f.kinds or degraded:
            limit = 10**9 if degraded else cfg.exact_below + 1
            rowids, blobs = self.records.filtered_vectors(cf, limit)
            if len(rowids) <= cfg.exact_below or degraded:
                return score_blobs(qvec, rowids, blobs, n)
        fresh = self.pending_scores(qvec, cf, n)
        # ANN over the whole index, then the authoritative SQL filter on the candidates, over-fetching while
        # too few pass. Nothing is pushed down to Chroma: its metadata pre-filter costs time proportional to
        # the rows it matches on every query (~100 ms at 30k memories even for a filter on the state alone),
        # while checking a few candidates in SQL costs well under a millisecond. Small filtered sets were
        # served exactly above.
        fetch = n
        while True:
            try:
                res = self.index.query(qvec, fetch, None)
            except BackendUnavailable as exc:
                self._on_index_down(exc)
                log.warning("dense search falls back to exact scan: %s", exc)
                return score_blobs(qvec, *self.records.filtered_vectors(cf, 10**9), n)
            if pre is not None and fetch == n:
                got = self.records.candidates_passing([i for i, _ in res], [r for r, _ in fresh], cf,
                                                      "recall_weight", with_items=True)
                ok = got.passing
                pre.rows.update(got.rows)
                pre.items.update(got.items)
                pre.topics.update(got.topics)
            else:
                ok = self.rowids_passing([i for i, _ in res], cf)
            out = [(ok[i], s) for i, s in res if i in ok]
            if fresh:  # rows whose vectors the index has not received yet, scored exactly
                mine = {r for r, _ in fresh}
                out = sorted([p for p in out if p[0] not in mine] + fresh, key=lambda p: -p[1])
            if len(out) >= n or len(res) < fetch:  # enough, or the whole index was seen
                return out[:n]
            if fetch >= 20000:  # the filter passes very few of the nearest rows: scan them exactly
                return score_blobs(qvec, *self.records.filtered_vectors(cf, 10**9), n)
            fetch *= 4

    #: whether scoped searches use the scope cache (:meth:`scoped_dense`); False reads the store every time
    #: (benchmarks compare the two; ``MEMOS_SCOPE_CACHE_MB=0`` turns it off for the whole process)
    use_scope_cache: bool = True

    def scoped_dense(self, qvec: np.ndarray, scope: tuple[str | None, str | None, str | None],
                     cf: "CompiledFilter", n: int) -> list[tuple[int, float]] | None:
        """The exact best ``n`` (rowid, cosine) passing ``cf`` in a user/agent/session scope, from the scope's
        cached vectors (:mod:`.scope_cache`: one matrix-vector product, no blob read, no ANN over-fetch), best
        first, equal scores in rowid order. ``None`` when there is no cache for this store (no change log,
        ``MEMOS_SCOPE_CACHE_MB=0``) or the scope does not fit in it: the caller reads the store.

        Every candidate is checked against the full filter in the store (state, expiry, kinds, tags, ...), best
        first, in growing chunks until ``n`` pass; when the filter passes few of the scope's rows, the rowids
        passing it are listed once instead (no vectors read). So the answer is the exact filtered scan's."""
        cache = scope_cache.cache_for(self.records) if self.use_scope_cache else None
        got = None if cache is None else cache.scores(scope, qvec, self.dim)
        if got is None:
            return None
        rowids, sims = got
        total = len(rowids)
        if not total or n <= 0:
            return []
        out: list[tuple[int, float]] = []
        seen = 0
        want = min(total, max(2 * n, 32))
        for _ in range(2):  # the best 2n (usually enough: a scope's rows mostly pass), then 8n more
            order = best_order(sims, rowids, want)
            chunk = order[seen:]
            ok = self.records.passing_rowids(rowids[chunk].tolist(), cf)
            out += [(int(rowids[i]), float(sims[i])) for i in chunk if int(rowids[i]) in ok]
            seen = len(order)
            if len(out) >= n or seen >= total:
                return out[:n]
            want = min(total, want * 4)
        # The filter passes few of the scope's best rows (tags, metadata, a time range, archived ones...): list
        # the rows passing it (one pass over the scope's rows in the store, no vectors) and rank those.
        passing = np.fromiter(self.records.list_rowids(cf, "created", 10**12, 0), dtype=np.int64)
        mask = np.isin(rowids, passing)
        idx = np.flatnonzero(mask)
        order = idx[best_order(sims[idx], rowids[idx], n)]
        return [(int(rowids[i]), float(sims[i])) for i in order]

    def pending_scores(self, qvec: np.ndarray, cf: "CompiledFilter", n: int) -> list[tuple[int, float]]:
        """Exact scores of rows passing the filter whose vectors are still pending for the index (written with
        deferred sync, here or by another process), so that search sees every acknowledged write. Uses what
        :meth:`read_pending` read for this search (``cf``) on this thread, if it did."""
        got = getattr(_PENDING, "read", None)
        _PENDING.read = None
        if got is not None and got[0] is cf:
            rowids, blobs = got[1], got[2]
        else:
            rowids, blobs = self.records.filtered_vectors(cf, 10**9, pending_only=True)
        return score_blobs(qvec, rowids, blobs, n)

    #: ``callable()`` that embeds and stores the rows waiting for their embedding (``embed_sync="deferred"``, any
    #: worker's); set by the cube. With it, a search on a database server asks whether any row is waiting in the
    #: same round trip as its read of pending rows (:meth:`read_pending`) instead of in one of its own before.
    embed_waiting: Callable[[], Any] | None = None

    def folds_waiting(self, mode: str) -> bool:
        """Whether a ``mode`` search checks for rows waiting for their embedding itself (:meth:`read_pending`),
        so that the caller need not before it: on a database server, with :attr:`embed_waiting` set, when the
        search has a dense leg."""
        return (self.embed_waiting is not None and mode in ("hybrid", "dense") and self.records.embeds_later
                and self.records.concurrent_reads and not self.records.in_transaction())

    def read_pending(self, cf: "CompiledFilter") -> bool:
        """Before the dense leg: read the pending rows passing ``cf`` (for :meth:`pending_scores`) and whether any
        row waits for its embedding, in one call; if one does, embed the waiting rows (:attr:`embed_waiting`) and
        read the pending rows again. Returns whether it embedded. Read before the vector-index query, so that a
        row applied to the index and cleared in between is never missed."""
        rowids, blobs, waiting = self.records.pending_with_waiting(cf)
        if waiting and self.embed_waiting is not None:
            self.embed_waiting()
            rowids, blobs = self.records.filtered_vectors(cf, 10**9, pending_only=True)
        _PENDING.read = (cf, rowids, blobs)
        return bool(waiting)

    def rowids_passing(self, ids: Sequence[str], cf: "CompiledFilter") -> dict[str, int]:
        if not ids:
            return {}
        return self.records.rowids_passing(ids, cf)

    def exact_dense(self, qvec: np.ndarray, rowids: Sequence[int], n: int) -> list[tuple[int, float]]:
        """Exact cosine of the stored embeddings of ``rowids`` (those still stored), the best ``n``."""
        keep, blobs = self.records.embeddings_of(rowids)
        return score_blobs(qvec, keep, blobs, n)


def score_blobs(qvec: np.ndarray, rowids: list[int], blobs: list[bytes], n: int) -> list[tuple[int, float]]:
    """Exact cosine scores (stored embeddings are unit length) of ``blobs``; the best ``n``, stable order."""
    if not rowids:
        return []
    mat = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
    sims = matvec(mat, qvec)
    top = np.argsort(-sims, kind="stable")[:n]
    return [(rowids[i], float(sims[i])) for i in top]


def best_order(sims: np.ndarray, rowids: np.ndarray, m: int) -> np.ndarray:
    """Indices of the best ``m`` of ``sims`` (at least ``m`` when there are ties at the boundary: every row scoring
    what the m-th does), best first, equal scores in rowid order."""
    total = len(sims)
    if m < total:
        cut = np.partition(sims, total - m)[total - m]
        idx = np.flatnonzero(sims >= cut)
    else:
        idx = np.arange(total)
    return idx[np.lexsort((rowids[idx], -sims[idx]))]


def matvec(mat: np.ndarray, qvec: np.ndarray) -> np.ndarray:
    """``mat @ qvec`` without multi-threaded BLAS: a BLAS call on a few thousand rows wakes OpenBLAS's threads,
    which then busy-wait and slow the next query's embedding (torch) by 2x on a small machine. A plain loop
    over rows costs well under a millisecond here."""
    return np.einsum("ij,j->i", mat, qvec.astype(np.float32, copy=False))


def embedder_down(exc: BaseException) -> bool:
    """Whether ``exc``, raised while embedding a query, means the embedder is *down* (an outage a hybrid search
    rides out on its lexical leg) rather than misconfigured (which must raise in every mode).

    Down: the embedder itself raised -- a network error, a timeout, a model that cannot load -- whether raw (the
    default model's loader) or wrapped in a :class:`ValidationError` by :class:`~memos_core.embedding
    .CallableEmbedder` (``raise ... from`` the original), or a :class:`BackendUnavailable`. Not down: an
    :class:`EmbeddingDimensionError` (vectors of another dimension than the cube's), an answer that is not vectors
    (NaN, a wrong shape or count: our own checks, raised with no cause), and ``KeyboardInterrupt``/``SystemExit``.
    """
    if not isinstance(exc, Exception) or isinstance(exc, EmbeddingDimensionError):
        return False
    if isinstance(exc, BackendUnavailable):
        return True
    if isinstance(exc, MemOSError):
        cause = exc.__cause__
        return isinstance(cause, Exception) and (not isinstance(cause, MemOSError)
                                                 or isinstance(cause, BackendUnavailable))
    return True


#: embedders known to be down (weakly: it goes with the embedder) -> when the outage was first seen
_DOWN: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()
_DOWN_IDS: dict[int, float] = {}  # for an embedder that cannot be weakly referenced
_DOWN_LOCK = threading.Lock()


def embedder_failed(embedder: Any, exc: BaseException) -> None:
    """Note that ``embedder`` is down; the first failure of an outage logs one WARNING (not every search: several
    cubes sharing the embedder, or an agent searching in a loop, would flood the log)."""
    with _DOWN_LOCK:
        try:
            new = embedder not in _DOWN
            if new:
                _DOWN[embedder] = time.monotonic()
        except TypeError:
            new = id(embedder) not in _DOWN_IDS
            _DOWN_IDS.setdefault(id(embedder), time.monotonic())
    if new:
        log.warning("the embedder %s is down (%s: %s): hybrid searches return the lexical leg's hits only "
                    "(hit.degraded) and dense searches raise, until it answers again",
                    getattr(embedder, "name", type(embedder).__name__), type(exc).__name__, str(exc)[:300])


def embedder_answered(embedder: Any) -> None:
    """Note that ``embedder`` embedded a query: if it was down, the outage is over (one INFO line)."""
    if not _DOWN and not _DOWN_IDS:  # the usual case: no outage, no lock
        return
    with _DOWN_LOCK:
        try:
            since = _DOWN.pop(embedder, None)
        except TypeError:
            since = _DOWN_IDS.pop(id(embedder), None)
    if since is not None:
        log.info("the embedder %s answers again after %.1f s: hybrid searches use every retriever again",
                 getattr(embedder, "name", type(embedder).__name__), time.monotonic() - since)


def skip_leg(leg: str) -> None:
    """Record that ``leg`` could not run in the search running on this thread (see :func:`skipped_legs`)."""
    legs = getattr(_SKIPPED, "legs", None)
    if legs is None:
        legs = _SKIPPED.legs = set()
    legs.add(leg)


def skipped_legs() -> set[str]:
    """The legs (``"dense"``, ``"topical"``) that the last :meth:`Retriever.retrieve` on this thread could not run
    because the embedder was down (empty when every leg ran)."""
    return set(getattr(_SKIPPED, "legs", None) or ())


#: the legs the search running on this thread could not run (:func:`skip_leg`)
_SKIPPED = threading.local()
#: the pending rows :meth:`Retriever.read_pending` read for the search running on this thread
_PENDING = threading.local()
#: the name-free question's vector that :meth:`Retriever.query_vector` embedded beside the query on this thread,
#: for :meth:`Retriever.topical` of the same search: ``(embedder, topic, vector)`` (taken once, then cleared)
_TOPIC_VEC = threading.local()

_POOL: ThreadPoolExecutor | None = None
#: whether a hybrid search overlaps BM25 with the query embedding (MEMOS_OVERLAP_LEXICAL=0/1 overrides)
_OVERLAP_ENV = os.environ.get("MEMOS_OVERLAP_LEXICAL")
_SPARE_CORES = _OVERLAP_ENV == "1" or (_OVERLAP_ENV != "0" and (os.cpu_count() or 1) >= 4)
_POOL_LOCK = threading.Lock()


def search_pool() -> ThreadPoolExecutor:
    """A small process-wide pool for the concurrent legs of searches (created on first use)."""
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="memos-search")
    return _POOL
