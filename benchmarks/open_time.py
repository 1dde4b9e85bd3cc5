"""What opening a SQLite cube costs, with the integrity check at every open (before) and only after an unclean
shutdown (now), from a cold and a warm page cache.

    python benchmarks/open_time.py --workdir DIR [--repeats 3] [--json]

``DIR`` holds a cube built by ``benchmarks/search_growth.py --workdir DIR`` (its folder ``DIR/cube``; hashed
vectors). Each trial runs in a fresh process (no Chroma client or page of the previous trial left in it) and
times ``MemCube(...)`` (the records open, the manifest, the vector index handle) and then the first search
(which loads the HNSW index). Two policies, alternated trial by trial:

* ``always``: ``MEMOS_SQLITE_OPEN_CHECK=always``, ``PRAGMA quick_check`` at every open (what every open did
  before the check became conditional);
* ``auto``: the default: the check only when the last shutdown may have been unclean (the cube was closed
  cleanly by the previous trial, so it is skipped).

``--cold`` drops this cube's files from the page cache before each trial (``posix_fadvise(DONTNEED)`` per file,
see ``search_growth.evict``; nothing machine-wide: dropping every cache needs root and would disturb other jobs),
so the reads come from storage. Reported per policy: median wall time of the open and of open + first search,
and the bytes the trial process read from storage (``/proc/self/io``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def one(workdir: Path, cold: bool) -> dict[str, Any]:
    """One trial in this process: optionally evict, then time the open and the first search."""
    from search_growth import _read_bytes, evict
    from search_scale import HashedEmbedder

    root = workdir / "cube"
    evicted = evict(root) if cold else 0
    from memos_core.cube import MemCube

    emb = HashedEmbedder()
    r0 = _read_bytes()
    t0 = time.perf_counter()
    cube = MemCube(root, embedder=emb)
    t_open = time.perf_counter() - t0
    r_open = _read_bytes() - r0
    try:
        checked = cube.records.open_check
        cube.search("notes about the weekend trip", k=10)
        t_first = time.perf_counter() - t0
    finally:
        cube.close()
    return {"open_s": round(t_open, 3), "open_and_first_search_s": round(t_first, 3),
            "open_read_mb": round(r_open / 2**20, 1), "read_mb": round((_read_bytes() - r0) / 2**20, 1),
            "check_ran": checked, "evicted_gb": round(evicted / 2**30, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="the --workdir of a search_growth.py SQLite run")
    p.add_argument("--repeats", type=int, default=3, help="trials per policy and cache state (default 3)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--one", choices=("cold", "warm"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    workdir = Path(a.workdir)
    if a.one:
        print(json.dumps(one(workdir, a.one == "cold")))
        return 0
    if not (workdir / "cube" / "records.sqlite3").exists():
        p.error(f"no cube in {workdir / 'cube'}: build one with benchmarks/search_growth.py --workdir")
    env0 = {**os.environ, "PYTHONHASHSEED": "0", "MEMOS_PROGRESS": "0"}
    out: dict[str, Any] = {"db_gb": round((workdir / "cube" / "records.sqlite3").stat().st_size / 2**30, 3),
                           "load_avg_1m_before": round(os.getloadavg()[0], 2)}
    for state in ("warm", "cold"):
        runs: dict[str, list[dict[str, Any]]] = {"always": [], "auto": []}
        if state == "warm":  # one untimed open first: its pages in the cache, the cube closed cleanly
            subprocess.run([sys.executable, __file__, "--workdir", str(workdir), "--one", "warm"], env=env0,
                           check=True, capture_output=True)
        for _ in range(a.repeats):
            for policy in ("always", "auto"):
                res = subprocess.run([sys.executable, __file__, "--workdir", str(workdir), "--one", state],
                                     env={**env0, "MEMOS_SQLITE_OPEN_CHECK": policy}, check=True,
                                     capture_output=True, text=True)
                runs[policy].append(json.loads(res.stdout.strip().splitlines()[-1]))
        for policy, rs in runs.items():
            summary = {k: statistics.median(r[k] for r in rs)
                       for k in ("open_s", "open_and_first_search_s", "open_read_mb", "read_mb")}
            summary["check_ran"] = sorted({str(r["check_ran"]) for r in rs})
            out[f"{state}_{policy}"] = summary
            print(f"{state:>4} {policy:>6}: open {summary['open_s']:.3f} s ({summary['open_read_mb']} MB read from "
                  f"storage), open + first search {summary['open_and_first_search_s']:.3f} s "
                  f"({summary['read_mb']} MB); check ran: {summary['check_ran']}",
                  file=sys.stderr if a.json else sys.stdout, flush=True)
    out["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    if a.json:
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
