"""Governance's public surface is what the rest of the core uses: no module outside memos_core/governance/
reaches into its private members (the audited attempt and the policy in force were called privately by the
cube and the erasure). Checked on the source, and the two public methods behave as the callers rely on."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import hashed_embed

from memos_core.cube import MemCube
from memos_core.governance import RetentionAction

ROOT = Path(__file__).resolve().parents[1]


def _private_governance_uses(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", None)
            if name in ("governance", "gov"):
                out.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}.{node.attr}")
    return out


def test_no_module_outside_governance_uses_its_private_members() -> None:
    found = []
    for pkg in ("memos_core", "memos_langchain", "memos_llamaindex"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "governance" not in path.relative_to(ROOT / pkg).parts:
                found += _private_governance_uses(path)
    assert found == []


def test_attempt_records_one_failure_and_retention_policy_reads_the_policy_in_force(tmp_path) -> None:
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        gov = cube.governance
        assert gov.retention_policy().action == RetentionAction.ARCHIVE  # the default
        gov.configure(retention={"action": "delete", "default_ttl": 60})
        got = gov.retention_policy()
        assert got.action == RetentionAction.DELETE and got.default_ttl == 60
        assert got == gov.settings().retention
        before = len(gov.audit_log())
        with pytest.raises(KeyError):
            with gov.attempt(None, "custom.op", "item-1", {"n": 1}):
                raise KeyError("boom")
        with gov.attempt(None, "custom.op"):  # success: the operation records itself, nothing extra here
            pass
        log = gov.audit_log()[before:]
        assert [(e["op"], e["item_id"], e["outcome"], e["detail"]) for e in log] == [
            ("custom.op", "item-1", "error", {"n": 1, "error": "KeyError"})]
        assert gov.verify().ok
