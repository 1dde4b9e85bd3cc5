"""Bundles: export/import round trips, and every kind of bad bundle refused with nothing created.

The module is marked ``records_backends``: every test that uses the ``cube`` fixture runs on a SQLite cube
(embedded Chroma) and on a PostgreSQL cube (Chroma server), so export, refusals and migration are checked from
both; imports into PostgreSQL, and the SQLite -> PostgreSQL -> SQLite round trip, have tests of their own.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from memos_core import Conflict, CorruptData, MemCube, PermissionDenied, SchemaVersionError, ValidationError
from memos_core.bundle import Limits, export_cube, import_bundle, migrate_cube, verify_bundle

pytestmark = pytest.mark.records_backends


def _emb(texts):
    out = []
    for t in texts:
        v = np.full(32, 1e-3, dtype=np.float32)
        for w in t.lower().split():
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 32] += 1.0
        out.append(v)
    return out


@pytest.fixture()
def cube(tmp_path: Path, open_cube):
    """The source cube: at ``tmp_path / "src"`` (SQLite), or a PostgreSQL cube whose local folder is there."""
    c = open_cube(tmp_path / "src", embedder=_emb, clock=None)
    a = c.add("Ann likes green tea", user_id="ann", tags=["drink"], metadata={"n": 1})
    c.update(a.id, "Ann likes jasmine tea", reason="correction")
    b = c.add("Bob plays chess on Sundays", user_id="bob")
    c.delete(b.id)
    gone = c.add("Carol's secret phone number", user_id="carol")
    c.delete(gone.id)
    c.purge(gone.id)
    (c.path / "activation").mkdir()
    (c.path / "activation" / "cache1.json").write_text('{"k": 1}')
    (c.path / "activation" / "cache1.safetensors").write_bytes(b"\x00" * 64)
    c.ids = {"a": a.id, "b": b.id, "gone": gone.id}  # type: ignore[attr-defined]
    return c


@pytest.mark.parametrize("ext", ["zip", "tar.gz"])
def test_round_trip_keeps_everything(cube: MemCube, tmp_path: Path, ext: str) -> None:
    f = tmp_path / f"bundle.{ext}"
    manifest = export_cube(cube, f)
    assert manifest["purged_ids"] == [cube.ids["gone"]]  # type: ignore[attr-defined]
    assert manifest["audit_head"] == cube.events()[-1]["hash"]
    new = import_bundle(f, tmp_path / "dst", embedder=_emb)
    try:
        a = cube.ids["a"]  # type: ignore[attr-defined]
        assert new.cube_id == cube.cube_id
        assert [v.content for v in new.history(a)] == ["Ann likes green tea", "Ann likes jasmine tea"]
        assert new.get(cube.ids["b"], include_deleted=True).state.value == "deleted"  # type: ignore[attr-defined]
        assert [h.item.id for h in new.search("jasmine tea")] == [a]
        assert (new.path / "activation" / "cache1.json").read_text() == '{"k": 1}'
        # the source event chain is carried verbatim, then the import is appended
        src_events = cube.events()
        new_events = new.events()
        assert [e["hash"] for e in new_events[: len(src_events)]] == [e["hash"] for e in src_events]
        assert new_events[-1]["op"] == "import"
    finally:
        new.close()


def test_signed_bundle_needs_the_right_key(cube: MemCube, tmp_path: Path) -> None:
    f = tmp_path / "b.zip"
    export_cube(cube, f, hmac_key=b"secret")
    verify_bundle(f, hmac_key=b"secret")
    with pytest.raises(PermissionDenied):
        import_bundle(f, tmp_path / "x", embedder=_emb, hmac_key=b"other")
    with pytest.raises(PermissionDenied):
        import_bundle(f, tmp_path / "y", embedder=_emb, require_signature=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    unsigned = tmp_path / "u.zip"
    export_cube(cube, unsigned)
    with pytest.raises(PermissionDenied):
        import_bundle(unsigned, tmp_path / "z", embedder=_emb, require_signature=True)


def _rewrite_zip(src: Path, dst: Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)


def _assert_refused(f: Path, dest: Path, exc=CorruptData, **kw) -> None:
    with pytest.raises(exc):
        import_bundle(f, dest, embedder=_emb, **kw)
    assert not dest.exists()
    assert not any(p.name.startswith(f".{dest.name}.importing") for p in dest.parent.iterdir())


def test_tampered_member_is_refused(cube: MemCube, tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    export_cube(cube, good)

    def flip(name: str, data: bytes):
        if name == "records/items.jsonl":
            return data.replace(b"jasmine", b"arsenic")
        return data

    bad = tmp_path / "bad.zip"
    _rewrite_zip(good, bad, flip)
    _assert_refused(bad, tmp_path / "dst")


def test_missing_and_extra_members_are_refused(cube: MemCube, tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    export_cube(cube, good)
    missing = tmp_path / "missing.zip"
    _rewrite_zip(good, missing, lambda n, d: None if n == "records/versions.jsonl" else d)
    _assert_refused(missing, tmp_path / "d1")
    extra = tmp_path / "extra.zip"
    _rewrite_zip(good, extra, lambda n, d: d)
    with zipfile.ZipFile(extra, "a") as z:
        z.writestr("records/evil.jsonl", b"{}")
    _assert_refused(extra, tmp_path / "d2")


def test_path_traversal_absolute_and_links_are_refused(tmp_path: Path) -> None:
    for name in ("../escape.txt", "/etc/passwd", "records/../../x", "a\\b"):
        f = tmp_path / "t.tar.gz"
        with tarfile.open(f, "w:gz") as tf:
            data = b"x"
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(data))
        _assert_refused(f, tmp_path / "dst")
    f = tmp_path / "link.tar.gz"
    with tarfile.open(f, "w:gz") as tf:
        info = tarfile.TarInfo("records/items.jsonl")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    _assert_refused(f, tmp_path / "dst")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_size_and_count_limits(cube: MemCube, tmp_path: Path) -> None:
    f = tmp_path / "b.tar.gz"
    export_cube(cube, f)
    _assert_refused(f, tmp_path / "d1", limits=Limits(max_total_bytes=100))
    _assert_refused(f, tmp_path / "d2", limits=Limits(max_files=3))
    # a zip bomb: a tiny archive whose member expands far beyond the limit
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", b"{}")
        z.writestr("records/items.jsonl", b"\x00" * (5 << 20))
    assert bomb.stat().st_size < 100_000
    _assert_refused(bomb, tmp_path / "d3", limits=Limits(max_file_bytes=1 << 20))


def test_newer_schema_and_garbage(cube: MemCube, tmp_path: Path) -> None:
    good = tmp_path / "good.zip"
    export_cube(cube, good)

    def bump(name: str, data: bytes):
        if name == "manifest.json":
            m = json.loads(data)
            m["bundle_schema"] = 99
            return json.dumps(m).encode()
        return data

    newer = tmp_path / "newer.zip"
    _rewrite_zip(good, newer, bump)
    _assert_refused(newer, tmp_path / "d1", exc=SchemaVersionError)
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip file")
    _assert_refused(junk, tmp_path / "d2")
    with pytest.raises(ValidationError):
        import_bundle(tmp_path / "file.rar", tmp_path / "d3", embedder=_emb)


def test_import_into_non_empty_folder_is_refused(cube: MemCube, tmp_path: Path) -> None:
    f = tmp_path / "b.zip"
    export_cube(cube, f)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ValidationError):
        import_bundle(f, tmp_path / "busy", embedder=_emb)
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_migrate_verifies_contents(cube: MemCube, tmp_path: Path) -> None:
    report = migrate_cube(cube, tmp_path / "moved")
    assert report["items"] == cube.count(include_deleted=True)
    assert report["indexed"] == cube.index.count()
    moved = MemCube(tmp_path / "moved", embedder=_emb, create=False)
    try:
        assert cube.ids["b"] not in [h.item.id for h in moved.search("chess")]  # type: ignore[attr-defined]
        assert moved.search("jasmine", k=1)[0].item.content == "Ann likes jasmine tea"
    finally:
        moved.close()


@pytest.mark.sqlite_only  # about the embedded vector folder
def test_migrate_embedded_to_server_and_back(cube: MemCube, tmp_path: Path, chroma_server) -> None:
    """A cube moves to a Chroma server backend and back to embedded, verified at each step."""
    items = cube.count(include_deleted=True)
    report = migrate_cube(cube, tmp_path / "on-server", chroma_url=chroma_server.url)
    assert report["items"] == items and report["indexed"] == cube.index.count()
    remote = MemCube(tmp_path / "on-server", embedder=_emb, create=False, chroma_url=chroma_server.url)
    try:
        assert remote.index.count() == cube.index.count()
        assert remote.search("jasmine", k=1, mode="dense")[0].item.content == "Ann likes jasmine tea"
        back = migrate_cube(remote, tmp_path / "home-again")
        assert back["items"] == items
    finally:
        remote.close()
    home = MemCube(tmp_path / "home-again", embedder=_emb, create=False)
    try:
        assert home.search("jasmine", k=1, mode="dense")[0].item.content == "Ann likes jasmine tea"
        assert [v.version for v in home.history(home.search("jasmine", k=1)[0].item.id)] == [1, 2]
    finally:
        home.close()

@pytest.mark.sqlite_only  # opens the cube's folder by path
def test_cli_export_import(cube: MemCube, tmp_path: Path, capsys) -> None:
    from memos_core.cli import main

    path = str(cube.path)
    cube.close()
    f = tmp_path / "cli.tar.gz"
    # the CLI opens the cube with the default embedder, which has another dimension: a clear error
    assert main(["export", path, str(f)]) == 2
    assert "dimension" in capsys.readouterr().err



def test_cli_export_import_round_trip(tmp_path: Path, minilm, capsys) -> None:
    from memos_core.cli import main

    with MemCube(tmp_path / "mine", embedder=minilm) as c:  # the CLI's own default embedder
        a = c.add("Ann likes green tea", user_id="ann")
        c.update(a.id, "Ann likes jasmine tea")
        c.add("Bob plays chess", user_id="bob")
    f = tmp_path / "b.tar.gz"
    assert main(["export", str(tmp_path / "mine"), str(f), "--hmac-key", "k3y"]) == 0
    assert "exported 2 memories" in capsys.readouterr().out
    # a signed bundle is refused without the key when a signature is required, and nothing is created
    assert main(["import", str(f), str(tmp_path / "copy"), "--require-signature"]) == 2
    assert not (tmp_path / "copy").exists()
    assert main(["import", str(f), str(tmp_path / "copy"), "--hmac-key", "k3y", "--require-signature"]) == 0
    assert "(2 memories)" in capsys.readouterr().out
    with MemCube(tmp_path / "copy", embedder=minilm, create=False) as copy:
        assert copy.search("what tea does Ann like", k=1)[0].item.content == "Ann likes jasmine tea"
        assert [v.version for v in copy.history(a.id)] == [1, 2]

def test_export_needs_administer(cube: MemCube, tmp_path: Path) -> None:
    cube.share("bob", "reader")
    with pytest.raises(PermissionDenied):
        export_cube(cube, tmp_path / "b.zip", actor="bob")
    assert not (tmp_path / "b.zip").exists()
    assert cube.events()[-1]["outcome"] == "denied"


# ---------------------------------------------------------------------------------------------- PostgreSQL
def _history(c: MemCube) -> dict[str, tuple]:
    """Everything a bundle must carry, per item: the item, every version and every transition (as JSON)."""
    return {it.id: (it.model_dump_json(), [v.model_dump_json() for v in c.records.versions(it.id)],
                    [t.model_dump_json() for t in c.records.transitions(it.id)])
            for it in c.records.iter_items()}


def _pg_url(pg_server) -> str:
    from pg_server import fresh_schema_name

    return pg_server.url() + "?cube=" + fresh_schema_name("bnd")


@pytest.mark.parametrize("ext", ["zip", "tar.gz"])
def test_import_into_postgresql_keeps_everything(cube: MemCube, tmp_path: Path, ext: str, pg_server,
                                                 chroma_server) -> None:
    """A bundle (from either backend) imported into a new PostgreSQL cube: items, versions, transitions,
    tombstones, the purged id, artefacts and the audit chain (verbatim, then the import record)."""
    f = tmp_path / f"bundle.{ext}"
    manifest = export_cube(cube, f)
    url = _pg_url(pg_server)
    with pytest.raises(ValidationError, match="vector index"):  # workers must share the vectors: nothing made
        import_bundle(f, url, embedder=_emb)
    new = import_bundle(f, url, embedder=_emb, chroma_url=chroma_server.url)
    try:
        assert new.records.backend == "postgresql" and new.cube_id == cube.cube_id
        assert _history(new) == _history(cube)
        a = cube.ids["a"]  # type: ignore[attr-defined]
        assert [h.item.id for h in new.search("jasmine tea")] == [a]
        gone = cube.ids["gone"]  # type: ignore[attr-defined]
        assert gone not in {h.item.id for h in new.search("secret phone number")}
        assert (new.path / "activation" / "cache1.json").read_text() == '{"k": 1}'
        src, got = cube.events(), new.events()
        assert [e["hash"] for e in got[: len(src)]] == [e["hash"] for e in src] and got[-1]["op"] == "import"
        assert got[-1]["detail"]["source_audit_head"] == manifest["audit_head"]
        assert new.governance.verify().ok
        with pytest.raises(ValidationError):  # never into a cube that already holds memories
            import_bundle(f, url, embedder=_emb, chroma_url=chroma_server.url)
    finally:
        new.close()


@pytest.mark.sqlite_only  # the source is SQLite by construction; PostgreSQL is the middle of the trip
def test_round_trip_sqlite_postgresql_sqlite(cube: MemCube, tmp_path: Path, pg_server, chroma_server) -> None:
    """SQLite -> bundle -> PostgreSQL -> bundle -> SQLite: every item, version and transition arrives unchanged,
    and the audit chain is one chain that verifies at each stop (the source's rows verbatim, then one import
    record per hop)."""
    assert cube.records.backend == "sqlite"
    before = _history(cube)
    src_hashes = [e["hash"] for e in cube.events()]
    export_cube(cube, tmp_path / "1.tar.gz")
    mid = import_bundle(tmp_path / "1.tar.gz", _pg_url(pg_server), embedder=_emb, chroma_url=chroma_server.url)
    try:
        assert mid.records.backend == "postgresql" and _history(mid) == before
        assert mid.governance.verify().ok
        mid_events = mid.events()
        assert [e["hash"] for e in mid_events[: len(src_hashes)]] == src_hashes
        assert len(mid_events) == len(src_hashes) + 1
        mid.update(cube.ids["a"], "Ann likes oolong tea", reason="changed her mind")  # type: ignore[attr-defined]
        after = _history(mid)
        mid_hashes = [e["hash"] for e in mid.events()]
        export_cube(mid, tmp_path / "2.zip")
    finally:
        mid.close()
    back = import_bundle(tmp_path / "2.zip", tmp_path / "home", embedder=_emb)
    try:
        assert back.records.backend == "sqlite" and _history(back) == after
        a = cube.ids["a"]  # type: ignore[attr-defined]
        assert [v.content for v in back.history(a)] == ["Ann likes green tea", "Ann likes jasmine tea",
                                                         "Ann likes oolong tea"]
        assert back.get(cube.ids["b"], include_deleted=True).state.value == "deleted"  # type: ignore[attr-defined]
        assert back.search("oolong tea", k=1)[0].item.id == a
        assert (back.path / "activation" / "cache1.safetensors").read_bytes() == b"\x00" * 64
        back_events = back.events()
        assert [e["hash"] for e in back_events[: len(mid_hashes)]] == mid_hashes
        assert [e["op"] for e in back_events[len(src_hashes):]].count("import") == 2
        assert back.governance.verify().ok
    finally:
        back.close()


def test_export_while_another_worker_writes_is_consistent(cube: MemCube, tmp_path: Path, open_cube) -> None:
    """A write that another worker (its own handle on the cube) commits while an export reads the records does
    not make an inconsistent bundle (an item at one version with the history of a later one, refused on
    import): the export reads again until no write landed during its reads."""
    other = open_cube(tmp_path / "src", embedder=_emb, clock=None, create=False)
    a = cube.ids["a"]  # type: ignore[attr-defined]
    real = cube.records.iter_items
    writes = iter(["Ann likes rooibos", "Ann likes mate"])  # the other worker writes during the first two reads

    def iter_items_then_a_concurrent_update(*args, **kwargs):
        yield from real(*args, **kwargs)
        text = next(writes, None)
        if text is not None:
            other.update(a, text, reason="another worker")

    cube.records.iter_items = iter_items_then_a_concurrent_update  # type: ignore[method-assign]
    try:
        manifest = export_cube(cube, tmp_path / "live.zip")
    finally:
        del cube.records.iter_items
    new = import_bundle(tmp_path / "live.zip", tmp_path / "dst", embedder=_emb)
    assert next(writes, None) is None  # both concurrent writes happened (the export read three times)
    try:
        assert [v.content for v in new.history(a)][-1] == "Ann likes mate" == new.get(a).content
        assert manifest["audit_head"] == cube.events()[-1]["hash"] and new.governance.verify().ok
    finally:
        new.close()
    # a cube that never stops changing: a typed Conflict after a few reads, and no bundle file
    writes = iter(f"Ann likes tea number {i}" for i in range(1000))
    cube.records.iter_items = iter_items_then_a_concurrent_update  # type: ignore[method-assign]
    try:
        with pytest.raises(Conflict, match="kept changing"):
            export_cube(cube, tmp_path / "never.zip")
    finally:
        del cube.records.iter_items
    assert not (tmp_path / "never.zip").exists()


def test_export_carries_embeddings_another_worker_has_not_stored_yet(cube: MemCube, tmp_path: Path,
                                                                      open_cube) -> None:
    """A worker that commits memories without their embedding (embed_sync="deferred": its background thread
    stores it a moment later) while an export runs: the export embeds them itself, so the bundle holds the
    embedding of every indexed item (an import refuses a bundle without)."""
    other = open_cube(tmp_path / "src", embedder=_emb, clock=None, create=False, embed_sync="deferred",
                      vector_sync="deferred")
    assert other.embed_sync == "deferred"
    other._embed_waiting = lambda *a, **kw: 0  # its background thread is slow: nothing stored yet
    real = cube.records.iter_items
    added: list[str] = []

    def iter_items_then_a_concurrent_add(*args, **kwargs):
        yield from real(*args, **kwargs)
        if not added:
            added.append(other.add("Dana collects stamps", user_id="dana").id)

    cube.records.iter_items = iter_items_then_a_concurrent_add  # type: ignore[method-assign]
    try:
        export_cube(cube, tmp_path / "live.tar.gz")
    finally:
        del cube.records.iter_items
    new = import_bundle(tmp_path / "live.tar.gz", tmp_path / "dst", embedder=_emb)
    try:
        assert added and new.search("stamps", k=1, mode="dense")[0].item.id == added[0]
    finally:
        new.close()
