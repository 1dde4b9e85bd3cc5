"""A MemOS the application opens itself (``MemOS(path)``, ``MemOS.over_cube(folder)``) is the one adapters given the
same path get (memos_core.shared.register_direct): one MemOS per folder in a process, not the application's plus
one for the adapters (two SQLite connections and Chroma clients on one cube, two background embedders racing for
the same rows). The registry holds it weakly and never closes it; opened the other way round (an adapter first)
the application's object gets its own handles and a WARNING says so."""

from __future__ import annotations

import gc
import logging
import threading

import pytest
from conftest import hashed_embed

from memos_core import MemCube, MemOS
from memos_core.os import resolve_memory
from memos_core.shared import shared_memos


def _unused() -> None:
    for _ in range(3):
        gc.collect()


def test_adapters_given_the_folder_of_an_open_memos_share_it(tmp_path) -> None:
    from memos_langchain import MemOSRetriever, MemOSVectorStore
    from memos_llamaindex import MemOSMemoryBlock

    folder = tmp_path / "data"
    mem = MemOS(folder, embedder=hashed_embed, embed_sync="immediate")
    try:
        vectors = MemOSVectorStore(str(folder), user_id="ann")
        retriever = MemOSRetriever(memory=str(folder / ".." / "data"), user_id="ann")  # another spelling
        block = MemOSMemoryBlock.from_defaults(str(folder), user_id="ann")
        assert retriever.memory is mem and block._memos is mem
        assert vectors.cube is mem.cubes[mem.default_cube]  # one handle on the cube
        bob = shared_memos(folder, principal="bob")
        assert bob is not mem and bob.principal == "bob" and bob.cubes == mem.cubes  # a view, nothing reopened
        mem.add("ann keeps bees on the roof", user_id="ann", infer=False)
        assert [d.page_content for d in retriever.invoke("bees")] == ["ann keeps bees on the roof"]
    finally:
        mem.close()
    # closed by the application: the next adapter opens a fresh MemOS
    again = resolve_memory(str(folder), embedder=hashed_embed)
    assert again is not mem and not again._closed
    assert again.search("bees", user_id="ann")[0].item.content == "ann keeps bees on the roof"


def test_a_cube_folder_opened_with_over_cube_is_shared(tmp_path) -> None:
    MemCube(tmp_path / "cubes" / "notes", embedder=hashed_embed).close()
    mem = MemOS.over_cube(tmp_path / "cubes" / "notes", embedder=hashed_embed)
    try:
        assert resolve_memory(str(tmp_path / "cubes" / "notes")) is mem
    finally:
        mem.close()


def test_the_registry_holds_the_applications_memos_weakly_and_never_closes_it(tmp_path) -> None:
    folder = tmp_path / "data"
    mem = MemOS(folder, embedder=hashed_embed)
    cube = mem.cubes[mem.default_cube]
    assert resolve_memory(str(folder)) is mem
    del mem
    _unused()
    assert not cube.records.closed  # the registry closes only what it opened
    other = resolve_memory(str(folder), embedder=hashed_embed)  # nothing holds the application's MemOS: a new one
    assert other.cubes[other.default_cube] is not cube
    other.close()
    cube.close()


def test_an_adapter_first_then_the_application_warns(tmp_path, caplog) -> None:
    folder = tmp_path / "data"
    adapters = resolve_memory(str(folder), embedder=hashed_embed)
    caplog.set_level(logging.INFO, logger="memos")
    mine = MemOS(folder, embedder=hashed_embed)
    try:
        assert mine is not adapters
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "memos.os"]
        assert any("already open in this process" in m and "adapter" in m for m in warned)
        assert resolve_memory(str(folder)) is adapters  # the first one stays the shared one
    finally:
        mine.close()
        adapters.close()


def test_the_application_and_adapters_opening_at_once_end_with_one_shared_memos(tmp_path) -> None:
    folder = tmp_path / "data"
    MemOS(folder, embedder=hashed_embed).close()  # the cube exists (two first opens at once would both create it)
    got: list[MemOS] = []
    mine: list[MemOS] = []
    errors: list[BaseException] = []
    start = threading.Barrier(5)

    def adapter() -> None:
        try:
            start.wait(30)
            got.append(resolve_memory(str(folder), embedder=hashed_embed))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def application() -> None:
        try:
            start.wait(30)
            mine.append(MemOS(folder, embedder=hashed_embed))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=adapter) for _ in range(4)] + [threading.Thread(target=application)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors and len(got) == 4 and len(mine) == 1
        assert all(m is got[0] for m in got)  # whichever opened first, every adapter has the same one
        assert resolve_memory(str(folder)) is got[0]
    finally:
        for m in {id(m): m for m in got + mine}.values():
            m.close()


@pytest.mark.records_backends
def test_a_store_url_opened_by_the_application_is_shared(tmp_path, store_for, chroma_url) -> None:
    """On PostgreSQL the place is the store URL with its vector index (a folder on the embedded backend)."""
    target = store_for(tmp_path / "data")
    extra = {"index": chroma_url} if chroma_url is not None else {}
    mem = MemOS(target, embedder=hashed_embed, **extra)
    try:
        assert resolve_memory(str(target), **extra) is mem
    finally:
        mem.close()
