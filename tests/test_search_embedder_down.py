"""A hybrid search while the embedder is down degrades to its lexical leg instead of failing.

The embedder raising (an API timing out, a model that cannot load) is an outage: a hybrid search returns the BM25
leg's hits, scored as a lexical-only search scores them, marked ``hit.degraded``, and one WARNING per outage goes to
the ``memos`` logger (not one per search). ``mode="dense"`` has nothing to fall back on and still raises the typed
error. An embedder that answers with vectors of the wrong dimension, or with something that is not vectors, is a
configuration error, not an outage: every mode raises."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import hashed_embed

from memos_core import MemOS
from memos_core.errors import BackendUnavailable, EmbeddingDimensionError, ValidationError


class Switchable:
    """An embedder function whose behaviour the test switches: "up", "down" (raises), "dim" (wrong dimension),
    "nan" (not vectors)."""

    def __init__(self) -> None:
        self.state = "up"
        self.calls = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        if self.state == "down":
            raise ConnectionError("embedding API timed out")
        if self.state == "dim":
            return hashed_embed(texts, 32)
        out = hashed_embed(texts)
        if self.state == "nan":
            out[:, 0] = np.nan
        return out


FACTS = ["Ann keeps bees on the roof", "the ferry to the island leaves at noon", "Bob repairs old bicycles",
         "the library closes early on Fridays"]


@pytest.fixture
def flaky(tmp_path, open_cube):
    """A cube whose embedder the test switches (on PostgreSQL too, where the two legs run on two threads and the
    lexical leg reads its rows on the way: ``records_backends``)."""
    emb = Switchable()
    cube = open_cube(tmp_path / "c", embedder=emb, embed_sync="immediate")
    cube.retrieval.query_cache = 0  # every search embeds its query
    cube.add_many(FACTS)
    return cube, emb


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("memos")]


@pytest.mark.records_backends
def test_hybrid_search_returns_the_lexical_hits_while_the_embedder_is_down(flaky, caplog) -> None:
    cube, emb = flaky
    up = cube.search("when does the ferry leave", k=3)
    assert up[0].item.content == FACTS[1] and not up[0].degraded and "dense" in up[0].retrievers
    emb.state = "down"
    caplog.set_level(logging.INFO, logger="memos")
    hits = cube.search("when does the ferry leave", k=3)
    assert [h.item.content for h in hits] == [FACTS[1]]
    assert all(h.degraded for h in hits)
    assert set(hits[0].retrievers) == {"lexical"} and set(hits[0].ranks) == {"lexical"}
    lexical = cube.search("when does the ferry leave", k=3, mode="lexical")
    assert [(h.item.id, h.score) for h in hits] == [(h.item.id, h.score) for h in lexical]  # scored as lexical
    assert cube.search("bees on the roof", k=3)[0].item.content == FACTS[0]
    assert cube.search("old bicycles", k=3, min_score=0.0)[0].item.content == FACTS[2]
    down = _warnings(caplog)
    assert len(down) == 1 and "embedder" in down[0] and "lexical" in down[0]  # once per outage, not per search
    with pytest.raises(ValidationError, match="embedder"):
        cube.search("when does the ferry leave", k=3, mode="dense")  # nothing to fall back on

    emb.state = "up"  # back: full hybrid search again, and the next outage warns again
    again = cube.search("bees on the roof", k=3)
    assert not again[0].degraded and "dense" in again[0].retrievers
    assert any("embedder" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)
    emb.state = "down"
    cube.search("library on Fridays", k=3)
    assert len(_warnings(caplog)) == 2


def test_memos_search_and_adapters_see_the_degraded_hits(tmp_path) -> None:
    emb = Switchable()
    mem = MemOS(tmp_path / "m", embedder=emb, embed_sync="immediate")
    try:
        mem.add("Ann keeps bees on the roof", user_id="ann", infer=False)
        emb.state = "down"
        hits = mem.search("bees", user_id="ann")
        assert [h.item.content for h in hits] == ["Ann keeps bees on the roof"] and hits[0].degraded
        from memos_core.os import hit_metadata

        assert hit_metadata(hits[0])["degraded"] is True
    finally:
        mem.close()


def test_a_wrong_dimension_or_a_non_vector_answer_still_raises(flaky) -> None:
    cube, emb = flaky
    emb.state = "dim"
    for mode in ("hybrid", "dense"):
        with pytest.raises(EmbeddingDimensionError):
            cube.search("when does the ferry leave", k=3, mode=mode)
    emb.state = "nan"
    with pytest.raises(ValidationError, match="NaN"):
        cube.search("when does the ferry leave", k=3)
    assert cube.search("when does the ferry leave", k=3, mode="lexical")[0].item.content == FACTS[1]


def test_what_counts_as_the_embedder_being_down() -> None:
    from memos_core.plaintext.retrieval import embedder_down

    def wrapped(cause: BaseException) -> ValidationError:
        try:
            raise ValidationError("embedder x failed") from cause
        except ValidationError as exc:
            return exc

    assert embedder_down(ConnectionError("timeout"))
    assert embedder_down(OSError("model file missing"))  # the default model cannot load
    assert embedder_down(wrapped(TimeoutError()))  # a LangChain/callable embedder that raised
    assert embedder_down(BackendUnavailable("embedding server unreachable"))
    assert not embedder_down(EmbeddingDimensionError("dimension 32, expected 64"))
    assert not embedder_down(ValidationError("embedder x returned NaN or infinite values"))
    assert not embedder_down(KeyboardInterrupt())


def test_writes_and_searches_during_an_outage_log_one_warning(tmp_path, caplog) -> None:
    """With deferred embeddings (MemOS's default) a write during the outage waits for its embedding: the background
    embedder and every search try it again, and the outage is still one WARNING. When the embedder answers again,
    the waiting row is embedded and found by the dense leg too."""
    emb = Switchable()
    mem = MemOS(tmp_path / "m", embedder=emb)
    try:
        mem.add("Ann keeps bees on the roof", user_id="ann", infer=False)
        emb.state = "down"
        caplog.set_level(logging.INFO, logger="memos")
        mem.add("Bob repairs old bicycles", user_id="ann", infer=False)
        mem.add("the ferry to the island leaves at noon", user_id="ann", infer=False)
        for query in ("bicycles", "ferry", "bees"):
            hits = mem.search(query, user_id="ann", k=1)
            assert hits and query in hits[0].item.content and hits[0].degraded
        job = mem.cubes[mem.default_cube]._embed_job  # the background embedder's last try has finished
        if job is not None:
            job.result(timeout=60)
        assert len(_warnings(caplog)) == 1
        assert not [r for r in caplog.records if r.exc_info]  # no traceback per write
        emb.state = "up"
        hits = mem.search("repairs bicycles", user_id="ann", k=1)
        assert hits[0].item.content == "Bob repairs old bicycles" and "dense" in hits[0].retrievers
    finally:
        mem.close()
