"""Search modes, scores and provenance of hits; reindex; the real default embedder."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import hashed_embed

from memos_core.cube import MemCube, RetrievalConfig
from memos_core.errors import BackendUnavailable, ValidationError
from memos_core.items import LifecycleState as S

# the plaintext suite runs on embedded Chroma and on a real Chroma server (see conftest.py)
pytestmark = pytest.mark.both_backends

FACTS = [
    "Ann lives in Lisbon and works as a nurse at the city hospital",
    "Bob's favourite food is ramen and he eats it every Friday evening",
    "The meeting with the design team moved to Thursday at 3 pm",
    "Carla has a cat called Pixel and a dog called Rex",
    "The project deadline is the 14th of March 2024",
    "Dana ran the Berlin marathon in under four hours",
    "Eli is allergic to peanuts and shellfish",
    "The spare key is under the blue flowerpot by the door",
    "Fatima is learning Portuguese before her trip to Lisbon",
    "The office wifi password changed on Monday",
    "George plays the cello in a community orchestra",
    "Hana's birthday party is on the 2nd of June at the lake house",
]
QUERIES = ["Where does Ann live", "ramen on Friday", "when is the design meeting", "Carla pets cat dog",
           "trip to Lisbon", "peanut allergy", "key flowerpot", "cello orchestra", "birthday at the lake"]


@pytest.fixture
def facts(cube):
    items = cube.add_many(FACTS)
    return cube, [i.id for i in items]


def _snapshot(cube, queries=QUERIES, **kw):
    return {(q, m): [(h.item.id, round(h.score, 6)) for h in cube.search(q, k=5, mode=m, record_usage=False, **kw)]
            for q in queries for m in ("hybrid", "dense", "lexical")}


def test_hits_carry_scores_and_retrievers(facts) -> None:
    cube, ids = facts
    hits = cube.search("Where does Ann live", k=5)
    assert 1 <= len(hits) <= 5
    assert hits[0].item.id == ids[0]
    assert set(hits[0].retrievers) == {"dense", "lexical"} and set(hits[0].ranks) == {"dense", "lexical"}
    dense = cube.search("Where does Ann live", k=60, mode="dense")
    lexical = cube.search("Where does Ann live", k=60, mode="lexical")
    own = {"dense": {h.item.id: (i, h.retrievers["dense"]) for i, h in enumerate(dense, 1)},
           "lexical": {h.item.id: (i, h.retrievers["lexical"]) for i, h in enumerate(lexical, 1)}}
    for h in hits:
        assert set(h.retrievers) == set(h.ranks) and h.ranks
        # the reported ranks and scores are the ones each retriever gives on its own
        for name, rank in h.ranks.items():
            assert own[name][h.item.id][0] == rank
            assert h.retrievers[name] == pytest.approx(own[name][h.item.id][1], abs=1e-4)
        # a retriever that ranked the memory among its candidates is always reported
        for name in ("dense", "lexical"):
            if h.item.id in own[name]:
                assert name in h.ranks
    # hits come in the fusion's order: rank 1, 2, ... with a non-increasing fused value
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert [h.fused for h in hits] == sorted((h.fused for h in hits), reverse=True)


def test_scores_are_bounded_for_every_mode_even_for_a_lone_hit(facts) -> None:
    cube, ids = facts
    for q in QUERIES:
        for mode in ("hybrid", "dense", "lexical"):
            hits = cube.search(q, k=12, mode=mode)
            assert all(0.0 <= h.score <= 1.0 for h in hits), (q, mode)
            assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    # one candidate only (a filter narrows the set to a single memory): a score like any other
    lone = cube.search("Ann", k=5, filter={"ids": [ids[0]]})
    assert [h.item.id for h in lone] == [ids[0]] and 0.0 <= lone[0].score <= 1.0


@pytest.mark.parametrize("mode", ["hybrid", "dense", "lexical"])
def test_a_score_does_not_depend_on_how_many_memories_the_cube_holds(cube_path, open_cube, tmp_path, mode) -> None:
    """The regression of issue 15: the same exact match scored 0.5 alone, 0.786 with 2 items, 0.931 with 5."""
    target = FACTS[0]
    query = "Where does Ann live and work?"
    scores = []
    for n, folder in ((1, cube_path), (2, tmp_path / "two"), (len(FACTS), tmp_path / "all")):
        cube = open_cube(folder)
        others = [f for f in FACTS if f != target][: n - 1]
        cube.add_many([target, *others])
        hit = next(h for h in cube.search(query, k=n, mode=mode) if h.item.content == target)
        scores.append(hit.score)
    assert scores[0] == pytest.approx(scores[1], abs=1e-6) == pytest.approx(scores[2], abs=1e-6)


def test_min_score_keeps_the_same_memories_at_any_size(cube_path, open_cube, tmp_path) -> None:
    small = open_cube(cube_path)
    small.add_many(FACTS[:3])
    big = open_cube(tmp_path / "big")
    big.add_many(FACTS + [f"Filler note number {i} about nothing in particular" for i in range(40)])
    for q in QUERIES:
        every = {h.item.content: h.score for h in big.search(q, k=60)}
        cut = sorted(every.values())[len(every) // 2]
        kept = big.search(q, k=60, min_score=cut)
        assert kept and all(h.score >= cut for h in kept)
        assert {h.item.content for h in kept} == {c for c, s in every.items() if s >= cut}
        # a memory present in both cubes passes or fails the threshold in both
        for h in small.search(q, k=3):
            assert (h.score >= cut) == (every[h.item.content] >= cut), (q, h.item.content)
    with pytest.raises(ValidationError):
        big.search("Ann", min_score=1.5)
    with pytest.raises(ValidationError):
        big.search("Ann", min_score=True)

def test_rrf_fusion_score_is_the_weighted_reciprocal_rank_sum(cube_path, open_cube) -> None:
    try:
        cfg = RetrievalConfig(fusion="rrf")
    except TypeError:  # a core without a choice of fusion: RRF is the only one
        cfg = RetrievalConfig()
    cube = open_cube(cube_path, retrieval=cfg)
    cube.add_many(FACTS)
    w = {"dense": cube.retrieval.dense_weight, "lexical": cube.retrieval.lexical_weight}
    for q in QUERIES:
        hits = cube.search(q, k=5)
        for h in hits:
            assert h.fused == pytest.approx(sum(w[n] / (cube.retrieval.rrf_k + r) for n, r in h.ranks.items()))
            assert 0.0 <= h.score <= 1.0
        assert [h.fused for h in hits] == sorted((h.fused for h in hits), reverse=True)


def test_modes_use_only_their_retriever(facts) -> None:
    cube, ids = facts
    dense = cube.search("Carla pets cat dog", k=4, mode="dense")
    assert len(dense) == 4 and all(set(h.ranks) == {"dense"} for h in dense)
    sims = [h.retrievers["dense"] for h in dense]
    assert sims == sorted(sims, reverse=True) and all(-1.0 - 1e-6 <= s <= 1.0 + 1e-6 for s in sims)
    assert dense[0].item.id == ids[3]
    assert [h.ranks["dense"] for h in dense] == [1, 2, 3, 4]
    lex = cube.search("Carla pets cat dog", k=10, mode="lexical")
    assert [h.item.id for h in lex] == [ids[3]]  # only one memory shares a term
    assert set(lex[0].ranks) == {"lexical"} and lex[0].retrievers["lexical"] > 0
    assert cube.search("zzzz qqqq", mode="lexical") == []
    assert len(cube.search("zzzz qqqq", mode="dense", k=3)) == 3  # dense always ranks something


def test_exact_and_ann_dense_paths_agree(facts) -> None:
    cube, ids = facts
    for q in QUERIES:
        ann = [h.item.id for h in cube.search(q, k=5, mode="dense")]
        exact = [h.item.id for h in cube.search(q, k=5, mode="dense", filter={"ids": ids})]  # selective: exact
        assert ann == exact, q


def test_search_survives_an_unavailable_vector_index(facts, monkeypatch) -> None:
    cube, ids = facts
    want = _snapshot(cube)

    def down(*a, **kw):
        raise BackendUnavailable("chroma is down")

    monkeypatch.setattr(cube.index, "query", down)
    got = _snapshot(cube)
    assert cube.index_degraded
    for key in want:  # same items in the same order (exact scan instead of ANN)
        assert [i for i, _ in got[key]] == [i for i, _ in want[key]], key


def test_usage_is_counted(facts, tmp_path) -> None:
    cube, ids = facts
    cube.search("Where does Ann live", k=1)
    cube.search("Ann Lisbon nurse", k=1)
    cube.search("Ann Lisbon nurse", k=1, record_usage=False)
    cube.records.flush()
    assert cube.get(ids[0]).usage.access_count == 2
    assert cube.get(ids[0]).usage.last_access is not None
    assert cube.get(ids[1]).usage.access_count == 0


def test_k_and_ordering_are_deterministic(facts) -> None:
    cube, _ = facts
    for q in QUERIES:
        first = cube.search(q, k=3, record_usage=False)
        assert len(first) == 3
        assert [h.item.id for h in first] == [h.item.id for h in cube.search(q, k=3, record_usage=False)]
    assert len(cube.search("the", k=1000)) == len(FACTS)


def _lifecycle_mix(cube, ids):
    cube.delete(ids[5])
    cube.transition(ids[6], S.ARCHIVED)
    cube.update(ids[7], "The spare key is with the neighbour Mrs Okafor")


@pytest.mark.embedded_only  # about the embedded Chroma folder
def test_reindex_rebuilds_a_deleted_chroma_folder(cube_path, open_cube) -> None:
    cube = open_cube(cube_path)
    ids = [i.id for i in cube.add_many(FACTS)]
    _lifecycle_mix(cube, ids)
    before = _snapshot(cube)
    archived_before = _snapshot(cube, filter={"states": ["archived"]})
    n = cube.index.count()
    assert n == len(FACTS) - 1
    cube.close()

    shutil.rmtree(cube_path / "chroma")
    cube = open_cube(cube_path)  # opening repairs from the records ...
    assert cube.index.count() == n
    assert _snapshot(cube) == before
    assert cube.reindex() == {"indexed": n}  # ... and an explicit reindex rebuilds it from scratch
    assert cube.index.count() == n
    assert cube.index.ids() == set(ids) - {ids[5]}
    assert _snapshot(cube) == before
    assert _snapshot(cube, filter={"states": ["archived"]}) == archived_before
    assert cube.reindex(reembed=True) == {"indexed": n}
    assert _snapshot(cube) == before
    assert ids[5] not in {h.item.id for h in cube.search(FACTS[5], k=20)}


def test_index_is_repaired_after_chroma_lost_rows(cube_path, open_cube) -> None:
    cube = open_cube(cube_path)
    ids = [i.id for i in cube.add_many(FACTS)]
    before = _snapshot(cube)
    cube.records.flush()  # settle the lazy bookkeeping: nothing is pending any more
    assert cube.records.pending_vectors() == []
    cube.index.delete(ids[:4])  # the derived index lost some rows behind the cube's back
    cube.index.upsert(["ghost"], hashed_embed(["ghost"]), [{"state": "activated", "kind": "fact"}])
    fixed = cube.repair_index()
    assert fixed == {"pending": 0, "added": 4, "removed": 1}
    assert cube.index.ids() == set(ids)
    assert _snapshot(cube) == before


# ---------------------------------------------------------------------------------------------- real model
def test_default_embedder_finds_meaning_not_just_words(tmp_path, minilm) -> None:
    with MemCube(tmp_path / "c", embedder=minilm) as cube:
        manifest = json.loads((tmp_path / "c" / "cube.json").read_text())
        assert manifest["embedder"] == {"name": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384}
        ids = [i.id for i in cube.add_many(FACTS)]
        cases = {
            "Which city is Ann based in?": 0,
            "What does Bob like to eat?": 1,
            "Who has pets?": 3,
            "Does anyone have a food allergy?": 6,
            "Which musical instrument does George play?": 10,
            "Who did a long-distance running race?": 5,
        }
        for q, want in cases.items():
            assert cube.search(q, k=1, mode="dense")[0].item.id == ids[want], q
            assert ids[want] in [h.item.id for h in cube.search(q, k=3)], q


def test_default_embedder_survives_reopen_and_reindex(tmp_path, minilm) -> None:
    path = tmp_path / "c"
    with MemCube(path, embedder=minilm) as cube:
        cube.add_many(FACTS)
        before = _snapshot(cube, QUERIES[:4])
    shutil.rmtree(path / "chroma")
    with MemCube(path) as cube:  # embedder=None is the same default model
        assert cube.reindex() == {"indexed": len(FACTS)}
        assert _snapshot(cube, QUERIES[:4]) == before


@pytest.mark.sqlite_only  # takes the SQLite store's lock
@pytest.mark.parametrize("overlap", [False, True])
def test_concurrent_searches_match_serial_ones_and_a_search_under_the_records_lock_returns(
        facts, overlap, monkeypatch) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import memos_core.plaintext.retrieval as retrieval_module

    monkeypatch.setattr(retrieval_module, "_SPARE_CORES", overlap)  # BM25 on a worker thread, or inline
    cube, _ = facts
    serial = {q: [(h.item.id, h.score) for h in cube.search(q, k=5, record_usage=False)] for q in QUERIES}
    with ThreadPoolExecutor(max_workers=6) as pool:
        futures = {q: pool.submit(cube.search, q, k=5, record_usage=False) for q in QUERIES * 3}
        for q, fut in futures.items():
            assert [(h.item.id, h.score) for h in fut.result(timeout=60)] == serial[q]
    # a caller already inside the records lock (e.g. a hook running in a transaction) must not deadlock
    with ThreadPoolExecutor(max_workers=1) as pool:
        def locked_search():
            with cube.records._lock:
                return [(h.item.id, h.score) for h in cube.search(QUERIES[0], k=5, record_usage=False)]
        assert pool.submit(locked_search).result(timeout=60) == serial[QUERIES[0]]


def test_a_candidate_erased_between_the_legs_is_dropped_not_a_key_error(facts, monkeypatch) -> None:
    """Found by the multi-worker test: another worker forgot a memory after the ANN leg found it and before its
    exact dense score was read; hybrid search raised KeyError('dense'). It is no longer a memory: it is dropped."""
    cube, ids = facts
    baseline = cube.search("Where does Ann live?", k=5)
    gone = baseline[0]
    gone_rowid, _ = cube._load(gone.item.id)
    rows_of, passing, lexical_rows = (cube.records.candidate_rows, cube.records.candidates_passing,
                                      cube.records.lexical_rows)

    def without_gone(rows):  # its stored embedding vanished in between (as a forget leaves it)
        return {r: (None if r == gone_rowid else vec, c, w) for r, (vec, c, w) in rows.items()}

    # where hybrid search reads the candidates' embeddings (a server store reads them with each leg)
    monkeypatch.setattr(cube.records, "candidate_rows", lambda rowids, key: without_gone(rows_of(rowids, key)))
    monkeypatch.setattr(cube.records, "candidates_passing",
                        lambda *a, **kw: (lambda got: got._replace(rows=without_gone(got.rows)))(passing(*a, **kw)))
    monkeypatch.setattr(cube.records, "lexical_rows",
                        lambda *a, **kw: (lambda ranked, got: (ranked, got._replace(rows=without_gone(got.rows))))(
                            *lexical_rows(*a, **kw)))
    hits = cube.search("Where does Ann live?", k=5)
    assert hits and gone.item.id not in [h.item.id for h in hits]
    assert all(set(h.ranks) <= set(h.retrievers) for h in hits)


def test_a_refused_search_wins_over_bad_arguments_and_leaves_no_read_behind(facts) -> None:
    """On a database server the role check runs beside the search (both wait on the network): its refusal must
    still be what the caller sees, whatever else is wrong, and nothing may be recorded as read."""
    from memos_core.errors import PermissionDenied

    cube, ids = facts
    cube.governance.configure(audit_reads=True)
    before = cube.records.events()
    with pytest.raises(PermissionDenied):
        cube.search("Where does Ann live", k=5, actor="mallory")
    with pytest.raises(PermissionDenied):  # not the ValidationError of k=0
        cube.search("Where does Ann live", k=0, actor="mallory")
    with pytest.raises(ValidationError):  # a principal who may read gets the argument error
        cube.search("Where does Ann live", k=0)
    after = cube.records.events()[len(before):]
    assert [e["outcome"] for e in after] == ["denied", "denied"] and {e["actor"] for e in after} == {"mallory"}
    cube.records.flush()
    assert all(item.usage.access_count == 0 for item in cube.records.get_many(ids).values())
    hits = cube.search("Where does Ann live", k=5)  # and a permitted search still reads and records
    assert hits and cube.records.events()[-1]["op"] == "search"


def test_a_query_word_no_memory_holds_does_not_stand_in_for_the_rarest_word_over_the_work_budget(cube) -> None:
    # both backends cap the lexical leg's work on a large cube by keeping the query's rarest terms; a word that
    # occurs nowhere costs nothing and must not be kept instead of the rarest word that does occur (the leg would
    # then match no row at all)
    cube.add_many([f"a note about the weather today, number {i}" for i in range(100)])
    rare = {i.id for i in cube.add_many([f"weather report from Zanzibar, part {i}" for i in range(5)])}
    cube.records.lexical_match_budget = 40  # "weather" (105 rows) is over it
    hits = cube.search("weather in Zanzibar quokka", mode="lexical", k=5)
    assert {h.item.id for h in hits} == rare
    # the word next to the missing one is itself over the budget: it is kept all the same
    common = [h.item.id for h in cube.search("weather", mode="lexical", k=5)]
    assert len(common) == 5
    assert [h.item.id for h in cube.search("weather quokka", mode="lexical", k=5)] == common
