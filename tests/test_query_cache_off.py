"""``RetrievalConfig(query_cache=0)`` turns a cube's query-vector memo off entirely. The memo is per embedder
(:func:`memos_core.embedding.cached_query_vector`), so cubes sharing one embedder share it: a cube with the memo
off must neither read what another cube cached (not even the name-free question's vector of the topical leg) nor
write to it, and must embed its question and the name-free question once, in one call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import hashed_embed
from test_query_topic_vector import MEMORIES, QUESTION, TOPIC  # the same question, topic and memories

from memos_core.cube import MemCube, RetrievalConfig
from memos_core.embedding import CallableEmbedder



class Counting(CallableEmbedder):
    """The fake embedder with a batched query call, counting query-side calls (documents are not counted)."""

    def __init__(self) -> None:
        super().__init__(hashed_embed, None, name="counting", dim=64)
        self.calls: list[tuple[str, list[str]]] = []

    def embed_query(self, text: str) -> Any:
        self.calls.append(("embed_query", [text]))
        return super().embed_query(text)

    def embed_queries(self, texts: list[str]) -> Any:
        self.calls.append(("embed_queries", list(texts)))
        return super().embed_documents(list(texts))


def test_a_cube_without_a_query_cache_neither_reads_nor_writes_the_shared_memo(tmp_path: Path) -> None:
    emb = Counting()
    with MemCube(tmp_path / "cached", embedder=emb, retrieval=RetrievalConfig(query_cache=256)) as cached, \
            MemCube(tmp_path / "off", embedder=emb, retrieval=RetrievalConfig(query_cache=0)) as off:
        cached.add_many(MEMORIES)
        off.add_many(MEMORIES)
        assert cached.search(QUESTION, k=3)[0].item.content == MEMORIES[0]["content"]
        assert emb.calls == [("embed_queries", [QUESTION, TOPIC])]
        assert cached.search(QUESTION, k=3)[0].item.content == MEMORIES[0]["content"]
        assert len(emb.calls) == 1  # the memo serves the cube that keeps one

        # the cube with the memo off: the question and its name-free form embedded once, in one call, although
        # the other cube's memo holds both vectors
        emb.calls.clear()
        assert off.search(QUESTION, k=3)[0].item.content == MEMORIES[0]["content"]
        assert emb.calls == [("embed_queries", [QUESTION, TOPIC])]
        # ... and what it embeds is not written to the memo: the caching cube embeds a new question itself
        emb.calls.clear()
        other = "Which pet did Leo get?"
        off.search(other, k=3)
        cached.search(other, k=3)
        assert [c[1][0] for c in emb.calls] == [other, other]


def test_a_cached_topic_vector_is_not_embedded_again(tmp_path: Path) -> None:
    """A cube with the memo on whose memo holds the name-free question's vector (cached by an earlier question
    with the same topic) embeds only the new question, and the topical leg takes the cached topic vector."""
    emb = Counting()
    with MemCube(tmp_path / "c", embedder=emb, retrieval=RetrievalConfig(query_cache=256)) as cube:
        cube.add_many(MEMORIES)
        cube.search(QUESTION, k=3)
        emb.calls.clear()
        cube.search("What pet did Leo adopt?", k=3)  # the same name-free question: "What pet did adopt?"
        assert emb.calls == [("embed_query", ["What pet did Leo adopt?"])]
