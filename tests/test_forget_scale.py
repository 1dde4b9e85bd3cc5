"""Forget that scales (issue 13 part 2, follow-up): no full rebuild of the vector index per forget.

An erased vector leaves Chroma's files by an in-place scrub whose cost does not grow with the cube (overwrite,
delete, forced persist, zeroed free pages): these tests forbid the rebuild (``SYNC_COMPACT_MAX = 0`` and a
counting ``compact``) and still find no erased vector, nor any erased text, in any file. Where a vector cannot be
scrubbed in place (a vector an earlier plain delete left, a Chroma release where in-place scrubbing is not
verified), the text still goes at once and the compaction is recorded as pending, logged with the id count, batched
across forgets, and run by ``MemCube.compact_index()`` / ``memos compact`` or on an open that finds it small.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
from test_forget_derived import PIN, dense_embed, stored_vec, text_traces, vector_traces

from memos_core import LifecycleState, MemCube
from memos_core import erasure
from memos_core.plaintext.vector import ChromaVectorIndex
from memos_core.reader.offline import OfflineReader, Turn


@pytest.fixture
def no_rebuild(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Any compaction is deferred (never run inside forget/purge); counts the rebuilds that do run."""
    calls: list[int] = []
    real = ChromaVectorIndex.compact

    def counting(self: ChromaVectorIndex, batches: Any) -> int:
        calls.append(1)
        return real(self, batches)

    monkeypatch.setattr(erasure, "SYNC_COMPACT_MAX", 0)
    monkeypatch.setattr(ChromaVectorIndex, "compact", counting)
    return calls


@pytest.fixture
def cube(tmp_path: Path) -> Iterator[MemCube]:
    c = MemCube(tmp_path / "cube", embedder=dense_embed)
    yield c
    c.close()


def _pin_pair(cube: MemCube, user: str = "ann") -> tuple[Any, Any]:
    specs = OfflineReader().read([Turn(f"is my zorblaxian PIN {PIN}?", "user", "t1"), Turn("Got it.", "assistant", "t2")])
    pin, reply = cube.add_many(specs, user_id=user)
    return pin, reply


def test_forget_and_purge_scrub_vectors_in_place_without_a_rebuild(cube: MemCube, no_rebuild: list[int]) -> None:
    folder = cube.path
    cube.add_many([f"filler memory {i} about tea" for i in range(40)], user_id="ann")
    pin, reply = _pin_pair(cube)
    secret = cube.add("the zorblaxian vault code", user_id="ann")
    edited = cube.add("draft: zorblaxian plan", user_id="ann")
    vecs = {"pin": stored_vec(cube, pin.id), "reply-before": stored_vec(cube, reply.id),
            "secret": stored_vec(cube, secret.id)}
    assert vector_traces(folder, vecs)
    cube.forget(pin.id)  # the reply is re-derived: its old vector (which embedded the PIN) must go too
    cube.delete(secret.id)
    cube.purge(secret.id)
    cube.forget(edited.id)
    assert no_rebuild == [] and cube.vector_compaction_pending() == 0
    assert text_traces(folder) == []
    assert vector_traces(folder, vecs) == []
    # the index still answers, with the re-derived neighbour's new vector and without the erased ones
    ids = cube.index.ids()
    assert reply.id in ids and not {pin.id, secret.id, edited.id} & ids
    assert cube.index.query(stored_vec(cube, reply.id), 1)[0][0] == reply.id
    assert cube.search("filler memory 3 about tea", user_id="ann")[0].item.content == "filler memory 3 about tea"
    cube.close()
    assert text_traces(folder) == [] and vector_traces(folder, vecs) == []
    with MemCube(folder, embedder=dense_embed) as again:
        assert again.repair_index()["added"] == 0 and again.index.count() == again.records.embedding_count()


def test_a_vector_left_by_a_plain_delete_defers_compaction_with_a_warning(
        cube: MemCube, no_rebuild: list[int], caplog: pytest.LogCaptureFixture) -> None:
    folder = cube.path
    cube.add_many([f"filler memory {i}" for i in range(30)])
    it = cube.add("the zorblaxian secret")
    vec = {"secret": stored_vec(cube, it.id)}
    # a cube written by an earlier release: its tombstones' vectors were deleted plainly (only marked in HNSW)
    cube.index.count()
    with cube.records.transaction() as c:
        cube.records.set_meta(c, erasure.VECTOR_SCRUBBED_KEY, "")
    cube.index._inner.delete([it.id])
    cube.delete(it.id)
    with caplog.at_level(logging.WARNING, logger="memos_core"):
        cube.purge(it.id)
    assert text_traces(folder) == []  # text: at once, everywhere
    assert cube.vector_compaction_pending() == 1 and no_rebuild == []
    assert any("vectors of 1 erased memories" in r.getMessage() for r in caplog.records)
    assert vector_traces(folder, vec)  # the deferred state is real: the plain delete left the vector
    got = cube.compact_index()
    assert got == {"indexed": 30, "erased_ids": 1} and no_rebuild == [1]
    assert cube.vector_compaction_pending() == 0 and vector_traces(folder, vec) == []
    assert cube.records.events()[-1]["op"] == "compact_index" and cube.governance.verify().ok
    assert cube.records.get_meta(erasure.VECTOR_SCRUBBED_KEY) == "1"  # in-place scrubbing holds again


