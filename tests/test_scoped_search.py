"""Scoped search (user/agent/session) from the in-process scope cache (memos_core/plaintext/scope_cache.py).

What a user relies on: a scoped search returns exactly what an exact scan of the filtered rows returns; every
acknowledged write is seen (adds, updates, deletes, expiry, writes through another handle = another
connection, as another worker's are); a forgotten memory's vector leaves the cache when forget returns (and
with another handle's forget, before the next search); closing drops every cached vector. The exactness test
and the write/forget tests also run on PostgreSQL + Chroma server, whose change log is snapshot-based (writers on
many hosts commit out of order: tested below with a transaction that commits after a later one).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from conftest import hashed_embed
from memos_core.cube import MemCube
from memos_core.items import SearchFilter
from memos_core.plaintext import scope_cache
from memos_core.plaintext.retrieval import matvec

WORDS = ("apple banana cherry dog egg fig grape hat ice jam kite lemon mango nut orange pear quilt rose sand "
         "tulip umbrella violin whale yak zebra").split()


def _qvec(text: str) -> np.ndarray:
    v = hashed_embed([text])[0]
    return (v / np.linalg.norm(v)).astype(np.float32)


def _fill(cube, n: int = 240, seed: int = 0) -> list:
    rng = random.Random(seed)
    specs = [{"content": " ".join(rng.sample(WORDS, 4)), "user_id": f"u{i % 3}", "agent_id": f"a{i % 2}",
              "session_id": f"s{i % 5}", "kind": ["fact", "episode", "preference"][i % 3],
              "tags": [["x", "y", "z"][i % 3]], "metadata": {"imp": i % 4}} for i in range(n)]
    return cube.add_many(specs, progress=False)


def _filtered(cube, **flt):
    f = SearchFilter.coerce(flt)
    return f, cube.records.compile_filter(f, cube._states(f), cube._now().timestamp())


def _exact(cube, qvec: np.ndarray, n: int, **flt) -> list[tuple[int, float]]:
    """The reference: every row passing the filter scored from its stored embedding, best first, ties by rowid."""
    _, cf = _filtered(cube, **flt)
    rowids, blobs = cube.records.filtered_vectors(cf, 10**9)
    if not rowids:
        return []
    sims = matvec(np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1), qvec)
    order = sorted(range(len(rowids)), key=lambda i: (-float(sims[i]), rowids[i]))[:n]
    return [(rowids[i], float(sims[i])) for i in order]


def _same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    """Equal rankings: the same scores rank by rank, and the same rows (rows with equal scores may swap places
    only among themselves, and only at the cut)."""
    assert len(got) == len(want)
    assert [round(s, 5) for _, s in got] == [round(s, 5) for _, s in want]
    if want:
        cut = round(want[-1][1], 5)
        assert {r for r, s in got if round(s, 5) > cut} == {r for r, s in want if round(s, 5) > cut}
        assert len({r for r, _ in got}) == len(got)


def _dense(cube, q: str, n: int, **flt) -> list[tuple[int, float]]:
    f, cf = _filtered(cube, **flt)
    return cube.retriever.dense(_qvec(q), f, cf, n)


FILTERS = [
    {"user_id": "u1"},
    {"user_id": "u2", "tags_any": ["y"]},
    {"user_id": "u0", "kinds": ["fact"]},
    {"user_id": "u1", "metadata": {"imp": {"$gte": 2}}},
    {"agent_id": "a1"},
    {"session_id": "s3"},
    {"user_id": "u2", "agent_id": "a0"},
    {"user_id": "nobody"},
]


@pytest.mark.records_backends
@pytest.mark.parametrize("flt", FILTERS, ids=lambda f: ",".join(sorted(f)))
def test_scoped_dense_is_the_exact_filtered_scan(cube, flt) -> None:
    items = _fill(cube)
    cube.delete(items[4].id)  # a tombstone and an archived memory in the scopes: never returned
    cube.transition(items[7].id, "archived")
    for q in ("apple banana cherry", "whale zebra", "ice jam kite lemon", "sand"):
        for n in (5, 60, 1000):
            _same(_dense(cube, q, n, **flt), _exact(cube, _qvec(q), n, **flt))
    cache = scope_cache.cache_for(cube.records)
    assert cache is not None and cache.builds > 0  # both backends keep a change log: served from the cache


def test_hybrid_scoped_search_same_hits_with_and_without_the_cache(tmp_path: Path, clock, monkeypatch) -> None:
    queries = [(q, scope) for q in ("apple banana cherry", "whale zebra yak", "grape")
               for scope in ({"user_id": "u1"}, {"session_id": "s2"}, {"user_id": "u0", "agent_id": "a1"})]
    a = MemCube(tmp_path / "c", embedder=hashed_embed, clock=clock)
    try:
        _fill(a, 300)
        with_cache = [[(h.item.id, round(h.score, 6)) for h in a.search(q, k=10, **scope)] for q, scope in queries]
        assert a.records in scope_cache._CACHES and len(scope_cache.cache_for(a.records).scopes) == 3
        monkeypatch.setenv("MEMOS_SCOPE_CACHE_MB", "0")
        b = MemCube(tmp_path / "c", embedder=hashed_embed, clock=clock)  # another handle, no cache
        try:
            without = [[(h.item.id, round(h.score, 6)) for h in b.search(q, k=10, **scope)] for q, scope in queries]
            assert b.records not in scope_cache._CACHES
        finally:
            b.close()
        assert with_cache == without
    finally:
        a.close()


@pytest.mark.records_backends
def test_every_write_is_seen_by_a_cached_scope(cube, clock) -> None:
    items = _fill(cube)
    q = "violin whale yak zebra"
    assert _dense(cube, q, 10, user_id="u1")  # the scope is cached now
    cache = scope_cache.cache_for(cube.records)
    assert cache is not None and ("u1", None, None) in cache.scopes
    builds = cache.builds

    new = cube.add("violin whale yak zebra", user_id="u1")
    top = cube.search(q, k=3, user_id="u1", mode="dense")
    assert top[0].item.id == new.id and top[0].retrievers["dense"] > 0.99

    mine = [it for it in items if it.scope.user_id == "u1"]
    moved = cube.update(mine[0].id, "violin whale yak zebra quilt")  # a new vector for an old row
    top = cube.search(q, k=3, user_id="u1", mode="dense")
    assert {h.item.id for h in top[:2]} == {new.id, moved.id}

    cube.delete(new.id)
    assert new.id not in {h.item.id for h in cube.search(q, k=20, user_id="u1", mode="dense")}

    short = cube.add("violin whale yak zebra sand", user_id="u1", ttl=60)
    assert cube.search(q, k=3, user_id="u1", mode="dense")[0].item.id in {short.id, moved.id}
    clock.advance(120)
    assert short.id not in {h.item.id for h in cube.search(q, k=20, user_id="u1", mode="dense")}

    assert cache.builds == builds  # all of it replayed from the change log, not re-read
    _same(_dense(cube, q, 1000, user_id="u1"), _exact(cube, _qvec(q), 1000, user_id="u1"))


def _holds_vector(cache: scope_cache.ScopeCache, vec: np.ndarray) -> bool:
    return any(bool(np.any(np.all(e.mat == vec, axis=1))) for e in cache._entries.values())


@pytest.mark.records_backends
def test_forget_drops_the_cached_vector_when_it_returns_and_close_drops_all(cube) -> None:
    items = _fill(cube)
    victim = next(it for it in items if it.scope.user_id == "u2")
    rowid = cube.records.rowid(victim.id)
    vec = cube.records.embedding(rowid).astype(np.float32)
    cube.search("apple", k=5, user_id="u2")
    cube.search("apple", k=5, agent_id=victim.scope.agent_id)
    cache = scope_cache.cache_for(cube.records)
    assert rowid in cache.cached_rowids() and _holds_vector(cache, vec)

    cube.forget(victim.id)  # no search in between: forget itself drops it
    assert rowid not in cache.cached_rowids()
    assert not _holds_vector(cache, vec)
    assert victim.id not in {h.item.id for h in cube.search(" ".join(victim.content.split()), k=50, user_id="u2")}

    records = cube.records
    cube.close()
    assert records not in scope_cache._CACHES
    assert not _holds_vector(cache, vec) and not cache.cached_rowids() and not cache.scopes


@pytest.mark.records_backends
def test_another_handles_writes_and_forgets_are_seen(tmp_path: Path, open_cube) -> None:
    """A second handle on the same cube is another connection, as another worker's is: its commits reach this
    handle's cache through the change log, before this handle's next search."""
    a = open_cube(tmp_path / "c")
    b = open_cube(tmp_path / "c")
    try:
        items = _fill(a)
        q = "quilt rose sand tulip"
        a.search(q, k=5, user_id="u0")
        cache = scope_cache.cache_for(a.records)
        added = b.add("quilt rose sand tulip", user_id="u0")
        assert a.search(q, k=1, user_id="u0", mode="dense")[0].item.id == added.id
        victim = next(it for it in items if it.scope.user_id == "u0")
        rowid = a.records.rowid(victim.id)
        vec = a.records.embedding(rowid).astype(np.float32)
        assert rowid in cache.cached_rowids()
        b.forget(victim.id)
        b.forget(added.id)
        got = a.search(q, k=200, user_id="u0", mode="dense")
        assert not {victim.id, added.id} & {h.item.id for h in got}
        assert rowid not in cache.cached_rowids() and not _holds_vector(cache, vec)
        _same(_dense(a, q, 1000, user_id="u0"), _exact(a, _qvec(q), 1000, user_id="u0"))
    finally:
        b.close()
        a.close()


@pytest.mark.records_backends
def test_a_reused_rowid_is_not_scored_with_the_old_vector(cube) -> None:
    _fill(cube, 30)
    last = cube.add("whale whale whale whale", user_id="u1")
    cube.search("whale", k=5, user_id="u1")
    old_rowid = cube.records.rowid(last.id)
    cube.forget(last.id)
    fresh = cube.add("apple apple apple", user_id="u1")
    got = {h.item.id: h.retrievers.get("dense") for h in cube.search("whale", k=50, user_id="u1", mode="dense")}
    assert last.id not in got
    if cube.records.rowid(fresh.id) == old_rowid:  # SQLite reuses the highest rowid after it was deleted
        assert got.get(fresh.id, 0.0) < 0.5
    _same(_dense(cube, "whale", 1000, user_id="u1"), _exact(cube, _qvec("whale"), 1000, user_id="u1"))


@pytest.mark.records_backends
def test_a_cache_too_far_behind_the_log_rebuilds(tmp_path: Path, open_cube, monkeypatch) -> None:
    a = open_cube(tmp_path / "c")
    b = open_cube(tmp_path / "c")
    try:
        _fill(a, 60)
        a.search("apple", k=5, user_id="u1")
        cache = scope_cache.cache_for(a.records)
        builds = cache.builds
        monkeypatch.setattr(type(a.records), "_VEC_LOG_REPLAY", 3)
        added = [b.add(f"mango nut orange {w}", user_id="u1") for w in ("pear", "quilt", "rose", "sand", "tulip")]
        got = {h.item.id for h in a.search("mango nut orange", k=10, user_id="u1", mode="dense")}
        assert {it.id for it in added} <= got
        assert cache.builds == builds + 1  # read again from the store, not replayed
    finally:
        b.close()
        a.close()


def test_a_scope_larger_than_the_cap_is_read_from_the_store(tmp_path: Path, clock, monkeypatch) -> None:
    monkeypatch.setenv("MEMOS_SCOPE_CACHE_MB", "0.001")  # ~1 KB: not even one scope of 80 vectors fits
    c = MemCube(tmp_path / "c", embedder=hashed_embed, clock=clock)
    try:
        _fill(c)
        _same(_dense(c, "apple banana", 20, user_id="u1"), _exact(c, _qvec("apple banana"), 20, user_id="u1"))
        cache = scope_cache.cache_for(c.records)
        assert cache is not None and not cache.scopes and not cache.cached_rowids()
    finally:
        c.close()


def test_vector_change_log(cube) -> None:
    """The SQLite log behind the cache: adds, updates, scope moves, deletes and forgets are logged in commit
    order; topic vectors and usage counters are not; a position from another log means 'start again'."""
    store = cube.records
    pos, none = store.vector_changes(None)
    assert none == []
    a = cube.add("apple banana", user_id="u1")
    ra = store.rowid(a.id)
    pos2, changed = store.vector_changes(pos)
    assert pos2 > pos and changed == [ra]
    assert store.vector_changes(pos2) == (pos2, [])
    cube.search("apple", k=3)
    store.flush()  # usage counters written
    assert store.vector_changes(pos2) == (pos2, [])
    cube.update(a.id, "apple cherry")
    pos3, changed = store.vector_changes(pos2)
    assert changed == [ra]
    with store.transaction() as c:  # a scope move alone (no new embedding) is logged too
        c.execute("UPDATE items SET user_id='u9' WHERE rowid=?", (ra,))
    pos4, changed = store.vector_changes(pos3)
    assert changed == [ra]
    cube.forget(a.id)
    pos5, changed = store.vector_changes(pos4)
    assert changed == [ra]
    assert store.vector_changes(pos5 + 10)[1] is None  # ahead of this log: not ours
    with store.transaction() as c:
        c.execute("DELETE FROM vec_changes WHERE seq <= ?", (pos4 + 1,))
    assert store.vector_changes(pos3)[1] is None  # trimmed past the reader's position


def test_the_seams_derived_scope_reads_agree_with_sqlites(cube) -> None:
    """RecordStore's default scope_vectors / passing_rowids (what a backend gets without its own) answer what
    SQLite's one-query versions do."""
    from memos_core.records.base import RecordStore

    items = _fill(cube, 90)
    cube.delete(items[1].id)
    store = cube.records
    for scope in (("u1", None, None), (None, "a0", None), ("u2", "a1", "s4"), ("nobody", None, None)):
        own = store.scope_vectors(*scope)
        derived = RecordStore.scope_vectors(store, *scope)
        assert sorted(zip(*own)) == sorted(zip(*derived))
    _, cf = _filtered(cube, user_id="u1", kinds=["fact"])
    every = [store.rowid(it.id) for it in items] + [10**9]
    assert store.passing_rowids(every, cf) == RecordStore.passing_rowids(store, every, cf)
    assert store.passing_rowids(every, cf) == {store.rowid(it.id) for it in items
                                                if it.scope.user_id == "u1" and it.kind.value == "fact"
                                                and it.id != items[1].id}


