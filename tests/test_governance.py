"""Governance: principals and roles, sharing, the audit chain, retention, redaction and forget (issue 3).

The property-based test of cross-tenant isolation is in ``test_governance_property.py``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
from conftest import emb32

from memos_core import (
    Conflict,
    CubeClosed,
    IllegalTransition,
    LifecycleState,
    MemCube,
    NotFound,
    PermissionDenied,
    ValidationError,
)
from memos_core.artifacts import source_ref, stale_sources
from memos_core.cli import main as cli_main
from memos_core.governance import (
    ROLE_RIGHTS,
    RedactionPolicy,
    RedactionRejected,
    RetentionSweeper,
    Right,
    Role,
    detect,
    readable_cubes,
    register_detector,
    search_cubes,
    verify_file,
)
from memos_core.governance import redaction as red
from memos_core.governance.audit import verify_rows

# every test here also runs on PostgreSQL + a Chroma server (tests about the SQLite file are sqlite_only)
pytestmark = pytest.mark.records_backends

S = LifecycleState
class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    """A fast folder (tmpfs when there is one: fsync is then free) for cubes."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        d = Path(tempfile.mkdtemp(prefix="memos-gov-", dir=shm))
        yield d
        shutil.rmtree(d, ignore_errors=True)
    else:  # pragma: no cover - platforms without /dev/shm
        yield tmp_path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(base: Path, clock: Clock, store_for: Any, chroma_url: str | None) -> Iterator[Callable[..., MemCube]]:
    opened: list[MemCube] = []

    def _make(name: str = "cube", actor: str = "local", **kw: Any) -> MemCube:
        target = store_for(base / name)  # the folder, or (records_backends) a PostgreSQL cube + Chroma server
        if target != base / name:
            kw.setdefault("workdir", base / name)
            kw.setdefault("chroma_url", chroma_url)
        cube = MemCube(target, embedder=emb32, clock=clock, actor=actor, **kw)
        opened.append(cube)
        return cube

    yield _make
    for c in opened:
        try:
            c.close()
        except Exception:  # noqa: BLE001 - already closed by the test
            pass


def last_event(cube: MemCube) -> dict[str, Any]:
    return cube.records.events()[-1]


def acl(cube: MemCube) -> dict[str, str]:
    return {g.principal: g.role.value for g in cube.governance.members(actor=owner_of(cube))}


def owner_of(cube: MemCube) -> str:
    return next(g[0] for g in cube.records.grants() if g[2] == "owner")


# ============================================================================ principals, roles, sharing
def test_single_user_default_owner_runs_every_check(make: Callable[..., MemCube]) -> None:
    cube = make()
    item = cube.add("Ann likes green tea")
    cube.update(item.id, "Ann likes jasmine tea")
    assert cube.search("jasmine")[0].item.id == item.id
    assert [g.model_dump(include={"principal", "role"}) for g in cube.governance.members()] == \
        [{"principal": "local", "role": Role.OWNER}]
    assert cube.governance.role_of("local") == Role.OWNER
    assert item.created_by == "local"
    # the check still runs: a principal nobody shared the cube with is refused
    with pytest.raises(PermissionDenied, match="no access"):
        cube.add("sneaky", actor="mallory")
    assert cube.count() == 1


def _ops(cube: MemCube, item_id: str, deleted_id: str) -> dict[str, tuple[Right, Callable[[str], Any]]]:
    return {
        "get": (Right.READ, lambda a: cube.get(item_id, actor=a)),
        "search": (Right.READ, lambda a: cube.search("tea", actor=a)),
        "list": (Right.READ, lambda a: cube.list(actor=a)),
        "count": (Right.READ, lambda a: cube.count(actor=a)),
        "lookup": (Right.READ, lambda a: cube.lookup(item_id, actor=a)),
        "stats": (Right.READ, lambda a: cube.stats(actor=a)),
        "members": (Right.READ, lambda a: cube.governance.members(actor=a)),
        "history": (Right.HISTORY, lambda a: cube.history(item_id, actor=a)),
        "transitions": (Right.HISTORY, lambda a: cube.transitions(item_id, actor=a)),
        "tombstone": (Right.HISTORY, lambda a: cube.get(deleted_id, include_deleted=True, actor=a)),
        "add": (Right.WRITE, lambda a: cube.add(f"note by {a}", actor=a)),
        "update": (Right.WRITE, lambda a: cube.update(item_id, f"tea v by {a}", actor=a)),
        "archive": (Right.WRITE, lambda a: (cube.transition(item_id, "archived", actor=a),
                                            cube.transition(item_id, "activated", actor=a))),
        "share": (Right.SHARE, lambda a: cube.share("newbie", "reader", actor=a)),
        "audit": (Right.ADMINISTER, lambda a: cube.events(actor=a)),
        "verify": (Right.ADMINISTER, lambda a: cube.governance.verify(actor=a)),
        "configure": (Right.ADMINISTER, lambda a: cube.governance.configure(audit_reads=False, actor=a)),
        "hold": (Right.ADMINISTER, lambda a: (cube.legal_hold(item_id, actor=a), cube.lift_hold(item_id, actor=a))),
        "expire": (Right.ADMINISTER, lambda a: cube.expire(actor=a)),
        "reindex": (Right.ADMINISTER, lambda a: cube.reindex(actor=a)),
    }


@pytest.mark.parametrize("role", [r.value for r in Role] + [None])
def test_each_role_may_do_exactly_what_its_rights_say(make: Callable[..., MemCube], role: str | None) -> None:
    cube = make(actor="olga")
    item = cube.add("Ann likes green tea")
    gone = cube.add("old tea fact")
    cube.delete(gone.id)
    if role is not None:
        cube.share("pat", role)
    rights = ROLE_RIGHTS[Role(role)] if role else frozenset()
    for name, (right, op) in _ops(cube, item.id, gone.id).items():
        if right in rights:
            op("pat")
        else:
            before = len(cube.records.events())
            with pytest.raises((PermissionDenied, NotFound)) as err:
                op("pat")
            if Right.READ not in rights and name in ("get", "history", "transitions", "tombstone", "update",
                                                     "archive", "hold"):
                assert isinstance(err.value, NotFound), name  # an item in a cube you may not read: NotFound
            else:
                assert isinstance(err.value, PermissionDenied), name
            ev = cube.records.events()
            assert len(ev) == before + 1 and ev[-1]["outcome"] == "denied" and ev[-1]["actor"] == "pat", name


@pytest.mark.parametrize("who, role, target, new, why", [
    ("wri", "writer", "wri", "admin", "may not share"),          # a writer granting itself admin
    ("wri", "writer", "eve", "admin", "may not share"),          # a writer granting someone else admin
    ("rea", "reader", "eve", "reader", "may not share"),
    ("adm", "admin", "eve", "owner", "only an owner"),            # an admin minting an owner
    ("adm", "admin", "adm", "owner", "their own role"),           # self-promotion
    ("adm", "admin", "adm2", "reader", "may not change the role"),  # demoting a peer admin
    ("adm", "admin", "olga", "reader", "may not change the role"),  # demoting the owner
    ("eve", None, "eve", "reader", "may not share"),              # a stranger sharing a cube it does not own
])
def test_escalation_attempts_are_denied_audited_and_change_nothing(make: Callable[..., MemCube], who: str,
                                                                    role: str | None, target: str, new: str,
                                                                    why: str) -> None:
    cube = make(actor="olga")
    cube.share("adm", "admin")
    cube.share("adm2", "admin")
    cube.share("wri", "writer")
    cube.share("rea", "reader")
    before = acl(cube)
    with pytest.raises(PermissionDenied, match=why):
        cube.share(target, new, actor=who)
    assert acl(cube) == before
    ev = last_event(cube)
    assert (ev["op"], ev["outcome"], ev["actor"]) == ("acl.grant", "denied", who)
    assert ev["detail"]["principal"] == target and ev["detail"]["role"] == new


