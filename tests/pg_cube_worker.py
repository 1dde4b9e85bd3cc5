"""One worker process of the multi-worker test (tests/test_postgres_workers.py): its own MemCube handle on the
shared PostgreSQL records and Chroma server, with its own connections and local folder.

    python tests/pg_cube_worker.py STORE_URL INDEX_URL WORKDIR WORKER N ACKFILE

Does N operations (add; every 4th an update of one of its own memories; every 5th a search that should see
other workers' memories; every 9th a forget of one of its own). Each acknowledged write (the call returned) is
appended to ACKFILE and fsync'd *after* the call returned, so the file lists only writes a caller was told
succeeded. BackendUnavailable (PostgreSQL restarting) is retried; a typed error is counted; anything else is
reported as untyped. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))


def main() -> None:
    store, index, workdir, worker, n, ackfile = sys.argv[1:7]
    from conftest import hashed_embed

    from memos_core.cube import MemCube
    from memos_core.errors import BackendUnavailable, Conflict, MemOSError, NotFound, ValidationError

    summary = {"worker": worker, "acked": 0, "unavailable": 0, "conflicts": 0, "untyped": [], "saw_others": 0,
               "searches": 0, "saw_workers": []}
    ack = open(ackfile, "a", buffering=1)

    def acknowledge(line: str) -> None:
        ack.write(line + "\n")
        ack.flush()
        os.fsync(ack.fileno())
        summary["acked"] += 1

    def retry(fn, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        for _ in range(600):
            try:
                return fn(*a, **kw)
            except BackendUnavailable:
                summary["unavailable"] += 1
                time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not come back")

    cube = retry(MemCube, store, index=index, workdir=workdir, embedder=hashed_embed)
    mine: list[str] = []
    try:
        for i in range(int(n)):
            try:
                if i % 4 == 3 and mine:
                    target = mine[(i * 7) % len(mine)]
                    got = retry(cube.update, target, f"worker {worker} item {target} revised at step {i}")
                    acknowledge(f"update {target} {got.version} {got.content}")
                elif i % 5 == 4:
                    hits = retry(cube.search, "worker fact about topic", k=20)
                    summary["searches"] += 1
                    if any(not h.item.id.startswith(f"w{worker}-") for h in hits):
                        summary["saw_others"] += 1
                elif i % 9 == 8 and len(mine) > 3:
                    target = mine.pop(0)
                    try:
                        retry(cube.forget, target)
                    except NotFound:  # a retry of a forget whose first attempt committed (outcome unknown then)
                        if summary["unavailable"] == 0:
                            raise
                    acknowledge(f"forget {target}")
                else:
                    item_id = f"w{worker}-{i}"
                    content = f"worker {worker} fact {i} about topic {i % 7}"
                    try:
                        retry(cube.add, content, id=item_id)
                    except ValidationError as exc:  # a retry of an add whose first attempt committed
                        if "already exists" not in str(exc):
                            raise
                    mine.append(item_id)
                    acknowledge(f"add {item_id} {content}")
            except Conflict:
                summary["conflicts"] += 1
            except MemOSError as exc:
                summary["untyped"].append(f"{type(exc).__name__}: {exc}")  # typed, but not expected here
            except Exception as exc:  # noqa: BLE001 - the test fails on any
                summary["untyped"].append(f"{type(exc).__name__}: {exc}")
        # every other worker's writes are visible here (they acknowledged some before the restart the test waits
        # for): one lexical search per other worker, for its own words
        for other in ("1", "2", "3"):
            if other != worker:
                hits = retry(cube.search, f"worker {other} fact", k=10, mode="lexical")
                if any(h.item.id.startswith(f"w{other}-") for h in hits):
                    summary["saw_workers"].append(other)
    finally:
        try:
            cube.close()
        except MemOSError:
            pass
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
