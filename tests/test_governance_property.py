"""Property-based test of cross-tenant isolation (issue 3).

Random sequences of operations (share, revoke, add, forged add, get, update, delete, list, multi-cube search)
by several principals over several cubes are run against the real MemCube and against a small reference model
of who may see and change what. After every step the cubes' records, ACLs and audit logs must match the model
exactly: no read returns anything from a cube the caller may not read, no write lands where the caller may
not write, every refusal and every failed write (unknown id, dead memory, illegal transition) is audited (one
record with its outcome and error type, nothing else written) and errors never tell an id that exists in an
unreadable cube from one that does not.

The vector index is replaced by an exact in-memory one (Chroma is covered by test_governance.py): the
property is about governance, and this keeps thousands of operations within CI time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytest
from conftest import emb32
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import memos_core.cube as cube_module
from memos_core import Conflict, IllegalTransition, MemCube, NotFound, PermissionDenied
from memos_core.governance import search_cubes
from memos_core.governance.audit import read_chain, verify_rows

class MemIndex:
    """An exact in-memory stand-in for ChromaVectorIndex (same methods; ``where`` is ignored, which is safe:
    the cube re-checks every candidate against the records with the authoritative SQL filter)."""

    def __init__(self, **_: Any) -> None:
        self.vecs: dict[str, np.ndarray] = {}

    def upsert(self, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[dict[str, Any]]) -> None:
        for i, v in zip(ids, vectors):
            self.vecs[i] = np.asarray(v, dtype=np.float32)

    def delete(self, ids: Sequence[str]) -> None:
        for i in ids:
            self.vecs.pop(i, None)

    def query(self, vector: np.ndarray, k: int, where: Any = None) -> list[tuple[str, float]]:
        if not self.vecs:
            return []
        ids = list(self.vecs)
        sims = np.stack([self.vecs[i] for i in ids]) @ np.asarray(vector, dtype=np.float32)
        order = np.argsort(-sims, kind="stable")[:k]
        return [(ids[j], float(sims[j])) for j in order]

    def count(self) -> int:
        return len(self.vecs)

    def ids(self) -> set[str]:
        return set(self.vecs)

    def reset(self) -> None:
        self.vecs.clear()

    def close(self) -> None:
        pass


PRINCIPALS = ["p0", "p1", "p2", "p3", "p4"]
OWNERS = ["p0", "p1", "p2"]  # cube i is created by OWNERS[i]
ROLES = ["owner", "admin", "writer", "reader", "guest"]
RANK = {"guest": 1, "reader": 2, "writer": 3, "admin": 4, "owner": 5}
WRITERS = {"owner", "admin", "writer"}
SHARERS = {"owner", "admin"}
FAKE_ID = "0" * 32

principals = st.sampled_from(PRINCIPALS)
cube_ix = st.integers(0, len(OWNERS) - 1)
picks = st.integers(0, 10**6)


class Governed(RuleBasedStateMachine):
    """Reference model: ``acl[c]`` principal -> role, ``items[c]`` id -> [token, live]."""

    def __init__(self) -> None:
        super().__init__()
        shm = Path("/dev/shm")
        parent = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
        self.dir = Path(tempfile.mkdtemp(prefix="memos-prop-", dir=parent))
        self.cubes = [MemCube(self.dir / f"c{i}", embedder=emb32, actor=o) for i, o in enumerate(OWNERS)]
        self.acl: list[dict[str, str]] = [{o: "owner"} for o in OWNERS]
        self.items: list[dict[str, list[Any]]] = [{} for _ in OWNERS]
        self.events = [0 for _ in OWNERS]  # audit records each cube must hold
        self.n = 0
        self.ops = 0

    def teardown(self) -> None:
        for c in self.cubes:
            c.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        Governed.total_ops += self.ops

    total_ops = 0

    # ------------------------------------------------------------------ model helpers
    def role(self, c: int, p: str) -> str | None:
        return self.acl[c].get(p)

    def all_ids(self) -> list[str]:
        return [i for items in self.items for i in items]

    def pick(self, n: int) -> str:
        ids = self.all_ids()
        return FAKE_ID if not ids or n % 7 == 0 else ids[n % len(ids)]

    def token(self) -> str:
        self.n += 1
        return f"tok{self.n}x"

    def audited(self, c: int, k: int = 1) -> None:
        self.events[c] += k

    def last_event(self, c: int) -> tuple[Any, ...]:
        with self.cubes[c].records._lock:
            row = self.cubes[c].records._conn.execute(
                "SELECT actor, op, item_id, outcome, detail FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (*row[:4], json.loads(row[4]))

    def expect_hidden(self, c: int, item_id: str, fn: Any) -> None:
        """An item op in a cube the actor may not read: NotFound, worded exactly as for an unknown id."""
        with pytest.raises(NotFound) as err:
            fn(item_id)
        self.audited(c)
        assert str(err.value).replace(item_id, "<id>") == f"no memory with id '<id>' in cube 'c{c}'"
        assert self.last_event(c)[3] == "denied"

    def expect_failed(self, c: int, exc: type[Exception], fn: Any, item_id: str, actor: str, op: str,
                      outcome: str) -> None:
        """A permitted write that fails: the error, and exactly one audit record of the attempt."""
        with pytest.raises(exc) as err:
            fn(item_id)
        self.audited(c)
        who, got_op, got_item, got_outcome, detail = self.last_event(c)
        assert (who, got_op, got_item, got_outcome) == (actor, op, item_id, outcome)
        assert detail["error"] == type(err.value).__name__

    # ------------------------------------------------------------------ sharing
    @rule(c=cube_ix, granter=principals, grantee=principals, new=st.sampled_from(ROLES))
    def share(self, c: int, granter: str, grantee: str, new: str) -> None:
        target = grantee
        self.ops += 1
        acl = self.acl[c]
        g, cur = acl.get(granter), acl.get(target)
        ok = (g in SHARERS and target != granter and not (new == "owner" and g != "owner")
              and RANK[new] <= RANK[g] and (cur is None or g == "owner" or RANK[cur] < RANK[g]))
        if ok:
            self.cubes[c].share(target, new, actor=granter)
            acl[target] = new
        else:
            with pytest.raises(PermissionDenied):
                self.cubes[c].share(target, new, actor=granter)
        self.audited(c)

    @rule(c=cube_ix, revoker=principals, whom=principals)
    def revoke(self, c: int, revoker: str, whom: str) -> None:
        target = whom
        self.ops += 1
        acl = self.acl[c]
        r, cur = acl.get(revoker), acl.get(target)
        owners = sum(1 for v in acl.values() if v == "owner")
        if r is None or (target != revoker and (r not in SHARERS or (cur is not None and r != "owner"
                                                                     and RANK[cur] >= RANK[r]))):
            outcome: type[Exception] | None = PermissionDenied
        elif cur == "owner" and owners <= 1:
            outcome = PermissionDenied
        elif cur is None:
            outcome = NotFound
        else:
            outcome = None
        if outcome is None:
            self.cubes[c].revoke(target, actor=revoker)
            del acl[target]
        else:
            with pytest.raises(outcome):
                self.cubes[c].revoke(target, actor=revoker)
        self.audited(c)

    # ------------------------------------------------------------------ writes
    @rule(c=cube_ix, actor=principals, forge=st.sampled_from([None, None, None, "p0", "p3"]))
    def add(self, c: int, actor: str, forge: str | None) -> None:
        self.ops += 1
        tok = self.token()
        meta = {} if forge is None else {"actor": forge}
        allowed = self.role(c, actor) in WRITERS and (forge is None or forge == actor)
        if allowed:
            item = self.cubes[c].add(f"memo {tok} written by {actor}", actor=actor, metadata=meta)
            assert item.created_by == actor and item.cube_id == self.cubes[c].cube_id
            self.items[c][item.id] = [tok, True]
        else:
            with pytest.raises(PermissionDenied):
                self.cubes[c].add(f"memo {tok} written by {actor}", actor=actor, metadata=meta)
        self.audited(c)

    def _write(self, c: int, actor: str, n: int, op: str, call: Any, conflict: Any, conflict_when_live: bool,
               apply: Any) -> None:
        """One write attempt on a picked item, checked against the model: hidden from non-members, refused
        for non-writers, NotFound for unknown ids, ``conflict`` when the item's liveness forbids it, else done
        (``apply(rec)`` updates the model). Every outcome must be audited."""
        self.ops += 1
        item_id, role, cube = self.pick(n), self.role(c, actor), self.cubes[c]
        fn = lambda i: call(cube, i)  # noqa: E731
        if role is None:
            return self.expect_hidden(c, item_id, fn)
        if role not in WRITERS:
            with pytest.raises(PermissionDenied):
                fn(item_id)
            return self.audited(c)
        rec = self.items[c].get(item_id)
        if rec is None:
            self.expect_failed(c, NotFound, fn, item_id, actor, op, "not_found")
        elif rec[1] == conflict_when_live:
            self.expect_failed(c, conflict, fn, item_id, actor, op, "conflict")
        else:
            fn(item_id)
            apply(rec)
            self.audited(c)

    @rule(c=cube_ix, actor=principals, n=picks)
    def update(self, c: int, actor: str, n: int) -> None:
        tok = self.token()

        def apply(rec: list[Any]) -> None:
            rec[0] = tok

        self._write(c, actor, n, "update", lambda cube, i: cube.update(i, f"memo {tok} rewritten by {actor}",
                                                                        actor=actor),
                    Conflict, False, apply)

    @rule(c=cube_ix, actor=principals, n=picks)
    def delete(self, c: int, actor: str, n: int) -> None:
        self._write(c, actor, n, "delete", lambda cube, i: cube.delete(i, actor=actor), Conflict, False,
                    lambda rec: rec.__setitem__(1, False))

    @rule(c=cube_ix, actor=principals, n=picks)
    def restore(self, c: int, actor: str, n: int) -> None:
        # restoring a live memory (activated -> activated) is no move
        self._write(c, actor, n, "restore", lambda cube, i: cube.restore(i, actor=actor), IllegalTransition, True,
                    lambda rec: rec.__setitem__(1, True))

    # ------------------------------------------------------------------ reads
    @rule(c=cube_ix, actor=principals, n=picks)
    def get(self, c: int, actor: str, n: int) -> None:
        self.ops += 1
        item_id, cube = self.pick(n), self.cubes[c]
        fn = lambda i: cube.get(i, actor=actor)  # noqa: E731
        if self.role(c, actor) is None:
            return self.expect_hidden(c, item_id, fn)
        rec = self.items[c].get(item_id)
        if rec is None or not rec[1]:
            with pytest.raises(NotFound):
                fn(item_id)
        else:
            got = fn(item_id)
            assert got.id == item_id and rec[0] in got.content and got.cube_id == cube.cube_id

    @rule(c=cube_ix, actor=principals)
    def list_all(self, c: int, actor: str) -> None:
        self.ops += 1
        if self.role(c, actor) is None:
            with pytest.raises(PermissionDenied):
                self.cubes[c].list(actor=actor, limit=1000)
            return self.audited(c)
        got = {it.id for it in self.cubes[c].list(actor=actor, limit=1000)}
        assert got == {i for i, (_, live) in self.items[c].items() if live}

    @rule(actor=principals, n=picks, mode=st.sampled_from(["lexical", "hybrid"]))
    def search(self, actor: str, n: int, mode: str) -> None:
        self.ops += 1
        item_id = self.pick(n)
        tok = next((items[item_id][0] for items in self.items if item_id in items), "tok0x")
        readable = {self.cubes[c].cube_id for c in range(len(OWNERS)) if self.role(c, actor) is not None}
        hits = search_cubes(self.cubes, tok, actor=actor, k=50, mode=mode)
        for c in range(len(OWNERS)):
            if self.role(c, actor) is None:
                self.audited(c)  # a skipped cube records the refusal
        live = {i: (c, tok_) for c, items in enumerate(self.items) for i, (tok_, alive) in items.items() if alive}
        for h in hits:
            assert h.item.cube_id in readable, "a hit from a cube the caller may not read"
            assert h.item.id in live and self.cubes[live[h.item.id][0]].cube_id == h.item.cube_id
        want = {i for i, (c, t) in live.items() if t == tok and self.cubes[c].cube_id in readable}
        found = {h.item.id for h in hits if tok in h.item.content}
        assert found == want
        if mode == "lexical":
            assert {h.item.id for h in hits} == want

    # ------------------------------------------------------------------ invariants
    @invariant()
    def records_acl_and_audit_match_the_model(self) -> None:
        for c, cube in enumerate(self.cubes):
            with cube.records._lock:
                conn = cube.records._conn
                rows = conn.execute("SELECT id, state, content, created_by FROM items").fetchall()
                acl = dict(conn.execute("SELECT principal, role FROM gov_acl").fetchall())
                n_events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            assert acl == self.acl[c]
            assert {r[0] for r in rows} == set(self.items[c])
            for item_id, state, content, created_by in rows:
                tok, live = self.items[c][item_id]
                assert (state == "activated") == live and tok in content
                assert created_by in PRINCIPALS
            assert n_events == self.events[c]

    @precondition(lambda self: self.ops and self.ops % 25 == 0)
    @invariant()
    def audit_chains_verify(self) -> None:
        for cube in self.cubes:
            with cube.records._lock:
                rows, counter = read_chain(cube.records._conn)
            assert verify_rows(rows, counter).ok


def test_no_cross_tenant_reads_or_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cube_module, "ChromaVectorIndex", MemIndex)
    Governed.total_ops = 0
    run_state_machine_as_test(Governed, settings=settings(
        max_examples=int(os.environ.get("MEMOS_GOV_EXAMPLES", "100")), stateful_step_count=60, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], print_blob=True))
    assert Governed.total_ops >= 1000, Governed.total_ops