def test_what_admins_and_owners_may_grant(make: Callable[..., MemCube]) -> None:
    cube = make(actor="olga")
    cube.share("adm", "admin")
    assert cube.share("w", "writer", actor="adm").role == Role.WRITER
    assert cube.share("w", "reader", actor="adm").role == Role.READER  # admin changes a lower role
    assert cube.share("adm3", "admin", actor="adm").role == Role.ADMIN  # up to its own role
    assert cube.share("o2", "owner").role == Role.OWNER
    assert cube.share("o2", "admin").role == Role.ADMIN  # an owner may demote another owner
    assert acl(cube) == {"olga": "owner", "adm": "admin", "adm3": "admin", "w": "reader", "o2": "admin"}
    assert [e["op"] for e in cube.records.events()].count("acl.grant") == 6


def test_revoke_leave_and_the_last_owner(make: Callable[..., MemCube]) -> None:
    cube = make(actor="olga")
    cube.share("adm", "admin")
    cube.share("rea", "reader")
    with pytest.raises(PermissionDenied, match="may not revoke"):
        cube.revoke("adm", actor="rea")
    with pytest.raises(PermissionDenied, match="may not revoke"):
        cube.revoke("olga", actor="adm")
    with pytest.raises(PermissionDenied, match="last owner"):
        cube.revoke("olga")
    with pytest.raises(PermissionDenied, match="no role"):
        cube.revoke("rea", actor="stranger")
    with pytest.raises(NotFound, match="has no role"):
        cube.revoke("nobody", actor="adm")
    assert acl(cube) == {"olga": "owner", "adm": "admin", "rea": "reader"}
    cube.revoke("rea", actor="rea")  # anyone may leave
    cube.revoke("adm")
    # hand over: a new owner first, then the old one may leave
    cube.share("nina", "owner")
    cube.revoke("olga", actor="olga")
    assert acl(cube) == {"nina": "owner"}
    with pytest.raises(PermissionDenied):
        cube.add("x", actor="olga")
    outcomes = [(e["op"], e["outcome"]) for e in cube.records.events() if e["op"] == "acl.revoke"]
    assert outcomes == [("acl.revoke", "denied")] * 4 + [("acl.revoke", "not_found")] + [("acl.revoke", "ok")] * 3


def test_unknown_and_malformed_principals(make: Callable[..., MemCube], base: Path) -> None:
    cube = make()
    item = cube.add("Ann likes tea")
    for bad in ["", "has space", "x" * 200, "nul\x00byte", "-dash-first", 42]:
        before = len(cube.records.events())
        with pytest.raises(ValidationError, match="not valid"):
            cube.get(item.id, actor=bad)  # type: ignore[arg-type]
        ev = cube.records.events()
        assert len(ev) == before + 1 and ev[-1]["outcome"] == "invalid"
        with pytest.raises(ValidationError):
            cube.share(bad, "reader")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="unknown role"):
        cube.share("bob", "superuser")
    with pytest.raises(ValidationError, match="kind"):
        cube.share("bob", "reader", kind="robot")
    with pytest.raises(ValidationError):  # a malformed default principal is refused before anything is written
        MemCube(base / "never", embedder=emb32, actor="not ok")
    assert not (base / "never").exists()
    assert acl(cube) == {"local": "owner"}


def test_service_principals_are_recorded(make: Callable[..., MemCube]) -> None:
    cube = make()
    g = cube.share("agent:planner", "writer", kind="service")
    assert g.kind.value == "service"
    cube.add("plan: book the flight", actor="agent:planner")
    with pytest.raises(ValidationError, match="known as a service"):
        cube.share("agent:planner", "reader", kind="user")
    assert cube.share("agent:planner", "reader").kind.value == "service"


def test_not_found_and_permission_denied_do_not_reveal_other_tenants_ids(make: Callable[..., MemCube]) -> None:
    cube = make(actor="olga")
    real = cube.add("olga's secret plan").id
    fake = "f" * 32
    for op in (lambda i: cube.get(i, actor="eve"), lambda i: cube.history(i, actor="eve"),
               lambda i: cube.update(i, "pwned", actor="eve"), lambda i: cube.delete(i, actor="eve"),
               lambda i: cube.forget(i, actor="eve"), lambda i: cube.transitions(i, actor="eve"),
               lambda i: cube.rollback(i, 1, actor="eve"), lambda i: cube.purge(i, actor="eve")):
        msgs = []
        for i in (real, fake):
            with pytest.raises(NotFound) as err:
                op(i)
            msgs.append((type(err.value), str(err.value).replace(i, "<id>")))
        assert msgs[0] == msgs[1]
    # ... while the owner tells the two apart, with the very same message for the unknown id
    with pytest.raises(NotFound) as err:
        cube.get(fake)
    assert str(err.value) == msgs[1][1].replace("<id>", fake)
    assert cube.get(real).content == "olga's secret plan"
    denied = [e for e in cube.records.events() if e["outcome"] == "denied"]
    assert len(denied) == 16 and {e["actor"] for e in denied} == {"eve"}


def test_forged_principals_in_writes_and_filters_are_refused(make: Callable[..., MemCube]) -> None:
    cube = make(actor="olga")
    cube.share("wri", "writer")
    item = cube.add("a fact", actor="wri", metadata={"actor": "wri", "topic": "x"})  # naming oneself is fine
    before = (cube.count(), len(cube.history(item.id)))
    attempts = [
        (PermissionDenied, lambda: cube.add("x", actor="wri", metadata={"actor": "olga"})),
        (PermissionDenied, lambda: cube.add("x", actor="wri", metadata={"on_behalf_of": "olga"})),
        (PermissionDenied, lambda: cube.add({"content": "x", "created_by": "olga"}, actor="wri")),
        (PermissionDenied, lambda: cube.update(item.id, actor="wri", metadata={"principal": "olga"})),
        (ValidationError, lambda: cube.search("fact", actor="wri", filter={"actor": "olga"})),
        (ValidationError, lambda: cube.list(actor="wri", filter={"principal": "olga"})),
        (ValidationError, lambda: search_cubes([cube], "fact", actor="wri", filter={"cube_id": "other"})),
    ]
    for exc, fn in attempts:
        n = len(cube.records.events())
        with pytest.raises(exc, match="principal|not allowed"):
            fn()
        ev = cube.records.events()
        assert len(ev) == n + 1 and ev[-1]["outcome"] in ("denied", "invalid") and ev[-1]["actor"] == "wri"
    assert (cube.count(), len(cube.history(item.id))) == before
    assert cube.get(item.id).created_by == "wri"


