"""Fusion with the topical leg on the name-free question (issue 15, session 6): ``TOPICAL_SHIFT`` of the dense leg's
weight moves to the topical leg, so a memory on the question's topic beats one that only shares the name the
question mentions; with the full query vector (``topical_query="full"``), a dialogue, or the leg off, nothing moves."""

from __future__ import annotations

from memos_core.cube import RetrievalConfig
from memos_core.plaintext import analyze_query
from memos_core.plaintext.fusion import TOPICAL_SHIFT, TOPICAL_WEIGHT, Candidates, fuse

# "name": shares only the name with the question (the full question's vector likes it best);
# "topic": the turn on the question's topic (the name-free question's vector likes it best)
KEYS = ["name", "topic", "a", "b", "c"]
DENSE = {"name": 0.70, "topic": 0.45, "a": 0.40, "b": 0.38, "c": 0.30}
TOPICAL = {"name": 0.40, "topic": 0.50, "a": 0.36, "b": 0.33, "c": 0.28}
TEXTS = {"name": "Maya: hi Leo!", "topic": "Maya: I adopted a beagle", "a": "x", "b": "y", "c": "z"}


def _cands(topical: dict[str, float] | None = None) -> Candidates:
    return Candidates(keys=list(KEYS), dense=dict(DENSE), lexical={}, lexical_complete=True, texts=dict(TEXTS),
                      dense_ranks={k: i for i, k in enumerate(sorted(DENSE, key=lambda k: -DENSE[k]), 1)},
                      lexical_ranks={}, topical=dict(TOPICAL if topical is None else topical))


def _order(cfg: RetrievalConfig, query: str = "What pet did Maya adopt?", topical: dict | None = None) -> list:
    return [k for k, *_ in fuse(_cands(topical), analyze_query(query), cfg)]


def test_the_defaults_move_half_the_dense_weight_to_the_topical_leg() -> None:
    cfg = RetrievalConfig()
    assert cfg.topical_query == "topic" and (TOPICAL_WEIGHT, TOPICAL_SHIFT) == (1.0, 0.5)
    assert _order(cfg)[0] == "topic"
    cfg.topical_shift = 0.0  # type: ignore[attr-defined]  # equal weights: the name-dominated vector wins here
    assert _order(cfg)[0] == "name"


def test_nothing_moves_with_the_full_query_vector_a_dialogue_or_the_leg_off() -> None:
    full = RetrievalConfig(topical_query="full")
    assert _order(full)[0] == "name"
    off = RetrievalConfig(topical_weight=0.0)
    assert _order(off)[0] == "name"
    # a pasted dialogue never gets the leg (nor the shift): the dense order stands
    assert _order(RetrievalConfig(), "<Maya>: I adopted a pet. <Assistant>: Which one, Maya?")[0] == "name"
    # no topical scores (a cube written before topic vectors): no leg, no shift
    assert _order(RetrievalConfig(), topical={})[0] == "name"
