"""What the audit log promises without an anchor (issue 13, part 3), and bundle imports that check history.

Without an external anchor, truncation is detected wherever the cube itself holds evidence: the records keep
the newest record's seq:hash (written with it), and every memory's current version must have its record. A
forger who rewrites the log *and* that evidence consistently is only caught with ``--anchor``. A bundle is
refused before anything is imported when its event chain does not verify against the manifest's audit head or
an item's versions are not contiguous.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zipfile
from pathlib import Path
from typing import Callable

import pytest
from conftest import hashed_embed

from memos_core import MemCube
from memos_core.bundle import export_cube, import_bundle
from memos_core.cli import main as cli_main
from memos_core.errors import CorruptData
from memos_core.governance import verify_file


def _cube(path: Path) -> Path:
    with MemCube(path, embedder=hashed_embed) as cube:
        a = cube.add("the first memory")
        b = cube.add("the second memory")
        cube.update(a.id, "the first memory, revised")
        cube.update(b.id, "the second memory, revised")
        cube.share("bob", "reader")
    return path


def _sql(path: Path, *stmts: tuple[str, tuple]) -> None:
    conn = sqlite3.connect(path / "records.sqlite3")
    with conn:
        for q, args in stmts:
            conn.execute(q, args)
    conn.close()


def _verify(path: Path, *extra: str) -> int:
    return cli_main(["audit", "verify", str(path), *extra])


def test_a_cube_with_memories_and_an_emptied_log_fails_verify(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    d = _cube(tmp_path / "c")
    assert _verify(d) == 0
    _sql(d, ("DELETE FROM events", ()), ("DELETE FROM sqlite_sequence WHERE name='events'", ()))
    capsys.readouterr()
    assert _verify(d) == 1
    out = capsys.readouterr().out
    assert "TAMPERED" in out and "deleted" in out
    _sql(d, ("DELETE FROM meta WHERE key='audit_head'", ()))  # the recorded head removed too: the items remain
    rep = verify_file(d)
    assert not rep.ok and "no audit record" in rep.summary()
    with MemCube(d, embedder=hashed_embed) as cube:
        assert not cube.governance.verify().ok


def test_a_cut_tail_with_its_counter_fixed_fails_verify(tmp_path: Path) -> None:
    d = _cube(tmp_path / "c")
    conn = sqlite3.connect(d / "records.sqlite3")
    last = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
    conn.close()
    keep = last[-4]  # cuts the last three records: both updates and the grant
    _sql(d, ("DELETE FROM events WHERE seq > ?", (keep,)),
         ("UPDATE sqlite_sequence SET seq=? WHERE name='events'", (keep,)))
    rep = verify_file(d)
    assert not rep.ok and rep.problems[0].kind == "deleted"
    assert _verify(d) == 1
    # also rewinding the recorded head: the memory whose update was cut still shows it
    conn = sqlite3.connect(d / "records.sqlite3")
    h = conn.execute("SELECT hash FROM events WHERE seq=?", (keep,)).fetchone()[0]
    conn.close()
    _sql(d, ("UPDATE meta SET value=? WHERE key='audit_head'", (f"{keep}:{h}",)))
    rep = verify_file(d)
    assert not rep.ok and "no audit record" in rep.summary()
    assert _verify(d) == 1


def test_what_needs_an_anchor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cut tail that recorded no memory change (a grant), with the counter and the head rewound, leaves no
    evidence in the cube: only an anchor saved elsewhere catches it."""
    d = _cube(tmp_path / "c")
    capsys.readouterr()
    assert cli_main(["audit", "head", str(d)]) == 0
    anchor = capsys.readouterr().out.strip()
    seq = int(anchor.split(":")[0])  # the last record is the grant to bob
    conn = sqlite3.connect(d / "records.sqlite3")
    prev = conn.execute("SELECT hash FROM events WHERE seq=?", (seq - 1,)).fetchone()[0]
    conn.close()
    _sql(d, ("DELETE FROM events WHERE seq=?", (seq,)),
         ("UPDATE sqlite_sequence SET seq=? WHERE name='events'", (seq - 1,)),
         ("UPDATE meta SET value=? WHERE key='audit_head'", (f"{seq - 1}:{prev}",)))
    assert _verify(d) == 0
    assert _verify(d, "--anchor", anchor) == 1
    assert "anchor" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- bundles
def _rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> None:
    """Copy a zip bundle, change members with ``edit``, and fix every checksum in the (unsigned) manifest."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members.pop("manifest.json"))
    edit(members)
    for name, data in members.items():
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    with zipfile.ZipFile(dst, "w") as zf:
        zf.writestr("manifest.json", json.dumps(manifest))
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    d = _cube(tmp_path / "src")
    out = tmp_path / "src.zip"
    with MemCube(d, embedder=hashed_embed) as cube:
        export_cube(cube, out)
    return out


def test_an_intact_bundle_imports_and_verifies(bundle: Path, tmp_path: Path) -> None:
    cube = import_bundle(bundle, tmp_path / "dst", embedder=hashed_embed)
    try:
        assert cube.governance.verify().ok and cube.count() == 2
    finally:
        cube.close()
    assert verify_file(tmp_path / "dst").ok


def _lines(data: bytes) -> list[str]:
    return [ln for ln in data.decode().splitlines() if ln.strip()]


def test_a_bundle_with_an_altered_event_row_is_refused_before_import(bundle: Path, tmp_path: Path) -> None:
    def alter(m: dict[str, bytes]) -> None:
        rows = [json.loads(ln) for ln in _lines(m["records/events.jsonl"])]
        rows[1][2] = "mallory"  # who did it
        m["records/events.jsonl"] = "".join(json.dumps(r) + "\n" for r in rows).encode()

    bad = tmp_path / "altered.zip"
    _rewrite(bundle, bad, alter)
    with pytest.raises(CorruptData, match="audit log does not verify"):
        import_bundle(bad, tmp_path / "dst", embedder=hashed_embed)
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.importing-*"))


def test_a_bundle_with_a_cut_event_tail_is_refused(bundle: Path, tmp_path: Path) -> None:
    def cut(m: dict[str, bytes]) -> None:
        m["records/events.jsonl"] = ("\n".join(_lines(m["records/events.jsonl"])[:-1]) + "\n").encode()

    bad = tmp_path / "cut.zip"
    _rewrite(bundle, bad, cut)
    with pytest.raises(CorruptData):
        import_bundle(bad, tmp_path / "dst", embedder=hashed_embed)
    assert not (tmp_path / "dst").exists()


def test_a_bundle_with_a_removed_version_row_is_refused(bundle: Path, tmp_path: Path) -> None:
    def drop(m: dict[str, bytes]) -> None:
        rows = _lines(m["records/versions.jsonl"])
        m["records/versions.jsonl"] = ("\n".join(r for r in rows if json.loads(r)["version"] != 1) + "\n").encode()

    bad = tmp_path / "noversion.zip"
    _rewrite(bundle, bad, drop)
    with pytest.raises(CorruptData, match="lacks version"):
        import_bundle(bad, tmp_path / "dst", embedder=hashed_embed)
    assert not (tmp_path / "dst").exists()
