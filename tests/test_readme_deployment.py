"""The README's Deployment snippet runs as written, against a real PostgreSQL and a real Chroma server (only its
URLs and folders are swapped for the test servers' and a temporary folder)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import hashed_embed

README = Path(__file__).resolve().parent.parent / "README.md"


def _deployment_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Deployment: many workers on PostgreSQL"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m is not None, "no python block in the README's Deployment section"
    return m.group(1)


def test_readme_deployment_snippet_runs(pg_server, chroma_server, tmp_path, monkeypatch) -> None:
    pytest.importorskip("langchain_core")
    from pg_server import fresh_schema_name

    code = _deployment_block()
    assert "mem = " in code.split("mem.mount(")[0]  # every name it uses is defined above its use
    url = pg_server.url() + "?cube=" + fresh_schema_name("readme")
    for literal, real in (("postgresql://memos:secret@db:5432/memos?cube=support", url),
                          ("http://chroma:8000", chroma_server.url), ("/var/lib/memos", str(tmp_path))):
        assert literal in code
        code = code.replace(literal, real)
    # the snippet uses the default embedder; a hashed one keeps this test quick
    import memos_core.cube as cube_mod
    import memos_core.os as os_mod

    for mod in (cube_mod, os_mod):
        real = mod.resolve_embedder
        monkeypatch.setattr(mod, "resolve_embedder",
                            lambda e=None, *a, _real=real, **k: _real(hashed_embed if e is None else e, *a, **k))
    scope: dict = {}
    exec(compile(code, str(README) + ":Deployment", "exec"), scope)  # noqa: S102 - our own README
    cube, mem, shared, retriever = scope["cube"], scope["mem"], scope["shared"], scope["retriever"]
    try:
        assert mem.cubes["support"] is cube
        item = cube.add("the support rota changes on Mondays")
        # the other handles reach the same cube (records in PostgreSQL, vectors on the Chroma server)
        assert any(c.get(item.id).content == item.content for c in shared.cubes.values())
        assert any(h.item.id == item.id for h in cube.search("support rota", k=3, mode="dense"))
        assert retriever is not None
    finally:
        for obj in (shared, mem, cube):
            obj.close()
