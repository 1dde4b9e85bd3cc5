"""Fusion for a question naming no one (issue 15, session 7): the dense leg's weight is scaled by
``NAME_FREE_DENSE_SCALE`` and the lexical leg starts from ``NAME_FREE_LEXICAL_WEIGHT``, so the memory that holds the
question's exact words beats one the embedder only finds similar; a question naming someone and a pasted dialogue
keep their weights, and the settings can restore them."""

from __future__ import annotations

from memos_core.cube import RetrievalConfig
from memos_core.plaintext import analyze_query
from memos_core.plaintext.fusion import NAME_FREE_DENSE_SCALE, NAME_FREE_LEXICAL_WEIGHT, Candidates, fuse, lexical_weight

KEYS = ["similar", "words", "a", "b", "c", "d"]
# "similar": the embedder's favourite (e.g. the user's own earlier question); "words": the fact, BM25's favourite
DENSE = {"similar": 0.80, "words": 0.62, "a": 0.55, "b": 0.50, "c": 0.45, "d": 0.40}
LEXICAL = {"similar": 1.5, "words": 4.0, "a": 0.5}


def _cands() -> Candidates:
    return Candidates(keys=list(KEYS), dense=dict(DENSE), lexical=dict(LEXICAL), lexical_complete=True,
                      texts={k: k for k in KEYS}, dense_ranks={k: i for i, k in enumerate(KEYS, 1)},
                      lexical_ranks={k: i for i, k in enumerate(sorted(LEXICAL, key=lambda k: -LEXICAL[k]), 1)})


def _first(query: str, cfg: RetrievalConfig | None = None) -> str:
    return str(fuse(_cands(), analyze_query(query), cfg or RetrievalConfig())[0][0])


def test_a_question_naming_no_one_gives_the_dense_leg_less_say() -> None:
    assert (NAME_FREE_DENSE_SCALE, NAME_FREE_LEXICAL_WEIGHT) == (0.5, 0.4)
    assert _first("What is my parrot called?") == "words"
    assert _first("parrot name") == "words"  # keywords naming no one too
    assert _first("What is my parrot called?", _unscaled()) == "similar"


def test_a_question_naming_someone_or_a_dialogue_keeps_the_dense_weight() -> None:
    assert _first("What is Maya's parrot called?") == "similar"
    for query in ("What is Maya's parrot called?", "<Maya>: my parrot talks a lot. <Assistant>: What is it called?"):
        assert _fused(query) == _fused(query, _unscaled())
    assert _fused("What is my parrot called?") != _fused("What is my parrot called?", _unscaled())


def _fused(query: str, cfg: RetrievalConfig | None = None) -> list[tuple[str, float]]:
    return [(str(k), z) for k, z, *_ in fuse(_cands(), analyze_query(query), cfg or RetrievalConfig())]


def test_the_lexical_base_weight_of_a_question_naming_no_one() -> None:
    cfg = RetrievalConfig(confidence_weight=0.0)  # the base weight itself, not scaled by confidence
    assert lexical_weight(_cands(), analyze_query("What is my parrot called?"), cfg) == NAME_FREE_LEXICAL_WEIGHT
    assert lexical_weight(_cands(), analyze_query("What is Maya's parrot called?"), cfg) == cfg.question_lexical_weight
    cfg = RetrievalConfig(confidence_weight=0.0, name_free_lexical_weight=0.5)
    assert lexical_weight(_cands(), analyze_query("What is my parrot called?"), cfg) == 0.5
    fixed = RetrievalConfig(lexical_weight=0.7)  # a fixed lexical weight stays fixed
    assert lexical_weight(_cands(), analyze_query("What is my parrot called?"), fixed) == 0.7


def _unscaled() -> RetrievalConfig:
    return RetrievalConfig(name_free_dense_scale=1.0, name_free_lexical_weight=0.5)


def test_the_settings_are_keyword_arguments_with_the_fusion_defaults() -> None:
    cfg = RetrievalConfig()
    assert (cfg.name_free_dense_scale, cfg.name_free_lexical_weight) == (NAME_FREE_DENSE_SCALE, NAME_FREE_LEXICAL_WEIGHT)
    assert RetrievalConfig(topical_shift=0.0).topical_shift == 0.0
