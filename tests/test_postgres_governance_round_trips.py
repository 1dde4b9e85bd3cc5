"""Governance on PostgreSQL: what every governed call reads (the caller's role and the cube's settings) costs one
statement, not two, and sharing it weakens nothing: a role revoked by another worker (its own connections) is
refused on this worker's very next call, a read-audit switched on there records this worker's next read, and the
audit chain stays whole and verifiable.

Statements are counted from libpq's own protocol trace (``PQtrace``) of every connection the cube opens: a
statement that reads ``gov_acl`` or ``gov_settings`` is one message ``Query`` or ``Bind`` naming it (psycopg
prepares a statement after a few executions; later ones send only ``Bind`` with the prepared name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import hashed_embed
from pg_trace import PQTrace
from memos_core.errors import NotFound, PermissionDenied

pytestmark = pytest.mark.integration


@pytest.fixture
def url(pg_server: Any) -> str:
    from pg_server import fresh_schema_name

    return pg_server.url() + "?cube=" + fresh_schema_name("g")


def _gov(stmts: list[str]) -> list[str]:
    return [s for s in stmts if "gov_acl" in s or "gov_settings" in s]


def test_each_governed_call_reads_role_and_settings_in_one_statement(url: str, tmp_path: Path,
                                                                     monkeypatch: Any) -> None:
    from memos_core.cube import MemCube

    trace = PQTrace(tmp_path, monkeypatch)
    try:
        with MemCube(url, index="embedded", workdir=tmp_path / "w", embedder=hashed_embed) as cube:
            a = cube.add("the tram runs every ten minutes", user_id="ann")
            cube.add("the ferry leaves at noon", user_id="ann")
            cube.search("tram", k=3)
            cube.records.flush()
            calls = {
                "search": lambda: cube.search("ferry noon", k=3),
                "scoped search": lambda: cube.search("ferry noon", k=3, user_id="ann"),
                "lexical search": lambda: cube.search("ferry", k=3, mode="lexical"),
                "get": lambda: cube.get(a.id),
                "add": lambda: cube.add("the museum opens at nine", user_id="ann"),
                "update": lambda: cube.update(a.id, "the tram runs every twelve minutes"),
                "list": lambda: cube.list(limit=5),
            }
            for audited in (False, True):
                if audited:
                    cube.governance.configure(audit_reads=True)
                for name, call in calls.items():
                    for _ in range(7):  # past psycopg's prepare threshold too
                        trace.mark()
                        call()
                        cube.records._wait_flusher()  # noqa: SLF001 - whatever the call started, counted with it
                        got = _gov(trace.statements())
                        assert len(got) == 1, (name, audited, got)
            assert cube.governance.verify().ok
    finally:
        trace.close()


def test_a_revoked_role_and_a_new_audit_setting_hold_on_the_next_call_of_another_worker(url: str,
                                                                                       tmp_path: Path) -> None:
    """Two handles on one cube, each with its own connection pool (two workers): what the owner changes on one is
    in force on the other's next call, whatever that handle read before."""
    from memos_core.cube import MemCube

    with MemCube(url, index="embedded", workdir=tmp_path / "a", embedder=hashed_embed, actor="owner") as owner, \
            MemCube(url, index="embedded", workdir=tmp_path / "b", embedder=hashed_embed, actor="bob",
                    create=False) as bob:
        assert owner.records is not bob.records
        a = owner.add("the tram runs every ten minutes", user_id="ann")
        owner.governance.share("bob", "writer")
        for _ in range(3):  # bob's handle reads role and settings a few times (and prepares the statement)
            assert [h.item.id for h in bob.search("tram", k=3)] == [a.id]
            assert bob.get(a.id).id == a.id
        b = bob.add("the ferry leaves at noon", user_id="ann")

        owner.governance.configure(audit_reads=True)  # on the other worker: bob's next read is audited
        before = len(owner.events())
        bob.search("ferry", k=3)
        bob.get(b.id)
        reads = [(e["op"], e["actor"]) for e in owner.events()[before:]]
        assert reads == [("search", "bob"), ("get", "bob")]

        owner.governance.share("bob", "reader")  # downgraded: bob's next write is refused
        with pytest.raises(PermissionDenied):
            bob.add("the museum opens at nine", user_id="ann")
        assert bob.search("tram", k=3)

        owner.governance.revoke("bob")  # revoked: bob's very next call of any kind is refused
        with pytest.raises(PermissionDenied):
            bob.search("tram", k=3)
        with pytest.raises(PermissionDenied):
            bob.search("tram", k=3, mode="lexical")
        with pytest.raises(NotFound):  # an item in a cube bob may not read: the answer of an unknown id
            bob.get(a.id)
        with pytest.raises(PermissionDenied):
            bob.add("the museum opens at nine", user_id="ann")
        with pytest.raises(PermissionDenied):
            bob.list(limit=5)

        owner.governance.configure(audit_reads=False)
        owner.governance.share("bob", "reader")
        before = len(owner.events())
        assert bob.search("tram", k=3) and bob.get(a.id)
        assert [e["op"] for e in owner.events()[before:]] == []  # not audited any more, on bob's next calls
        report = owner.governance.verify()
        assert report.ok, report.problems