_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from conftest import hashed_embed
from memos_core.cube import MemCube
c = MemCube(sys.argv[2], embedder=hashed_embed)
added = c.add("xylophone yodel zither quartz", user_id="u1")
c.forget(sys.argv[3])
c.close()
print(added.id)
"""


def test_another_process_writes_and_forgets_are_seen(tmp_path: Path) -> None:
    """Another worker process adds to and forgets from a scope this process has cached: this process's next
    scoped search returns the added memory, not the forgotten one, and its cache no longer holds that vector."""
    import subprocess
    import sys

    a = MemCube(tmp_path / "c", embedder=hashed_embed)
    try:
        items = _fill(a, 120)
        q = "xylophone yodel zither quartz"
        a.search(q, k=5, user_id="u1")
        cache = scope_cache.cache_for(a.records)
        victim = next(it for it in items if it.scope.user_id == "u1")
        rowid = a.records.rowid(victim.id)
        vec = a.records.embedding(rowid).astype(np.float32)
        assert rowid in cache.cached_rowids()
        res = subprocess.run([sys.executable, "-c", _CHILD, str(Path(__file__).parent), str(tmp_path / "c"),
                              victim.id], capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stderr[-2000:]
        added = res.stdout.strip().splitlines()[-1]
        got = a.search(q, k=100, user_id="u1", mode="dense")
        assert got[0].item.id == added
        assert victim.id not in {h.item.id for h in got}
        assert rowid not in cache.cached_rowids() and not _holds_vector(cache, vec)
        _same(_dense(a, q, 1000, user_id="u1"), _exact(a, _qvec(q), 1000, user_id="u1"))
    finally:
        a.close()


def test_more_active_scopes_than_fit_do_not_thrash(tmp_path: Path, clock, monkeypatch) -> None:
    """Three users searched in turn, room for two: two stay cached, the third is served from the store (exactly)
    instead of evicting a busy scope on every search; once a cached scope goes idle, a new one takes its place."""
    monkeypatch.setenv("MEMOS_SCOPE_CACHE_MB", "0.065")  # ~68 KB: two scopes of 80 64-d vectors, not three
    c = MemCube(tmp_path / "c", embedder=hashed_embed, clock=clock)
    try:
        _fill(c)
        cache = scope_cache.cache_for(c.records)
        for rnd in range(4):
            for u in ("u0", "u1", "u2"):
                _same(_dense(c, "apple kite", 10, user_id=u), _exact(c, _qvec("apple kite"), 10, user_id=u))
        assert sorted(cache.scopes) == [("u0", None, None), ("u1", None, None)]
        assert cache.builds == 3  # u2 was read once, then left to the store: no rebuild per search
        cache.idle_after = 4
        for _ in range(10):  # u1 idles while u0 and u2 are searched
            _dense(c, "apple kite", 10, user_id="u0")
            _same(_dense(c, "apple kite", 10, user_id="u2"), _exact(c, _qvec("apple kite"), 10, user_id="u2"))
        assert sorted(cache.scopes) == [("u0", None, None), ("u2", None, None)]
    finally:
        c.close()


def _cache_rows(cache: scope_cache.ScopeCache, scope) -> dict[int, bytes]:
    entry = cache._entries[scope]
    return {int(r): entry.mat[i].tobytes() for r, i in entry.where.items()}


@pytest.mark.records_backends
def test_the_cache_equals_the_store_after_every_write(tmp_path: Path, open_cube) -> None:
    """A seeded random sequence of writes through two handles (add, add_many, update, delete, restore, archive,
    purge, rollback, forget) with scoped searches between them: after each search, every cached scope holds
    exactly the rows and vectors the store has for that scope."""
    from memos_core.errors import MemOSError

    a = open_cube(tmp_path / "c")
    b = open_cube(tmp_path / "c")
    try:
        live = [it.id for it in _fill(a, 60)]
        gone: list[str] = []  # deleted (tombstones): what restore and purge take
        rng = random.Random(7)
        scopes = [("u0", None, None), ("u1", None, None), (None, "a1", None), ("u2", None, "s3")]
        cache = scope_cache.cache_for(a.records)
        for step in range(80):
            w = rng.choice([a, b])
            op = rng.choice(["add", "add_many", "update", "delete", "restore", "archive", "purge", "rollback",
                             "forget"])
            target = rng.choice(gone if op in ("restore", "purge") and gone else live)
            try:
                if op == "add":
                    live.append(w.add(" ".join(rng.sample(WORDS, 3)), user_id=f"u{rng.randrange(3)}",
                                      agent_id=f"a{rng.randrange(2)}", session_id=f"s{rng.randrange(5)}").id)
                elif op == "add_many":
                    live += [it.id for it in w.add_many(
                        [{"content": " ".join(rng.sample(WORDS, 3)), "user_id": f"u{rng.randrange(3)}",
                          "agent_id": "a1", "session_id": "s3"} for _ in range(3)], progress=False)]
                elif op == "update":
                    w.update(target, " ".join(rng.sample(WORDS, 4)))
                elif op == "delete":
                    w.delete(target)
                    gone.append(target)
                elif op == "restore":
                    w.restore(target)
                elif op == "archive":
                    w.transition(target, "archived")
                elif op == "purge":
                    w.purge(target)
                elif op == "rollback":
                    w.rollback(target, 1)
                else:
                    w.forget(target)
                    live.remove(target)
                    gone[:] = [g for g in gone if g != target]
            except MemOSError:
                pass  # an illegal transition for the memory's state, a purged memory's update...: nothing changed
            scope = rng.choice(scopes)
            flt = {k: v for k, v in zip(("user_id", "agent_id", "session_id"), scope) if v is not None}
            q = " ".join(rng.sample(WORDS, 2))
            _same(_dense(a, q, 15, **flt), _exact(a, _qvec(q), 15, **flt))
            for cached in cache.scopes:
                rowids, blobs = a.records.scope_vectors(*cached)
                assert _cache_rows(cache, cached) == dict(zip(rowids, blobs)), (step, op, cached)
        assert set(cache.scopes) == set(scopes)
    finally:
        b.close()
        a.close()


# ------------------------------------------------------------------ PostgreSQL: the snapshot-based change log
@pytest.fixture
def pg_cube_url(pg_server) -> str:
    from pg_server import fresh_schema_name

    return pg_server.url() + "?cube=" + fresh_schema_name("sc")


def _pg_cube(url: str, tmp_path: Path, chroma_server, clock, name: str = "w"):
    return MemCube(url, embedder=hashed_embed, clock=clock, index=chroma_server.url, workdir=tmp_path / name)


def _raw_item(content: str, user_id: str):
    """An item and its embedding, to be written through the store's seam (no audit event: the audit chain's
    advisory lock would serialise that writer with the other one)."""
    from memos_core.items import LifecycleState, MemoryItem, Scope

    item = MemoryItem(content=content, cube_id="c", scope=Scope(user_id=user_id))
    return item, hashed_embed([content])[0].astype(np.float32), LifecycleState.ACTIVATED


def test_postgres_a_writer_committing_after_a_later_one_is_not_missed(pg_cube_url, tmp_path, chroma_server,
                                                                      clock) -> None:
    """Writers on many hosts commit out of order: transaction T1 starts writing first (the smaller xid), T2 writes
    and commits, a worker's cached scope syncs (its position is now after T2), then T1 commits. A log read by
    sequence number or xid past the last one seen would skip T1 forever; the snapshot-based log replays it."""
    import threading

    from memos_core.records.postgres import PostgresRecordStore

    a = _pg_cube(pg_cube_url, tmp_path, chroma_server, clock, "a")
    b = _pg_cube(pg_cube_url, tmp_path, chroma_server, clock, "b")
    slow = PostgresRecordStore(pg_cube_url)
    try:
        _fill(a, 60)
        q = "xylophone yodel zither quartz"
        a.search(q, k=5, user_id="u1")
        cache = scope_cache.cache_for(a.records)
        assert cache is not None and ("u1", None, None) in cache.scopes
        builds = cache.builds
        pos0, _ = a.records.vector_changes(None)

        item, vec, state = _raw_item(q, "u1")
        written, release, done = threading.Event(), threading.Event(), threading.Event()
        box: dict = {}

        def t1() -> None:
            try:
                with slow.transaction() as c:
                    box["rowid"] = rowid = slow.insert_item(c, item, vec, True, "me", "add")
                    slow.set_state(c, rowid, item.id, None, state, 1.0, "me", "created")
                    box["xid"] = int(c.execute("SELECT pg_current_xact_id()::text").fetchone()[0])
                    written.set()
                    assert release.wait(60)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                box["error"] = exc
            finally:
                written.set()
                done.set()

        th = threading.Thread(target=t1)
        th.start()
        assert written.wait(60) and "error" not in box
        later = b.add("xylophone yodel zither", user_id="u1")  # T2: a larger xid, committed first
        got = a.search(q, k=5, user_id="u1", mode="dense")
        assert later.id in {h.item.id for h in got} and item.id not in {h.item.id for h in got}
        pos1, changed = a.records.vector_changes(pos0)
        assert changed == [a.records.rowid(later.id)]  # T1 is not committed: not in the log yet
        assert a.records.vector_changes(pos1)[1] == []
        release.set()
        th.join(60)
        assert done.is_set() and "error" not in box, box.get("error")
        with slow._pool.connection() as conn:  # the premise: T1 started first, so its xid is the smaller one
            xids = dict(conn.execute("SELECT item_rowid, xid::text::bigint FROM vec_changes").fetchall())
        assert xids[box["rowid"]] == box["xid"] < xids[a.records.rowid(later.id)]
        assert a.records.vector_changes(pos1)[1] == [box["rowid"]]  # T1's change, after T2's position
        top = a.search(q, k=5, user_id="u1", mode="dense")
        assert top[0].item.id == item.id and top[0].retrievers["dense"] > 0.99
        assert box["rowid"] in cache.cached_rowids() and cache.builds == builds  # replayed, not re-read
        _same(_dense(a, q, 1000, user_id="u1"), _exact(a, _qvec(q), 1000, user_id="u1"))
    finally:
        slow.close()
        b.close()
        a.close()


def test_postgres_vector_change_log(pg_cube_url, monkeypatch) -> None:
    """The PostgreSQL log: embedding adds, replacements and removals, scope moves and deletes are logged; topic
    vectors, states and usage counters are not; a trimmed log or a position from another log means 'start
    again'; a trim keeps what a reader at or after the watermark needs."""
    from memos_core.items import LifecycleState, MemoryItem, Scope
    from memos_core.records.postgres import PostgresRecordStore

    store = PostgresRecordStore(pg_cube_url)
    other = None
    try:
        def add(content: str, user: str = "u1") -> int:
            item = MemoryItem(content=content, cube_id="c", scope=Scope(user_id=user))
            with store.transaction() as c:
                r = store.insert_item(c, item, hashed_embed([content])[0], True, "me", "add")
                store.set_state(c, r, item.id, None, LifecycleState.ACTIVATED, 1.0, "me", "created")
            return r

        pos, none = store.vector_changes(None)
        assert none == []
        ra = add("apple banana")
        pos2, changed = store.vector_changes(pos)
        assert changed == [ra] and pos2 != pos
        assert store.vector_changes(pos2)[1] == []
        with store.transaction() as c:  # topic vectors, states, usage: not vector changes
            store.put_topics(c, [(ra, 1, b"\0" * 8)])
            c.execute("UPDATE items SET state='archived', access_count=access_count+1 WHERE rowid=%s", (ra,))
        assert store.vector_changes(pos2)[1] == []
        with store.transaction() as c:
            store._put_vec(c, ra, 2, hashed_embed(["apple cherry"])[0])
        pos3, changed = store.vector_changes(pos2)
        assert changed == [ra]
        with store.transaction() as c:  # a scope move alone (no new embedding) is logged too
            c.execute("UPDATE items SET user_id='u9' WHERE rowid=%s", (ra,))
        pos4, changed = store.vector_changes(pos3)
        assert changed == [ra]
        assert store.scope_vectors("u9", None, None)[0] == [ra] and store.scope_vectors("u1", None, None)[0] == []
        with store.transaction() as c:
            store.unindex(c, ra)
        pos5, changed = store.vector_changes(pos4)
        assert changed == [ra]
        rb = add("cherry dog")
        with store.transaction() as c:
            store.erase_item(c, rb, store.get_many_by_rowid([rb])[rb].id)
        pos6, changed = store.vector_changes(pos5)
        assert changed == [rb]
        assert store.vector_changes(("another log", pos6[1]))[1] is None
        assert store.vector_changes(42)[1] is None  # not a position of this backend

        # trimming: rows below the watermark go; a reader older than it starts again, a newer one replays
        for i in range(6):
            add(f"egg fig {i}")
        keep_from, _ = store.vector_changes(None)
        newer = [add(f"grape hat {i}") for i in range(3)]
        monkeypatch.setattr(type(store), "_VEC_LOG_KEEP", 2)
        store._trim_vec_log()
        with store._pool.connection() as conn:
            left = conn.execute("SELECT COUNT(*) FROM vec_changes").fetchone()[0]
        assert left <= 3
        assert store.vector_changes(pos6)[1] is None  # trimmed past this reader: start again
        # a reader after the deleted rows replays all it needs (or, were the watermark above its xmin, starts again)
        assert store.vector_changes(keep_from)[1] in (sorted(newer), None)
        got = store.vector_changes(store.vector_changes(None)[0])
        assert got[1] == []

        # another log: the schema made again under the same name
        store.drop_schema()
        store.close()
        other = PostgresRecordStore(pg_cube_url)
        assert other.vector_changes(pos6)[1] is None
    finally:
        store.close()
        if other is not None:
            other.close()