def test_acl_lives_in_the_cube_and_is_seen_by_every_handle(make: Callable[..., MemCube], base: Path,
                                                           clock: Clock) -> None:
    cube = make("shared", actor="olga")
    item = cube.add("team note")
    cube.share("bob", "writer")
    bob = make("shared", actor="bob")  # another handle (process)
    try:
        assert bob.get(item.id).content == "team note"
        cube.revoke("bob")  # takes effect at once in the other handle
        with pytest.raises(NotFound):
            bob.get(item.id)
        with pytest.raises(PermissionDenied):
            bob.add("still here?")
    finally:
        bob.close()
    cube.close()
    again = make("shared", actor="olga")
    try:
        assert {g.principal for g in again.governance.members()} == {"olga"}
    finally:
        again.close()


def test_search_across_cubes_returns_only_what_the_caller_may_read(make: Callable[..., MemCube]) -> None:
    a = make("a", actor="ann")
    b = make("b", actor="bob")
    c = make("c", actor="cid")
    for cube, who in ((a, "ann"), (b, "bob"), (c, "cid")):
        cube.add_many([f"{who} likes zebras and tea", f"{who} visited the zebra park", "weather is fine"])
    a.share("bob", "reader")
    hits = search_cubes([a, b, c], "zebras", actor="bob", k=10)
    assert {h.item.cube_id for h in hits} == {a.cube_id, b.cube_id}
    assert all("cid" not in h.item.content for h in hits)
    assert readable_cubes([a, b, c], "bob") == [a, b]
    # c is skipped without being searched: its denial is audited, nothing else about it reaches the result
    assert c.records.events()[-1]["outcome"] == "denied" and c.records.events()[-1]["actor"] == "bob"
    # the scores and order bob gets do not depend on the cube he cannot read
    with_c = [(h.item.id, h.score) for h in search_cubes([a, b, c], "zebras", actor="bob")]
    without_c = [(h.item.id, h.score) for h in search_cubes([a, b], "zebras", actor="bob")]
    assert with_c == without_c
    c.add_many([f"zebras zebras zebras {i}" for i in range(30)])  # grows c's index and term statistics
    assert [(h.item.id, h.score) for h in search_cubes([a, b, c], "zebras", actor="bob")] == without_c
    with pytest.raises(ValidationError):
        search_cubes([a], "zebras", actor="not valid")


# ============================================================================ audit chain
def test_every_operation_is_an_audit_record_with_outcome(make: Callable[..., MemCube]) -> None:
    cube = make(actor="olga")
    cube.share("wri", "writer")
    it = cube.add("first", actor="wri")
    cube.update(it.id, "second", actor="wri")
    cube.delete(it.id, actor="wri")
    with pytest.raises(PermissionDenied):
        cube.purge(it.id, actor="wri")
    cube.restore(it.id)
    ev = cube.records.events()
    assert [(e["actor"], e["op"], e["item_id"], e["outcome"]) for e in ev] == [
        ("olga", "acl.grant", None, "ok"),
        ("wri", "add", it.id, "ok"),
        ("wri", "update", it.id, "ok"),
        ("wri", "transition", it.id, "ok"),
        ("wri", "purge", it.id, "denied"),
        ("olga", "transition", it.id, "ok"),
    ]
    assert all(isinstance(e["at"], datetime) for e in ev)
    assert cube.governance.verify().ok


# ---------------------------------------------------------------------------- failed attempts
SECRET = "zebra-secret-7731"  # content of failed writes: must never reach the audit log

_STATE_TABLES = ("items", "versions", "transitions", "embeddings", "vec_pending", "fts_data", "fts_docsize",
                 "gov_principals", "gov_acl", "gov_settings", "gov_forget_pending")


def _records_state(cube: MemCube) -> dict[str, list[Any]]:
    """Every row of every table except the audit log (and its AUTOINCREMENT counter)."""
    with cube.records._lock:
        conn = cube.records._conn
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in _STATE_TABLES}


def _failing_setup(make: Callable[..., MemCube]) -> tuple[MemCube, dict[str, str]]:
    cube = make(actor="olga")
    cube.share("wri", "writer")
    live = cube.add("Ann likes green tea", actor="wri", ttl=3600)
    held = cube.add("evidence for the case", actor="wri")
    cube.update(held.id, "evidence for the case, v2", actor="wri")
    cube.legal_hold(held.id, reason="litigation")
    gone = cube.add("a tombstoned fact", actor="wri")
    cube.delete(gone.id, actor="wri")
    return cube, {"live": live.id, "held": held.id, "gone": gone.id, "unknown": "f" * 32}


# name: (call(cube, ids), error, actor, op, item (key into ids, or None), outcome)
FAILURES: dict[str, tuple[Callable[[MemCube, dict[str, str]], Any], type[Exception], str, str, str | None, str]] = {
    "update held": (lambda c, i: c.update(i["held"], SECRET, actor="wri"), Conflict, "wri", "update", "held",
                    "conflict"),
    "delete held": (lambda c, i: c.delete(i["held"], actor="wri"), Conflict, "wri", "delete", "held", "conflict"),
    "update unknown": (lambda c, i: c.update(i["unknown"], SECRET, actor="wri"), NotFound, "wri", "update",
                       "unknown", "not_found"),
    "update bogus field": (lambda c, i: c.update(i["live"], SECRET, actor="wri", bogus=1), ValidationError, "wri",
                           "update", "live", "invalid"),
    "update stale version": (lambda c, i: c.update(i["live"], SECRET, actor="wri", expected_version=7), Conflict,
                             "wri", "update", "live", "conflict"),
    "update bad field value": (lambda c, i: c.update(i["live"], SECRET, actor="wri", confidence=7.0),
                               ValidationError, "wri", "update", "live", "invalid"),
    "illegal transition": (lambda c, i: c.transition(i["live"], "generated", actor="wri"), IllegalTransition,
                           "wri", "transition", "live", "conflict"),
    "unknown state": (lambda c, i: c.transition(i["live"], "sleeping", actor="wri"), ValidationError, "wri",
                      "transition", "live", "invalid"),
    "restore live": (lambda c, i: c.restore(i["live"], actor="wri"), IllegalTransition, "wri", "restore", "live",
                     "conflict"),
    "restore unknown": (lambda c, i: c.restore(i["unknown"], actor="wri"), NotFound, "wri", "restore", "unknown",
                        "not_found"),
    "delete twice": (lambda c, i: c.delete(i["gone"], actor="wri"), Conflict, "wri", "delete", "gone", "conflict"),
    "rollback held": (lambda c, i: c.rollback(i["held"], 1, actor="wri"), Conflict, "wri", "rollback", "held",
                      "conflict"),
    "rollback missing version": (lambda c, i: c.rollback(i["live"], 9, actor="wri"), NotFound, "wri", "rollback",
                                 "live", "not_found"),
    "purge live": (lambda c, i: c.purge(i["live"]), IllegalTransition, "olga", "purge", "live", "conflict"),
    "purge held": (lambda c, i: c.purge(i["held"]), IllegalTransition, "olga", "purge", "held", "conflict"),
    "forget held": (lambda c, i: c.forget(i["held"]), Conflict, "olga", "forget", "held", "conflict"),
    "hold a tombstone": (lambda c, i: c.legal_hold(i["gone"]), IllegalTransition, "olga", "legal_hold", "gone",
                         "conflict"),
    "lift a hold that is not there": (lambda c, i: c.lift_hold(i["live"]), IllegalTransition, "olga", "release",
                                      "live", "conflict"),
    "add bad batch": (lambda c, i: c.add_many([SECRET, {"content": SECRET, "confidence": 3}], actor="wri"),
                      ValidationError, "wri", "add", None, "invalid"),
    "add empty": (lambda c, i: c.add("   ", actor="wri"), ValidationError, "wri", "add", None, "invalid"),
    # fails inside the transaction, after the first row was written: the whole batch rolls back
    "add clashing id": (lambda c, i: c.add_many([{"content": SECRET, "id": "new-1"},
                                                 {"content": SECRET, "id": i["live"]}], actor="wri"),
                        ValidationError, "wri", "add", None, "invalid"),
    # the first expiry is refreshed inside the transaction before the bad TTL: rolled back too
    "refresh bad ttl": (lambda c, i: c.refresh_expiry({i["live"]: 60, i["held"]: -1}, actor="wri"),
                        ValidationError, "wri", "refresh_expiry", None, "invalid"),
    "expire bad action": (lambda c, i: c.expire(action="shred"), ValidationError, "olga", "expire", None,
                          "invalid"),
}


