"""The LangChain / LangGraph examples run offline, as users run them (subprocesses), and check themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script, expect", [
    ("langchain_agent.py", "OK: the agent remembered across threads"),
    ("langgraph_store.py", "graph answer: Ann is vegetarian"),
])
def test_example_runs(script: str, expect: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--dir", str(tmp_path / "mem")],
                          capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert expect in proc.stdout
    assert "Traceback" not in proc.stderr
