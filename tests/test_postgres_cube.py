"""A MemCube whose records live in PostgreSQL and whose vectors live on a Chroma server: opening it by URL,
what it refuses, several handles on one cube, and `memos migrate` SQLite -> PostgreSQL -> SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import hashed_embed
from memos_core.errors import NotFound, ValidationError


@pytest.fixture
def url(pg_server: Any) -> str:
    from pg_server import fresh_schema_name

    return pg_server.url() + "?cube=" + fresh_schema_name("k")


def _open(url: str, chroma_server: Any, tmp_path: Path, name: str = "w", **kw: Any) -> Any:
    from memos_core.cube import MemCube

    return MemCube(url, index=chroma_server.url, workdir=tmp_path / name, embedder=hashed_embed, **kw)


def test_a_cube_opened_by_url_keeps_everything_in_the_servers(url: str, chroma_server: Any, tmp_path: Path) -> None:
    with _open(url, chroma_server, tmp_path, "a") as cube:
        a = cube.add("Ann moved to Lisbon in May", user_id="ann")
        cube.add("Bob adopted a greyhound named Biscuit", user_id="bob")
        cube.update(a.id, "Ann moved to Porto in June")
        assert cube.records.backend == "postgresql"
        assert not (tmp_path / "a" / "records.sqlite3").exists() and not (tmp_path / "a" / "chroma").exists()
        cube_id = cube.cube_id
    with _open(url, chroma_server, tmp_path, "b", create=False) as again:  # another worker, another folder
        assert again.cube_id == cube_id
        assert [h.item.id for h in again.search("where did Ann move", k=1, user_id="ann")] == [a.id]
        assert [v.content for v in again.history(a.id)] == ["Ann moved to Lisbon in May", "Ann moved to Porto in June"]
        assert again.search("greyhound", k=1, mode="dense")[0].item.scope.user_id == "bob"
        assert again.governance.verify().ok
        again.forget(a.id)
        assert again.lookup(a.id) is None and a.id not in again.index.ids()


def test_what_a_url_cube_refuses(url: str, chroma_server: Any, tmp_path: Path) -> None:
    from memos_core.cube import MemCube

    with pytest.raises(ValidationError, match="Chroma server"):
        MemCube(url, workdir=tmp_path, embedder=hashed_embed)  # workers must share the vector index
    with pytest.raises(NotFound):
        _open(url, chroma_server, tmp_path, create=False)
    with _open(url, chroma_server, tmp_path) as cube:
        cube.add("x")
    with pytest.raises(Exception, match="dimension"):
        MemCube(url, index=chroma_server.url, workdir=tmp_path / "z",
                embedder=lambda texts: [[0.1] * 32 for _ in texts])


def test_a_single_process_may_keep_vectors_embedded(url: str, tmp_path: Path) -> None:
    from memos_core.cube import MemCube

    with MemCube(url, index="embedded", workdir=tmp_path / "solo", embedder=hashed_embed) as cube:
        cube.add("kept in PostgreSQL, indexed in a local folder")
        assert cube.search("local folder", k=1)[0].item.content.startswith("kept")
    assert (tmp_path / "solo" / "chroma").exists()


def test_memos_mounts_a_url_cube(url: str, chroma_server: Any, tmp_path: Path) -> None:
    from memos_core.os import MemOS

    with MemOS(tmp_path / "home", embedder=hashed_embed) as mem, \
            _open(url, chroma_server, tmp_path, actor=mem.principal) as shared:
        mem.mount(shared, "shared")
        mem.add([{"role": "Ann", "content": "I moved to Lisbon yesterday"}], cube="shared", user_id="ann")
        hits = mem.search("Lisbon", user_id="ann")
        assert hits and "Lisbon" in hits[0].item.content


def test_migrate_sqlite_to_postgres_and_back(url: str, chroma_server: Any, tmp_path: Path) -> None:
    from memos_core.cube import MemCube
    from memos_core.records.migrate import migrate_store

    with MemCube(tmp_path / "src", embedder=hashed_embed) as src:
        a = src.add("Ann moved to Lisbon", user_id="ann")
        src.add("Bob likes sailing", user_id="bob")
        src.update(a.id, "Ann moved to Porto")
        src.share("bob", "reader")
        before = [(h.item.id, round(h.score, 6)) for h in src.search("where did Ann move", k=2)]
        head = src.governance.head()
    report = migrate_store(tmp_path / "src", url)
    assert report["items"] == 2 and report["versions"] == 3
    with _open(url, chroma_server, tmp_path, "pg") as mid:
        assert [h.item.id for h in mid.search("where did Ann move", k=2)] == [i for i, _ in before]
        assert mid.governance.role_of("bob").value == "reader" and mid.governance.head() == head
        assert mid.governance.verify().ok
    migrate_store(url, tmp_path / "back")
    with MemCube(tmp_path / "back", embedder=hashed_embed, create=False) as back:
        assert [(h.item.id, round(h.score, 6)) for h in back.search("where did Ann move", k=2)] == before
        assert [v.content for v in back.history(a.id)] == ["Ann moved to Lisbon", "Ann moved to Porto"]
        assert back.governance.verify().ok and back.governance.head() == head
    with pytest.raises(ValidationError):
        migrate_store(tmp_path / "src", tmp_path / "back")  # never into a cube that holds something


def test_the_cli_works_on_a_store_url(url: str, chroma_server: Any, tmp_path: Path, capsys: Any, minilm: Any) -> None:
    from memos_core.cli import main

    def run(*argv: str) -> str:
        assert main(["--store", url, "--index", chroma_server.url, *argv]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    assert "created cube" in run("init", str(tmp_path / "w"))
    item_id = run("add", str(tmp_path / "w"), "Ann moved to Lisbon in May", "--user", "ann").strip()
    hits = run("search", str(tmp_path / "w"), "where does Ann live", "--user", "ann", "--json")
    assert item_id in hits
    assert main(["audit", "verify", url]) == 0, capsys.readouterr().err
    assert "ok" in capsys.readouterr().out
    assert main(["migrate", url, str(tmp_path / "copy")]) == 0
    assert "verified" in capsys.readouterr().out
    assert main(["search", str(tmp_path / "copy"), "where does Ann live", "--user", "ann", "--json"]) == 0
    assert item_id in capsys.readouterr().out


def test_a_bundle_exported_from_postgres_imports_into_postgres(url: str, chroma_server: Any, tmp_path: Path) -> None:
    from pg_server import fresh_schema_name

    from memos_core.bundle import export_cube, import_bundle

    with _open(url, chroma_server, tmp_path, "src") as src:
        a = src.add("Ann moved to Lisbon", user_id="ann")
        src.update(a.id, "Ann moved to Porto")
        export_cube(src, tmp_path / "b.tar.gz")
        head = src.governance.head()
    target = url.split("?")[0] + "?cube=" + fresh_schema_name("imp")
    with pytest.raises(ValidationError, match="vector index"):
        import_bundle(tmp_path / "b.tar.gz", target, embedder=hashed_embed)
    with import_bundle(tmp_path / "b.tar.gz", target, embedder=hashed_embed, chroma_url=chroma_server.url) as got:
        assert got.records.backend == "postgresql"
        assert [v.content for v in got.history(a.id)] == ["Ann moved to Lisbon", "Ann moved to Porto"]
        assert got.search("where did Ann move", k=1, user_id="ann")[0].item.id == a.id
        report = got.governance.verify()
        assert report.ok and got.governance.head()[0] == head[0] + 1  # the source chain, then the import record
