"""The topical leg of hybrid fusion (issue 15): a question without its names against a memory's own words.

The pieces are the query's topic (:attr:`QueryPlan.topic`), the memory's topic text (:func:`topic_text`) and the
optional third leg of :func:`fuse` (:attr:`Candidates.topical`). The README ("Retrieval quality") has the
measured effect (``benchmarks/tune_fusion.py --variants``).
"""

from __future__ import annotations

from memos_core.cube import RetrievalConfig
from memos_core.plaintext import analyze_query
from memos_core.plaintext.fusion import Candidates, fuse
from memos_core.reader.offline import OfflineReader, Turn, topic_text


def test_query_topic_drops_the_names_and_their_possessive() -> None:
    assert analyze_query("What does Maya do for work now?").topic == "What does do for work now?"
    assert analyze_query("What is Maya's dog called?").topic == "What is dog called?"
    assert analyze_query("When did Yusuf take Felipe to the farmers market?").topic == \
        "When did take to the farmers market?"
    # case-insensitive whole words: "mayapple" is not "Maya"
    assert analyze_query("Did Maya visit the mayapple farm with MAYA's aunt?").topic == \
        "Did visit the mayapple farm with aunt?"


def test_query_topic_is_none_without_names_for_dialogues_and_when_nothing_is_left() -> None:
    assert analyze_query("Where do I live?").topic is None  # no name: no topical leg (README: measured)
    assert analyze_query("<Bart>: I won a prize! <Assistant>: Well done, Bart!").topic is None  # a dialogue
    assert analyze_query("And Maya?").topic is None  # only stopwords would be left


def test_topic_text_is_the_turn_s_own_words() -> None:
    assert topic_text("Maya: I adopted a beagle.", "Maya") == "I adopted a beagle."
    assert topic_text("I adopted a beagle.", None) == "I adopted a beagle."
    assert topic_text("Leo: hi", "Maya") == "Leo: hi"  # not that speaker's tag: kept whole
    assert topic_text("Maya: ", "Maya") == "Maya: "  # never empty
    # the reader's content is "<speaker>: <text>": the topic text is the turn's text, without date or context
    specs = OfflineReader().read([Turn("Have you got a pet?", "Leo", "1", "2023-05-01"),
                                  Turn("Yes, a beagle called Biscuit.", "Maya", "2", "2023-05-01")])
    assert "in reply to" in specs[1]["index_text"] and "2023" in specs[1]["index_text"]
    assert topic_text(specs[1]["content"], specs[1]["provenance"]["speaker"]) == "Yes, a beagle called Biscuit."


def _cands(topical: dict[int, float]) -> Candidates:
    # 0: names the person (high dense and BM25), off topic; 1: on topic; 2-5: filler
    keys = list(range(6))
    return Candidates(keys=keys, dense={0: 0.62, 1: 0.55, 2: 0.40, 3: 0.38, 4: 0.35, 5: 0.30},
                      lexical={0: 6.0, 1: 4.0, 2: 1.0}, lexical_complete=True, texts={k: "" for k in keys},
                      dense_ranks={k: k + 1 for k in keys}, lexical_ranks={0: 1, 1: 2, 2: 3}, topical=topical)


def test_the_topical_leg_reorders_questions_only() -> None:
    cfg = RetrievalConfig()
    question = analyze_query("What does Maya do for work now?")
    dialogue = analyze_query("<Maya>: I'm tired of my job. <Assistant>: What happened, Maya?")
    on_topic = {0: 0.10, 1: 0.70, 2: 0.15, 3: 0.12, 4: 0.11, 5: 0.10}

    def order(c: Candidates, plan, cfg=cfg) -> list[int]:
        return [key for key, *_ in fuse(c, plan, cfg)]

    assert order(_cands({}), question)[0] == 0  # without the leg, the name wins
    assert order(_cands(on_topic), question)[0] == 1  # with it, the memory on the topic comes first
    assert order(_cands(on_topic), dialogue) == order(_cands({}), dialogue)  # dialogues: unchanged
    off = RetrievalConfig()
    off.topical_weight = 0.0  # type: ignore[attr-defined]
    assert order(_cands(on_topic), question, off) == order(_cands({}), question)
    # fused rows keep reporting the dense and lexical legs only (ranks, scores)
    key, _, scores, ranks = fuse(_cands(on_topic), question, cfg)[0]
    assert key == 1 and set(scores) == set(ranks) == {"dense", "lexical"}


def test_a_candidate_without_a_topic_vector_is_not_favoured() -> None:
    cfg = RetrievalConfig()
    question = analyze_query("What does Maya do for work now?")
    # memory 0 has no topic vector (e.g. written before the leg existed): it gets the leg's lowest score
    partial = {1: 0.70, 2: 0.15, 3: 0.12, 4: 0.11, 5: 0.10}
    fused = {key: z for key, z, *_ in fuse(_cands(partial), question, cfg)}
    base = {key: z for key, z, *_ in fuse(_cands({}), question, cfg)}
    assert fused[0] - base[0] < fused[1] - base[1]