def test_postgres_schema_4_cube_is_migrated_to_the_change_log(pg_cube_url, tmp_path, chroma_server, clock) -> None:
    from memos_core.records.postgres import PG_SCHEMA_VERSION, PostgresRecordStore

    old = PostgresRecordStore(pg_cube_url, _migrate_to=4)
    try:
        assert old.stored_schema_version() == 4
        assert old.vector_changes(None) is None  # no log at schema 4: no cache
    finally:
        old.close()
    a = _pg_cube(pg_cube_url, tmp_path, chroma_server, clock)
    try:
        assert PG_SCHEMA_VERSION == 5 and a.records.stored_schema_version() == 5
        _fill(a, 60)
        q = "apple banana cherry"
        _same(_dense(a, q, 30, user_id="u1"), _exact(a, _qvec(q), 30, user_id="u1"))
        cache = scope_cache.cache_for(a.records)
        assert cache is not None and ("u1", None, None) in cache.scopes
        new = a.add(q, user_id="u1")
        assert a.search(q, k=1, user_id="u1", mode="dense")[0].item.id == new.id
        assert cache.replayed >= 1
    finally:
        a.close()


def test_postgres_a_trimmed_log_makes_the_cache_read_the_scope_again(pg_cube_url, tmp_path, chroma_server, clock,
                                                                     monkeypatch) -> None:
    a = _pg_cube(pg_cube_url, tmp_path, chroma_server, clock, "a")
    b = _pg_cube(pg_cube_url, tmp_path, chroma_server, clock, "b")
    try:
        _fill(a, 60)
        a.search("apple", k=5, user_id="u1")
        cache = scope_cache.cache_for(a.records)
        builds = cache.builds
        added = [b.add(f"mango nut orange {w}", user_id="u1") for w in ("pear", "quilt", "rose")]
        monkeypatch.setattr(type(b.records), "_VEC_LOG_KEEP", 1)
        b.records._trim_vec_log()
        got = {h.item.id for h in a.search("mango nut orange", k=10, user_id="u1", mode="dense")}
        assert {it.id for it in added} <= got
        assert cache.builds == builds + 1  # read again from the store: the log no longer reaches back
        _same(_dense(a, "mango nut", 1000, user_id="u1"), _exact(a, _qvec("mango nut"), 1000, user_id="u1"))
    finally:
        b.close()
        a.close()


