"""Deferred embeddings: one memory per call without embedding on the caller's thread.

With ``embed_sync="deferred"`` (MemOS's default, with ``vector_sync="deferred"``) a small add commits its row
(content, versions, lexical index, audit record) without the embedding; a background thread embeds it right
after. What a user relies on, tested here: the add is durable and acknowledged at once; search sees it at once,
dense retrieval included (it embeds rows still waiting first); a write that changes the memory before its
embedding is stored always wins; close, reopen after kill -9, export and migration lose nothing; the backlog is
bounded.

Most tests switch the background thread off (``_embed_in_background`` replaced by a no-op) so that the rows
stay waiting until the behaviour under test runs: the order of events is then fixed, not left to a race.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import TESTS_DIR, hashed_embed

from memos_core.cube import _EMBED_BACKLOG, MemCube
from memos_core.errors import ValidationError


def _cube(path, **kw) -> MemCube:
    return MemCube(path, embedder=hashed_embed, vector_sync="deferred", embed_sync="deferred", **kw)


def _no_background(cube: MemCube) -> None:
    cube._embed_in_background = lambda: None  # type: ignore[method-assign]
    cube._ensure_index_checked()  # the first use of the vector index embeds what waits: done now, not mid-test


def _unit(texts: list[str]) -> np.ndarray:
    v = hashed_embed(texts)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_setting_is_validated_and_needs_deferred_vector_sync(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValidationError, match="embed_sync"):
        MemCube(tmp_path / "a", embedder=hashed_embed, embed_sync="later")  # type: ignore[arg-type]
    monkeypatch.delenv("MEMOS_EMBED_SYNC", raising=False)
    monkeypatch.delenv("MEMOS_VECTOR_SYNC", raising=False)
    with MemCube(tmp_path / "b", embedder=hashed_embed) as cube:
        assert cube.embed_sync == "immediate"
    with MemCube(tmp_path / "c", embedder=hashed_embed, embed_sync="deferred") as cube:
        assert cube.embed_sync == "immediate"  # the vector index is written at once: embedding later gains nothing
        cube.add("embedded before the commit")
        assert cube.records.waiting_embeddings() == []
    with _cube(tmp_path / "d") as cube:
        assert cube.embed_sync == "deferred"


def test_memos_defaults_to_deferred_embeddings(tmp_path, monkeypatch) -> None:
    from memos_core.os import MemOS

    monkeypatch.delenv("MEMOS_EMBED_SYNC", raising=False)
    monkeypatch.delenv("MEMOS_VECTOR_SYNC", raising=False)
    with MemOS(tmp_path / "a", embedder=hashed_embed) as mem:
        assert mem.cubes["default"].embed_sync == "deferred"
        mem.add("Ann moved to Lisbon in May", user_id="ann")
        hits = mem.search("Where did Ann move?", user_id="ann", k=1, mode="dense")
        assert [h.item.content for h in hits] == ["Ann moved to Lisbon in May"]
    with MemOS(tmp_path / "b", embedder=hashed_embed, embed_sync="immediate") as mem:
        assert mem.cubes["default"].embed_sync == "immediate"


def test_an_add_is_acknowledged_before_its_embedding_and_search_sees_it(tmp_path) -> None:
    with _cube(tmp_path / "c") as cube:
        cube.add_many([f"background memory {i} about gardening and tomatoes" for i in range(20)])
        _no_background(cube)
        item = cube.add("the lighthouse keeper paints the stairs blue")
        rowid = cube.records.rowid(item.id)
        assert cube.records.embedding(rowid) is None  # committed without it
        assert cube.records.waiting_embeddings() == [(rowid, item.content)]
        assert [e["op"] for e in cube.events(item.id)] == ["add"]  # the same audit record as an inline add
        assert cube.get(item.id).content == item.content  # durable and readable at once
        hits = cube.search("lighthouse keeper paints stairs", k=3, mode="dense")
        assert hits[0].item.id == item.id
        stored = cube.records.embedding(rowid)
        assert stored is not None and np.allclose(stored, _unit([item.content])[0], atol=1e-6)
        assert cube.records.waiting_embeddings() == []
        assert item.id in cube.index.ids()  # and the vector index receives it with the next batch


def test_the_background_thread_embeds_waiting_rows(tmp_path) -> None:
    with _cube(tmp_path / "c") as cube:
        ids = [cube.add(f"note {i} about the harbour crane").id for i in range(5)]
        job = cube._embed_job
        assert job is not None
        job.result(timeout=60)
        cube._embed_waiting()  # a row committed while the last job was finishing
        assert cube.records.waiting_embeddings() == []
        for i in ids:
            assert cube.records.embedding(cube.records.rowid(i)) is not None


def test_a_write_before_the_embedding_is_stored_wins(tmp_path) -> None:
    with _cube(tmp_path / "c") as cube:
        _no_background(cube)
        a = cube.add("the ferry leaves at nine")
        b = cube.add("the bakery opens at seven")
        c = cube.add("the museum closes on mondays")
        listed = dict(cube.records.waiting_embeddings())  # what a background batch read before the writes below
        stale = {r: _unit([t])[0] for r, t in listed.items()}
        cube.update(a.id, "the ferry leaves at ten")  # embeds the new text inline
        cube.delete(b.id)
        cube.forget(c.id)
        with cube.records.transaction() as txn:
            done = cube.records.put_embeddings(txn, [(r, t, stale[r]) for r, t in listed.items()])
        assert done == []  # every row changed since it was listed: nothing stale is stored
        ra = cube.records.rowid(a.id)
        assert np.allclose(cube.records.embedding(ra), _unit(["the ferry leaves at ten"])[0], atol=1e-6)
        assert cube.records.embedding(cube.records.rowid(b.id)) is None  # a tombstone is not indexed
        assert cube.records.waiting_embeddings() == []
        hits = cube.search("ferry leaves", k=1, mode="dense")
        assert hits[0].item.content == "the ferry leaves at ten"
        assert cube.index.ids() == {a.id}


def test_the_backlog_is_bounded(tmp_path) -> None:
    with _cube(tmp_path / "c") as cube:
        _no_background(cube)
        for i in range(_EMBED_BACKLOG + 6):
            cube.add(f"turn {i} of a long chat about sailing")
        assert len(cube.records.waiting_embeddings()) == _EMBED_BACKLOG  # past it, adds embed inline
        assert cube.count() == _EMBED_BACKLOG + 6


def test_close_embeds_waiting_rows(tmp_path) -> None:
    path = tmp_path / "c"
    cube = _cube(path)
    _no_background(cube)
    ids = [cube.add(f"note {i} on the harbour crane").id for i in range(5)]
    cube.close()
    with MemCube(path, embedder=hashed_embed) as again:
        assert again.records.waiting_embeddings() == [] and again.records.pending_vectors() == []
        assert again.index._inner.ids() == set(ids)


def test_export_and_migration_carry_rows_waiting_for_their_embedding(tmp_path) -> None:
    from memos_core.bundle import export_cube, import_bundle
    from memos_core.records.migrate import migrate_store

    with _cube(tmp_path / "c") as cube:
        _no_background(cube)
        item = cube.add("the glacier walk starts at the blue hut")
        export_cube(cube, tmp_path / "c.zip")
        assert cube.records.waiting_embeddings() == []  # export embedded it first
        _no_background(cube)
        other = cube.add("the cable car stops in strong wind")
        assert cube.records.waiting_embeddings()
        cube.records.flush()
        report = migrate_store(tmp_path / "c", tmp_path / "m")  # straight from the records, one row waiting
        assert report["items"] == 2
    imported = import_bundle(tmp_path / "c.zip", tmp_path / "i", embedder=hashed_embed)
    imported.close()
    with MemCube(tmp_path / "i", embedder=hashed_embed) as cube:
        assert cube.search("glacier walk blue hut", k=1, mode="dense")[0].item.id == item.id
    with MemCube(tmp_path / "m", embedder=hashed_embed) as cube:  # the open embeds the row that was waiting
        assert cube.records.waiting_embeddings() == []
        assert cube.search("cable car strong wind", k=1, mode="dense")[0].item.id == other.id
        assert cube.index._inner.ids() == {item.id, other.id}


WRITER = textwrap.dedent(f"""
    import os, signal, sys
    sys.path.insert(0, {str(TESTS_DIR)!r})
    from conftest import hashed_embed
    from memos_core.cube import MemCube
    cube = MemCube(sys.argv[1], embedder=hashed_embed, vector_sync="deferred", embed_sync="deferred")
    cube._embed_in_background = lambda: None  # the rows stay waiting for their embedding
    for i in range(10):
        print(cube.add(f"acknowledged memory {{i}} about the ferry timetable", id=f"k-{{i}}").id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no close: nothing embedded these rows
""")


def test_kill_9_before_the_embeddings_loses_nothing(tmp_path) -> None:
    path = tmp_path / "c"
    MemCube(path, embedder=hashed_embed).close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, MEMOS_PRELOAD="0"))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    acked = proc.stdout.split()
    assert acked == [f"k-{i}" for i in range(10)]
    with MemCube(path, embedder=hashed_embed) as cube:  # the open embeds what was waiting and repairs the index
        assert cube.records.waiting_embeddings() == [] and cube.records.pending_vectors() == []
        assert cube.index._inner.ids() == set(acked)
        for i in (0, 9):
            hits = cube.search(f"acknowledged memory {i} about the ferry timetable", k=1, mode="dense")
            assert hits[0].item.id == f"k-{i}"


def test_the_derived_record_store_methods_agree_with_sqlite(tmp_path) -> None:
    """RecordStore's generic waiting_embeddings/put_embeddings (for a backend without its own query) give what
    the SQLite queries give, including the skip of a row changed since it was listed."""
    from memos_core.records.base import RecordStore

    with _cube(tmp_path / "c") as cube:
        _no_background(cube)
        a = cube.add("the tram runs every ten minutes")
        b = cube.add("the library lends umbrellas")
        store = cube.records
        listed = store.waiting_embeddings()
        assert RecordStore.waiting_embeddings(store) == listed == [
            (store.rowid(a.id), a.content), (store.rowid(b.id), b.content)]
        cube.update(b.id, "the library lends umbrellas and boots")
        with store.transaction() as c:
            done = RecordStore.put_embeddings(store, c, [(r, t, _unit([t])[0]) for r, t in listed])
        assert done == [store.rowid(a.id)]  # b changed since it was listed: its new embedding stays
        assert np.allclose(store.embedding(store.rowid(a.id)), _unit([a.content])[0], atol=1e-6)
        assert np.allclose(store.embedding(store.rowid(b.id)), _unit(["the library lends umbrellas and boots"])[0],
                           atol=1e-6)
        assert RecordStore.waiting_embeddings(store) == store.waiting_embeddings() == []


def test_an_embedder_outage_leaves_rows_waiting_and_never_blocks_search_close_or_open(tmp_path) -> None:
    broken = [False]

    def flaky(texts: list[str]) -> np.ndarray:
        if broken[0]:
            raise RuntimeError("embedding service down")
        return hashed_embed(texts)

    from conftest import FAKE_DIM

    from memos_core.embedding import CallableEmbedder

    emb = CallableEmbedder(flaky, dim=FAKE_DIM)  # its dimension is known: opening never calls it
    path = tmp_path / "c"
    cube = MemCube(path, embedder=emb, vector_sync="deferred", embed_sync="deferred")
    _no_background(cube)
    cube.add("a memory written before the outage")
    broken[0] = True
    item = cube.add("the courier leaves parcels at the porch")  # the add itself does not embed: it succeeds
    hits = cube.search("courier parcels porch", k=1, mode="lexical")  # the embedding fails, logged; BM25 finds it
    assert hits[0].item.id == item.id
    assert (cube.records.rowid(item.id), item.content) in cube.records.waiting_embeddings()
    cube.close()  # applies what it can; the row stays waiting (and marked pending) in the records
    with MemCube(path, embedder=emb) as again:  # the open-time check cannot embed it: the open still succeeds
        assert again.records.waiting_embeddings() != []
        broken[0] = False
        assert again.search("courier parcels porch", k=1, mode="dense")[0].item.id == item.id
        assert again.records.waiting_embeddings() == []
        assert item.id in again.index.ids()


def test_concurrent_adds_and_searches_lose_nothing(tmp_path) -> None:
    """Threads adding one memory per call while another searches: every acknowledged add is found by dense search
    at once, and after close every row has its embedding and its vector (no deadlock between the writers, the
    background embedding job and the searches)."""
    import threading

    from memos_core.os import MemOS

    mem = MemOS(tmp_path / "m", embedder=hashed_embed)
    errors: list[BaseException] = []
    acked: dict[str, str] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        try:
            for i in range(25):
                text = f"writer {w} note {i} " + " ".join(f"tok{w}x{i}x{j}" for j in range(5))  # distinct
                # a session per turn: no turn carries the previous one as reply context (its own text must win)
                r = mem.add(text, user_id=f"u{w}", session_id=f"s{w}-{i}")
                with lock:
                    acked[r.added[0].id] = text
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def searcher() -> None:
        try:
            while not stop.is_set():
                with lock:
                    some = list(acked.items())[-3:]
                for item_id, text in some:
                    hits = mem.search(text, user_id=f"u{text.split()[1]}", k=1, mode="dense")
                    assert hits and hits[0].item.id == item_id, (text, hits[:1])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    s = threading.Thread(target=searcher)
    s.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    s.join(timeout=300)
    assert not any(t.is_alive() for t in [*threads, s]), "deadlock"
    assert errors == []
    assert len(acked) == 75
    mem.close()
    with MemCube(tmp_path / "m" / "default", embedder=hashed_embed) as cube:
        assert cube.records.waiting_embeddings() == [] and cube.records.pending_vectors() == []
        assert cube.index._inner.ids() == set(acked)


@pytest.mark.records_backends
def test_deferred_embeddings_on_each_record_store(tmp_path, cube_backend, store_for, chroma_url) -> None:
    """The same guarantees on SQLite and on PostgreSQL (records on the server, vectors on a Chroma server): a
    second handle on the cube (another worker) sees and embeds the first one's waiting rows."""
    target = store_for(tmp_path / "c")
    kw = {"workdir": tmp_path / "w1"} if cube_backend == "postgres" else {}
    a = _cube(target, chroma_url=chroma_url, **kw)
    try:
        assert a.embed_sync == "deferred"
        _no_background(a)
        a.add_many(["the ferry leaves at nine", "the bakery opens at seven"])  # two rows: the batched insert
        item = a.add("the lighthouse keeper paints the stairs blue")
        stale = dict(a.records.waiting_embeddings())
        assert len(stale) == 3 and a.records.rowid(item.id) in stale
        kw2 = {"workdir": tmp_path / "w2"} if cube_backend == "postgres" else {}
        with MemCube(target, embedder=hashed_embed, chroma_url=chroma_url, **kw2) as b:  # another worker
            hits = b.search("lighthouse keeper paints stairs", k=1, mode="dense")
            assert hits[0].item.id == item.id  # it embedded the other worker's waiting rows first
            assert b.records.waiting_embeddings() == []
        rowid = a.records.rowid(item.id)
        with a.records.transaction() as c:  # a batch that listed the rows before b stored them: nothing stale
            assert a.records.put_embeddings(c, [(r, t, _unit(["stale"])[0]) for r, t in stale.items()]) == []
        assert np.allclose(a.records.embedding(rowid), _unit([item.content])[0], atol=1e-6)
        assert item.id in a.index.ids()
    finally:
        a.close()
