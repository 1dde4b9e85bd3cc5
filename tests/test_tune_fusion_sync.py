"""benchmarks/tune_fusion.py keeps each query's candidates between runs; when the query analysis changes the
name-free question (``QueryPlan.topic``), the kept topical cosines are recomputed from the cached vectors, exactly
as a fresh collection would compute them, and rows whose topic did not change are left as they are."""

from __future__ import annotations

import numpy as np

from conftest import load_benchmark


def _tune_fusion():
    return load_benchmark("tune_fusion")


class _Vectors:
    """A deterministic stand-in for the cached embedder: a unit vector per text, and the texts it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def docs(self, texts: list[str]) -> np.ndarray:
        self.asked.extend(texts)
        out = []
        for t in texts:
            v = np.random.default_rng(sum(map(ord, t))).standard_normal(8)
            out.append(v / np.linalg.norm(v))
        return np.stack(out).astype(np.float32)


def _row(query: str, **extra) -> dict:
    cands = [{"key": 1, "text": "Maya: I adopted a beagle.", "meta": {"speaker": "Maya"}, "topical": 0.123,
              "topical_q": 0.2},
             {"key": 2, "text": "Leo: work is work.", "meta": {"speaker": "Leo"}, "topical": 0.456, "topical_q": 0.3}]
    return {"query": query, "cands": cands, **extra}


def test_a_changed_or_unrecorded_topic_is_recomputed_from_the_vectors() -> None:
    tf = _tune_fusion()
    vec = _Vectors()
    rows = tf.sync_topical([_row("What pet did Maya adopt?")], vec)  # collected before topics were recorded
    topic = "What pet did adopt?"
    assert rows[0]["topic"] == topic
    want = vec.docs(["I adopted a beagle.", "work is work."]) @ vec.docs([topic])[0]
    assert [c["topical"] for c in rows[0]["cands"]] == want.tolist()
    assert [c["topical_q"] for c in rows[0]["cands"]] == [0.2, 0.3]  # the full query's cosine does not change


def test_an_unchanged_topic_is_left_alone_and_a_topic_gone_drops_the_leg() -> None:
    tf = _tune_fusion()
    vec = _Vectors()
    kept = tf.sync_topical([_row("What pet did Maya adopt?", topic="What pet did adopt?")], vec)
    assert [c["topical"] for c in kept[0]["cands"]] == [0.123, 0.456] and vec.asked == []
    # the analysis no longer gives a topic (no name in the question): no topical leg for this row
    gone = tf.sync_topical([_row("Where do I live?", topic="Where do live?")], vec)
    assert gone[0]["topic"] is None
    assert all(c["topical"] is None and c["topical_q"] is None for c in gone[0]["cands"])
