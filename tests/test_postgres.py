"""PostgreSQL-specific behaviour of the records backend: migrations, several cubes in one database, concurrent
writers in separate processes, and a server that goes away and comes back. (The behaviour shared with SQLite
is in test_records_contract.py.) Each test module starts its own temporary cluster on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from memos_core.errors import BackendUnavailable, CubeClosed, ValidationError
from memos_core.governance.audit import verify_rows
from memos_core.items import LifecycleState as S
from memos_core.items import MemoryItem, SearchFilter

WORKER = str(Path(__file__).with_name("pg_worker.py"))


@pytest.fixture(scope="module")
def pg() -> Iterator[Any]:
    from pg_server import running_pg

    yield from running_pg("memos-pgtests")


@pytest.fixture
def cube_name() -> str:
    from pg_server import fresh_schema_name

    return fresh_schema_name("p")


def _store(pg: Any, name: str, **kw: Any) -> Any:
    from memos_core.records.postgres import PostgresRecordStore

    return PostgresRecordStore(pg.url(), name, **kw)


def _add(store: Any, content: str) -> tuple[int, MemoryItem]:
    item = MemoryItem(content=content, cube_id="c")
    with store.transaction() as c:
        rowid = store.insert_item(c, item, np.ones(8, np.float32), True, "me", "add")
        store.set_state(c, rowid, item.id, None, S.ACTIVATED, 1.0, "me", "created")
        store.append_event(c, 1.0, "me", "add", item.id)
    return rowid, item


def test_a_schema_1_cube_is_migrated_and_its_rows_become_searchable(pg: Any, cube_name: str) -> None:
    old = _store(pg, cube_name, _migrate_to=1)
    try:
        assert old.stored_schema_version() == 1
        rowid, item = _add(old, "the lighthouse keeper of Zennor")
    finally:
        old.close()
    new = _store(pg, cube_name)
    try:
        from memos_core.records.postgres import PG_SCHEMA_VERSION

        assert new.stored_schema_version() == PG_SCHEMA_VERSION
        everything = new.compile_filter(SearchFilter(), [S.ACTIVATED], 0.0)
        assert [r for r, _ in new.lexical('"lighthouse" OR "zennor"', everything, 5)] == [rowid]
        assert new.get(item.id).content == "the lighthouse keeper of Zennor"
        assert verify_rows(*new.audit_chain()).ok
    finally:
        new.close()


def test_schema_4_derives_the_lexical_postings_of_rows_written_before_and_keeps_them_on_every_write(
        pg: Any, cube_name: str) -> None:
    """The postings BM25 reads (``lex_terms``) are filled from the rows a schema-3 cube already holds, then kept by
    triggers: an update re-derives them, unindexing (delete, purge) and forget remove them."""
    old = _store(pg, cube_name, _migrate_to=3)
    try:
        r_old, first = _add(old, "the lighthouse keeper of Zennor keeps the lighthouse lamp lit")
    finally:
        old.close()
    store = _store(pg, cube_name)
    try:
        assert store.stored_schema_version() == 5  # the latest (4 brought the postings, 5 the vector change log)
        everything = store.compile_filter(SearchFilter(), [S.ACTIVATED], 0.0)

        def postings(rowid: int) -> dict[str, tuple[int, int]]:
            with store._pool.connection() as conn:
                return {lx: (tf, dl) for lx, tf, dl in conn.execute(
                    "SELECT lexeme, tf, dl FROM lex_terms WHERE rowid=%s", (rowid,)).fetchall()}

        assert postings(r_old)["lighthous"] == (2, 6)  # lighthous x2, keeper, zennor, keep, lamp, lit: 6 lexemes
        r_new, item = _add(store, "a zennor fisherman mends his nets")
        assert set(postings(r_new)) == {"zennor", "fisherman", "mend", "net"}
        assert [r for r, _ in store.lexical('"zennor"', everything, 5)] == [r_new, r_old]  # shorter row first
        changed = item.model_copy(update={"content": "a fisherman from Penzance", "version": 2})
        with store.transaction() as c:
            store.replace_item(c, r_new, changed, np.ones(8, np.float32), True, True, "me", "update")
        assert set(postings(r_new)) == {"fisherman", "penzanc"}
        assert [r for r, _ in store.lexical('"zennor"', everything, 5)] == [r_old]
        with store.transaction() as c:
            store.unindex(c, r_new)
        assert postings(r_new) == {} and store.lexical('"fisherman"', everything, 5) == []
        with store.transaction() as c:
            store.erase_item(c, r_old, first.id)
        with store._pool.connection() as conn:
            assert conn.execute("SELECT COUNT(*) FROM lex_terms").fetchone()[0] == 0
    finally:
        store.close()


def test_cubes_sharing_a_database_are_isolated(pg: Any, cube_name: str) -> None:
    a, b = _store(pg, cube_name + "a"), _store(pg, cube_name + "b")
    try:
        _, item = _add(a, "only in a")
        _add(b, "only in b")
        _add(b, "also in b")
        assert b.get(item.id) is None and a.count() == 1 and b.count() == 2
        assert len(a.raw_events()) == 1 and len(b.raw_events()) == 2
        assert verify_rows(*a.audit_chain()).ok and verify_rows(*b.audit_chain()).ok
        assert a.schema != b.schema
    finally:
        a.close()
        b.close()


def test_bad_cube_names_and_urls_are_validation_errors(pg: Any) -> None:
    from memos_core.records.postgres import PostgresRecordStore, parse_postgres_url

    with pytest.raises(ValidationError):
        PostgresRecordStore(pg.url(), 'x"; DROP SCHEMA public; --')
    with pytest.raises(ValidationError):
        parse_postgres_url("mysql://h/db")
    assert parse_postgres_url("postgresql://u@h:5/db?cube=team1&sslmode=disable") == \
        ("postgresql://u@h:5/db?sslmode=disable", "team1")


def _run_workers(*argvs: list[str]) -> list[dict[str, Any]]:
    procs = [subprocess.Popen([sys.executable, WORKER, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for argv in argvs]
    out = []
    for p in procs:
        so, se = p.communicate(timeout=300)
        assert p.returncode == 0, se[-3000:]
        out.append(json.loads(so.strip().splitlines()[-1]))
    return out


def test_concurrent_updates_from_processes_end_in_success_or_conflict(pg: Any, cube_name: str) -> None:
    store = _store(pg, cube_name)
    try:
        _, item = _add(store, "v1")
        results = _run_workers(*[["update", pg.url(), cube_name, item.id, "25"] for _ in range(4)])
        assert all(r["other"] == [] for r in results), results  # never an untyped error
        ok = sum(r["ok"] for r in results)
        assert ok >= 25 and ok + sum(r["conflict"] for r in results) == 100
        versions = [v.version for v in store.versions(item.id)]
        assert versions == list(range(1, ok + 2))  # contiguous: no lost, no duplicated version
        assert store.get(item.id).version == ok + 1
        rows, counter = store.audit_chain()
        assert len(rows) == ok + 1 and verify_rows(rows, counter).ok
    finally:
        store.close()


def test_one_audit_chain_with_writers_in_many_processes(pg: Any, cube_name: str) -> None:
    store = _store(pg, cube_name)
    try:
        _add(store, "seed")
        _run_workers(*[["audit", pg.url(), cube_name, "40"] for _ in range(4)])
        rows, counter = store.audit_chain()
        assert [r[0] for r in rows] == list(range(1, 162)) and counter == 161
        report = verify_rows(rows, counter)
        assert report.ok, report.problems[:3]
    finally:
        store.close()


def test_a_deleted_tail_of_the_chain_shows(pg: Any, cube_name: str) -> None:
    store = _store(pg, cube_name)
    try:
        for i in range(3):
            _add(store, f"x{i}")
        with store.transaction() as c:
            c.execute("DELETE FROM events WHERE seq = 3")
        report = verify_rows(*store.audit_chain())
        assert not report.ok and report.problems[0].kind == "deleted"
    finally:
        store.close()


def test_forget_vacuums_dead_tuples(pg: Any, cube_name: str) -> None:
    store = _store(pg, cube_name)
    try:
        rowid, item = _add(store, "secret zanzibar")
        with store.transaction() as c:
            store.erase_item(c, rowid, item.id)
        store.compact_erased()
        with store._pool.connection() as conn:
            dead = conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname=%s AND relname='items'",
                                (store.schema,)).fetchone()
        assert dead is not None and dead[0] == 0
    finally:
        store.close()


def test_closed_store_raises_cube_closed(pg: Any, cube_name: str) -> None:
    store = _store(pg, cube_name)
    store.close()
    with pytest.raises(CubeClosed):
        store.get("x")
    with pytest.raises(CubeClosed):
        with store.transaction():
            pass


# ------------------------------------------------------------------ a server that goes away and comes back
@pytest.fixture
def own_pg() -> Iterator[Any]:
    """A cluster of this test's own (it is stopped and restarted)."""
    from pg_server import running_pg

    yield from running_pg("memos-outage")


