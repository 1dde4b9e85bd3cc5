"""Deferred embeddings done by several threads at once (``MemCube._embed_waiting``).

A caller that needs the rows still waiting for their embedding (a search, a flush, close) embeds rows the
background thread has not claimed, beside it, instead of waiting while a core idles; it returns only once every
row it found waiting is stored. What a user relies on, tested here: each waiting text is embedded once, not once
per thread; a search right after adds sees every row's vector even when the background thread holds some of them;
a caller inside a records transaction never waits for rows another thread holds (no deadlock); and the
background embedding never waits behind a vector-index batch (they run on separate threads).
"""

from __future__ import annotations

import threading
import time

import numpy as np
from conftest import FAKE_DIM, hashed_embed

from memos_core import cube as cube_mod
from memos_core.cube import _EMBED_BACKLOG, _EMBED_BATCH, MemCube
from memos_core.embedding import CallableEmbedder


class _Recorder:
    """hashed_embed, recording which thread embedded which text; a thread named ``memos-embed*`` (the background
    embedder) can be held at a gate until the test opens it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()
        self.gate.set()
        self.inside = threading.Event()  # set when the background thread reached the gate

    def __call__(self, texts: list[str]) -> np.ndarray:
        name = threading.current_thread().name
        if name.startswith("memos-embed"):
            self.inside.set()
            assert self.gate.wait(30), "the test never opened the gate"
        with self.lock:
            self.calls.append((name, list(texts)))
        time.sleep(0.02)  # long enough for the other thread to claim its own batch meanwhile
        return hashed_embed(texts)

    def texts(self) -> list[str]:
        return [t for _, batch in self.calls for t in batch if t != "embedding probe"]


def _cube(path, rec: _Recorder) -> MemCube:
    emb = CallableEmbedder(rec, name="hashed-recorder", dim=FAKE_DIM)
    return MemCube(path, embedder=emb, vector_sync="deferred", embed_sync="deferred")


def _unit(texts: list[str]) -> np.ndarray:
    v = hashed_embed(texts)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_two_threads_embed_disjoint_batches_and_every_text_once(tmp_path) -> None:
    rec = _Recorder()
    with _cube(tmp_path / "c", rec) as cube:
        cube._ensure_index_checked()
        cube._embed_in_background = lambda: None  # type: ignore[method-assign]  # the rows stay waiting for the test
        contents = [f"memory {i}: the ferry to island {i} leaves at {i % 12 + 1} pm" for i in range(min(_EMBED_BACKLOG, 2 * _EMBED_BATCH))]
        for text in contents:
            cube.add(text)
        assert len(cube.records.waiting_embeddings()) == len(contents)
        start = threading.Barrier(2)
        stored: list[int] = []

        def run() -> None:
            start.wait()
            stored.append(cube._embed_waiting())

        threads = [threading.Thread(target=run, name=f"caller-{i}") for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sum(stored) == len(contents)
        assert cube.records.waiting_embeddings() == []
        assert sorted(rec.texts()) == sorted(contents)  # each text embedded once, by one of the two threads
        assert {name for name, _ in rec.calls} == {"caller-0", "caller-1"}  # both did part of it
        for item in cube.list(limit=1000):  # each row got its own text's vector, whichever thread embedded it
            vec = cube.records.embedding(cube.records.rowid(item.id))
            assert np.allclose(vec, _unit([item.content])[0], atol=1e-6)


def test_a_search_beside_the_background_thread_waits_for_the_rows_it_holds(tmp_path) -> None:
    rec = _Recorder()
    with _cube(tmp_path / "c", rec) as cube:
        cube._ensure_index_checked()
        rec.gate.clear()
        for i in range(_EMBED_BATCH + 3):
            cube.add(f"note {i} about the orchard and the pear trees")
        target = cube.add("the lighthouse keeper paints the stairs blue")
        assert rec.inside.wait(30)  # the background thread claimed a batch and is held inside the embedder
        assert cube._embed_claimed  # ... which another thread must not embed again
        found: list[list[str]] = []
        search = threading.Thread(target=lambda: found.append(
            [h.item.id for h in cube.search("who paints the stairs blue?", k=1, mode="dense")]))
        search.start()
        search.join(1.0)
        assert search.is_alive()  # every other row embedded, the held ones still to come: the search waits
        rec.gate.set()
        search.join(30)
        assert found == [[target.id]]
        assert cube.records.waiting_embeddings() == []
        stored = sorted(it.content for it in cube.list(limit=100))  # each once (the query is embedded too)
        assert sorted(t for t in rec.texts() if t != "who paints the stairs blue?") == stored


def test_inside_a_records_transaction_rows_held_by_another_thread_are_not_waited_for(tmp_path) -> None:
    rec = _Recorder()
    with _cube(tmp_path / "c", rec) as cube:
        cube._ensure_index_checked()
        rec.gate.clear()
        for i in range(3):
            cube.add(f"note {i} about the harbour")
        assert rec.inside.wait(30)
        held = set(cube._embed_claimed)
        assert held
        t0 = time.monotonic()
        with cube.records.transaction():
            cube._embed_waiting()  # the holder may need the records: waiting here could deadlock
        assert time.monotonic() - t0 < 5
        assert held <= {r for r, _ in cube.records.waiting_embeddings()}  # still waiting, embedded later
        rec.gate.set()
        cube._embed_waiting()
        assert cube.records.waiting_embeddings() == []


def test_background_embedding_does_not_wait_behind_a_vector_index_batch(tmp_path) -> None:
    rec = _Recorder()
    with _cube(tmp_path / "c", rec) as cube:
        cube._ensure_index_checked()
        release = threading.Event()
        blocker = cube_mod._index_pool().submit(release.wait, 30)  # a long vector-index batch in flight
        try:
            item = cube.add("the night train to Porto is late again")
            job = cube._embed_job
            assert job is not None
            job.result(timeout=20)  # done while the index thread is still busy
            assert not blocker.done()
            assert cube.records.embedding(cube.records.rowid(item.id)) is not None
        finally:
            release.set()
            blocker.result(timeout=30)