def test_unverified_chroma_batches_deferred_forgets_into_one_compaction(
        tmp_path: Path, no_rebuild: list[int], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ChromaVectorIndex, "scrubs_in_place", property(lambda self: False))
    folder = tmp_path / "cube"
    cube = MemCube(folder, embedder=dense_embed)
    try:
        cube.add_many([f"filler memory {i}" for i in range(30)], user_id="ann")
        pins = [_pin_pair(cube, user) for user in ("ann", "bob")]
        vecs = {f"pin{n}": stored_vec(cube, p.id) for n, (p, _) in enumerate(pins)}
        with caplog.at_level(logging.WARNING, logger="memos_core"):
            with cube.deferred_erasure():  # several forgets, one scrub at the end
                for p, _ in pins:
                    cube.forget(p.id)
        warnings = [r.getMessage() for r in caplog.records if "erased memories" in r.getMessage()]
        assert len(warnings) == 1 and "vectors of 2 erased memories" in warnings[0]
        assert text_traces(folder) == [] and cube.vector_compaction_pending() == 2 and no_rebuild == []
        assert all(PIN not in (cube.get(r.id).index_text or "") for _, r in pins)
    finally:
        cube.close()
    monkeypatch.setattr(erasure, "SYNC_COMPACT_MAX", 2000)  # small enough: the next open compacts
    with MemCube(folder, embedder=dense_embed) as again:
        assert again.vector_compaction_pending() == 0 and no_rebuild == [1]
        assert again.index.count() == again.records.embedding_count() == 32
    assert vector_traces(folder, vecs) == [] and text_traces(folder) == []


def test_memos_compact_cli(tmp_path: Path, no_rebuild: list[int], monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    import memos_core.cli as cli

    folder = tmp_path / "cube"
    with MemCube(folder, embedder=dense_embed) as cube:
        cube.add_many([f"filler {i}" for i in range(5)])
        it = cube.add("the zorblaxian secret")
        cube.index.count()
        with cube.records.transaction() as c:
            cube.records.set_meta(c, erasure.VECTOR_SCRUBBED_KEY, "")
        cube.index._inner.delete([it.id])
        cube.delete(it.id)
        cube.purge(it.id)
        assert cube.vector_compaction_pending() == 1
    real = cli._cube
    monkeypatch.setattr(cli, "_cube", lambda path, create=False, embedder=None: real(path, create, dense_embed))
    assert cli.main(["compact", str(folder)]) == 0
    assert "5 vectors kept, 1 erased" in capsys.readouterr().out
    assert no_rebuild == [1]
    with MemCube(folder, embedder=dense_embed) as cube:
        assert cube.vector_compaction_pending() == 0
        assert cube.lookup(it.id).state == LifecycleState.PURGED  # type: ignore[union-attr]
    assert cli.main(["--as", "mallory", "compact", str(folder)]) == 2  # needs administer


# ---------------------------------------------------------------------------------------------- records
from test_records_contract import add, backend, open_store, pg, store  # noqa: E402,F401  (fixtures: both backends)


def test_erasure_candidates_in_sql_match_a_scan_of_the_scope(store: Any) -> None:
    """The records find the memories forget must re-derive without loading the scope; same answer as the scan
    (the base class's default) on every backend: current index text holding a fragment, or past version 1."""
    from memos_core.records.base import RecordStore

    frag = f"(in reply to: user: is my PIN {PIN}?)"
    hit = add(store, "Noted.", index_text=f"assistant: Noted. {frag}", user_id="ann")
    add(store, "other", index_text="assistant: other", user_id="ann")
    other_user = add(store, "Noted.", index_text=f"assistant: Noted. {frag}", user_id="bob")
    with_agent = add(store, "Noted.", index_text=f"assistant: Noted. {frag}", user_id="ann", agent_id="a1")
    edited = add(store, "v1", index_text="v1", user_id="ann", version=2)  # its versions are for the caller
    unscoped = add(store, "Noted.", index_text=f"x {frag}")
    got = store.erasure_candidates(None, "ann", None, [frag])
    assert got == [hit[0], edited[0]]
    assert got == RecordStore.erasure_candidates(store, None, "ann", None, [frag])
    assert store.erasure_candidates(None, "bob", None, [frag, "nothing"]) == [other_user[0]]
    assert store.erasure_candidates(None, "ann", "a1", [frag]) == [with_agent[0]]
    assert store.erasure_candidates(None, None, None, [frag]) == [unscoped[0]]
    assert store.erasure_candidates(None, "ann", None, ["100% _literal_ %"]) == [edited[0]]  # no LIKE wildcards
    with store.transaction() as c:
        assert store.erasure_candidates(c, "ann", None, [frag]) == got