def test_a_restart_gives_backend_unavailable_then_recovers_with_nothing_lost(own_pg: Any) -> None:
    from memos_core.records.postgres import PostgresRecordStore

    store = PostgresRecordStore(own_pg.url(), "outage", connect_timeout=2.0)
    try:
        _, before = _add(store, "written before the outage")
        own_pg.stop("immediate")  # a crash: no clean shutdown
        with pytest.raises(BackendUnavailable):
            store.get(before.id)
        with pytest.raises(BackendUnavailable):
            _add(store, "written during the outage")
        own_pg.start()
        deadline = time.monotonic() + 60
        while True:  # the pool reconnects (with back-off); until then every call is a typed BackendUnavailable
            try:
                got = store.get(before.id)
                break
            except BackendUnavailable:
                assert time.monotonic() < deadline, "no recovery within 60 s"
                time.sleep(0.2)
        assert got.content == "written before the outage"
        _, after = _add(store, "written after the outage")
        assert {it.content for it in store.iter_items()} == {"written before the outage", "written after the outage"}
        assert verify_rows(*store.audit_chain()).ok
    finally:
        store.close()


def test_an_unreachable_server_on_open_is_backend_unavailable(own_pg: Any) -> None:
    from memos_core.records.postgres import PostgresRecordStore

    own_pg.stop("fast")
    with pytest.raises(BackendUnavailable, match="cannot be reached"):
        PostgresRecordStore(own_pg.url(), "nobody", connect_timeout=1.0)


