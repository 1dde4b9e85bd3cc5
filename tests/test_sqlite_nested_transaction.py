"""A search run while the calling thread holds an open records transaction (code that searches inside a
write's transaction, a listener, a user holding ``cube.records.transaction()``), on SQLite and on PostgreSQL
(the module is marked ``records_backends``: each test runs on a SQLite folder and on a PostgreSQL cube with a
Chroma server).

Before: the search's side writes (the open-time index check's flush, storing deferred embeddings, an audited
read) issued a nested ``BEGIN`` (sqlite3.OperationalError), and with ``embed_sync="deferred"`` the search could
deadlock against the background embedder (which holds its lock and waits for the records'). Now a search
inside a transaction reuses it: it sees the transaction's own uncommitted writes, its side writes nest as
SAVEPOINTs (kept or rolled back with the caller's transaction), and it never waits for the background embedder.
On PostgreSQL a nested ``transaction()`` raised RuntimeError, so every such search failed on its first side write
(the audited read, the deferred embeddings); now it nests as a SAVEPOINT the same way, and the scope cache
(memory shared by the process, which must never hold a transaction's uncommitted rows) is not used inside it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import TESTS_DIR, hashed_embed

from memos_core.cube import MemCube
from memos_core.items import MemoryItem, Scope

pytestmark = pytest.mark.records_backends


@pytest.fixture
def make(store_for, chroma_url):
    """``make(path)``: a cube with deferred vectors and embeddings at ``path`` (SQLite), or on the PostgreSQL
    cube that ``path`` names (reopening the same path reopens the same cube)."""

    def _make(path, **kw) -> MemCube:
        target = store_for(path)
        extra = {"workdir": path, "index": chroma_url} if target != path else {}
        return MemCube(target, embedder=hashed_embed, vector_sync="deferred", embed_sync="deferred", **extra, **kw)

    return _make


def _in_thread(fn, timeout: float = 120.0):
    """Run ``fn`` on a daemon thread; a deadlock then fails the test instead of hanging the run."""
    out: dict[str, object] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the test's thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "search inside a records transaction deadlocked"
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out.get("value")


def test_first_search_inside_a_transaction_runs_the_index_check_in_it(tmp_path, make) -> None:
    """The first search of a handle checks the vector index and flushes what it applied: inside the caller's
    transaction (it was a nested BEGIN)."""
    with make(tmp_path / "c") as cube:
        # no background embedder here: the search embeds the waiting rows itself (inside the transaction); a busy
        # background embedder is the next test's case
        cube._embed_in_background = lambda: None  # type: ignore[method-assign]
        cube.add("the tram runs every ten minutes", user_id="ann")  # pending for the vector index (deferred)
        cube.add("the ferry leaves at noon", user_id="ann")

        def body() -> list[str]:
            with cube.records.transaction():
                return [h.item.content for h in cube.search("tram ferry", k=5, user_id="ann")]

        found = _in_thread(body)
        assert set(found) == {"the tram runs every ten minutes", "the ferry leaves at noon"}
        cube.add("the museum opens at nine", user_id="ann")  # the store is usable afterwards
        assert cube.search("museum opens", k=1, user_id="ann")[0].item.content == "the museum opens at nine"


_DEADLOCK_SCRIPT = textwrap.dedent("""
    import sys, threading
    sys.path.insert(0, {tests!r})
    import numpy as np
    from conftest import hashed_embed
    from memos_core.cube import MemCube

    in_background, go = threading.Event(), threading.Event()
    main = threading.get_ident()

    def embed(texts):
        if threading.get_ident() != main and any("ferry" in t for t in texts):
            in_background.set()
            go.wait(60)  # the background embedder holds its lock here until the main thread is in its transaction
        return hashed_embed(texts)

    cube = MemCube({path!r}, embedder=embed, vector_sync="deferred", embed_sync="deferred", **{extra!r})
    cube.add("the tram runs every ten minutes", user_id="ann")
    assert [h.item.content for h in cube.search("tram", user_id="ann")] == ["the tram runs every ten minutes"]
    cube.add("the ferry leaves at noon", user_id="ann")  # embedded by the background thread
    assert in_background.wait(60)
    with cube.records.transaction():
        go.set()  # the background thread now waits for the records, which this thread holds
        found = [h.item.content for h in cube.search("ferry noon", k=3, user_id="ann", mode="lexical")]
        # hybrid too: the row still waiting for its embedding is a candidate with BM25's score alone
        both = [h.item.content for h in cube.search("ferry noon", k=3, user_id="ann")]
        unscoped = [h.item.content for h in cube.search("ferry noon", k=3)]
    assert found == ["the ferry leaves at noon"], found  # acknowledged: the lexical index has it meanwhile
    assert both[0] == "the ferry leaves at noon" and unscoped[0] == "the ferry leaves at noon", (both, unscoped)
    hits = cube.search("the ferry leaves at noon", k=1, user_id="ann", mode="dense")
    assert hits[0].item.content == "the ferry leaves at noon"  # embedded once the transaction ended
    cube.close()
    print("OK")
