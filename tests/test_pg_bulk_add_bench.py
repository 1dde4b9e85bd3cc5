"""benchmarks/pg_bulk_add.py at tiny N on the test cluster: both paths timed, every figure reported, and the rows
of both paths are in the cube afterwards (the figures themselves belong to the README)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_pg_bulk_add_times_both_paths(pg_server: Any) -> None:
    from pg_server import fresh_schema_name

    import pg_bulk_add

    from memos_core.records.postgres import PostgresRecordStore

    name = fresh_schema_name("bulkbench")
    rep = pg_bulk_add.run(pg_server.url() + "?cube=" + name, n=80, rounds=2)
    for mode in ("copy", "per_item"):
        assert rep[mode]["wall_s_per_1k"] > 0 and rep[mode]["client_cpu_s_per_1k"] >= 0
        assert rep[mode]["server_cpu_s_per_1k"] >= 0
    assert rep["rounds_counted"] == 1 and rep["n"] == 80
    store = PostgresRecordStore(pg_server.url(), name)
    try:
        assert store.count() == 80 * 2 * 2  # two rounds, one batch per path each
        rows, counter = store.audit_chain()
        assert counter == 320
    finally:
        store.close()
