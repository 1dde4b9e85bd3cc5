"""The plaintext memory suite against embedded Chroma and a real Chroma server (``chroma run``) on loopback,
plus server restart and server-down behaviour: records stay intact, the index is repaired when it returns."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from chroma_server import running_server

from memos_core import MemCube


def _emb(texts):
    out = []
    for t in texts:
        v = np.full(48, 1e-3, dtype=np.float32)
        for w in t.lower().replace(".", " ").split():
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 48] += 1.0
        out.append(v)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running_server(tmp_path_factory, "chroma-server")  # its own: a test here restarts it


@pytest.fixture(params=["embedded", "server"])
def make_cube(request, tmp_path: Path):
    opened: list[MemCube] = []

    def make(name: str = "cube", **kw) -> MemCube:
        url = request.getfixturevalue("server").url if request.param == "server" else None
        c = MemCube(tmp_path / name, embedder=_emb, chroma_url=url, **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        try:
            c.close()
        except Exception:
            pass


def test_plaintext_suite_on_both_backends(make_cube) -> None:
    cube = make_cube()
    a = cube.add("Ann adopted a grey cat named Pixel", user_id="ann", kind="fact")
    cube.add("Ann is training for the Lisbon marathon", user_id="ann", kind="fact")
    cube.add("Bob adopted a dog named Rex", user_id="bob", kind="fact")
    hits = cube.search("cat named Pixel", user_id="ann")
    assert hits[0].item.id == a.id
    assert {h.item.scope.user_id for h in hits} == {"ann"}
    assert hits[0].ranks.get("dense") and hits[0].ranks.get("lexical")
    cube.update(a.id, "Ann adopted a grey cat named Nova")
    assert cube.search("cat named Nova", k=1, user_id="ann")[0].item.version == 2
    cube.delete(a.id)
    assert a.id not in [h.item.id for h in cube.search("grey cat", user_id="ann", mode="dense")]
    assert cube.index.count() == 2
    assert cube.reindex() == {"indexed": 2}


def test_server_restart_mid_run_loses_nothing(server, tmp_path: Path) -> None:
    cube = MemCube(tmp_path / "c", embedder=_emb, chroma_url=server.url)
    try:
        first = cube.add_many([f"memory number {i} about topic {i % 3}" for i in range(20)])
        server.stop()
        # server down: writes are still acknowledged durably by the records; dense falls back to exact scan
        during = cube.add("written while the vector server was down about zebras")
        assert cube.index_degraded
        assert cube.search("zebras", k=1)[0].item.id == during.id
        server.start()
        after = cube.add("written after the server came back about giraffes")
        assert not cube.index_degraded
        assert cube.index.count() == 22
        for m in (during, after):  # both reached the server's index
            assert cube.search(m.content, k=1, mode="dense")[0].item.id == m.id
        assert all(cube.get(m.id).content == m.content for m in first)
    finally:
        if server.proc is None:
            server.start()
        cube.close()


def test_server_down_at_open_then_repaired(server, tmp_path: Path) -> None:
    cube = MemCube(tmp_path / "c", embedder=_emb, chroma_url=server.url)
    cube.add_many(["alpha fact", "beta fact"])
    cube.close()
    server.stop()
    try:
        cube = MemCube(tmp_path / "c", embedder=_emb, chroma_url=server.url)
        assert cube.index_degraded
        gamma = cube.add("gamma fact added while down")
        assert cube.count() == 3
        assert cube.search("gamma", k=1)[0].item.id == gamma.id  # lexical + exact dense still work
        cube.close()
    finally:
        server.start()
    cube = MemCube(tmp_path / "c", embedder=_emb, chroma_url=server.url)
    try:
        assert not cube.index_degraded
        assert cube.index.count() == 3  # repaired on open from the records
    finally:
        cube.close()
