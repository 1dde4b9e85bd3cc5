"""Defects found reviewing this session's core changes (the cube's write pipeline, deferred embeddings, the
pending-vector apply, erasure moved into the cube, migration). Each test pins one behaviour a user relies on;
interleavings are forced (a hook inside the call that races), not left to timing."""

from __future__ import annotations

import numpy as np
import pytest
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


@pytest.mark.integration
def test_migrating_rows_that_wait_for_their_embedding_into_postgresql(tmp_path, pg_server, chroma_server) -> None:
    """A folder cube whose process still runs (or was killed) holds rows committed without their embedding
    (embed_sync="deferred"). Copied into PostgreSQL (which holds waiting rows too: RecordStore.embeds_later) such
    a row must not land unindexed, an acknowledged memory no search finds there: it arrives waiting, and the
    target's first open embeds it."""
    from pg_server import fresh_schema_name

    from memos_core.records.migrate import migrate_store

    url = pg_server.url() + "?cube=" + fresh_schema_name("r")
    src = MemCube(tmp_path / "c", embedder=hashed_embed, vector_sync="deferred", embed_sync="deferred")
    src.add_many([f"filler memory {i} about the allotment" for i in range(3)])
    src._embed_waiting()
    src._embed_in_background = lambda: None  # type: ignore[method-assign]
    if src._embed_job is not None:  # the add_many's job may still be running: it would embed the next row too
        src._embed_job.result(timeout=60)
    item = src.add("the ferry to the island leaves from pier seven")
    src.records.flush()
    assert src.records.waiting_embeddings()
    report = migrate_store(tmp_path / "c", url)  # while the row waits
    assert report["items"] == 4
    src.close()
    with MemCube(url, index=chroma_server.url, workdir=tmp_path / "w", embedder=hashed_embed) as dst:
        assert dst.records.waiting_embeddings() == []  # the open embedded it
        for mode in ("lexical", "dense", "hybrid"):
            assert dst.search("ferry island pier seven", k=1, mode=mode)[0].item.id == item.id, mode


def test_a_forget_while_the_background_thread_embeds_the_memory_leaves_nothing(tmp_path) -> None:
    """embed_sync="deferred": the background thread has listed a waiting memory and is embedding it when the
    memory is forgotten. Its vector must not be stored or indexed afterwards, nor left in any file."""
    import threading
    import time

    from test_forget_derived import dense_embed, text_traces, vector_traces

    state: dict[str, object] = {}
    entered = threading.Event()

    def embed(texts: list[str]) -> np.ndarray:
        if any("zorblaxian" in t for t in texts) and threading.current_thread().name.startswith("memos-embed"):
            entered.set()  # the background job listed the secret; it stores the vector after the forget committed
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if "id" in state and state["cube"].records.rowid(state["id"]) is None:  # type: ignore[attr-defined]
                    break
                time.sleep(0.01)
            state["stored_late"] = True
        return dense_embed(texts)

    folder = tmp_path / "c"
    with MemCube(folder, embedder=embed, vector_sync="deferred", embed_sync="deferred") as cube:
        state["cube"] = cube
        keep = cube.add_many([f"filler memory {i} about tea" for i in range(12)])
        secret = cube.add("the zorblaxian vault code is Wkpq4417")
        state["id"] = secret.id
        assert entered.wait(60)
        cube.forget(secret.id)
        cube._embed_job.result(timeout=60)
        assert state.get("stored_late")  # the interleaving under test happened
        cube.search("vault code", k=3)  # what a user does next: embeds and applies whatever waits
        assert cube.records.rowid(secret.id) is None
        assert cube.records.embedding_count() == len(keep)
        assert secret.id not in cube.index.ids() and len(cube.index.ids()) == len(keep)
    v = dense_embed([secret.content])[0]
    assert text_traces(folder) == []
    assert vector_traces(folder, {"secret": v / np.linalg.norm(v)}) == []


def test_a_memory_the_embedder_rejects_does_not_keep_the_others_from_dense_search(tmp_path) -> None:
    """embed_sync="deferred" acknowledges an add before its text is embedded. When the embedder then rejects one
    text (an API's token limit, a model returning NaN), that memory stays waiting (found by the lexical index,
    retried later), but the memories written after it are still embedded, indexed and found by dense search."""
    from memos_core.cube import _EMBED_BATCH

    def embed(texts: list[str]) -> np.ndarray:
        if any("POISON" in t for t in texts):
            raise RuntimeError("input too long for the embedding model")
        return hashed_embed(texts)

    with MemCube(tmp_path / "c", embedder=embed, vector_sync="deferred", embed_sync="deferred") as cube:
        cube._embed_in_background = lambda: None  # type: ignore[method-assign]
        cube._ensure_index_checked()
        bad = cube.add("POISON a very long pasted log the embedder refuses")
        words = ["crane", "ferry", "lighthouse", "gulls", "nets", "buoys", "rope", "tide", "pier", "boats"]
        assert len(words) > _EMBED_BATCH  # more than one batch waits behind the rejected memory
        good = {f"the {w} seen from the window": cube.add(f"the {w} seen from the window").id for w in words}
        for text, item_id in good.items():
            assert cube.search(text, k=1, mode="dense")[0].item.id == item_id
        assert [r for r, _ in cube.records.waiting_embeddings()] == [cube.records.rowid(bad.id)]
        assert cube.search("POISON pasted log", k=1, mode="lexical")[0].item.id == bad.id
        assert cube.index.ids() == set(good.values())