@pytest.mark.sqlite_only  # inspects or tampers with the SQLite file itself
@pytest.mark.parametrize("name", list(FAILURES))
def test_a_failed_write_is_one_audit_record_and_changes_nothing_else(make: Callable[..., MemCube], base: Path,
                                                                     name: str) -> None:
    call, exc, actor, op, item, outcome = FAILURES[name]
    cube, ids = _failing_setup(make)
    before_state = _records_state(cube)
    before = cube.records.events()
    with pytest.raises(exc) as err:
        call(cube, ids)
    after = cube.records.events()
    assert after[:-1] == before and len(after) == len(before) + 1, [e["op"] for e in after[len(before):]]
    ev = after[-1]
    want_item = None if item is None else ids[item]
    assert (ev["actor"], ev["op"], ev["item_id"], ev["outcome"]) == (actor, op, want_item, outcome)
    assert ev["detail"]["error"] == type(err.value).__name__
    assert _records_state(cube) == before_state  # the failed operation's own transaction rolled back entirely
    with cube.records._lock:
        log_bytes = repr(cube.records._conn.execute("SELECT * FROM events").fetchall())
    assert SECRET not in log_bytes and str(err.value) not in log_bytes  # no content, no message in the log
    assert cube.governance.verify().ok
    cube.close()
    assert verify_file(base / "cube").ok
    assert cli_main(["audit", "verify", str(base / "cube")]) == 0


def test_failed_attempt_details_name_what_was_tried_and_nothing_more(make: Callable[..., MemCube]) -> None:
    cube, ids = _failing_setup(make)
    with pytest.raises(IllegalTransition):
        cube.transition(ids["live"], "generated", actor="wri")
    assert last_event(cube)["detail"] == {"to": "generated", "error": "IllegalTransition"}
    with pytest.raises(ValidationError):
        cube.transition(ids["live"], SECRET, actor="wri")  # an unknown state is not echoed into the log
    assert last_event(cube)["detail"] == {"to": None, "error": "ValidationError"}
    with pytest.raises(ValidationError):
        cube.add_many(["ok", ""], actor="wri")
    assert last_event(cube)["detail"] == {"count": 2, "error": "ValidationError"}
    with pytest.raises(NotFound):
        cube.rollback(ids["live"], 5, actor="wri")
    assert last_event(cube)["detail"] == {"version": 5, "error": "NotFound"}
    with pytest.raises(ValidationError):
        cube.forget(ids["live"], reason=SECRET * 100)  # refused before anything else: recorded, reason not kept
    ev = last_event(cube)
    assert (ev["op"], ev["outcome"], ev["detail"]) == ("forget", "invalid", {"cascade": True,
                                                                            "error": "ValidationError"})
    assert SECRET not in json.dumps([e["detail"] for e in cube.records.events()])


def test_refusals_stay_one_record_and_unknown_ids_stay_indistinguishable(make: Callable[..., MemCube]) -> None:
    cube, ids = _failing_setup(make)
    cube.share("rea", "reader")
    cube.governance.configure(redaction={"card": "reject"})
    ops = {
        "update": lambda i, a: cube.update(i, "x", actor=a), "delete": lambda i, a: cube.delete(i, actor=a),
        "restore": lambda i, a: cube.restore(i, actor=a), "rollback": lambda i, a: cube.rollback(i, 1, actor=a),
        "transition": lambda i, a: cube.transition(i, "archived", actor=a),
        "purge": lambda i, a: cube.purge(i, actor=a), "legal_hold": lambda i, a: cube.legal_hold(i, actor=a),
        "release": lambda i, a: cube.lift_hold(i, actor=a), "forget": lambda i, a: cube.forget(i, actor=a),
    }
    for op, fn in ops.items():
        seen = []
        for i in (ids["held"], ids["unknown"]):  # a stranger: the same NotFound, one "denied" record each
            n = len(cube.records.events())
            with pytest.raises(NotFound) as err:
                fn(i, "eve")
            ev = cube.records.events()[n:]
            assert [(e["actor"], e["item_id"], e["outcome"]) for e in ev] == [("eve", i, "denied")], op
            seen.append((str(err.value).replace(i, "<id>"), ev[0]["op"], ev[0]["detail"]))
        assert seen[0] == seen[1], op
        n = len(cube.records.events())
        with pytest.raises(PermissionDenied):  # a reader may see the cube but not write: one "denied" record
            fn(ids["live"], "rea")
        assert [e["outcome"] for e in cube.records.events()[n:]] == ["denied"], op
    # a redaction rejection is recorded once, as such, not again as a failure
    n = len(cube.records.events())
    with pytest.raises(RedactionRejected):
        cube.update(ids["live"], "card 4111 1111 1111 1111", actor="wri")
    assert [(e["op"], e["outcome"]) for e in cube.records.events()[n:]] == [("update", "rejected")]
    assert cube.governance.verify().ok


