"""Governance is access policy + audit over the record store; erasure belongs to the cube (issue 14 item 1).

``memos_core.governance`` holds no cube and imports nothing from ``cube.py`` (not even lazily at run time): it is
built from a record store and what it needs to know about its cube (id, name, default actor, clock, the cube's
NotFound). ``MemCube.forget`` / ``purge`` / ``expire`` run the erasure in :mod:`memos_core.erasure`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import FakeClock, hashed_embed

import memos_core.erasure as erasure
from memos_core import MemCube
from memos_core.errors import NotFound, PermissionDenied
from memos_core.governance import Governance, Right, Role
from memos_core.records.sqlite import SQLiteRecordStore

ROOT = Path(__file__).resolve().parent.parent
GOVERNANCE = ROOT / "memos_core" / "governance"
CUBE_SIDE = {"memos_core.cube", "memos_core.os", "memos_core.erasure"}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), at module level or inside functions."""
    pkg = "memos_core.governance"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def test_no_governance_module_imports_the_cube_side() -> None:
    offenders = {}
    for path in sorted(GOVERNANCE.glob("*.py")):
        if path.name == "erasure.py":
            continue  # the re-export of the moved module, checked below
        bad = sorted(m for m in _imports(path) if any(m == c or m.startswith(c + ".") for c in CUBE_SIDE))
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_the_old_erasure_module_only_re_exports_the_cube_side_one() -> None:
    import memos_core.governance.erasure as old

    tree = ast.parse((GOVERNANCE / "erasure.py").read_text())
    assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    for name in old.__all__:
        assert getattr(old, name) is getattr(erasure, name)
    assert set(old.__all__) <= set(erasure.__all__)


def test_governance_loads_and_runs_without_cube_py(tmp_path: Path) -> None:
    """A fresh interpreter with the ``memos_core`` package stubbed (its ``__init__`` imports the cube): importing
    governance and running its checks over a bare record store never loads ``memos_core.cube``."""
    code = textwrap.dedent(
        f"""
        import sys, types
        pkg = types.ModuleType("memos_core")
        pkg.__path__ = [{str(ROOT / "memos_core")!r}]
        sys.modules["memos_core"] = pkg
        from memos_core.governance import Governance, Right
        from memos_core.records.sqlite import SQLiteRecordStore
        gov = Governance(SQLiteRecordStore({str(tmp_path / "r.sqlite3")!r}), cube_id="c1", name="n", actor="olga")
        gov.share("ann", "reader")
        gov.authorize("ann", Right.READ, "get")
        try:
            gov.authorize("ann", Right.WRITE, "add")
        except Exception as exc:
            print("refused", type(exc).__name__)
        assert gov.verify().ok
        loaded = sorted(m for m in sys.modules if m in {sorted(CUBE_SIDE)!r})
        print("loaded", loaded)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "refused PermissionDenied" in out.stdout
    assert "loaded []" in out.stdout


def test_governance_over_a_bare_record_store(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2025, 3, 1, 9, 30, tzinfo=timezone.utc))
    asked: list[str] = []

    def missing(item_id: str) -> NotFound:
        asked.append(item_id)
        return NotFound(f"no memory {item_id!r} here")

    store = SQLiteRecordStore(tmp_path / "r.sqlite3")
    try:
        gov = Governance(store, cube_id="c1", name="team", actor="olga", clock=clock, missing=missing)
        assert not hasattr(gov, "_cube")
        assert gov.role_of("olga") == Role.OWNER  # the default actor owns a new store
        gov.share("ann", "reader")  # actor defaults to the given one
        assert gov.authorize(None, Right.ADMINISTER, "stats") == "olga"
        with pytest.raises(PermissionDenied, match="'ann' is reader on cube 'team'"):
            gov.authorize("ann", Right.WRITE, "add")
        with pytest.raises(NotFound, match="no memory 'x1' here"):  # the cube's own error, not a telling one
            gov.authorize("mallory", Right.READ, "get", "x1")
        assert asked == ["x1"]
        clock.advance(60)
        with pytest.raises(ValueError):
            with gov.attempt(None, "update", "x2"):
                raise ValueError("boom")
        log = gov.audit_log()
        assert [(e["op"], e["outcome"], e["actor"]) for e in log] == [
            ("acl.grant", "ok", "olga"), ("add", "denied", "ann"), ("get", "denied", "mallory"),
            ("update", "error", "olga")]
        assert log[0]["at"] == datetime(2025, 3, 1, 9, 30, tzinfo=timezone.utc)
        assert log[-1]["at"] == datetime(2025, 3, 1, 9, 31, tzinfo=timezone.utc)
        assert gov.verify().ok
    finally:
        store.close()


def test_forget_purge_and_hold_are_the_cubes(tmp_path: Path) -> None:
    clock = FakeClock()
    with MemCube(tmp_path / "cube", embedder=hashed_embed, clock=clock) as cube:
        for gone in ("forget", "hold", "release", "deferred_erasure", "finish_erasure", "plan_purge"):
            assert not hasattr(cube.governance, gone)
        a = cube.add("the blue door code is 4471", user_id="ann")
        b = cube.add("the red door code is 9020", user_id="ann", expires_at=clock() + timedelta(seconds=5))
        held = cube.legal_hold(a.id, reason="case 7")
        assert held.state.value == "frozen"
        assert cube.lift_hold(a.id).state.value == "activated"
        with cube.deferred_erasure():  # records change at once; the scrub runs once at the end
            assert cube.forget(a.id) == [a.id]
            assert cube.lookup(a.id) is None
            assert cube.records.get_meta(erasure.PENDING_KEY)
        assert not cube.records.get_meta(erasure.PENDING_KEY)
        clock.advance(10)
        assert cube.expire(action="forget") == [b.id] and cube.lookup(b.id) is None
        ops = [e["op"] for e in cube.governance.audit_log()]
        assert ops[-4:] == ["transition", "transition", "forget", "forget"]
        assert cube.governance.verify().ok
