"""Small first-hour papercuts (issue 18 follow-up): what a new user sees when a cube is closed, when PostgreSQL
cannot be reached, and when the Chroma server URL is mistyped."""
from __future__ import annotations

import pytest
from conftest import hashed_embed

from memos_core.cube import MemCube
from memos_core.errors import CubeClosed


# ------------------------------------------------------------------------------------------- 1. closed cube
def test_closed_cube_message_says_what_happened_and_what_to_do(tmp_path) -> None:
    cube = MemCube(tmp_path / "x", embedder=hashed_embed)
    cube.add("the launch code is tulip")
    cube.close()
    for op in (lambda: cube.search("q"), lambda: cube.add("more")):
        with pytest.raises(CubeClosed) as info:
            op()
        msg = str(info.value)
        assert str(tmp_path / "x") in msg and "records.sqlite3" not in msg
        assert "was closed" in msg and "close()" in msg
        assert "MemCube(" in msg and "MemOS(" in msg  # how to go on


def test_closed_postgres_cube_message_redacts_the_password(pg_server, tmp_path) -> None:
    from pg_server import fresh_schema_name

    from memos_core.records.postgres import PostgresRecordStore

    url = pg_server.url() + "?cube=" + fresh_schema_name("c")
    store = PostgresRecordStore(url)
    store.close()
    with pytest.raises(CubeClosed) as info:
        with store._conn():
            pass
    msg = str(info.value)
    assert "was closed" in msg and "MemCube(" in msg and "MemOS(" in msg and "127.0.0.1" in msg

    cube = MemCube(url, embedder=hashed_embed, index="embedded", workdir=tmp_path / "w")
    cube.add("note")
    cube.close()
    with pytest.raises(CubeClosed, match="was closed"):
        cube.search("note")


def test_closed_message_never_shows_a_password() -> None:
    from memos_core.records.postgres import _closed_message

    msg = _closed_message("postgresql://u:hunter2@db.example:5432/app?cube=x")
    assert "hunter2" not in msg and "db.example" in msg and "was closed" in msg
