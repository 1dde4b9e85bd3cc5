"""The name-free question for the topical leg (``RetrievalConfig(topical_query="topic")``) is embedded in the same
embedder call as the query itself (a batch of two short texts costs about one), and the vector it gives is the one a
separate call gives: the leg's scores do not depend on how the vector was obtained. An embedder without a batched
query method (a LangChain or LlamaIndex embedder) keeps two ``embed_query`` calls: queries are never embedded as
documents (asymmetric embedders embed the two differently)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import capture_fusion, hashed_embed

from memos_core.cube import MemCube, RetrievalConfig
from memos_core.embedding import resolve_embedder

QUESTION = "What pet did Maya adopt?"
TOPIC = "What pet did adopt?"  # QueryPlan.topic of QUESTION
MEMORIES = [{"content": "Maya: I adopted a beagle called Biscuit.", "provenance": {"speaker": "Maya"},
             "index_text": "Maya: I adopted a beagle called Biscuit. (in reply to: Leo: got a pet?)"},
            {"content": "Maya: the weather in Porto was lovely", "provenance": {"speaker": "Maya"}},
            {"content": "Leo has a cat called Pixel"}]


class _Calls:
    """Counts the embedder's query-side calls (documents embedded on writes are not counted)."""

    def __init__(self, emb: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        for name in ("embed_query", "embed_queries"):
            real = getattr(emb, name, None)
            if real is None:
                continue

            def spy(arg: Any, _real: Any = real, _name: str = name) -> Any:
                self.calls.append((_name, [arg] if isinstance(arg, str) else list(arg)))
                return _real(arg)

            monkeypatch.setattr(emb, name, spy)


def _expected_topical(cube: MemCube, tvec: np.ndarray, qvec: np.ndarray) -> dict[int, float]:
    """A turn's topic vector against the name-free question; a plain memory (topic blob b"": its own words are its
    index text, names included) by its embedding against the full question."""
    out = {}
    for m in cube.list(limit=10):
        rowid = cube.records.rowid(m.id)
        assert rowid is not None
        blob = cube.records.topic_vectors([rowid]).get(rowid)
        emb = cube.records.embedding(rowid)
        assert emb is not None
        out[rowid] = float(np.frombuffer(blob, dtype=np.float32) @ tvec) if blob else float(emb @ qvec)
    return out


@pytest.mark.parametrize("query_cache", [0, 256])
def test_the_default_embedder_embeds_the_question_and_its_topic_in_one_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query_cache: int) -> None:
    emb = resolve_embedder(None)
    tvec = np.array(emb.embed_query(TOPIC))  # the vector a separate call gives
    qvec = np.array(emb.embed_query(QUESTION))
    with MemCube(tmp_path / "c", retrieval=RetrievalConfig(topical_query="topic", query_cache=query_cache)) as cube:
        cube.add_many(MEMORIES)
        calls = _Calls(cube.embedder, monkeypatch)
        seen = capture_fusion(monkeypatch)
        hits = cube.search(QUESTION, k=3)
        assert hits[0].item.content == MEMORIES[0]["content"]
        assert calls.calls == [("embed_queries", [QUESTION, TOPIC])]  # one call, both texts
        want = _expected_topical(cube, tvec, qvec)
        assert len(want) == 3 and sum(bool(cube.records.topic_vectors([r]).get(r)) for r in want) == 2
        assert seen[-1].topical.keys() == want.keys()
        for rowid, v in want.items():
            assert seen[-1].topical[rowid] == pytest.approx(v, abs=1e-4)
        # the same question again: from the query cache when it is on, else embedded again the same way
        cube.search(QUESTION, k=3)
        assert calls.calls[1:] == ([] if query_cache else [("embed_queries", [QUESTION, TOPIC])])
        for rowid, v in want.items():
            assert seen[-1].topical[rowid] == pytest.approx(v, abs=1e-4)
        # topical_query="full" (the query vector alone) embeds the question alone
        cube.retrieval.topical_query = "full"
        cube.search("What pet did Leo adopt?", k=3)
        assert calls.calls[-1] == ("embed_query", ["What pet did Leo adopt?"])


def test_an_embedder_without_a_batched_query_call_embeds_the_topic_as_a_query(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs: list[list[str]] = []

    class Asymmetric:
        """Queries and documents embedded differently (as E5/BGE-style models do): a query is never a document."""
        name = "asymmetric-test"
        dim = 64

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            docs.append(list(texts))
            return [list(v) for v in np.asarray(hashed_embed(texts))]

        def embed_query(self, text: str) -> list[float]:
            return list(np.asarray(hashed_embed(["query: " + text]))[0])

    with MemCube(tmp_path / "c", embedder=Asymmetric(),
                 retrieval=RetrievalConfig(topical_query="topic", query_cache=0)) as cube:
        cube.add_many(MEMORIES)
        docs.clear()
        calls = _Calls(cube.embedder, monkeypatch)
        seen = capture_fusion(monkeypatch)
        cube.search(QUESTION, k=3)
        assert docs == []
        assert calls.calls == [("embed_query", [QUESTION]), ("embed_query", [TOPIC])]
        tvec, qvec = np.asarray(hashed_embed(["query: " + TOPIC, "query: " + QUESTION]))
        tvec, qvec = tvec / np.linalg.norm(tvec), qvec / np.linalg.norm(qvec)
        for rowid, v in _expected_topical(cube, tvec, qvec).items():
            assert seen[-1].topical[rowid] == pytest.approx(v, abs=1e-4)


def test_a_dense_only_search_embeds_the_question_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only hybrid searches have a topical leg: a dense-only search naming someone embeds the question alone
    (no name-free question it would never use), and finds the same memory."""
    with MemCube(tmp_path / "c", retrieval=RetrievalConfig(topical_query="topic", query_cache=0)) as cube:
        cube.add_many(MEMORIES)
        calls = _Calls(cube.embedder, monkeypatch)
        question = "Which pet did Maya adopt last spring?"  # not asked by another test: no cached vectors
        hits = cube.search(question, k=3, mode="dense")
        assert hits[0].item.content == MEMORIES[0]["content"]
        assert calls.calls == [("embed_query", [question])]
        cube.search(question, k=3)  # hybrid: the question and its name-free form in one call
        assert [(name, texts[0], len(texts)) for name, texts in calls.calls[1:]] == [("embed_queries", question, 2)]
        assert "Maya" not in calls.calls[1][1][1]