def test_records_migrate_sqlite_to_postgres_and_back_verified(pg: Any, cube_name: str, tmp_path: Path) -> None:
    from memos_core.errors import ValidationError as VErr
    from memos_core.records.migrate import copy_records, open_record_store

    src = open_record_store(tmp_path / "a")
    rowid, item = _add(src, "Ann's cat is called Biscuit")
    _, gone = _add(src, "to be deleted")
    new = item.model_copy(update={"content": "Ann's cat is called Biscuit II", "version": 2})
    with src.transaction() as c:
        src.replace_item(c, rowid, new, np.full(8, 0.5, np.float32), True, True, "me", "update")
        src.bootstrap_governance(c, "owner1", "user", 1.0, "ab" * 32)
        src.put_grant(c, "bob", "reader", "owner1", 2.0)
        src.set_state(c, src.rowid(gone.id), gone.id, S.ACTIVATED, S.DELETED, 3.0, "me", "delete")
        src.unindex(c, src.rowid(gone.id))
        src.append_event(c, 4.0, "me", "update", item.id)
    src.record_usage([rowid], 9.0)
    pgstore = _store(pg, cube_name)
    back = open_record_store(tmp_path / "b")
    try:
        report = copy_records(src, pgstore)
        assert report["items"] == 2 and report["versions"] == 3 and report["events"] == 3
        assert pgstore.get(item.id).usage.access_count == 1
        assert sorted(pgstore.pending_vectors()) == [pgstore.rowid(item.id)]  # the index fills on open
        copy_records(pgstore, back)
        assert back.raw_events() == src.raw_events()
        assert back.versions(item.id) == src.versions(item.id)
        with pytest.raises(VErr, match="already holds records"):
            copy_records(src, back)
    finally:
        for s in (src, pgstore, back):
            s.close()
