"""Worker processes for the PostgreSQL concurrency tests (each one its own process with its own connections).

``python tests/pg_worker.py update URL CUBE ITEM_ID N``  read-modify-write one item N times; prints a JSON line
    ``{"ok": n, "conflict": n, "other": [error types]}``.
``python tests/pg_worker.py audit URL CUBE N``  append N audit records, each in its own transaction.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def update(url: str, cube: str, item_id: str, n: int) -> dict:
    import numpy as np

    from memos_core.errors import Conflict
    from memos_core.records.postgres import PostgresRecordStore

    store = PostgresRecordStore(url, cube)
    ok = conflict = 0
    other: list[str] = []
    try:
        for i in range(n):
            try:
                item = store.get(item_id)
                assert item is not None
                new = item.model_copy(update={"content": f"{os.getpid()} wrote {i}", "version": item.version + 1})
                with store.transaction() as c:
                    store.replace_item(c, store.rowid(item_id), new, np.ones(8, np.float32), True, True,  # type: ignore[arg-type]
                                       str(os.getpid()), "update")
                    store.append_event(c, float(i), str(os.getpid()), "update", item_id,
                                       detail={"version": new.version})
                ok += 1
            except Conflict:
                conflict += 1
            except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on any
                other.append(f"{type(exc).__name__}: {exc}")
    finally:
        store.close()
    return {"ok": ok, "conflict": conflict, "other": other}


def audit(url: str, cube: str, n: int) -> dict:
    from memos_core.records.postgres import PostgresRecordStore

    store = PostgresRecordStore(url, cube)
    try:
        for i in range(n):
            store.append_event_alone(float(i), str(os.getpid()), "note", None, "ok", {"i": i})
    finally:
        store.close()
    return {"ok": n}


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "update":
        out = update(args[0], args[1], args[2], int(args[3]))
    elif cmd == "audit":
        out = audit(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(out), flush=True)