def test_a_scoped_search_with_a_current_cache_checks_the_change_log_in_one_statement(url: str, tmp_path: Path,
                                                                                   monkeypatch: Any) -> None:
    """The scope cache's check before a scoped search: when nothing changed, one statement (the change log read on
    its own), not a read-only transaction (BEGIN, SET TRANSACTION, the read, COMMIT); after another handle's
    write it replays in a snapshot and the new memory is found."""
    from memos_core.cube import MemCube

    trace = PQTrace(tmp_path, monkeypatch)
    try:
        with MemCube(url, index="embedded", workdir=tmp_path / "a", embedder=hashed_embed) as a, \
                MemCube(url, index="embedded", workdir=tmp_path / "b", embedder=hashed_embed, create=False) as b:
            a.add_many([{"content": f"memory {i} of the first user", "user_id": "u0"} for i in range(20)])
            for _ in range(2):
                a.search("memory", k=3, user_id="u0", mode="dense")
            for _ in range(3):
                trace.mark()
                a.search("memory", k=3, user_id="u0", mode="dense")
                got = trace.statements()
                assert sum("vec_changes" in s for s in got) == 1, got
                assert not [s for s in got if "BEGIN" in s or "SET TRANSACTION" in s or "COMMIT" in s], got
            new = b.add("the lighthouse keeper feeds seven cats", user_id="u0")
            hits = a.search("the lighthouse keeper feeds seven cats", k=1, user_id="u0", mode="dense")
            assert hits[0].item.id == new.id
    finally:
        trace.close()


def test_get_update_and_delete_read_the_item_in_one_statement(url: str, tmp_path: Path, monkeypatch: Any) -> None:
    """Loading an item by id (get, update, delete, history, ...) reads its row once (it read the rowid, then the
    item: two round trips); an unknown or deleted id is still NotFound."""
    from memos_core.cube import MemCube

    trace = PQTrace(tmp_path, monkeypatch)
    try:
        with MemCube(url, index="embedded", workdir=tmp_path / "w", embedder=hashed_embed) as cube:
            a = cube.add("the tram runs every ten minutes", user_id="ann")
            b = cube.add("the ferry leaves at noon", user_id="ann")
            # (an update also re-reads the row FOR UPDATE inside its transaction, by design: 3 reads before)
            for name, call, reads in (("get", lambda: cube.get(a.id), 1),
                                      ("update", lambda: cube.update(a.id, "the tram runs every twelve minutes"), 2),
                                      ("history", lambda: cube.history(a.id), 1),
                                      ("delete", lambda: cube.delete(b.id), 2)):
                trace.mark()
                call()
                got = [s for s in trace.statements() if "FROM items WHERE" in s and ("id = ANY" in s or "id=$1" in s)]
                assert len(got) == reads, (name, got)
            assert cube.get(a.id).content == "the tram runs every twelve minutes"
            with pytest.raises(NotFound):
                cube.get("no-such-id")
            with pytest.raises(NotFound):
                cube.get(b.id)  # deleted
            assert cube.get(b.id, include_deleted=True).state.value == "deleted"
    finally:
        trace.close()
