"""Search on both record stores: the lexical leg's work budget (the newest rows of an over-budget term) and what a
search on a database server reads before its legs (rows waiting for their embedding, pending rows).

Each test runs on SQLite + embedded Chroma and on PostgreSQL + a Chroma server (``records_backends``)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import hashed_embed

from memos_core.cube import MemCube

pytestmark = pytest.mark.records_backends


def _open(path: Any, store_for: Any, chroma_url: str | None, **kw: Any) -> MemCube:
    target = store_for(path)
    extra = {"workdir": path} if target != path else {}
    return MemCube(target, embedder=hashed_embed, chroma_url=chroma_url, **extra, **kw)


def test_over_the_budget_the_lexical_leg_ranks_the_newest_rows_of_the_rarest_term(tmp_path, store_for,
                                                                                   chroma_url) -> None:
    """When the rarest query term alone matches more rows than the work budget, BM25 ranks only its newest
    ``budget`` rows (rowid order), on every backend: an older row that would score higher is not ranked; a filter
    that passes fewer than k of the newest rows falls back to every matching row."""
    with _open(tmp_path / "c", store_for, chroma_url) as cube:
        # the best BM25 match is old: "heron" three times in a short text
        old_best = cube.add("heron heron heron", user_id="old")
        cube.add_many([{"content": f"a heron stood by the river bank on morning number {i} of the long winter",
                        "user_id": "ann"} for i in range(12)])
        newest = [i.id for i in cube.add_many([f"a heron flew over the harbour wall on day {i} of the trip"
                                               for i in range(4)])]
        everyone = cube.search("heron", mode="lexical", k=3, record_usage=False)
        assert everyone[0].item.id == old_best.id  # under the budget: every row is ranked
        cube.records.lexical_match_budget = 4  # "heron" (17 rows) is over it: its 4 newest rows are ranked
        cube.retrieval.candidates = 3  # what each leg of a search asks for (at least k)
        capped = cube.search("heron", mode="lexical", k=3, record_usage=False)
        assert len(capped) == 3 and {h.item.id for h in capped} <= set(newest)
        # a word that occurs nowhere changes nothing: the rarest term that occurs is still the one ranked
        assert [h.item.id for h in cube.search("heron quokka", mode="lexical", k=3, record_usage=False)] \
            == [h.item.id for h in capped]
        # the filter passes none of the newest rows: every matching row is ranked for it
        scoped = cube.search("heron", mode="lexical", k=3, user_id="old", record_usage=False)
        assert [h.item.id for h in scoped] == [old_best.id]
        scoped = cube.search("heron", mode="lexical", k=3, user_id="ann", record_usage=False)
        assert len(scoped) == 3 and all(h.item.scope.user_id == "ann" for h in scoped)
        # asked for more rows than the newest ones hold: every matching row is ranked
        assert cube.search("heron", mode="lexical", k=10, record_usage=False)[0].item.id == old_best.id
        # hybrid search's lexical leg follows the same budget
        hybrid = cube.search("heron", k=3, record_usage=False)
        assert {h.item.id for h in hybrid if "lexical" in h.retrievers} <= set(newest)


def test_a_search_finds_another_workers_row_waiting_for_its_embedding_by_both_legs(tmp_path, store_for,
                                                                                   chroma_url) -> None:
    """A row another worker committed without its embedding (``embed_sync="deferred"``) is found by the next
    hybrid search with both legs' scores: the search embeds it first. On a database server the search learns
    that a row waits in the same read as its pending rows, while its lexical leg already runs: the rows that leg
    read before the embedding was stored are read again."""
    a = _open(tmp_path / "c", store_for, chroma_url, vector_sync="deferred", embed_sync="deferred")
    b = _open(tmp_path / "c", store_for, chroma_url) if store_for(tmp_path / "c") == tmp_path / "c" else \
        MemCube(store_for(tmp_path / "c"), embedder=hashed_embed, chroma_url=chroma_url, workdir=tmp_path / "w2")
    try:
        a._embed_in_background = lambda: None  # type: ignore[method-assign]
        a.add_many(["the ferry to the island leaves at nine", "the bakery on the corner opens at seven"])
        a.close()  # embeds and applies what waits
        a = _open(tmp_path / "c", store_for, chroma_url, vector_sync="deferred", embed_sync="deferred")
        a._embed_in_background = lambda: None  # type: ignore[method-assign]
        assert b.search("ferry", k=1)  # b's open-time checks are done before the row below is written
        item = a.add("the lighthouse keeper paints the spiral stairs blue")
        assert a.records.rowid(item.id) in dict(a.records.waiting_embeddings())
        hits = b.search("lighthouse keeper paints stairs", k=3)  # another worker's search
        assert hits[0].item.id == item.id
        assert {"dense", "lexical"} <= set(hits[0].retrievers)
        assert b.records.waiting_embeddings() == []
    finally:
        b.close()
        a.close()


def test_on_a_database_server_a_search_asks_for_waiting_rows_beside_its_pending_read(tmp_path, store_for,
                                                                                     chroma_url, cube_backend) -> None:
    """No separate query for rows waiting for their embedding before a search on a server: it rides on the read
    of pending rows (one round trip less per search). SQLite asks before the search, as before (a local read)."""
    with _open(tmp_path / "c", store_for, chroma_url) as cube:
        cube.add_many(["the ferry to the island leaves at nine", "the bakery on the corner opens at seven"])
        cube.search("ferry", k=2)  # the open-time checks are done
        calls: list[str] = []
        real_waiting, real_pending = cube.records.waiting_embeddings, cube.records.pending_with_waiting
        cube.records.waiting_embeddings = lambda *a, **kw: calls.append("waiting") or real_waiting(*a, **kw)
        cube.records.pending_with_waiting = lambda *a, **kw: calls.append("pending+waiting") or real_pending(*a, **kw)
        assert cube.search("ferry island", k=2)[0].item.content.startswith("the ferry")
        if cube_backend == "postgres":
            assert calls == ["pending+waiting"]
        else:
            assert "pending+waiting" not in calls


def test_topic_vectors_ride_on_the_legs_reads_with_the_same_hits(tmp_path, store_for, chroma_url,
                                                                 cube_backend) -> None:
    """For a question naming someone, the topical leg compares the candidates' topic vectors with the question. On a
    database server the legs read those vectors with the candidates (no read of its own); the hits and scores are
    those of reading them separately."""
    with _open(tmp_path / "c", store_for, chroma_url) as cube:
        cube.add_many(["Ann cooked a big pot of lentil soup for her neighbours on Sunday",
                       "Ann is learning the cello and practises every evening",
                       "Bob cooked ramen for Ann after the concert",
                       "The neighbours complained about the noise of the cello",
                       "Carla bakes sourdough bread every Saturday morning"])
        query = "What did Ann cook for the neighbours?"
        cube.search(query, k=3)
        calls: list[int] = []
        real = cube.records.topic_vectors
        cube.records.topic_vectors = lambda rowids: calls.append(len(rowids)) or real(rowids)
        legs: list[dict[int, float]] = []
        topical = cube.retriever.topical
        cube.retriever.topical = lambda *a, **kw: legs.append(topical(*a, **kw)) or legs[-1]  # type: ignore
        hits = cube.search(query, k=5, record_usage=False)
        assert len(hits) == 5 and legs[-1]  # the topical leg scored the candidates
        if cube_backend != "postgres":
            assert calls  # the leg ran: it read the candidates' topic vectors
        else:
            assert calls == []
            # the same search with nothing prefetched: the leg reads the vectors itself, with the same result
            passing, lexical_rows = cube.records.candidates_passing, cube.records.lexical_rows
            cube.records.candidates_passing = lambda *a, **kw: passing(*a, **kw)._replace(topics={})
            cube.records.lexical_rows = lambda *a, **kw: (lambda r, got: (r, got._replace(topics={})))(
                *lexical_rows(*a, **kw))
            again = cube.search(query, k=5, record_usage=False)
            assert calls and [(h.item.id, h.score, h.retrievers) for h in again] == \
                [(h.item.id, h.score, h.retrievers) for h in hits]


def test_usage_counts_of_many_searches_are_all_written_by_flush(tmp_path, store_for, chroma_url) -> None:
    """Usage counts are buffered (a database server writes a full buffer on a thread of its own, not in the
    search that filled it); ``flush()`` and close write every one."""
    with _open(tmp_path / "c", store_for, chroma_url) as cube:
        items = cube.add_many([f"note number {i} about the garden" for i in range(700)])
        rowids = [cube.records.rowid(i.id) for i in items]
        cube.records.record_usage(rowids[:600], 1.0)  # over the buffer's 512 rows
        cube.records.record_usage(rowids[100:], 2.0)
        cube.records.flush()
        counts = {i.id: i.usage.access_count for i in cube.records.get_many([i.id for i in items]).values()}
        assert [counts[i.id] for i in items] == [1] * 100 + [2] * 500 + [1] * 100