""")


def test_search_inside_a_transaction_never_waits_for_the_background_embedder(tmp_path, store_for,
                                                                              chroma_url) -> None:
    """The background embedder holds its lock and waits for the records; a search holding the records'
    transaction must not wait for that lock (it deadlocked). Run in a child process: a deadlock there fails
    the test on its timeout instead of hanging this run."""
    target = store_for(tmp_path / "c")
    extra = {"workdir": str(tmp_path / "c"), "index": chroma_url} if target != tmp_path / "c" else {}
    script = _DEADLOCK_SCRIPT.format(tests=str(TESTS_DIR), path=str(target), extra=extra)
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail("search inside a records transaction deadlocked with the background embedder")
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stderr[-3000:]


def test_search_sees_the_open_transactions_own_writes_and_not_after_rollback(tmp_path, make) -> None:
    with make(tmp_path / "c") as cube:
        cube.add("the tram runs every ten minutes", user_id="ann")
        store = cube.records
        item = MemoryItem(content="the lighthouse keeper feeds seven cats", scope=Scope(user_id="ann"))

        class Abort(Exception):
            pass

        def body() -> list[str]:
            with store.transaction() as c:
                store.insert_item(c, item, None, True, None, "test")
                seen = [h.item.id for h in cube.search("lighthouse keeper cats", k=3, user_id="ann",
                                                        mode="lexical")]
                raise Abort(seen)

        with pytest.raises(Abort) as got:
            _in_thread(body)
        assert got.value.args[0] == [item.id]  # the uncommitted row, read through the open transaction
        assert store.get(item.id) is None  # rolled back, with whatever the search wrote inside it
        assert all(h.item.id != item.id for h in cube.search("lighthouse keeper cats", k=3, user_id="ann"))
        cube.close()
    with make(tmp_path / "c") as cube:  # the index check on open agrees with the records
        assert cube.repair_index() == {"pending": 0, "added": 0, "removed": 0}
        assert [h.item.content for h in cube.search("tram", k=5, user_id="ann")] == ["the tram runs every ten minutes"]


def test_an_audited_read_inside_a_transaction_is_recorded_with_it(tmp_path, make) -> None:
    with make(tmp_path / "c") as cube:
        cube.governance.configure(audit_reads=True)
        cube.add("the tram runs every ten minutes", user_id="ann")
        before = len(cube.records.events())

        def body() -> None:
            with cube.records.transaction():
                assert cube.search("tram", k=1, user_id="ann")

        _in_thread(body)
        ops = [e["op"] for e in cube.records.events()[before:]]
        assert ops == ["search"]
        assert cube.governance.verify().ok


def test_nested_records_transactions_are_savepoints(tmp_path, make) -> None:
    """An inner transaction that fails rolls back its own writes only; the outer one commits the rest."""
    with make(tmp_path / "c") as cube:
        store = cube.records
        with store.transaction() as c:
            store.set_meta(c, "outer", "1")
            with pytest.raises(RuntimeError):
                with store.transaction() as inner:
                    store.set_meta(inner, "inner-failed", "1")
                    raise RuntimeError("inner fails")
            with store.derived_transaction() as inner:
                store.set_meta(inner, "inner-ok", "1")
        assert store.get_meta("outer") == "1" and store.get_meta("inner-ok") == "1"
        assert store.get_meta("inner-failed") is None
        with pytest.raises(RuntimeError):
            with store.transaction() as c:
                store.set_meta(c, "outer2", "1")
                with store.transaction() as inner:
                    store.set_meta(inner, "inner2", "1")
                raise RuntimeError("outer fails")
        assert store.get_meta("outer2") is None and store.get_meta("inner2") is None  # the savepoint went too
        with store.transaction() as c:  # nothing left open
            store.set_meta(c, "after", "1")
        assert store.get_meta("after") == "1"


def test_audit_records_of_a_rolled_back_savepoint_leave_the_chain_whole(tmp_path, make) -> None:
    """An audit record appended in a nested transaction that rolls back is gone, and the records the outer
    transaction appends after it chain onto the head before it (PostgreSQL keeps the head per transaction)."""
    with make(tmp_path / "c") as cube:
        store = cube.records
        cube.add("the tram runs every ten minutes", user_id="ann")
        with store.transaction() as c:
            store.append_event(c, 1.0, "local", "test.outer1", None)
            with pytest.raises(RuntimeError):
                with store.transaction() as inner:
                    store.append_event(inner, 2.0, "local", "test.inner", None)
                    raise RuntimeError("inner fails")
            store.append_event(c, 3.0, "local", "test.outer2", None)
        with pytest.raises(RuntimeError):
            with store.transaction() as c:
                with pytest.raises(RuntimeError):
                    with store.transaction() as inner:  # the savepoint takes the chain's lock first
                        store.append_event(inner, 4.0, "local", "test.inner2", None)
                        raise RuntimeError("inner fails")
                store.append_event(c, 5.0, "local", "test.outer3", None)
                raise RuntimeError("outer fails")
        with store.transaction() as c:
            with pytest.raises(RuntimeError):
                with store.transaction() as inner:
                    store.append_event(inner, 6.0, "local", "test.inner3", None)
                    raise RuntimeError("inner fails")
            store.append_event(c, 7.0, "local", "test.outer4", None)
        ops = [e["op"] for e in store.events() if e["op"].startswith("test.")]
        assert ops == ["test.outer1", "test.outer2", "test.outer4"]
        report = cube.governance.verify()
        assert report.ok, report.problems


def test_a_scoped_dense_search_inside_a_transaction_reads_it_and_the_scope_cache_keeps_nothing_of_it(
        tmp_path, make) -> None:
    """The scope cache is shared by every thread of the process: a scoped search inside an open transaction must
    read that transaction (its own uncommitted row is found) and must neither use nor fill the cache, so after a
    rollback the row is not found and the cache still answers from committed rows only."""
    import numpy as np

    from memos_core.plaintext import scope_cache

    with make(tmp_path / "c") as cube:
        cube.add("the tram runs every ten minutes", user_id="ann")
        cube.add("the ferry leaves at noon", user_id="ann")
        for _ in range(2):  # cached after a scoped search or two
            assert cube.search("tram", k=5, user_id="ann", mode="dense")
        cache = scope_cache.cache_for(cube.records)
        builds = cache.builds
        store = cube.records
        item = MemoryItem(content="the lighthouse keeper feeds seven cats", scope=Scope(user_id="ann"))
        vec = np.asarray(hashed_embed([item.content])[0], dtype=np.float32)

        class Abort(Exception):
            pass

        def body() -> None:
            with store.transaction() as c:
                store.insert_item(c, item, vec, True, None, "test")
                seen = [h.item.id for h in cube.search(item.content, k=1, user_id="ann", mode="dense")]
                raise Abort(seen)

        with pytest.raises(Abort) as got:
            _in_thread(body)
        assert got.value.args[0] == [item.id]  # scored from the open transaction's own row
        assert cache.builds == builds  # the cache was neither read into nor rebuilt inside the transaction
        after = [h.item.id for h in cube.search(item.content, k=3, user_id="ann", mode="dense")]
        assert item.id not in after and len(after) == 2


def test_a_refusal_inside_a_transaction_is_typed_and_recorded_with_it(tmp_path, make) -> None:
    """A refused call inside an open records transaction raises its own typed error (PermissionDenied; on
    PostgreSQL the refusal's audit record raised RuntimeError) and its record is written inside that transaction:
    kept when it commits, gone with it when it rolls back, the chain whole either way."""
    from memos_core.errors import PermissionDenied

    with make(tmp_path / "c") as cube:
        cube.add("the tram runs every ten minutes", user_id="ann")
        store = cube.records

        def refused(commit: bool) -> None:
            class Abort(Exception):
                pass

            try:
                with store.transaction():
                    with pytest.raises(PermissionDenied):
                        cube.search("tram", k=1, actor="mallory")
                    if not commit:
                        raise Abort()
            except Abort:
                pass

        before = len(store.events())
        _in_thread(lambda: refused(True))
        got = [(e["op"], e["actor"], e["outcome"]) for e in store.events()[before:]]
        assert got == [("search", "mallory", "denied")]
        _in_thread(lambda: refused(False))
        assert len(store.events()) == before + 1
        report = cube.governance.verify()
        assert report.ok, report.problems