def test_export_refuses_while_a_memory_waits_for_an_embedding_the_embedder_refuses(tmp_path) -> None:
    """A bundle must carry the embedding of every indexed memory (an import refuses one that lacks it): an export
    while a memory's text is refused by the embedder fails with a typed error and writes no bundle; once that
    memory is changed, the export succeeds and the bundle imports."""
    from memos_core.bundle import export_cube, import_bundle
    from memos_core.errors import ValidationError

    def embed(texts: list[str]) -> np.ndarray:
        if any("POISON" in t for t in texts):
            raise RuntimeError("input too long for the embedding model")
        return hashed_embed(texts)

    with MemCube(tmp_path / "c", embedder=embed, vector_sync="deferred", embed_sync="deferred") as cube:
        cube._embed_in_background = lambda: None  # type: ignore[method-assign]
        bad = cube.add("POISON a very long pasted log the embedder refuses")
        cube.add("the ferry leaves at nine")
        with pytest.raises(ValidationError, match="embedding"):
            export_cube(cube, tmp_path / "c.zip")
        assert not (tmp_path / "c.zip").exists()
        cube.update(bad.id, "a short summary of the log")
        export_cube(cube, tmp_path / "c.zip")
    import_bundle(tmp_path / "c.zip", tmp_path / "i", embedder=hashed_embed).close()


def test_the_scrub_of_chromas_sqlite_file_waits_for_chroma_calls_on_that_folder(tmp_path, monkeypatch) -> None:
    """After a forget, the free pages of Chroma's ``chroma.sqlite3`` are zeroed through Python's sqlite3: a second
    copy of the SQLite library in the process (Chroma's own is built into its bindings), and two copies do not
    see each other's file locks. A scrub while another thread was inside a Chroma call (a search's query)
    corrupted the file ("database disk image is malformed"; 3 of 7 stress runs of forgets beside searches). The
    scrub must wait until Chroma calls on that folder have ended, and hold new ones back while it runs."""
    import threading

    from memos_core.plaintext import vector as vector_mod

    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        cube.add_many([f"memory {i} about the orchard" for i in range(5)])
        cube.search("orchard", k=1, mode="dense")
        idx = cube.index._inner
        order: list[str] = []
        inside, release = threading.Event(), threading.Event()

        def chroma_call() -> None:  # stands for a query in progress on another thread
            inside.set()
            release.wait(30)
            order.append("call ended")

        real_connect = vector_mod.sqlite3.connect

        def connect(*a, **kw):
            order.append("scrub")
            return real_connect(*a, **kw)

        caller = threading.Thread(target=idx._call, args=("query", chroma_call))
        caller.start()
        assert inside.wait(30)
        monkeypatch.setattr(vector_mod.sqlite3, "connect", connect)
        scrub = threading.Thread(target=idx.scrub_files)
        scrub.start()
        scrub.join(3.0)  # without the guard the scrub has written by now
        release.set()
        caller.join(30)
        scrub.join(60)
        monkeypatch.undo()
        assert not scrub.is_alive() and "scrub" in order
        assert order.index("scrub") > order.index("call ended"), order


def _pg_cube(pg_server, chroma_server, tmp_path):
    from pg_server import fresh_schema_name

    url = pg_server.url() + "?cube=" + fresh_schema_name("e")
    return MemCube(url, index=chroma_server.url, workdir=tmp_path / "w", embedder=hashed_embed,
                   vector_sync="deferred", embed_sync="deferred")


def _stored_rows(store, rowid: int) -> int:
    with store._conn() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM embeddings WHERE item_rowid=%s", (rowid,)).fetchone()[0])


