"""Deferred vector sync: one memory per call without one vector-index write per call.

With ``vector_sync="deferred"`` (MemOS's default) an add is durable when the records commit returns, exactly as
with immediate sync; the vector index receives the rows in batches. What a user relies on, tested here: search
sees every acknowledged write at once, inspecting the index shows it current, a crash loses nothing (the next
open applies what was pending), and the batching really happens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import TESTS_DIR, hashed_embed

from memos_core.cube import _DEFER_MAX, MemCube
from memos_core.errors import ValidationError


def _count_upserts(cube: MemCube) -> list[int]:
    calls: list[int] = []
    real = cube.index._inner.upsert

    def counting(ids, vecs, metas):
        calls.append(len(ids))
        return real(ids, vecs, metas)

    cube.index._inner.upsert = counting
    return calls


def test_setting_is_validated(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValidationError, match="vector_sync"):
        MemCube(tmp_path / "a", embedder=hashed_embed, vector_sync="later")  # type: ignore[arg-type]
    monkeypatch.setenv("MEMOS_VECTOR_SYNC", "deferred")
    with MemCube(tmp_path / "b", embedder=hashed_embed) as cube:
        assert cube.vector_sync == "deferred"
    monkeypatch.delenv("MEMOS_VECTOR_SYNC")
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        assert cube.vector_sync == "immediate"


def test_search_sees_deferred_writes_at_once(tmp_path) -> None:
    with MemCube(tmp_path / "c", embedder=hashed_embed, vector_sync="deferred") as cube:
        cube.add_many([f"background memory {i} about gardening and tomatoes" for i in range(80)])  # >= batch: applied
        assert cube.index.count() == 80  # (and no batch still running in the background)
        calls = _count_upserts(cube)
        item = cube.add("the lighthouse keeper paints the stairs blue")
        assert cube.records.pending_vectors() and calls == []  # durable in the records, not in the index yet
        # unfiltered dense search goes through the ANN index: the pending row is scored exactly alongside it
        hits = cube.search("lighthouse keeper paints stairs", k=3, mode="dense")
        assert hits[0].item.id == item.id
        assert calls == []  # searching did not force an index write
        hybrid = cube.search("lighthouse keeper", k=3)
        assert hybrid[0].item.id == item.id
        # inspecting the index brings it up to date first
        assert cube.index.count() == 81 and item.id in cube.index.ids()
        assert calls == [1]


def test_single_adds_reach_the_index_in_batches(tmp_path) -> None:
    with MemCube(tmp_path / "c", embedder=hashed_embed, vector_sync="deferred") as cube:
        calls = _count_upserts(cube)
        ids = [cube.add(f"memory number {i} about sailing").id for i in range(_DEFER_MAX + 5)]
        # the first _DEFER_MAX adds went to the index in one batch (applied on a background thread); searching
        # meanwhile sees every one of them
        assert cube.search("memory number 66 about sailing", k=1, mode="dense")[0].item.id == ids[66]
        assert cube.index.count() == _DEFER_MAX + 5  # inspection waits for that batch and applies the rest
        # a batch of at least _DEFER_MAX rows, then what came after (in one or two more calls, depending on when
        # the background batch ran): a handful of upserts for 69 adds, not 69
        assert calls[0] >= _DEFER_MAX and len(calls) <= 4 and sum(calls) >= _DEFER_MAX + 5, calls
        before = len(calls)
        cube.update(ids[0], "memory number 0 about sailing to Porto")  # other writes apply at once
        assert calls[before:] == [1]


def test_close_applies_pending_vectors(tmp_path) -> None:
    path = tmp_path / "c"
    cube = MemCube(path, embedder=hashed_embed, vector_sync="deferred")
    ids = [cube.add(f"note {i} on the harbour crane").id for i in range(5)]
    cube.close()
    with MemCube(path, embedder=hashed_embed) as again:
        assert again.records.pending_vectors() == []
        assert again.index._inner.count() == 5 and again.index._inner.ids() == set(ids)


def test_an_index_outage_during_a_deferred_flush_is_reported_and_healed(tmp_path, monkeypatch) -> None:
    from memos_core.errors import BackendUnavailable

    with MemCube(tmp_path / "c", embedder=hashed_embed, vector_sync="deferred") as cube:
        a = cube.add("written while the index is down")

        def down(*args, **kw):
            raise BackendUnavailable("simulated outage")

        monkeypatch.setattr(cube.index._inner, "upsert", down)
        assert cube.index_degraded  # reading the flag tries the deferred write first
        assert cube.get(a.id).content == "written while the index is down"
        assert cube.search("written while the index is down", k=1, mode="dense")[0].item.id == a.id
        monkeypatch.undo()
        b = cube.add("written after the outage")
        cube.update(b.id, "written after the outage, edited")  # an immediate write applies everything pending
        assert not cube.index_degraded and cube.index.ids() == {a.id, b.id}


WRITER = textwrap.dedent(f"""
    import os, signal, sys
    sys.path.insert(0, {str(TESTS_DIR)!r})
    from conftest import hashed_embed
    from memos_core.cube import MemCube
    cube = MemCube(sys.argv[1], embedder=hashed_embed, vector_sync="deferred")
    for i in range(10):
        print(cube.add(f"acknowledged memory {{i}} about the ferry timetable", id=f"k-{{i}}").id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close: the index never heard of these rows
""")


def test_kill_9_after_deferred_adds_loses_nothing(tmp_path) -> None:
    path = tmp_path / "c"
    MemCube(path, embedder=hashed_embed).close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MEMOS_PRELOAD="0"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    acked = proc.stdout.split()
    assert acked == [f"k-{i}" for i in range(10)]
    with MemCube(path, embedder=hashed_embed) as cube:  # open repairs the index from the records
        assert cube.records.pending_vectors() == []
        assert cube.index._inner.ids() == set(acked)
        for i in (0, 9):
            hits = cube.search(f"acknowledged memory {i} about the ferry timetable", k=1, mode="dense")
            assert hits[0].item.id == f"k-{i}"


def test_memos_defaults_to_deferred_and_can_be_told_otherwise(tmp_path, monkeypatch) -> None:
    from memos_core.os import MemOS

    monkeypatch.delenv("MEMOS_VECTOR_SYNC", raising=False)
    with MemOS(tmp_path / "a", embedder=hashed_embed) as mem:
        assert mem.cubes["default"].vector_sync == "deferred"
        mem.add("Ann moved to Lisbon", user_id="ann")
        assert [h.item.content for h in mem.search("Where does Ann live?", user_id="ann", k=1)] == \
            ["Ann moved to Lisbon"]
    with MemOS(tmp_path / "b", embedder=hashed_embed, vector_sync="immediate") as mem:
        assert mem.cubes["default"].vector_sync == "immediate"
