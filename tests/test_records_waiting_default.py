"""RecordStore's derived ``waiting_embeddings`` (what a backend without its own query gets) must list the rows
waiting for their embedding even when many pending rows ahead of them already have one: it filters the pending
marks first and trims to ``limit`` after, never the other way round (a row missed there is never embedded in
the background, and a deferred add would stay without its vector)."""

from __future__ import annotations

import numpy as np
from conftest import hashed_embed

from memos_core.cube import MemCube
from memos_core.records.base import RecordStore


def _cube(path) -> MemCube:
    cube = MemCube(path, embedder=hashed_embed, vector_sync="deferred", embed_sync="deferred")
    cube._embed_in_background = lambda: None  # type: ignore[method-assign]  # rows stay waiting until asked
    cube._ensure_index_checked()
    return cube


def test_waiting_rows_behind_pending_rows_with_embeddings_are_listed_within_the_limit(tmp_path) -> None:
    with _cube(tmp_path / "c") as cube:
        store = cube.records
        embedded = [cube.add(f"embedded memory number {i} about trains") for i in range(5)]
        with store.transaction() as c:  # embed those five: they stay pending (the vector index has not got them)
            rows = [(store.rowid(it.id), it.content) for it in embedded]
            assert RecordStore.put_embeddings(store, c, [(r, t, hashed_embed([t])[0]) for r, t in rows]) == \
                [r for r, _ in rows]
        assert set(store.pending_vectors()) >= {r for r, _ in rows}
        late = [cube.add(f"waiting memory number {i} about ferries") for i in range(3)]
        want = [(store.rowid(it.id), it.content) for it in late]
        assert store.waiting_embeddings() == want  # the SQLite query: the reference
        # five pending rows with an embedding come first: a trim before the filter returned nothing here
        assert RecordStore.waiting_embeddings(store, 2) == want[:2]
        assert RecordStore.waiting_embeddings(store, 3) == want
        assert RecordStore.waiting_embeddings(store, 1) == store.waiting_embeddings(1) == want[:1]
        assert RecordStore.waiting_embeddings(store) == want


def test_default_waiting_embeddings_drives_the_deferred_embedder_to_completion(tmp_path) -> None:
    """A backend that keeps the seam's default: the cube's embedding loop (which asks for a small batch at a
    time) still embeds every waiting row, however many embedded-but-pending rows precede them."""

    with _cube(tmp_path / "c") as cube:
        store = cube.records
        for b in range(4):  # 40 rows embedded but still pending for the vector index (ten at a time: below
            # the backlog past which adds embed inline)
            for i in range(10):
                cube.add(f"embedded memory number {b}.{i} about trains")
            assert cube._embed_waiting() == 10  # with the SQLite query
        assert len(store.pending_vectors()) == 40 and store.waiting_embeddings() == []
        late = cube.add("the ferry leaves at noon from pier nine")
        # the store answers with the seam's default from here on
        def default(limit: int = 10_000) -> list[tuple[int, str]]:
            return RecordStore.waiting_embeddings(store, limit)

        store.waiting_embeddings = default  # type: ignore[method-assign]
        assert cube._embed_waiting() == 1
        assert store.embedding(store.rowid(late.id)) is not None
        assert RecordStore.waiting_embeddings(store) == []
        v = hashed_embed([late.content])[0]
        assert np.allclose(store.embedding(store.rowid(late.id)), v / np.linalg.norm(v), atol=1e-5)
