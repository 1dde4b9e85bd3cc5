"""How forget's cost grows with the cube: latency of one ``MemCube.forget`` at several cube sizes.

    python benchmarks/forget_scale.py [--sizes 1000,10000] [--forgets 3] [--dim 384] [--json]

Each size gets a fresh cube of N memories (turn-like texts of one user, added in bulk, untimed) embedded with a
hashed embedder (deterministic dense vectors of ``--dim`` components: what Chroma stores costs the same as with a
model, the CPU cost of a model is not what is measured). Then ``--forgets`` memories are forgotten one call at a
time; the median seconds per forget are reported, with ``compact_s`` (one explicit ``MemCube.compact_index()``, the
full rebuild of the vector index that forget used to run every time) and whether vector compaction was left
pending. Extrapolate linearly from the figures: forget's vector scrub is O(sync_threshold) plus Chroma's own
persist of its id map; compaction is O(N).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memos_core import MemCube  # noqa: E402


def hashed_embedder(dim: int) -> Any:
    def embed(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), dim), dtype=np.float32)
        for n, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little")
            out[n] = np.random.default_rng(seed).standard_normal(dim)
        return out
    return embed


def run(size: int, forgets: int, dim: int, compact: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cube = MemCube(Path(tmp) / "cube", embedder=hashed_embedder(dim))
        try:
            t0 = time.perf_counter()
            ids: list[str] = []
            for s in range(0, size, 2000):
                ids += [it.id for it in cube.add_many(
                    [f"turn {i}: Ann said something about tea number {i}" for i in range(s, min(size, s + 2000))],
                    user_id="ann")]
            cube.index.count()  # the index is up to date before timing
            ingest = time.perf_counter() - t0
            times = []
            for iid in ids[1:1 + forgets]:
                t = time.perf_counter()
                cube.forget(iid)
                times.append(time.perf_counter() - t)
            pending = bool(getattr(cube, "vector_compaction_pending", lambda: False)())
            out: dict[str, Any] = {"size": size, "dim": dim, "ingest_s": round(ingest, 2),
                                   "forget_s_median": round(statistics.median(times), 3),
                                   "forget_s_all": [round(x, 3) for x in times], "compaction_pending": pending}
            if compact and hasattr(cube, "compact_index"):
                t = time.perf_counter()
                cube.compact_index()
                out["compact_s"] = round(time.perf_counter() - t, 2)
            return out
        finally:
            cube.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--forgets", type=int, default=3)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--no-compact", action="store_true", help="skip timing compact_index()")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rows = [run(int(s), a.forgets, a.dim, not a.no_compact) for s in a.sizes.split(",")]
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(r)


if __name__ == "__main__":
    main()