@pytest.mark.integration
@pytest.mark.parametrize("first", ["forget", "embedding", "between"])
def test_postgresql_a_deferred_embedding_racing_a_forget_leaves_no_orphan(tmp_path, pg_server, chroma_server,
                                                                          first) -> None:
    """PostgreSQL (READ COMMITTED): a background job stores a waiting memory's embedding while another worker's
    forget of that memory is in flight. Whichever transaction takes the row first, no embedding of the forgotten
    memory may stay in the store (its vector bytes would outlive the erasure, and an embedding without its item
    makes every open rebuild the vector index). ``first="forget"``: the forget has erased the row, not yet
    committed, when the job stores; ``first="embedding"``: the job has stored, not yet committed, when the
    forget erases; ``first="between"``: the forget erases after the job wrote the embedding and before it
    marks the row pending."""
    import threading

    with _pg_cube(pg_server, chroma_server, tmp_path) as cube:
        cube._embed_in_background = lambda: None  # type: ignore[method-assign]
        keep = cube.add_many([f"memory {i} about the orchard" for i in range(9)])  # embedded inline
        item = cube.add("the vault code is Wkpq4417")
        store = cube.records
        [(rowid, text)] = store.waiting_embeddings()
        vec = cube._embed([text])[0]
        stages = {n: threading.Event() for n in ("forget held", "stored held", "go")}
        errors: list[BaseException] = []

        def forget() -> None:
            try:
                if first in ("embedding", "between"):
                    assert stages["stored held"].wait(30)
                with store.transaction() as c:
                    store.erase_item(c, rowid, item.id)
                    if first == "forget":
                        stages["forget held"].set()
                        stages["go"].wait(3)  # the store below waits for this commit (or wrongly does not)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        def embed() -> None:
            try:
                if first == "forget":
                    assert stages["forget held"].wait(30)
                if first == "between":
                    real = store.mark_pending

                    def paused(c, r):
                        stages["stored held"].set()
                        stages["go"].wait(3)  # the forget waits for this transaction (or wrongly does not)
                        return real(c, r)

                    store.mark_pending = paused  # type: ignore[method-assign]
                try:
                    with store.derived_transaction() as c:
                        store.put_embeddings(c, [(rowid, text, vec)])
                        if first == "embedding":
                            stages["stored held"].set()
                            stages["go"].wait(3)  # the forget waits for this commit (or wrongly does not)
                finally:
                    store.__dict__.pop("mark_pending", None)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=forget), threading.Thread(target=embed)]
        for t in threads:
            t.start()
        threads[0 if first in ("embedding", "between") else 1].join(3)
        stages["go"].set()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert store.get(item.id) is None
        assert _stored_rows(store, rowid) == 0  # no embedding of the forgotten memory stays
        assert store.embedding_count() == len(keep)


def test_closing_a_cube_twice_is_quiet(tmp_path, caplog) -> None:
    """close() is idempotent (a ``with`` block after an explicit close, MemOS.close after the cube's): the second
    call finds nothing to embed or apply and logs nothing (it logged a warning about rows it could not embed)."""
    import logging

    cube = MemCube(tmp_path / "c", embedder=hashed_embed, vector_sync="deferred", embed_sync="deferred")
    cube.add("the tram runs every ten minutes")
    cube.close()
    with caplog.at_level(logging.WARNING, logger="memos"):
        cube.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("one_by_one", [False, True])
def test_an_embedder_outage_costs_two_calls_not_one_per_waiting_memory(tmp_path, one_by_one) -> None:
    """Telling a refused text from an embedder that is down: while it is down, embedding the waiting rows (before
    a search: a batch; on the background thread: one text per call) stops after a probe, so a search does not
    wait for one failing call (an API timeout) per waiting memory."""
    from memos_core.cube import _EMBED_BATCH
    from memos_core.errors import ValidationError

    calls: list[int] = []
    down = [False]

    def embed(texts: list[str]) -> np.ndarray:
        if down[0]:
            calls.append(len(texts))
            raise RuntimeError("connection refused")
        return hashed_embed(texts)

    with MemCube(tmp_path / "c", embedder=embed, vector_sync="deferred", embed_sync="deferred") as cube:
        cube._embed_in_background = lambda: None  # type: ignore[method-assign]
        for i in range(_EMBED_BATCH):
            cube.add(f"memory {i} about the harbour")
        down[0] = True
        with pytest.raises(ValidationError, match="connection refused"):
            cube._embed_waiting(one_by_one=one_by_one)
        assert len(calls) == 2, calls
        down[0] = False


def test_a_reindex_is_audited(tmp_path) -> None:
    """Every write of the cube's write pipeline appends its audit event; a reindex (an administer operation that
    rebuilds the vector index) recorded one only when it re-embedded."""
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        cube.add_many(["the tram runs every ten minutes", "the library lends umbrellas"])
        assert cube.reindex() == {"indexed": 2}
        last = cube.events()[-1]
        assert (last["op"], last["outcome"], last["actor"], last["detail"]) == ("reindex", "ok", "local",
                                                                                 {"indexed": 2})
        assert cube.governance.verify().ok
