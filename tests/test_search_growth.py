"""benchmarks/search_growth.py at tiny N: one cube grown in steps, every figure reported, and a resumed run that
adds nothing to a cube already at the requested size (the figures themselves belong to the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "search_growth.py"


def _run(*args: str) -> dict:
    res = subprocess.run([sys.executable, str(SCRIPT), *args, "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_search_growth_grows_one_cube_and_resumes(tmp_path: Path) -> None:
    rep = _run("--sizes", "60,200", "--queries", "5", "--batch", "50", "--workdir", str(tmp_path),
               "--server-pids", str(os.getpid()))
    assert [s["n"] for s in rep["steps"]] == [60, 200]
    assert [s["added"] for s in rep["steps"]] == [60, 140]  # grown, not rebuilt
    assert rep["query_vector"].startswith("precomputed")
    assert rep["records"] == "sqlite" and rep["vector_index"] == "chroma-embedded"
    for step in rep["steps"]:
        for mode in ("hybrid", "dense_only", "lexical_only", "hybrid_scoped_user"):
            assert 0 < step[mode]["p50_ms"] <= step[mode]["p95_ms"]
            assert step[mode]["cpu"]["p95_ms"] > 0
            # --server-pids: here the test process, whose live child is the benchmark itself: its CPU counts
            assert step[mode]["cpu_mean_ms"] > 0 and step[mode]["server_cpu_mean_ms"] >= 0
        il = step["interleaved"]
        for mode in ("hybrid", "scoped", "scoped_store"):
            assert 0 < il[mode]["p50_ms"] <= il[mode]["p95_ms"]
        assert il["scoped_vs_hybrid_p95"] == round(il["scoped"]["p95_ms"] / il["hybrid"]["p95_ms"], 2)
    assert rep["users"] == 50
    g = rep["growth"]["60->200"]["hybrid"]
    a, b = rep["steps"]
    assert g["p95"] == round(b["hybrid"]["p95_ms"] / a["hybrid"]["p95_ms"], 2)

    again = _run("--sizes", "60,200", "--queries", "5", "--workdir", str(tmp_path))
    assert [s["n"] for s in again["steps"]] == [200]  # 60 is below what the cube holds: skipped
    assert again["steps"][0]["added"] == 0 and again["steps"][0]["ingest_per_s"] is None

    # a cold run: the cube's files dropped from the page cache first; major page faults are counted per mode
    cold = _run("--sizes", "200", "--queries", "5", "--workdir", str(tmp_path), "--cold")
    (step,) = cold["steps"]
    assert step["added"] == 0
    for mode in ("hybrid", "dense_only", "lexical_only", "hybrid_scoped_user"):
        assert step[mode]["major_faults"] >= 0 and 0 <= step[mode]["calls_with_faults"] <= 1
        assert step[mode]["disk_read_mb"] >= 0
    assert step["warmup"]["s"] > 0 and step["warmup"]["disk_read_mb"] >= 0
