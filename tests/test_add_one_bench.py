"""benchmarks/add_one.py at tiny N: the adapters' one-at-a-time paths run in the round-robin, every figure is
reported, and every add of every system is in its cube afterwards, embedded (the figures themselves belong to the
README, "One memory per call")."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_add_one_runs_the_adapters_paths_and_loses_no_add(tmp_path: Path, minilm: Any, monkeypatch: Any) -> None:
    import add_one
    from search_scale import make_memories

    from memos_core.cube import MemCube

    monkeypatch.setenv("MEMOS_PROGRESS", "0")
    n, adds = 30, 6
    systems = ["memos_os", "memos_store", "memos_llamaindex", "inmemory_onnx"]
    rep = add_one.run(n, adds, 3, None, str(tmp_path), systems, log=lambda _: None)
    for name in systems:
        assert rep["adds_per_s"][name] > 0 and rep["sustained_adds_per_s"][name] > 0
        assert rep["sustained_adds_per_s"][name] <= rep["adds_per_s"][name] * 1.01  # the wait only adds time
    for mine in ("memos_os", "memos_store", "memos_llamaindex"):
        assert rep[f"ratio_{mine}_vs_inmemory_onnx"] > 0 and rep[f"sustained_ratio_{mine}_vs_inmemory_onnx"] > 0
    prefill = len({m["content"] for m in make_memories(n)})
    for folder in ("os", "store", "llamaindex"):
        with MemCube(tmp_path / folder / "default", embedder=minilm) as cube:
            assert cube.count() == prefill + 3 + adds  # the warm-up adds and every timed add, durable
            assert cube.records.waiting_embeddings() == []  # closing embedded whatever still waited
