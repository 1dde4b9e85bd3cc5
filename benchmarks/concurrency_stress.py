"""Threads writing, forgetting and searching one cube at once, then a check that the records and the vector index
agree: a stress run, not a timing benchmark (the interleavings are left to the scheduler, so a defect shows in
some runs only; run it several times).

    python benchmarks/concurrency_stress.py [--seconds 20] [--mix afs] [--runs 3] [--store URL --index URL]

``--mix``: ``a`` two threads adding one memory per call (deferred embeddings and vector sync, the MemOS
defaults), ``f`` one thread forgetting / updating / deleting / restoring random memories, ``s`` one thread
searching (hybrid and dense). After the threads stop, the cube is closed and opened again, and the run fails
when a thread raised anything but NotFound/Conflict, a thread is still running (a deadlock), or the reopened cube
disagrees with itself: a live memory without its embedding, an id in the vector index without a stored embedding
(a forgotten or deleted memory's vector), a stored embedding not in the index, rows still waiting or pending, an
embedding row without its item. Found with it: a forget beside a search corrupting the embedded Chroma folder's
``chroma.sqlite3`` (3 of 7 runs with ``--mix fs``; fixed in ``plaintext/vector.py``).

Prints one JSON line per run; exit status 1 when any run failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memos_core.cube import MemCube  # noqa: E402
from memos_core.errors import Conflict, NotFound  # noqa: E402


def _embedder() -> Any:
    """Hashed bag-of-words vectors (64 d): the stress is on the cube, not on a model."""
    import hashlib

    import numpy as np

    def embed(texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i, int.from_bytes(hashlib.sha1(word.encode()).digest()[:4], "little") % 63] += 1.0
            out[i, 63] += 0.01
        return out

    return embed


def run(seconds: float, mix: str, store: str | None, index: str | None) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="memos-stress-"))
    embed = _embedder()

    def open_cube(**kw: Any) -> MemCube:
        if store:
            return MemCube(store, index=index, workdir=tmp / "w", embedder=embed, **kw)
        return MemCube(tmp / "c", embedder=embed, **kw)

    cube = open_cube(vector_sync="deferred", embed_sync="deferred")
    errors: list[str] = []
    ids: list[str] = []
    lock = threading.Lock()
    if "a" not in mix:
        ids += [it.id for it in cube.add_many([f"seed memory {i} about topic {i % 50}" for i in range(200)])]
    stop = time.monotonic() + seconds

    def guarded(fn: Any) -> Any:
        def loop(seed: int) -> None:
            rnd = random.Random(seed)
            while time.monotonic() < stop:
                try:
                    fn(rnd)
                except (NotFound, Conflict):
                    pass
                except Exception:  # noqa: BLE001 - reported
                    errors.append(traceback.format_exc(limit=4))
        return loop

    @guarded
    def add(rnd: random.Random) -> None:
        item = cube.add(f"memory {rnd.random():.6f} about topic {rnd.randint(0, 50)}")
        with lock:
            ids.append(item.id)

    @guarded
    def mutate(rnd: random.Random) -> None:
        with lock:
            victim = rnd.choice(ids) if ids else None
        if victim is None:
            time.sleep(0.01)
            return
        op = rnd.random()
        if op < 0.4:
            cube.forget(victim)
        elif op < 0.6:
            cube.update(victim, f"updated {rnd.random():.6f} topic {rnd.randint(0, 50)}")
        elif op < 0.8:
            cube.delete(victim)
        else:
            cube.restore(victim)

    @guarded
    def search(rnd: random.Random) -> None:
        cube.search(f"topic {rnd.randint(0, 50)}", k=5, mode=rnd.choice(["hybrid", "dense"]))

    threads = ([threading.Thread(target=add, args=(i,)) for i in range(2)] if "a" in mix else []) \
        + ([threading.Thread(target=mutate, args=(7,))] if "f" in mix else []) \
        + ([threading.Thread(target=search, args=(9,))] if "s" in mix else [])
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    stuck = sum(t.is_alive() for t in threads)
    cube.close()
    again = open_cube()
    try:
        live = {it.id for it in again.list(limit=10**9)}
        index_ids = again.index._inner.ids()
        stored = {b[1] for batch in again.records.all_embeddings() for b in batch}
        report = {
            "mix": mix, "seconds": seconds, "errors": len(errors), "stuck_threads": stuck, "live": len(live),
            "live_without_embedding": len(live - stored), "indexed_without_embedding": len(index_ids - stored),
            "embedded_not_indexed": len(stored - index_ids),
            "orphan_embeddings": again.records.embedding_count() - len(stored),
            "waiting": len(again.records.waiting_embeddings()), "pending": len(again.records.pending_vectors()),
            "degraded": again.index_degraded,
        }
    finally:
        again.close()
    report["ok"] = not any(report[k] for k in ("errors", "stuck_threads", "live_without_embedding",
                                               "indexed_without_embedding", "embedded_not_indexed",
                                               "orphan_embeddings", "waiting", "pending", "degraded"))
    if errors:
        report["first_error"] = errors[0][-1500:]
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--mix", default="afs")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--store", help="postgresql://...?cube=NAME (a fresh cube per run is the caller's to give)")
    ap.add_argument("--index", help="Chroma server URL (with --store)")
    a = ap.parse_args()
    ok = True
    for _ in range(a.runs):
        rep = run(a.seconds, a.mix, a.store, a.index)
        ok &= rep["ok"]
        print(json.dumps(rep), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