def test_postgres_concurrent_writers_and_a_syncing_reader_end_exact(pg_cube_url, tmp_path, chroma_server,
                                                                    clock) -> None:
    """Three writer handles (own connections, as workers on other hosts) add, update, delete and forget at once
    while a fourth handle keeps searching its cached scopes: afterwards every cached scope holds exactly the rows
    and vectors the store has, and scoped search equals the exact filtered scan."""
    import threading

    from memos_core.errors import MemOSError

    a = _pg_cube(pg_cube_url, tmp_path, chroma_server, clock, "a")
    writers = [_pg_cube(pg_cube_url, tmp_path, chroma_server, clock, f"w{i}") for i in range(3)]
    try:
        _fill(a, 60)
        scopes = [("u0", None, None), ("u1", None, None), (None, "a1", None)]
        for u, ag, _ in scopes:
            a.search("apple", k=5, **({"user_id": u} if u else {"agent_id": ag}))
        cache = scope_cache.cache_for(a.records)
        errors: list[BaseException] = []
        done: list[str] = []
        stop = threading.Event()

        def write(w, seed: int) -> None:
            rng = random.Random(seed)
            mine: list[str] = []
            try:
                for _ in range(25):
                    op = rng.choice(["add", "add", "update", "delete", "forget"]) if mine else "add"
                    try:
                        if op == "add":
                            mine.append(w.add(" ".join(rng.sample(WORDS, 3)), user_id=f"u{rng.randrange(3)}",
                                              agent_id=f"a{rng.randrange(2)}").id)
                        elif op == "update":
                            w.update(rng.choice(mine), " ".join(rng.sample(WORDS, 4)))
                        elif op == "delete":
                            w.delete(rng.choice(mine))
                        else:
                            victim = rng.choice(mine)
                            w.forget(victim)
                            mine.remove(victim)
                        done.append(op)
                    except MemOSError:
                        pass  # a Conflict or an illegal transition: nothing changed
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        def read() -> None:
            rng = random.Random(99)
            try:
                while not stop.is_set():
                    u, ag, _ = rng.choice(scopes)
                    a.search(" ".join(rng.sample(WORDS, 2)), k=5, mode="dense",
                             **({"user_id": u} if u else {"agent_id": ag}))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w, i)) for i, w in enumerate(writers)]
        reader = threading.Thread(target=read)
        reader.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        stop.set()
        reader.join(60)
        assert not errors, errors
        assert {"add", "update", "delete", "forget"} <= set(done)
        for u, ag, _ in scopes:
            flt = {"user_id": u} if u else {"agent_id": ag}
            _same(_dense(a, "apple kite", 1000, **flt), _exact(a, _qvec("apple kite"), 1000, **flt))
        for cached in cache.scopes:
            rowids, blobs = a.records.scope_vectors(*cached)
            assert _cache_rows(cache, cached) == dict(zip(rowids, blobs)), cached
        assert set(cache.scopes) == set(scopes) and cache.replayed > 0
    finally:
        for w in writers:
            w.close()
        a.close()
