"""benchmarks/lm_rerank.py (issue 15's LM reranker experiment): the fast scoring paths give the same numbers as
scoring each (query, memory) pair on its own, and the combination reorders only inside the top K.

The scorer runs one forward over the shared prefix and reuses its KV cache for K right-padded continuations
(``cond``), and batches K (memory, focus) texts with left padding (``ql``); a bug in either (positions, padding,
a cache mutated by the first use) would silently change every figure in the README's "Tried in issue 15, session
9" table. Checked on a tiny random Llama built offline and reloaded with ``from_pretrained``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
from conftest import load_benchmark  # noqa: E402
from tiny_models import load_tiny_model, save_tiny_model  # noqa: E402

MEMORIES = [
    "Ann lives in Lisbon and works as a nurse.",
    "Bob eats ramen every Friday.",
    "My sister Carla has a cat called Pixel and a dog called Rex, and she walks Rex every morning before work.",
    "Meeting moved.",
]


@pytest.fixture(scope="module")
def lmr():
    return load_benchmark("lm_rerank")


@pytest.fixture(scope="module")
def scorer(lmr, tmp_path_factory):
    path = save_tiny_model(tmp_path_factory.mktemp("tiny-lmr") / "m", arch="llama", seed=3)
    return lmr.Scorer(loaded=load_tiny_model(path), bos=True)


def _mean_logprob(scorer, prefix: list[int], cont: list[int]) -> float:
    ids = torch.tensor([prefix + cont])
    with torch.no_grad():
        lp = torch.log_softmax(scorer.model(input_ids=ids).logits[0].float(), -1)
    return sum(float(lp[len(prefix) - 1 + i, t]) for i, t in enumerate(cont)) / len(cont)


def test_cond_with_a_shared_prefix_equals_each_pair_scored_alone(scorer):
    context = "Question: Where does Ann live?"
    got = scorer.cond(context, MEMORIES)
    prefix = scorer.bos + scorer.ids(context) + scorer.ids(scorer.sep + scorer.cue)
    want = [_mean_logprob(scorer, prefix, scorer.ids(" " + m)) for m in MEMORIES]
    assert got == pytest.approx(want, abs=1e-4)
    # the prefix's cache is not mutated by use: the same call again gives the same numbers
    assert scorer.cond(context, MEMORIES) == pytest.approx(got, abs=1e-6)


def test_pmi_prior_is_the_memory_after_the_cue_alone_and_cached(scorer):
    prior = scorer.prior(MEMORIES)
    prefix = scorer.bos + scorer.ids(scorer.cue)
    assert prior == pytest.approx([_mean_logprob(scorer, prefix, scorer.ids(" " + m)) for m in MEMORIES], abs=1e-4)
    assert set(MEMORIES) <= set(scorer.prior_cache)


def test_ql_with_left_padding_equals_each_memory_scored_alone(scorer):
    focus = "Where does Ann live?"
    got = scorer.ql(focus, MEMORIES)
    f_ids = scorer.ids(" " + focus)
    want = []
    for m in MEMORIES:
        prefix = scorer.bos + scorer.ids("Memory: " + m) + scorer.ids("\n\nWhat someone says next:")
        want.append(_mean_logprob(scorer, prefix, f_ids) * len(f_ids))
    assert got == pytest.approx(want, abs=1e-3)


def test_query_focus_and_memory_text(lmr):
    dialogue = '<Bart>: "I fell off my bike." <Assistant>: "Oh no, are you hurt?" <Bart>: "My knee hurts a lot."'
    assert lmr.query_focus(dialogue) == "My knee hurts a lot."
    assert lmr.query_focus("When did Ann move to Lisbon?") == "When did Ann move to Lisbon?"
    assert lmr.query_context(dialogue).splitlines()[0] == "Bart: I fell off my bike."
    assert lmr.memory_text("memory: Bart danced at the party.") == "Bart danced at the party."
    assert lmr.memory_text("Ann: I moved.") == "Ann: I moved."


def _row(n: int = 8, gold: int = 6) -> dict:
    """A kept query row (tune_fusion's format) whose dense scores rank candidate i at place i + 1; ``gold`` holds
    the evidence."""
    cands = [{"key": i, "dense": 0.9 - 0.05 * i, "lexical": None, "dr": i + 1, "lr": None, "topical": None,
              "topical_q": None, "text": f"memory: thing number {i}", "meta": {}, "hit": i == gold}
             for i in range(n)]
    return {"query": "what about the thing", "lexical_complete": True, "cands": cands}


def test_combination_reorders_only_inside_the_top_k(lmr):
    row = _row()
    shipped = [key for key, _ in lmr.shipped(row, lmr.RetrievalConfig())]
    assert shipped == list(range(8))
    lm_scores = [0.0] * 8
    lm_scores[6] = 10.0  # the LM is sure about the evidence, ranked 7th by the hybrid
    entry = {"keys": shipped[:8], "ql": lm_scores}
    inside = lmr.evaluate([row], {0: entry}, "ql", math.inf, 8)
    assert inside["any@1"] == 1.0
    outside = lmr.evaluate([row], {0: entry}, "ql", math.inf, 5)  # the evidence is not in the top 5: untouched
    assert outside == lmr.evaluate([row], {0: entry}, None, 0, 0)
    assert outside["any@1"] == 0.0 and outside["any@5"] == 0.0 and outside["any@10"] == 1.0
    # w = 0 keeps the hybrid's order
    assert lmr.evaluate([row], {0: entry}, "ql", 0.0, 8) == outside


def test_scopes_leave_other_queries_alone(lmr):
    row = _row()
    row["query"] = "<Ann>: I lost my thing. <Assistant>: Which one? <Ann>: The blue one."
    lm_scores = list(np.where(np.arange(8) == 6, 10.0, 0.0))
    entry = {"keys": [key for key, _ in lmr.shipped(row, lmr.RetrievalConfig())], "ql": lm_scores}
    assert entry["keys"][0] != 6
    assert lmr.evaluate([row], {0: entry}, "ql", math.inf, 8, only="questions")["any@1"] == 0.0
    assert lmr.evaluate([row], {0: entry}, "ql", math.inf, 8, only="named")["any@1"] == 0.0
    assert lmr.evaluate([row], {0: entry}, "ql", math.inf, 8, only="dialogues")["any@1"] == 1.0


# ---------------------------------------------------------------------------------------- the library's reranker
# (memos_core.plaintext.rerank, RetrievalConfig(reranker=...)): what a user who turns it on relies on

from memos_core.cube import RetrievalConfig  # noqa: E402
from memos_core.errors import BackendUnavailable, ValidationError  # noqa: E402
from memos_core.plaintext.rerank import (CallableReranker, QueryLikelihoodReranker, Reranker,  # noqa: E402
                                         combine, in_scope)
from memos_core.plaintext.query import analyze_query  # noqa: E402

NAMED = "What did Ann buy at the market?"
NAME_FREE = "what did she buy at the market?"
DIALOGUE = "<Ann>: I went to the market. <Assistant>: What did you buy? <Ann>: Some apples and pears."


def _fill(cube) -> None:
    fruits = ["apples", "pears", "plums", "figs", "grapes", "lemons", "melons", "cherries", "kiwis", "limes"]
    for i in range(36):
        cube.add(f"Ann bought {fruits[i % 10]} at the market on day {i}, and talked to stall keeper {i}.",
                 user_id="u")


def _hits(cube, query: str, k: int = 5, cfg: RetrievalConfig | None = None):
    cube.retrieval = cfg or RetrievalConfig()
    return cube.search(query, k=k, user_id="u", record_usage=False)


def _key(hits) -> list[tuple[str, float, float | None, int | None]]:
    return [(h.item.id, h.score, h.fused, h.rank) for h in hits]


class Prefers:
    """A reranker that likes one text (score 1) over every other (score 0) and counts its calls."""

    def __init__(self, text: str) -> None:
        self.text, self.calls = text, []

    def __call__(self, query: str, texts: list[str]) -> list[float]:
        self.calls.append((query, list(texts)))
        return [1.0 if t == self.text else 0.0 for t in texts]


def test_the_default_config_has_no_reranker_and_checks_its_values() -> None:
    cfg = RetrievalConfig()
    assert (cfg.reranker, cfg.rerank_k, cfg.rerank_weight, cfg.rerank_scope) == (None, 20, 2.0, "named")
    for bad in ({"rerank_k": 1}, {"rerank_k": 2.5}, {"rerank_k": True}, {"rerank_weight": -1.0},
                {"rerank_weight": float("nan")}, {"rerank_weight": "2"}, {"rerank_scope": "names"},
                {"reranker": lambda q, ts: ts}):  # a bare function: wrap it in CallableReranker
        with pytest.raises(ValidationError):
            RetrievalConfig(**bad)
    assert isinstance(CallableReranker(lambda q, ts: [0.0] * len(ts)), Reranker)
    with pytest.raises(ValidationError):
        CallableReranker(3)


def test_scopes() -> None:
    named, free, dia = (analyze_query(q) for q in (NAMED, NAME_FREE, DIALOGUE))
    assert [in_scope(p, "named") for p in (named, free, dia)] == [True, False, False]
    assert [in_scope(p, "questions") for p in (named, free, dia)] == [True, True, False]
    assert [in_scope(p, "all") for p in (named, free, dia)] == [True, True, True]


def test_combine_reorders_by_fused_plus_weighted_z_and_keeps_ties_in_order() -> None:
    assert combine([3.0, 2.0, 1.0], [0.0, 0.0, 0.0], 5.0) == [0, 1, 2]  # no opinion: the fused order
    assert combine([3.0, 2.0, 1.0], [0.0, 0.0, 9.0], 0.0) == [0, 1, 2]  # weight 0: the fused order
    assert combine([3.0, 2.0, 1.0], [0.0, 0.0, 9.0], 5.0) == [2, 0, 1]
    # z of [0, 0, 9] is [-0.71, -0.71, 1.41]: at weight 0.5 the third (1 + 0.71) passes the second (2 - 0.35), not
    # the first (3 - 0.35)
    assert combine([3.0, 2.0, 1.0], [0.0, 0.0, 9.0], 0.5) == [0, 2, 1]
    assert combine([1.0, 2.0], [0.0, 0.0], 1.0, standardise_fused=True) == [1, 0]


@pytest.mark.records_backends  # on PostgreSQL the legs read the candidates' items on the way: the same answer
def test_a_reranker_reorders_only_inside_the_top_rerank_k_and_k_is_respected(cube) -> None:
    _fill(cube)
    plain = _hits(cube, NAMED, k=12)
    assert len(plain) == 12
    target = plain[7]  # 8th by the fusion
    prefers = Prefers(target.item.content)
    cfg = RetrievalConfig(reranker=CallableReranker(prefers), rerank_k=10, rerank_weight=100.0)
    got = _hits(cube, NAMED, k=5, cfg=cfg)
    assert len(got) == 5 and len(prefers.calls[-1][1]) == 10  # the reranker saw the top rerank_k, k came back
    assert got[0].item.id == target.item.id and [h.rank for h in got] == [1, 2, 3, 4, 5]
    # the others keep the fusion's order; every hit keeps its calibrated score, and shows the reranker's own score
    assert [h.item.id for h in got[1:]] == [h.item.id for h in plain[:4]]
    by_id = {h.item.id: h for h in plain}
    for h in got:
        assert 0.0 <= h.score <= 1.0 and h.score == by_id[h.item.id].score
        assert h.retrievers["rerank"] == (1.0 if h.item.id == target.item.id else 0.0)
    # the memory 8th by the fusion is outside a top 6: nothing moves
    cfg = RetrievalConfig(reranker=CallableReranker(prefers), rerank_k=6, rerank_weight=100.0)
    assert [h.item.id for h in _hits(cube, NAMED, k=5, cfg=cfg)] == [h.item.id for h in plain[:5]]
    # rerank_k below k: the top k is reranked
    cfg = RetrievalConfig(reranker=CallableReranker(prefers), rerank_k=2, rerank_weight=100.0)
    got = _hits(cube, NAMED, k=10, cfg=cfg)
    assert len(prefers.calls[-1][1]) == 10 and got[0].item.id == target.item.id


def test_queries_out_of_scope_are_searched_exactly_as_without_a_reranker(cube) -> None:
    _fill(cube)
    for query in (NAME_FREE, DIALOGUE):
        plain = _hits(cube, query, k=8)
        prefers = Prefers(plain[-1].item.content)
        got = _hits(cube, query, k=8, cfg=RetrievalConfig(reranker=CallableReranker(prefers)))
        assert _key(got) == _key(plain) and not prefers.calls
        assert all("rerank" not in h.retrievers for h in got)
    # the wider scopes take them in
    prefers = Prefers(_hits(cube, NAME_FREE, k=8)[-1].item.content)
    got = _hits(cube, NAME_FREE, k=8, cfg=RetrievalConfig(reranker=CallableReranker(prefers), rerank_weight=100.0,
                                                           rerank_scope="questions"))
    assert got[0].item.content == prefers.text
    prefers = Prefers(_hits(cube, DIALOGUE, k=8)[-1].item.content)
    cfg = RetrievalConfig(reranker=CallableReranker(prefers), rerank_weight=100.0, rerank_scope="questions")
    assert _key(_hits(cube, DIALOGUE, k=8, cfg=cfg)) == _key(_hits(cube, DIALOGUE, k=8))
    cfg = RetrievalConfig(reranker=CallableReranker(prefers), rerank_weight=100.0, rerank_scope="all")
    assert _hits(cube, DIALOGUE, k=8, cfg=cfg)[0].item.content == prefers.text


def test_a_reranker_without_an_opinion_keeps_the_fused_order_in_every_mode(cube) -> None:
    _fill(cube)
    flat = CallableReranker(lambda q, ts: [0.5] * len(ts))
    for mode in ("hybrid", "lexical", "dense"):
        cube.retrieval = RetrievalConfig()
        plain = cube.search(NAMED, k=6, user_id="u", mode=mode, record_usage=False)
        cube.retrieval = RetrievalConfig(reranker=flat)
        got = cube.search(NAMED, k=6, user_id="u", mode=mode, record_usage=False)
        assert [h.item.id for h in got] == [h.item.id for h in plain] and len(got) == 6
        assert all(h.retrievers["rerank"] == 0.5 for h in got)  # it ran
    cube.retrieval = RetrievalConfig(reranker=flat, fusion="rrf")
    assert len(cube.search(NAMED, k=6, user_id="u", record_usage=False)) == 6


def test_a_failing_reranker_raises_a_typed_error(cube) -> None:
    _fill(cube)

    def boom(query: str, texts: list[str]) -> list[float]:
        raise RuntimeError("model server down")

    with pytest.raises(BackendUnavailable, match="model server down"):
        _hits(cube, NAMED, cfg=RetrievalConfig(reranker=CallableReranker(boom)))
    for wrong in (lambda q, ts: [1.0], lambda q, ts: [float("nan")] * len(ts), lambda q, ts: ["x"] * len(ts)):
        with pytest.raises(ValidationError):
            _hits(cube, NAMED, cfg=RetrievalConfig(reranker=CallableReranker(wrong)))


def test_query_likelihood_reranker_on_a_tiny_model_folder(scorer, tmp_path) -> None:
    path = save_tiny_model(tmp_path / "m", arch="llama", seed=3)
    rr = QueryLikelihoodReranker(path, dtype="float32", bos=True)
    assert rr._loaded is None  # nothing loaded before the first score
    texts = ["memory: " + MEMORIES[0], *MEMORIES[1:]]
    got = rr.score("Where does Ann live?", texts)
    assert len(got) == len(texts) and all(math.isfinite(s) for s in got)
    # the benchmark's scorer (same weights, same prompt) gives the same numbers: the library is what was measured
    assert got == pytest.approx(scorer.ql("Where does Ann live?", MEMORIES), abs=1e-4)
    assert got != pytest.approx([got[0]] * len(got))  # it tells memories apart
    with pytest.raises(ValidationError):
        QueryLikelihoodReranker(tmp_path / "nothing-here").score("q", ["t"])
    with pytest.raises(ValidationError):
        QueryLikelihoodReranker(dtype="int8")


def test_memos_takes_the_reranker_in_its_retrieval_config(open_memos, tmp_path) -> None:
    from conftest import hashed_embed

    m = open_memos(tmp_path / "m", embedder=hashed_embed)
    for i in range(12):
        m.add(f"Ann bought apples at the market on day {i}.", user_id="u")
    plain = m.search(NAMED, user_id="u", k=8)
    prefers = Prefers(plain[5].item.content)
    m.close()
    m2 = open_memos(tmp_path / "m", embedder=hashed_embed,
                    retrieval=RetrievalConfig(reranker=CallableReranker(prefers), rerank_weight=100.0))
    got = m2.search(NAMED, user_id="u", k=3)
    assert len(got) == 3 and got[0].item.id == plain[5].item.id and got[0].retrievers["rerank"] == 1.0
