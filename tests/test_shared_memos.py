"""Adapters given the same folder (or store URL) in one process share one MemOS (memos_core.shared): one set
of connections, one vector-index client, one background embedder per cube, instead of one per adapter. The
registry holds it weakly: once no adapter uses it, its cubes are closed and the next adapter opens a fresh one."""

from __future__ import annotations

import gc
import os
import threading

import pytest
from conftest import hashed_embed

from memos_core import MemCube, MemOS, ValidationError
from memos_core.os import resolve_memory
from memos_core.shared import shared_count, shared_memos


def _unused() -> None:
    for _ in range(3):
        gc.collect()


def test_two_langchain_and_two_llamaindex_adapters_on_one_folder_share_one_memos(tmp_path, monkeypatch) -> None:
    from memos_langchain import MemOSRetriever, MemOSStore, MemOSVectorStore
    from memos_llamaindex import MemOSMemoryBlock
    from memos_llamaindex import MemOSRetriever as LIRetriever

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data"
    retriever = MemOSRetriever(memory=str(folder), user_id="ann")
    mem = retriever.memory
    assert isinstance(mem, MemOS)
    store = MemOSStore("data", single_user=True)  # relative spelling of the same folder
    vectors = MemOSVectorStore(str(folder) + os.sep, user_id="ann")
    li = LIRetriever(str(folder / ".." / "data"), user_id="ann")
    block = MemOSMemoryBlock.from_defaults(str(folder), user_id="ann")
    assert li.memos is mem and block._memos is mem
    cube = mem.cubes[mem.default_cube]
    assert store.cube is cube and vectors.cube is cube  # one handle on the cube
    vectors.add_texts(["ann keeps bees on the roof"])
    assert [d.page_content for d in retriever.invoke("bees")] == ["ann keeps bees on the roof"]


def test_the_shared_memos_closes_when_no_adapter_uses_it_and_reopens_after(tmp_path) -> None:
    from memos_langchain import MemOSVectorStore

    folder = tmp_path / "data"
    vectors = MemOSVectorStore(str(folder), user_id="ann")
    cube = vectors.cube
    vectors.add_texts(["the ferry leaves at noon"])
    before = shared_count()
    assert before >= 1
    del vectors  # the store kept the MemOS alive (it holds only the cube otherwise)
    _unused()
    assert cube.records.closed  # closed (flushed) once nothing used it
    assert shared_count() == before - 1
    again = MemOSVectorStore(str(folder), user_id="ann")
    assert again.cube is not cube and not again.cube.records.closed
    assert [d.page_content for d in again.similarity_search("ferry", k=1)] == ["the ferry leaves at noon"]


def test_a_memos_closed_by_its_user_is_not_handed_out_again(tmp_path) -> None:
    first = resolve_memory(str(tmp_path / "d"))
    assert resolve_memory(str(tmp_path / "d")) is first
    first.close()
    second = resolve_memory(str(tmp_path / "d"))
    assert second is not first and not second._closed
    second.add("ann likes tea", user_id="ann", infer=False)
    assert second.search("tea", user_id="ann")
    second.cubes[second.default_cube].close()  # a cube closed behind the MemOS's back (adapter.cube.close())
    third = resolve_memory(str(tmp_path / "d"))
    assert third is not second and third.search("tea", user_id="ann")


def test_concurrent_adapters_get_one_memos(tmp_path) -> None:
    got: list[MemOS] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def open_it() -> None:
        try:
            start.wait(30)
            got.append(resolve_memory(str(tmp_path / "d")))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(got) == 6
    assert all(m is got[0] for m in got)


def test_a_cube_folder_another_principal_and_a_conflicting_embedder(tmp_path) -> None:
    MemCube(tmp_path / "cubes" / "notes", embedder=hashed_embed).close()
    a = shared_memos(tmp_path / "cubes" / "notes", embedder=hashed_embed)
    assert list(a.cubes) == ["notes"]
    assert shared_memos(str(tmp_path / "cubes" / "notes")) is a  # no embedder: whatever it was opened with
    assert shared_memos(tmp_path / "cubes" / "notes", embedder=hashed_embed) is a  # the same one
    bob = shared_memos(tmp_path / "cubes" / "notes", principal="bob")
    assert bob is not a and bob.principal == "bob" and bob.cubes["notes"] is a.cubes["notes"]  # a view

    def other(texts: list[str]):
        return hashed_embed(texts)

    with pytest.raises(ValidationError, match="already open in this process with embedder"):
        shared_memos(tmp_path / "cubes" / "notes", embedder=other)
    with pytest.raises(ValidationError, match="LLM"):
        shared_memos(tmp_path / "cubes" / "notes", llm=lambda messages: "{}")
