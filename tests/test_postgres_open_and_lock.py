"""PostgreSQL follow-ups of issue 14: MemOS and the adapters open a cube by its store URL, and an update's
state re-check holds the row lock until it commits (a concurrent state change is never overwritten)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import hashed_embed
from memos_core.errors import Conflict, ValidationError


@pytest.fixture
def url(pg_server: Any) -> str:
    from pg_server import fresh_schema_name

    return pg_server.url() + "?cube=" + fresh_schema_name("h")


def _waiting_on_a_lock(server_url: str, timeout: float = 30.0) -> bool:
    """True once some other backend waits for a lock (polled from a third connection)."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(server_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                               "AND pid <> pg_backend_pid()").fetchone()
            if row and row[0] > 0:
                return True
            time.sleep(0.05)
    return False


def test_an_update_waits_for_a_concurrent_state_change_and_refuses_to_overwrite_it(
        url: str, pg_server: Any, chroma_server: Any, tmp_path: Path) -> None:
    from memos_core.cube import MemCube
    from memos_core.items import LifecycleState

    with MemCube(url, index=chroma_server.url, workdir=tmp_path / "a", embedder=hashed_embed) as cube, \
            MemCube(url, index=chroma_server.url, workdir=tmp_path / "b", embedder=hashed_embed,
                    create=False) as other:
        item = cube.add("Ann moved to Lisbon in May", user_id="ann")
        rowid = other.records.rowid(item.id)
        outcome: dict[str, Any] = {}

        def update() -> None:
            try:
                outcome["item"] = cube.update(item.id, "Ann moved to Porto in June")
            except Exception as exc:  # noqa: BLE001 - the test checks which one
                outcome["error"] = exc

        # another worker archives the memory and has not committed yet: the update reads "activated" outside
        # its transaction, then must wait for that worker's row lock at its re-check, and see "archived"
        with other.records.transaction() as c:
            other.records.set_state(c, rowid, item.id, item.state, LifecycleState.ARCHIVED, time.time(),
                                    "local", "archived by another worker")
            worker = threading.Thread(target=update)
            worker.start()
            assert _waiting_on_a_lock(pg_server.url()), "the update never waited for the other writer's lock"
        worker.join(60)
        assert not worker.is_alive()
        assert isinstance(outcome.get("error"), Conflict), outcome
        now = cube.lookup(item.id)
        assert now is not None and now.state == LifecycleState.ARCHIVED  # the other writer's change survives
        assert now.version == item.version and now.content == item.content
        assert [v.content for v in cube.history(item.id)] == ["Ann moved to Lisbon in May"]
