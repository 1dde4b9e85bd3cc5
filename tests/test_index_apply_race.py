"""Applying pending vectors while another writer updates the same memory.

Worker A lists a pending row and reads its vector; before A's upsert reaches the vector index, worker B commits
a new version, applies it (its own upsert) and clears the pending mark. A's upsert then lands last, with the old
vector. The apply must notice (it reads the rows again after its upsert) and push the current vector, so the
index never keeps an older vector than the records. The interleaving is forced, not left to timing: B's update
runs inside A's upsert call.
"""

from __future__ import annotations

import numpy as np
from conftest import hashed_embed

from memos_core.cube import MemCube


def _unit(text: str) -> np.ndarray:
    v = hashed_embed([text])[0]
    return v / np.linalg.norm(v)


def _stored(cube: MemCube, item_id: str) -> np.ndarray:
    got = cube.index._inner._collection().get(ids=[item_id], include=["embeddings"])
    return np.asarray(got["embeddings"][0], dtype=np.float32)


def _race(cube: MemCube, item_id: str, during_upsert) -> None:
    """Mark ``item_id`` pending, then apply it; ``during_upsert`` runs inside the first upsert of that row, after
    the apply read the row and before its upsert reaches the index."""
    inner = cube.index._inner
    real = inner.upsert
    fired: list[bool] = []

    def racing(ids, vecs, metas):
        if item_id in ids and not fired:
            fired.append(True)
            during_upsert()
        return real(ids, vecs, metas)

    inner.upsert = racing
    try:
        with cube.records.transaction() as c:
            cube.records.mark_pending(c, cube.records.rowid(item_id))
        cube._apply_pending()
    finally:
        inner.upsert = real
    assert fired


def test_an_update_applied_during_an_older_apply_keeps_the_new_vector(tmp_path) -> None:
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        item = cube.add("the old note about herons on the river")
        cube.add("an unrelated memory about the bakery")
        # B commits version 2 and applies it (upsert + mark cleared) while A's upsert of version 1 is on its way
        _race(cube, item.id, lambda: cube.update(item.id, "the new note about pelicans at the harbour"))
        assert np.allclose(_stored(cube, item.id), _unit("the new note about pelicans at the harbour"), atol=1e-5)
        cube.records.flush()  # applied marks are cleared with the next transaction
        assert cube.records.pending_vectors() == []
        hits = cube.search("pelicans at the harbour", k=1, mode="dense")
        assert hits[0].item.id == item.id and hits[0].item.version == 2


def test_a_memory_forgotten_during_an_apply_does_not_come_back(tmp_path) -> None:
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        item = cube.add("a secret that will be forgotten")
        keep = cube.add("a memory that stays")
        _race(cube, item.id, lambda: cube.forget(item.id))
        assert item.id not in cube.index._inner.ids()  # the late upsert of the forgotten row was erased again
        assert keep.id in cube.index._inner.ids()
