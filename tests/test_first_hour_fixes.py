"""Small first-hour papercuts (issue 18 follow-up): what a new user sees when a cube is closed, when PostgreSQL
cannot be reached, and when the Chroma server URL is mistyped."""
from __future__ import annotations

import logging
import socket

import pytest
from conftest import hashed_embed

from memos_core.cube import MemCube
from memos_core.errors import BackendUnavailable, CubeClosed, ValidationError


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound once to pick it, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


# ------------------------------------------------------------------------------------ 2. unreachable PostgreSQL
def test_unreachable_postgres_is_one_clear_error_without_pool_noise(tmp_path, caplog) -> None:
    pytest.importorskip("psycopg_pool")
    port = _closed_port()
    url = f"postgresql://u:s3cret@127.0.0.1:{port}/appdb?cube=x"
    caplog.set_level(logging.DEBUG, logger="psycopg.pool")
    with pytest.raises(BackendUnavailable) as info:
        MemCube(url, embedder=hashed_embed, index="http://127.0.0.1:1", workdir=tmp_path / "w")
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "appdb" in msg
    assert "running" in msg and "check the URL" in msg
    assert "s3cret" not in msg and "pool initialization" not in msg
    noisy = [r for r in caplog.records if r.name.startswith("psycopg.pool") and r.levelno >= logging.WARNING]
    assert noisy == []
    # the pool's logger is left as it was: other code's records still get through afterwards
    assert not logging.getLogger("psycopg.pool").filters


def test_unreachable_postgres_through_memos(tmp_path) -> None:
    pytest.importorskip("psycopg_pool")
    from memos_core.os import MemOS

    port = _closed_port()
    with pytest.raises(BackendUnavailable, match=rf"127\.0\.0\.1:{port}.*check the URL"):
        MemOS(f"postgresql://u@127.0.0.1:{port}/db?cube=x", index="http://127.0.0.1:1", embedder=hashed_embed,
              workdir=tmp_path / "w")


# ------------------------------------------------------------------------------------- 3. Chroma URL typos
@pytest.mark.parametrize("bad", ["htp://x:1", "http://:8000", "http://x:port", "x:8000", "localhost:8000",
                                 "http://x:99999", "ftp://x:8000"])
def test_mistyped_chroma_url_is_refused_at_construction(tmp_path, bad) -> None:
    with pytest.raises(ValidationError, match="http://host:port"):
        MemCube(tmp_path / "c", embedder=hashed_embed, chroma_url=bad)
    with pytest.raises(ValidationError, match="http://host:port"):
        MemCube(tmp_path / "c", embedder=hashed_embed, index=bad)
    assert not (tmp_path / "c").exists()  # refused before the folder was created


def test_mistyped_chroma_url_on_the_index_class() -> None:
    from memos_core.plaintext.vector import ChromaVectorIndex

    with pytest.raises(ValidationError, match="http://host:port"):
        ChromaVectorIndex(url="htp://x:1")


@pytest.mark.parametrize("good", ["http://localhost:8000", "https://chroma.example", "http://10.0.0.5:1/",
                                  "http://[::1]:8000"])
def test_well_formed_chroma_url_is_accepted_without_connecting(good) -> None:
    from memos_core.plaintext.vector import ChromaVectorIndex, check_chroma_url

    assert check_chroma_url(good) == good
    idx = ChromaVectorIndex(url=good)  # nothing listens there: construction does not connect
    assert idx.url == good