@pytest.mark.sqlite_only  # inspects or tampers with the SQLite file itself
def test_an_unexpected_error_is_recorded_as_error_and_rolled_back(make: Callable[..., MemCube],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cube, ids = _failing_setup(make)
    before_state = _records_state(cube)
    real = cube.records.append_event
    calls: list[str] = []

    def broken(c: sqlite3.Connection, at: float, actor: Any, op: str, *a: Any, **kw: Any) -> str:
        calls.append(op)
        if len(calls) == 1:  # the add's own record, inside its transaction, after its rows were written
            raise sqlite3.OperationalError("disk I/O error")
        return real(c, at, actor, op, *a, **kw)

    monkeypatch.setattr(cube.records, "append_event", broken)
    with pytest.raises(sqlite3.OperationalError):
        cube.add(SECRET, actor="wri")
    monkeypatch.undo()
    assert calls == ["add", "add"]  # the add's own record (rolled back), then the record of its failure
    ev = last_event(cube)
    assert (ev["actor"], ev["op"], ev["outcome"], ev["detail"]) == ("wri", "add", "error",
                                                                   {"error": "OperationalError"})
    assert _records_state(cube) == before_state
    assert cube.governance.verify().ok


def test_a_failure_that_cannot_be_recorded_still_raises_its_own_error(make: Callable[..., MemCube]) -> None:
    cube, ids = _failing_setup(make)
    cube.records.close()  # the log cannot be written any more either
    with pytest.raises(CubeClosed):
        cube.update(ids["live"], "x")


def test_expiry_records_an_item_it_had_to_skip(make: Callable[..., MemCube], clock: Clock) -> None:
    cube = make(actor="olga")
    it = cube.add("short lived", ttl=60)
    clock.advance(hours=1)
    orig = cube.transition

    def hold_meanwhile(item_id: str, state: Any, **kw: Any) -> Any:
        cube.transition = orig  # type: ignore[method-assign]
        orig(item_id, "frozen", reason="hold placed during the sweep")
        return orig(item_id, state, **kw)

    cube.transition = hold_meanwhile  # type: ignore[method-assign]
    assert cube.expire(action="delete") == []
    ev = cube.records.events()[-2:]
    assert [(e["op"], e["item_id"], e["outcome"]) for e in ev] == [("transition", it.id, "ok"),
                                                                   ("expire", it.id, "conflict")]
    assert ev[1]["detail"] == {"action": "delete", "error": "IllegalTransition"}
    assert cube.get(it.id).state == S.FROZEN and cube.governance.verify().ok


@pytest.mark.sqlite_only  # inspects or tampers with the SQLite file itself
def test_a_successful_write_is_still_one_transaction(make: Callable[..., MemCube]) -> None:
    cube = make()
    item = cube.add("warm up")
    stmts: list[str] = []
    cube.records._conn.set_trace_callback(stmts.append)
    try:
        cube.add_many([f"fact number {i}" for i in range(20)])
        cube.update(item.id, "changed")
        cube.delete(item.id)
    finally:
        cube.records._conn.set_trace_callback(None)
    assert [s for s in stmts if s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))] == ["BEGIN IMMEDIATE", "COMMIT"] * 3
    assert [e["outcome"] for e in cube.records.events()] == ["ok"] * 23


def test_reads_are_audited_when_configured(make: Callable[..., MemCube]) -> None:
    cube = make(actor="olga")
    cube.share("rea", "reader")
    it = cube.add("Ann likes tea")
    n = len(cube.records.events())
    cube.get(it.id, actor="rea")
    cube.search("tea", actor="rea")
    assert len(cube.records.events()) == n  # off by default
    cube.governance.configure(audit_reads=True)
    cube.get(it.id, actor="rea")
    cube.search("tea", actor="rea")
    cube.list(actor="rea")
    cube.history(it.id, actor="rea")
    reads = [(e["actor"], e["op"], e["detail"]["ids"]) for e in cube.records.events()[n + 1:]]
    assert reads == [("rea", "get", [it.id]), ("rea", "search", [it.id]), ("rea", "list", [it.id]),
                     ("rea", "history", [it.id])]
    search_ev = cube.records.events()[n + 2]
    assert "tea" not in json.dumps(search_ev["detail"])  # the query is recorded as a digest only
    assert cube.governance.settings().audit_reads is True
    with pytest.raises(PermissionDenied):
        cube.governance.configure(audit_reads=False, actor="rea")


def _tamper(db: Path, kind: str) -> None:
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT seq, at, actor, op, item_id, outcome, detail, prev_hash, hash FROM events "
                        "ORDER BY seq").fetchall()
    with conn:
        if kind == "edit":
            conn.execute("UPDATE events SET actor='someone-else' WHERE seq=4")
        elif kind == "edit_detail":
            conn.execute("UPDATE events SET detail='{\"version\":9}' WHERE seq=3")
        elif kind == "delete":
            conn.execute("DELETE FROM events WHERE seq=4")
        elif kind == "delete_tail":
            conn.execute("DELETE FROM events WHERE seq=?", (rows[-1][0],))
        elif kind == "insert":
            for r in reversed(rows[3:]):  # make room at seq 4, then insert a record there
                conn.execute("UPDATE events SET seq=? WHERE seq=?", (r[0] + 1, r[0]))
            conn.execute("INSERT INTO events VALUES(4, ?, 'mallory', 'add', 'x', 'ok', '{}', ?, ?)",
                         (rows[2][1], rows[2][8], "ab" * 32))
        elif kind == "reorder":
            a, b = rows[3], rows[4]
            conn.execute("DELETE FROM events WHERE seq IN (4, 5)")
            conn.execute("INSERT INTO events VALUES(4,?,?,?,?,?,?,?,?)", b[1:])
            conn.execute("INSERT INTO events VALUES(5,?,?,?,?,?,?,?,?)", a[1:])
    conn.close()


