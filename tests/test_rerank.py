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
