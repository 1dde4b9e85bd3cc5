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


def test_memos_opens_a_store_url_as_its_default_cube(url: str, chroma_server: Any, tmp_path: Path) -> None:
    from memos_core.os import MemOS

    with MemOS(url, index=chroma_server.url, workdir=tmp_path / "w1", embedder=hashed_embed) as mem:
        assert mem.store_url == url and mem.path == tmp_path / "w1"
        cube = mem.cubes["default"]
        assert cube.records.backend == "postgresql"
        mem.add([{"role": "Ann", "content": "I moved to Lisbon yesterday"}], user_id="ann")
        assert not (tmp_path / "w1" / "default" / "records.sqlite3").exists()
        mem.create_cube("notes")  # a sibling in the local folder, as with a data folder
        assert mem.cubes["notes"].records.backend == "sqlite"
    assert cube.records.closed  # the MemOS opened it, so it closed it
    # another worker, its own local folder: the same cube, the first worker's memory found
    with MemOS(url, index=chroma_server.url, workdir=tmp_path / "w2", embedder=hashed_embed) as other:
        hits = other.search("Lisbon", user_id="ann")
        assert hits and "Lisbon" in hits[0].item.content and hits[0].item.scope.user_id == "ann"


def test_memos_on_a_store_url_refuses_what_it_cannot_share(url: str, tmp_path: Path) -> None:
    from memos_core.os import MemOS

    with pytest.raises(ValidationError, match="Chroma server"):
        MemOS(url, workdir=tmp_path / "w", embedder=hashed_embed)  # workers must share the vector index
    with pytest.raises(ValidationError, match="workdir"):
        MemOS(tmp_path / "folder", workdir=tmp_path / "w", embedder=hashed_embed)


def test_adapters_accept_a_store_url(url: str, chroma_server: Any, minilm: Any, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from memos_core.os import MemoryArgumentError
    from memos_langchain import MemOSRetriever as LCRetriever
    from memos_llamaindex import MemOSRetriever as LIRetriever

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the default local folder of a URL MemOS
    monkeypatch.delenv("MEMOS_INDEX", raising=False)
    with pytest.raises(MemoryArgumentError, match="MEMOS_INDEX"):
        LCRetriever(memory=url, user_id="ann")
    with pytest.raises(MemoryArgumentError, match="MEMOS_INDEX"):
        LIRetriever(url, user_id="ann")

    monkeypatch.setenv("MEMOS_INDEX", chroma_server.url)
    lc = LCRetriever(memory=url, user_id="ann")
    try:
        assert lc.memory.store_url == url
        lc.memory.add([{"role": "Ann", "content": "I adopted a greyhound named Biscuit"}], user_id="ann")
        docs = lc.invoke("what dog did Ann adopt")
        assert docs and "Biscuit" in docs[0].page_content
        li = LIRetriever(url, user_id="ann", k=1)  # another process would open it the same way
        try:
            nodes = li.retrieve("what dog did Ann adopt")
            assert nodes and "Biscuit" in nodes[0].node.get_content()
            assert nodes[0].node.metadata["memory_id"] == docs[0].metadata["memory_id"]
        finally:
            li.memos.close()
    finally:
        lc.memory.close()
