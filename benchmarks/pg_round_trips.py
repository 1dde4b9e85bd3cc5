"""Round trips to PostgreSQL per cube call (search, add, get), counted from libpq's own protocol trace.

    python benchmarks/pg_round_trips.py [--n 200] [--calls 20] [--json]

Starts a temporary PostgreSQL cluster (as the tests do: ``tests/pg_server.py``), opens a cube on it (vectors in
embedded Chroma: only PostgreSQL's round trips are counted), adds ``--n`` memories, then runs each kind of call
``--calls`` times and reports per call:

* ``round_trips``: how many times a connection waited for the server's answer (from each connection's
  ``PQtrace``: one per ``Sync`` message of the extended protocol and per simple ``Query``; a pipeline that sends
  several statements before one sync counts once; ``--show`` marks each wait with ``-- wait``);
* ``statements``: statements sent (``Query`` or ``Parse``/``Bind`` messages);
* ``governance``: statements that read the role or the settings (``gov_acl`` / ``gov_settings``);
* ``wall_p50_ms``: the call's median wall time (hashed test embedder; tracing adds its own cost: compare runs of
  this script with each other, not with ``search_scale.py``);
* ``sequential``: round trips on the calling thread's critical path are not separated here: a search on a server
  runs its lexical leg and its role check on worker threads, so ``round_trips`` is the total, not the latency.

Background work (the usage-count flusher) is waited for before a call's trace is read, so it is counted with the
call that caused it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--show", action="store_true", help="print the statements of the last call of each kind")
    args = ap.parse_args()

    from conftest import hashed_embed
    from pg_server import running_pg
    from pg_trace import PQTrace

    from memos_core.cube import MemCube

    work = Path(tempfile.mkdtemp(prefix="pg-rt-"))
    tracer = PQTrace(work)
    gen = running_pg("memos-pg-rt")
    server = next(gen)
    out: dict[str, Any] = {}
    try:
        url = server.url() + "?cube=rt"
        with MemCube(url, index="embedded", workdir=work / "w", embedder=hashed_embed) as cube:
            users = ["ann", "bob", "cy"]
            cube.add_many([{"content": f"memory {i} about topic {i % 17} in city {i % 5}", "user_id": users[i % 3]}
                           for i in range(args.n)])
            ids = [h.item.id for h in cube.search("topic 3", k=5)]
            for q in ("topic 1 city", "topic 2", "city 4 memory"):  # warm: the lexeme and df caches, the scope cache
                cube.search(q, k=10)
                cube.search(q, k=10, user_id="ann")
            cube.records.flush()

            def run(name: str, fn: Any) -> None:
                got: list[dict[str, Any]] = []
                wall: list[float] = []
                for i in range(args.calls):
                    tracer.mark()
                    t0 = time.perf_counter()
                    fn(i)
                    wall.append(time.perf_counter() - t0)
                    cube.records._wait_flusher()  # noqa: SLF001 - count the usage flush with its search
                    got.append(tracer.since_mark())
                out[name] = {k: statistics.median(g[k] for g in got) for k in ("round_trips", "statements",
                                                                                  "governance")}
                out[name]["wall_p50_ms"] = round(statistics.median(wall) * 1e3, 2)
                if args.show:
                    out[name]["texts"] = [t[:160] for t in got[-1]["texts"]]

            run("search_hybrid", lambda i: cube.search(f"topic {i % 17} city", k=10))
            run("search_hybrid_scoped", lambda i: cube.search(f"topic {i % 17} city", k=10, user_id="ann"))
            run("search_lexical", lambda i: cube.search(f"topic {i % 17}", k=10, mode="lexical"))
            run("get", lambda i: cube.get(ids[i % len(ids)]))
            run("add", lambda i: cube.add(f"a new memory number {i}", user_id="ann"))
            cube.governance.configure(audit_reads=True)
            run("search_hybrid_audited", lambda i: cube.search(f"topic {i % 17} city", k=10))
    finally:
        try:
            next(gen)
        except StopIteration:
            pass
        tracer.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(out))
    else:
        for name, r in out.items():
            print(f"{name:24s} round trips {r['round_trips']:5.1f}  statements {r['statements']:5.1f}  "
                  f"governance {r['governance']:4.1f}  wall p50 {r['wall_p50_ms']:6.2f} ms")
            for t in r.get("texts", []):
                print("    ", t)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
