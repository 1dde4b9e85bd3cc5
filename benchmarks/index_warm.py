"""The first index write after opening a large cube, with and without the background index warm-up.

A cube of ``--n`` memories (default 10,000; a fast hashed 384-d embedder, so that only the index is measured) is
built once. Then, in fresh processes, alternating: open it with ``MemOS`` (immediate embedding and vector sync, so
the add reaches Chroma), let the application do other work for ``--idle`` seconds (loading its model, say), and
time its first adds and a search. ``warm=off`` disables the warm-up (``memos_core.cube.WARM_INDEX_BYTES``), ``on``
is the default behaviour: the cube opens and loads a large embedded index on a background thread when it opens.
The first add opens Chroma's client and collection and loads the HNSW segment (unless warmed), then runs the
cube's once-per-open index check. Each trial copies the built cube, so every one starts from the same files.

    python benchmarks/index_warm.py [--n 10000] [--idle 6] [--trials 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def embed(texts: list[str]) -> np.ndarray:
    """Hashed bag of words, 384 dimensions (the default embedder's size): cheap and deterministic."""
    out = np.zeros((len(texts), 384), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            out[i, zlib.crc32(word.encode()) % 383] += 1.0
        out[i, 383] += 0.01
    return out


def build(folder: Path, n: int) -> float:
    from memos_core.cube import MemCube

    started = time.perf_counter()
    with MemCube(folder / "default", embedder=embed, name="default") as cube:
        specs = [f"memory number {i} about topic {i % 97} and thing {i % 13}" for i in range(n)]
        for s in range(0, n, 1000):
            cube.add_many(specs[s:s + 1000], progress=False)
    return time.perf_counter() - started


def trial(folder: Path, warm: str, idle: float) -> dict[str, object]:
    import memos_core.cube as cube_mod
    from memos_core import MemOS

    if warm == "off":
        cube_mod.WARM_INDEX_BYTES = 1 << 62
    started = time.perf_counter()
    mem = MemOS(folder, embedder=embed, embed_sync="immediate", vector_sync="immediate")
    out: dict[str, object] = {"warm": warm, "open_s": round(time.perf_counter() - started, 3)}
    time.sleep(idle)
    import threading

    out["warming_at_first_add"] = any(t.name == "memos-index-warm" for t in threading.enumerate())
    adds = []
    for i in range(3):
        t = time.perf_counter()
        mem.add(f"one memory at a time {i}", user_id="u", infer=False)
        adds.append(round(time.perf_counter() - t, 3))
    out["adds_s"] = adds
    t = time.perf_counter()
    mem.search("memory number 5", user_id="u")
    out["search_s"] = round(time.perf_counter() - t, 3)
    mem.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--idle", type=float, default=6.0, help="seconds between opening and the first add")
    ap.add_argument("--trials", type=int, default=3, help="pairs of (off, on) fresh-process trials")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--trial", nargs=3, metavar=("FOLDER", "WARM", "IDLE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial:
        folder, warm, idle = args.trial
        print(json.dumps(trial(Path(folder), warm, float(idle))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "built"
        build_s = build(built, args.n)
        runs = []
        for _ in range(args.trials):
            for warm in ("off", "on"):
                work = Path(tmp) / "work"
                shutil.rmtree(work, ignore_errors=True)
                shutil.copytree(built, work)
                res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--trial", str(work), warm,
                                      str(args.idle)], capture_output=True, text=True, check=True)
                runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
                if not args.json:
                    print(runs[-1], flush=True)
    first = {w: [r["adds_s"][0] for r in runs if r["warm"] == w] for w in ("off", "on")}  # type: ignore[index]
    summary = {"n": args.n, "idle_s": args.idle, "build_s": round(build_s, 1), "runs": runs,
               "first_add_median_s": {w: statistics.median(v) for w, v in first.items()}}
    print(json.dumps(summary) if args.json else
          f"n={args.n} idle={args.idle}s first add, median of {args.trials}: "
          f"warm off {summary['first_add_median_s']['off']:.3f} s, on {summary['first_add_median_s']['on']:.3f} s")


if __name__ == "__main__":
    main()
