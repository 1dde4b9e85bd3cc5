"""Defects found reviewing this session's core changes (the cube's write pipeline, deferred embeddings, the
pending-vector apply, erasure moved into the cube, migration). Each test pins one behaviour a user relies on;
interleavings are forced (a hook inside the call that races), not left to timing."""

from __future__ import annotations

from conftest import hashed_embed

from memos_core.cube import MemCube


def _index_ids(cube: MemCube) -> set[str]:
    return cube.index._inner.ids()


def test_a_forgotten_row_whose_rowid_is_reused_during_an_apply_leaves_no_vector(tmp_path) -> None:
    """An apply read a pending row and is about to upsert its vector; meanwhile the memory is forgotten and a new
    memory takes its SQLite rowid (the highest rowid is reused). The re-read after the upsert must see that the
    row now holds another memory and erase the forgotten one's vector, not only push the new one."""
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        keep = cube.add("a memory that stays about the bakery")
        secret = cube.add("a secret note that will be forgotten")  # the highest rowid
        rowid = cube.records.rowid(secret.id)
        inner = cube.index._inner
        real = inner.upsert
        fired: list[str] = []

        def racing(ids, vecs, metas):
            if secret.id in ids and not fired:
                cube.forget(secret.id)
                fired.append(cube.add("a new memory about the harbour crane").id)
            return real(ids, vecs, metas)

        inner.upsert = racing
        try:
            with cube.records.transaction() as c:
                cube.records.mark_pending(c, rowid)
            cube._apply_pending()
        finally:
            inner.upsert = real
        assert fired and cube.records.rowid(fired[0]) == rowid  # the interleaving under test happened
        assert cube.records.get(secret.id) is None
        assert _index_ids(cube) == {keep.id, fired[0]}  # the forgotten memory's vector did not come back
