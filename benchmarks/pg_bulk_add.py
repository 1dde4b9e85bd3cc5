"""PostgreSQL bulk add: ``add_items`` through COPY against one statement per item, alternated batch by batch.

    python benchmarks/pg_bulk_add.py --store 'postgresql://user@host/db?cube=bulkbench' [--n 2000] [--rounds 4] [--json]

Builds batches of ``--n`` memories (the template corpus of ``search_scale.py``, hashed 384-d vectors), and writes
each in one records transaction (``RecordStore.add_items``: rows, first versions, embeddings, pending marks,
transitions, audit records), alternating the COPY path (``_COPY_MIN_ROWS`` and up, the default for a large
``add_many``) with the per-item statements (the path of smaller batches), the order flipped every round so that a
shared machine's load weighs on both alike. Per 1,000 memories it reports wall time (including the commit), the
client's CPU and the CPU of the PostgreSQL backend that ran the transaction (read from ``/proc``: the server must
run on this host; otherwise that figure is 0). The first round is a warm-up and is not counted. The cube must be
a fresh ``?cube=`` name or one this script wrote before (the rows are added, never removed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_scale import HashedEmbedder, make_memories  # noqa: E402


def _backend_cpu_s(conn: Any) -> float:
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # the server runs elsewhere
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(store: str, n: int = 2000, rounds: int = 4, seed: int = 7) -> dict[str, Any]:
    import memos_core.records.postgres as pgm
    from memos_core.records.postgres import parse_postgres_url

    url, cube_name = parse_postgres_url(store)
    if cube_name is None:
        raise SystemExit("--store needs ?cube=NAME")
    emb = HashedEmbedder()
    specs = make_memories(n * rounds * 2, seed, 50)
    from memos_core.records.postgres import PostgresRecordStore

    rec = PostgresRecordStore(url, cube_name)
    from memos_core.items import MemoryItem

    res: dict[str, list[tuple[float, float, float]]] = {"copy": [], "per_item": []}
    threshold = pgm._COPY_MIN_ROWS
    k = 0
    try:
        for r in range(rounds):
            for mode in (("copy", "per_item") if r % 2 == 0 else ("per_item", "copy")):
                items = [MemoryItem(content=s["content"], cube_id=cube_name, scope={"user_id": s["user_id"]},
                                    kind=s["kind"], tags=s["tags"], metadata=s["metadata"],
                                    provenance=s["provenance"], event_time=s["event_time"])
                         for s in specs[k:k + n]]
                k += n
                vecs = list(emb.embed_documents([it.content for it in items]))
                pgm._COPY_MIN_ROWS = 2 if mode == "copy" else 10**9  # this batch through the one path
                try:
                    t0 = time.perf_counter()
                    with rec.transaction() as c:
                        b0, c0 = _backend_cpu_s(c), time.process_time()
                        rec.add_items(c, items, vecs, [True] * n, "bench", time.time())
                        c1, b1 = time.process_time(), _backend_cpu_s(c)
                    wall = time.perf_counter() - t0
                finally:
                    pgm._COPY_MIN_ROWS = threshold
                if r > 0:  # the first round warms caches and plans
                    res[mode].append((wall, c1 - c0, b1 - b0))
    finally:
        rec.close()
    out: dict[str, Any] = {"n": n, "rounds_counted": rounds - 1, "copy_min_rows": threshold}
    for mode, v in res.items():
        per_k = 1000.0 / n
        out[mode] = {key: round(per_k * sum(x[i] for x in v) / max(len(v), 1), 4)
                     for i, key in enumerate(("wall_s_per_1k", "client_cpu_s_per_1k", "server_cpu_s_per_1k"))}
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="postgresql://user@host/db?cube=NAME")
    p.add_argument("--n", type=int, default=2000, help="memories per batch (default 2000)")
    p.add_argument("--rounds", type=int, default=4, help="rounds of one batch per path; the first is not counted")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    if a.n < 2 or a.rounds < 2:
        p.error("--n must be at least 2 and --rounds at least 2")
    rep = run(a.store, a.n, a.rounds)
    if a.json:
        print(json.dumps(rep, sort_keys=True))
    else:
        for mode in ("copy", "per_item"):
            v = rep[mode]
            print(f"{mode:<9} per 1,000 memories: wall {v['wall_s_per_1k']} s, client CPU {v['client_cpu_s_per_1k']} s, "
                  f"PostgreSQL backend CPU {v['server_cpu_s_per_1k']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