@pytest.mark.sqlite_only  # inspects or tampers with the SQLite file itself
@pytest.mark.parametrize("kind, seq, what", [
    ("edit", 4, "edited"), ("edit_detail", 3, "edited"), ("delete", 5, "deleted"), ("delete_tail", 8, "deleted"),
    ("insert", 4, "inserted"), ("reorder", 4, "reordered"),
])
def test_audit_verify_detects_and_locates_tampering(make: Callable[..., MemCube], base: Path, kind: str, seq: int,
                                                    what: str, capsys: pytest.CaptureFixture[str]) -> None:
    cube = make("audited", actor="olga")
    it = cube.add("one")
    for i in range(5):
        cube.update(it.id, f"v{i + 2}")
    cube.delete(it.id)
    assert len(cube.records.events()) == 7
    cube.close()
    rep = verify_file(base / "audited")
    assert rep.ok and rep.records == 7
    assert cli_main(["audit", "verify", str(base / "audited")]) == 0
    _tamper(base / "audited" / "records.sqlite3", kind)
    if kind == "delete_tail":
        seq = 7
    rep = verify_file(base / "audited")
    assert not rep.ok
    first = rep.first_problem
    assert first is not None and (first.seq, first.kind) == (seq, what), rep.summary()
    capsys.readouterr()
    assert cli_main(["audit", "verify", str(base / "audited")]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and f"seq {seq}: {what}" in out


@pytest.mark.sqlite_only  # inspects or tampers with the SQLite file itself
def test_appends_after_a_deleted_tail_still_show_the_gap(make: Callable[..., MemCube], base: Path,
                                                         clock: Clock) -> None:
    cube = make("tail", actor="olga")
    it = cube.add("one")
    cube.update(it.id, "two")
    cube.close()
    _tamper(base / "tail" / "records.sqlite3", "delete_tail")
    again = MemCube(base / "tail", embedder=emb32, clock=clock, actor="olga")
    try:
        again.update(it.id, "three")  # the counter, not the last row, numbers the next record
        rep = again.governance.verify()
        first = rep.first_problem
        assert not rep.ok and first is not None and (first.seq, first.kind) == (3, "deleted")
    finally:
        again.close()


@pytest.mark.sqlite_only  # inspects or tampers with the SQLite file itself
def test_an_anchor_catches_a_fully_rewritten_chain(make: Callable[..., MemCube], base: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from memos_core.records.base import GENESIS_HASH, event_hash

    cube = make("anch", actor="olga")
    it = cube.add("one")
    cube.update(it.id, "two")
    head = cube.governance.head()
    cube.close()
    capsys.readouterr()
    assert cli_main(["audit", "head", str(base / "anch")]) == 0
    anchor = capsys.readouterr().out.strip()
    assert anchor == f"{head[0]}:{head[1]}"  # type: ignore[index]
    conn = sqlite3.connect(base / "anch" / "records.sqlite3")
    with conn:  # rewrite record 1 and recompute every hash after it: the chain itself verifies again
        conn.execute("UPDATE events SET actor='mallory' WHERE seq=1")
        prev = GENESIS_HASH
        rows = conn.execute("SELECT seq, at, actor, op, item_id, outcome, detail FROM events ORDER BY seq").fetchall()
        for r in rows:
            h = event_hash(prev, r[0], r[1], r[2], r[3], r[4], r[5], r[6])
            conn.execute("UPDATE events SET prev_hash=?, hash=? WHERE seq=?", (prev, h, r[0]))
            prev = h
    rep = verify_file(base / "anch")  # the head the records saved with the last write no longer matches
    assert not rep.ok and [(p.seq, p.kind) for p in rep.problems] == [(head[0], "edited")]  # type: ignore[index]
    with conn:  # ... unless the forger rewrites that evidence too: only an anchor kept elsewhere catches it
        conn.execute("UPDATE meta SET value=? WHERE key='audit_head'", (f"{rows[-1][0]}:{prev}",))
    conn.close()
    assert verify_file(base / "anch").ok
    assert cli_main(["audit", "verify", str(base / "anch"), "--anchor", anchor]) == 1
    assert "anchor" in capsys.readouterr().out
    assert cli_main(["audit", "verify", str(base / "anch"), "--anchor", "nonsense"]) == 2


def test_verify_rows_on_an_empty_and_a_clean_log() -> None:
    assert verify_rows([]).ok and verify_rows([]).head_seq is None
    assert not verify_rows([], counter=3).ok


# ============================================================================ retention
@pytest.mark.parametrize("action, state", [("archive", S.ARCHIVED), ("delete", S.DELETED), ("purge", S.PURGED),
                                           ("forget", None)])
def test_default_ttl_and_expiry_sweep(make: Callable[..., MemCube], clock: Clock, action: str,
                                      state: LifecycleState | None) -> None:
    cube = make(actor="olga")
    cube.governance.configure(retention={"default_ttl": 3600, "action": action})
    short = cube.add("short lived zebra fact")
    explicit = cube.add("kept for a day zebra", ttl=86400)
    held = cube.add("held zebra fact")
    cube.legal_hold(held.id, reason="case 42")
    assert short.expires_at == clock.now + timedelta(hours=1)
    assert explicit.expires_at == clock.now + timedelta(days=1)
    assert cube.expire() == []
    clock.advance(hours=2)
    # expired memories leave search at once, before any sweep (a held one too: the hold preserves it)
    assert {h.item.id for h in cube.search("zebra")} == {explicit.id}
    assert cube.expire() == [short.id]
    if state is None:
        assert cube.lookup(short.id) is None
    else:
        assert cube.get(short.id, include_deleted=True).state == state
        assert cube.get(short.id, include_deleted=True).content == ("" if state == S.PURGED else short.content)
    assert cube.get(held.id).state == S.FROZEN  # legal hold: never swept
    clock.advance(days=2)
    assert cube.expire(action="archive") == [explicit.id]
    assert cube.get(held.id).state == S.FROZEN
    assert cube.governance.verify().ok
    with pytest.raises(ValidationError):
        cube.expire(action="shred")


def test_legal_hold_blocks_update_delete_expiry_purge_and_forget(make: Callable[..., MemCube],
                                                                  clock: Clock) -> None:
    cube = make(actor="olga")
    cube.share("wri", "writer")
    it = cube.add("evidence", ttl=60)
    cube.transition(it.id, "archived")
    with pytest.raises(PermissionDenied):
        cube.legal_hold(it.id, actor="wri")  # placing a hold needs administer
    cube.legal_hold(it.id, reason="litigation")
    clock.advance(hours=1)
    for fn in (lambda: cube.update(it.id, "tampered"), lambda: cube.delete(it.id),
               lambda: cube.forget(it.id), lambda: cube.purge(it.id), lambda: cube.rollback(it.id, 1)):
        with pytest.raises(Conflict):
            fn()
    with pytest.raises(PermissionDenied):
        cube.lift_hold(it.id, actor="wri")
    with pytest.raises(PermissionDenied):
        cube.transition(it.id, "activated", actor="wri")  # a writer cannot lift it through transition either
    assert cube.expire(action="delete") == []
    assert cube.get(it.id).content == "evidence" and cube.get(it.id).state == S.FROZEN
    assert cube.lift_hold(it.id).state == S.ARCHIVED  # back to where it was
    assert cube.expire(action="delete") == [it.id]


def test_retention_sweeper_runs_on_a_schedule(make: Callable[..., MemCube], clock: Clock) -> None:
    a = make("a")
    b = make("b")
    x = a.add("a fact", ttl=10)
    y = b.add("b fact", ttl=10)
    errors: list[Any] = []
    sweeper = RetentionSweeper([a, b], interval=3600, on_error=lambda c, e: errors.append(e))
    assert sweeper.run_once() == {a.cube_id: [], b.cube_id: []}
    clock.advance(seconds=11)
    assert sweeper.run_once() == {a.cube_id: [x.id], b.cube_id: [y.id]}
    z = a.add("later", ttl=1)
    clock.advance(seconds=2)
    done = threading.Event()
    ticks = RetentionSweeper(lambda: [a], interval=0.01)
    orig = ticks.run_once

    def run_once() -> dict[str, list[str]]:
        out = orig()
        if out.get(a.cube_id):
            done.set()
        return out

    ticks.run_once = run_once  # type: ignore[method-assign]
    with ticks:
        assert ticks.running
        assert done.wait(10)
    assert not ticks.running and a.get(z.id).state == S.ARCHIVED
    stranger = RetentionSweeper([a], actor="nobody", on_error=lambda c, e: errors.append(e))
    assert stranger.run_once() == {}
    assert len(errors) == 1 and isinstance(errors[0], PermissionDenied)
    with pytest.raises(ValidationError):
        RetentionSweeper([a], interval=0)


def test_retention_policy_is_validated_and_audited(make: Callable[..., MemCube]) -> None:
    cube = make()
    for bad in ({"default_ttl": -1}, {"default_ttl": "soon"}, {"action": "shred"}, {"ttl": 5}):
        with pytest.raises(ValidationError):
            cube.governance.configure(retention=bad)
    s = cube.governance.configure(retention={"default_ttl": timedelta(days=30), "action": "purge"})
    assert s.retention.default_ttl == 30 * 86400 and s.retention.action.value == "purge"
    ev = last_event(cube)
    assert ev["op"] == "policy.set" and ev["detail"]["retention"]["action"] == "purge"


# ============================================================================ redaction
DETECTOR_CASES = {
    "email": (["ann.lee+tag@example.co.uk", "x_y@mail.example.org"], ["not an email@", "a@b", "user@localhost"]),
    "phone": (["+44 20 7946 0958", "(555) 123-4567", "555-123-4567", "0049 30 1234567"],
              ["2023-05-08", "1500000", "1999-2001", "12:30:45", "3.14159265"]),
    "card": (["4111 1111 1111 1111", "5500-0000-0000-0004", "378282246310005"],
             ["4111 1111 1111 1112", "1234 5678 9012 3456", "0000 0000 0000 0000"]),
    "iban": (["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR1420041010050500013M02606"],
             ["DE89 3704 0044 0532 0130 01", "GB00WEST12345698765432"]),
    "ip": (["192.168.1.20", "2001:db8::8a2e:370:7334", "::ffff:10.0.0.1"],
           ["999.1.1.1", "12:30:45", "1.2.3", "::"]),
}


@pytest.mark.parametrize("kind", sorted(DETECTOR_CASES))
def test_builtin_detectors(kind: str) -> None:
    found, missed = DETECTOR_CASES[kind]
    for value in found:
        text = f"note: {value}. end"
        spans = [(f.kind, text[f.start:f.end]) for f in detect(text, [kind])]
        assert spans == [(kind, value)], (value, spans)
    for value in missed:
        text = f"note: {value} end"
        assert detect(text, [kind]) == [], value


def test_luhn_and_iban_checks() -> None:
    assert red.luhn_ok("4111111111111111") and not red.luhn_ok("4111111111111112")
    assert red.iban_ok("DE89370400440532013000") and not red.iban_ok("DE89370400440532013001")
    assert not red.iban_ok("DE89") and not red.iban_ok("1289370400440532013000")


TEXT = "Mail ann@example.com, call +1 415 555 0100, card 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, " \
       "from 10.1.2.3"
RAW = ["ann@example.com", "+1 415 555 0100", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00", "10.1.2.3"]
KINDS = ["email", "phone", "card", "iban", "ip"]


def _db_bytes(cube: MemCube) -> bytes:
    cube.records.checkpoint()
    out = b""
    for p in cube.path.rglob("*"):
        if p.is_file():
            out += p.read_bytes()
    return out


@pytest.mark.parametrize("action", ["allow", "mask", "hash", "reject"])
def test_redaction_actions(make: Callable[..., MemCube], action: str) -> None:
    cube = make(actor="olga")
    cube.governance.configure(redaction=RedactionPolicy.all(action))
    if action == "reject":
        n = cube.count()
        with pytest.raises(RedactionRejected, match="card, email, iban, ip, phone") as err:
            cube.add(TEXT)
        assert not any(r in str(err.value) for r in RAW)  # the message names kinds, never values
        assert cube.count() == n
        ev = last_event(cube)
        assert ev["outcome"] == "rejected" and ev["detail"]["kinds"] == sorted(KINDS)
        assert not any(r.encode() in _db_bytes(cube) for r in RAW)
        return
    item = cube.add(TEXT)
    if action == "allow":
        assert item.content == TEXT and item.provenance.redactions == []
        return
    for raw in RAW:
        assert raw not in item.content
    assert item.provenance.redactions == sorted(f"content:{k}:{action}" for k in KINDS)
    if action == "mask":
        assert item.content == ("Mail [REDACTED:email], call [REDACTED:phone], card [REDACTED:card], "
                                "IBAN [REDACTED:iban], from [REDACTED:ip]")
    else:
        tokens = re.findall(r"\[HASHED:(\w+):([0-9a-f]{16})\]", item.content)
        assert [t[0] for t in tokens] == KINDS
        again = cube.add("card 4111-1111-1111-1111 again")  # same number, other spacing: same token
        assert re.findall(r"\[HASHED:card:([0-9a-f]{16})\]", again.content) == [tokens[2][1]]
    blob = _db_bytes(cube)
    assert not any(r.encode() in blob for r in RAW)  # not in the records, versions, FTS or the vector index


def test_redaction_covers_index_text_metadata_updates_and_rollback(make: Callable[..., MemCube]) -> None:
    cube = make(actor="olga")
    loose = cube.add("Ann's mail is ann@example.com")  # written before any policy
    cube.governance.configure(redaction={"email": "mask", "phone": "hash"})
    it = cube.add("contact card", index_text="contact ann@example.com",
                  metadata={"contact": {"mail": "bob@example.org", "tel": "+44 20 7946 0958"}, "n": 3})
    assert it.index_text == "contact [REDACTED:email]"
    assert it.metadata["contact"]["mail"] == "[REDACTED:email]" and it.metadata["n"] == 3
    assert it.metadata["contact"]["tel"].startswith("[HASHED:phone:")
    assert it.provenance.redactions == ["index_text:email:mask", "metadata.contact.mail:email:mask",
                                        "metadata.contact.tel:phone:hash"]
    up = cube.update(it.id, "new mail carl@example.net")
    assert up.content == "new mail [REDACTED:email]"
    assert "content:email:mask" in up.provenance.redactions and "index_text:email:mask" in up.provenance.redactions
    # a rollback to a version written under a looser policy is redacted under today's policy
    cube.update(loose.id, "Ann has no mail")
    back = cube.rollback(loose.id, 1)
    assert back.content == "Ann's mail is [REDACTED:email]" and back.version == 3
    tagged = cube.add("a tagged memory", tags=["ann@example.com", "work"])  # tags are searchable text too
    assert tagged.tags == ["[REDACTED:email]", "work"] and tagged.provenance.redactions == ["tags:email:mask"]
    assert cube.get(tagged.id).tags == ["[REDACTED:email]", "work"]
    assert b"ann@example.com" not in _db_bytes(cube).replace(b"Ann's mail is ann@example.com", b"")
    with pytest.raises(ValidationError, match="unknown detector"):
        cube.governance.configure(redaction={"passport": "mask"})
    with pytest.raises(ValidationError):
        cube.governance.configure(redaction={"email": "shred"})


def test_custom_detectors_plug_in_and_unregistered_ones_fail_closed(make: Callable[..., MemCube]) -> None:
    name = "employee_id"
    register_detector(name, lambda text: [m.span() for m in re.finditer(r"\bEMP-\d{6}\b", text)], replace=True)
    try:
        with pytest.raises(ValidationError, match="already registered"):
            register_detector(name, lambda text: [])
        with pytest.raises(ValidationError):
            register_detector("Bad Name", lambda text: [])
        cube = make()
        cube.governance.configure(redaction={name: "mask", "email": "mask"})
        item = cube.add("EMP-123456 wrote to a@example.com")
        assert item.content == "[REDACTED:employee_id] wrote to [REDACTED:email]"
        assert "content:employee_id:mask" in item.provenance.redactions
    finally:
        red._REGISTRY.pop(name, None)
    with pytest.raises(ValidationError, match="not registered"):
        cube.add("EMP-654321 again")  # the policy names a detector this process does not have
    register_detector("broken", lambda text: [(5, 2)], replace=True)
    try:
        cube.governance.configure(redaction={"broken": "mask"})
        with pytest.raises(ValidationError, match="invalid span"):
            cube.add("anything at all")
    finally:
        red._REGISTRY.pop("broken", None)


def test_hash_tokens_are_keyed_per_cube(make: Callable[..., MemCube]) -> None:
    a, b = make("a"), make("b")
    for c in (a, b):
        c.governance.configure(redaction={"email": "hash"})
    ta = a.add("x ann@example.com").content
    tb = b.add("x ann@example.com").content
    assert ta != tb and ta.startswith("x [HASHED:email:") and tb.startswith("x [HASHED:email:")
    assert a.add("x ANN@example.com").content == ta  # normalised: case does not matter for e-mail


# ============================================================================ forget
SECRET = "Quixotic zanzibarquux lives at 42 Flummox Lane"
TRACES = [b"zanzibarquux", b"Flummox", b"plorbnikova", b"idxtokenxyzzy", b"zanzitag", b"zq@zanzi.example"]


def _traces(folder: Path) -> list[tuple[str, bytes]]:
    hits = []
    for p in folder.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [(str(p.relative_to(folder)), t) for t in TRACES if t in data]
    return hits


@pytest.mark.sqlite_only  # inspects or tampers with the SQLite file itself
def test_forget_leaves_no_trace_in_sqlite_wal_chroma_or_the_lexical_index(make: Callable[..., MemCube],
                                                                          base: Path) -> None:
    cube = make("f", actor="olga")
    cube.add_many([f"filler memory {i} about weather and tea" for i in range(40)])
    it = cube.add(SECRET, metadata={"note": "zanzibarquux in metadata", "mail": "zq@zanzi.example"},
                  tags=["zanzitag"], index_text=SECRET + " idxtokenxyzzy")
    cube.update(it.id, SECRET + " and plorbnikova")
    derived = cube.add("summary: zanzibarquux moved", provenance={"parent_ids": [it.id]})
    grand = cube.add("digest of the summary", provenance={"parent_versions": [f"{derived.id}@1"]})
    other = cube.add_many([f"more filler {i}" for i in range(40)])
    ref = source_ref(cube.get(it.id))
    assert _traces(base / "f")  # the content is there before (records, versions, FTS, WAL)
    assert {it.id, derived.id} <= cube.index.ids()
    assert cube.search("zanzibarquux", mode="lexical")
    erased = cube.forget(it.id, reason="GDPR request 7")
    assert erased == [it.id, derived.id, grand.id]
    assert _traces(base / "f") == []  # grep the bytes: records.sqlite3, -wal, chroma/ (files still open)
    for i in erased:
        assert cube.lookup(i) is None
        with pytest.raises(NotFound):
            cube.get(i, include_deleted=True)
    assert not set(erased) & cube.index.ids()
    assert cube.search("zanzibarquux", mode="lexical") == []
    assert stale_sources([ref], cube.lookup) == {it.id: "forgotten (no longer in the records)"}
    assert cube.count() == 80 and cube.get(other[0].id).content == "more filler 0"
    ev = last_event(cube)
    assert (ev["op"], ev["actor"], ev["item_id"], ev["detail"]["ids"]) == ("forget", "olga", it.id, erased)
    assert "zanzibarquux" not in json.dumps(cube.records.events(), default=str)
    assert cube.governance.verify().ok
    cube.close()
    assert _traces(base / "f") == []
    reopened = MemCube(base / "f", embedder=emb32, actor="olga")  # nothing comes back on reopen
    try:
        assert reopened.lookup(it.id) is None and not set(erased) & reopened.index.ids()
    finally:
        reopened.close()


def test_forget_rules(make: Callable[..., MemCube]) -> None:
    cube = make(actor="olga")
    cube.share("wri", "writer")
    a = cube.add("parent fact")
    child = cube.add("child fact", provenance={"parent_ids": [a.id]})
    with pytest.raises(PermissionDenied):
        cube.forget(a.id, actor="wri")  # forget needs administer
    cube.legal_hold(child.id)
    with pytest.raises(Conflict, match="legal hold"):
        cube.forget(a.id)  # a derived memory under hold blocks the cascade: nothing is erased
    assert cube.lookup(a.id) is not None and cube.lookup(child.id) is not None
    assert cube.forget(a.id, cascade=False) == [a.id]
    assert cube.lookup(child.id) is not None
    with pytest.raises(NotFound):
        cube.forget(a.id)
    gone = cube.add("tombstoned then purged")
    cube.delete(gone.id)
    cube.purge(gone.id)
    assert cube.forget(gone.id) == [gone.id]  # forget works from any state but frozen
    with pytest.raises(ValidationError):
        cube.forget(child.id, reason="x" * 1000)
    outcomes = [(e["op"], e["outcome"]) for e in cube.records.events() if e["op"] == "forget"]
    assert outcomes == [("forget", "denied"), ("forget", "conflict"), ("forget", "ok"), ("forget", "not_found"),
                        ("forget", "ok"), ("forget", "invalid")]


# ============================================================================ CLI
def test_cli_governance_commands(base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = base / "clicube"

    def emb384(texts: list[str]) -> np.ndarray:  # the CLI opens cubes with the default (384-d) embedder
        return np.tile(emb32(texts), (1, 12))

    with MemCube(d, embedder=emb384, actor="olga") as cube:
        it = cube.add("Ann's phone is private").id
    run = lambda *argv: cli_main([str(a) for a in argv])  # noqa: E731
    capsys.readouterr()
    assert run("--as", "olga", "share", d, "bob", "reader") == 0
    assert "bob (user) is now reader" in capsys.readouterr().out
    assert run("--as", "bob", "share", d, "eve", "admin") == 2
    assert "may not share" in capsys.readouterr().err
    assert run("share", d, "eve", "reader") == 2  # default principal 'local' has no role on olga's cube
    capsys.readouterr()
    assert run("--as", "olga", "access", d, "--json") == 0
    assert {g["principal"]: g["role"] for g in json.loads(capsys.readouterr().out)} == {"olga": "owner",
                                                                                          "bob": "reader"}
    assert run("--as", "olga", "policy", d, "--ttl", "3600", "--expiry-action", "delete", "--redact", "email=mask",
               "--audit-reads", "on") == 0
    pol = json.loads(capsys.readouterr().out)
    assert pol["retention"] == {"default_ttl": 3600.0, "action": "delete"} and pol["redaction"]["rules"] == {
        "email": "mask"} and pol["audit_reads"] is True
    assert run("--as", "olga", "policy", d, "--redact", "email") == 2
    assert run("--as", "olga", "hold", d, it) == 0 and "frozen" in capsys.readouterr().out
    assert run("--as", "olga", "forget", d, it) == 2 and "legal hold" in capsys.readouterr().err
    assert run("--as", "olga", "release", d, it) == 0 and "activated" in capsys.readouterr().out
    assert run("--as", "olga", "sweep", d) == 0 and "0 expired" in capsys.readouterr().out
    assert run("--as", "bob", "forget", d, it) == 2
    assert run("--as", "olga", "forget", d, it) == 0 and it in capsys.readouterr().out
    os.environ["MEMOS_PRINCIPAL"] = "olga"
    try:
        assert run("audit", "log", d, "--principal", "bob", "--json") == 0
        log = json.loads(capsys.readouterr().out)
        assert [(e["op"], e["outcome"]) for e in log] == [("acl.grant", "denied"), ("forget", "denied")]
        assert run("audit", "log", d, "--limit", "3") == 0 and "acl.grant" in capsys.readouterr().out
    finally:
        del os.environ["MEMOS_PRINCIPAL"]
    assert run("--as", "bob", "audit", "log", d) == 2  # reading the audit log needs administer
    assert run("--as", "olga", "revoke", d, "bob") == 0
    capsys.readouterr()
    assert run("audit", "verify", d, "--json") == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ok"] is True and rep["problems"] == []
