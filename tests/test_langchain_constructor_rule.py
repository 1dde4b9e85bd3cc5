"""One constructor rule for every adapter class of both frameworks (issue 18, item 1), and the behaviours the
two adapters share (item 2): each accepts a MemOS, a user-bound or principal view, a MemCube, a folder path or a
``postgresql://`` store URL with its Chroma server as ``index=`` (issue 14), checked when it is built; the
retrievers return the same metadata keys, the same default k and ``[]`` for a blank query."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from llama_index.core.schema import QueryBundle

from memos_core import MemCube, MemOS
from memos_core.os import DEFAULT_K, MemoryArgumentError, hit_metadata
from memos_langchain import (
    MemOSChatMessageHistory,
    MemOSMiddleware,
    MemOSRetriever,
    MemOSStore,
    MemOSVectorStore,
    MemoryToolkit,
)
from memos_langchain.testing import HashingEmbeddings
from memos_llamaindex import MemOSMemory, MemOSMemoryBlock, MemOSToolSpec
from memos_llamaindex import MemOSRetriever as LIRetriever

EMB = HashingEmbeddings(64)

# ``kw`` is where a test passes the vector index (``index=``; MemOSStore: ``vector_index=``, see INDEX_KEYWORD)
BUILDERS: dict[str, Callable[..., Any]] = {
    "MemOSMiddleware": lambda m, **kw: MemOSMiddleware(m, user_id="ann", **kw),
    "MemoryToolkit": lambda m, **kw: MemoryToolkit(m, user_id="ann", **kw),
    "MemOSRetriever (LangChain)": lambda m, **kw: MemOSRetriever(memory=m, user_id="ann", **kw),
    "MemOSChatMessageHistory": lambda m, **kw: MemOSChatMessageHistory(m, "s1", user_id="ann", **kw),
    "MemOSVectorStore": lambda m, **kw: MemOSVectorStore(m, user_id="ann", **kw),
    "MemOSStore": lambda m, **kw: MemOSStore(m, **kw),
    "MemOSMemory": lambda m, **kw: MemOSMemory(m, user_id="ann", **kw),
    "MemOSMemoryBlock": lambda m, **kw: MemOSMemoryBlock(m, user_id="ann", **kw),
    "MemOSRetriever (LlamaIndex)": lambda m, **kw: LIRetriever(m, user_id="ann", **kw),
    "MemOSToolSpec": lambda m, **kw: MemOSToolSpec(m, user_id="ann", **kw),
}
#: the keyword naming a store URL's Chroma server: ``index`` everywhere but in MemOSStore, where ``index`` is
#: LangGraph's IndexConfig
INDEX_KEYWORD = {name: "vector_index" if name == "MemOSStore" else "index" for name in BUILDERS}
#: a store URL nothing listens on: every check below must fail before any connection is tried
NOWHERE = "postgresql://nobody@127.0.0.1:9/nodb?cube=nothing"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_adapter_takes_every_kind_of_memory_and_checks_it_when_built(name: str, tmp_path: Path) -> None:
    build = BUILDERS[name]
    mem = MemOS(tmp_path / "data", embedder=EMB)
    try:
        cube = mem.cubes["default"]
        for memory in (mem, mem.for_user("ann"), mem.as_principal("local"), cube):
            assert build(memory) is not None
        with pytest.raises(MemoryArgumentError) as err:  # a ValidationError and a TypeError, raised at once
            build(42)
        assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
        assert "MemOS" in str(err.value) and "MemCube" in str(err.value) and "folder path" in str(err.value)
    finally:
        mem.close()
    # a folder path: a cube folder is that cube; any other folder a MemOS data folder (created when missing)
    MemCube(tmp_path / "cubes" / "notes").close()
    assert build(tmp_path / "cubes" / "notes") is not None
    assert build(str(tmp_path / f"fresh-{len(name)}")) is not None


def test_the_two_retrievers_agree(tmp_path: Path) -> None:
    mem = MemOS(tmp_path / "data", embedder=EMB)
    try:
        mem.add([{"role": "ann", "content": "I keep bees in the garden"}], user_id="ann", session_id="s1",
                metadata={"topic": "hobby"})
        lc = MemOSRetriever(memory=mem.for_user("ann"))
        li = LIRetriever(mem.for_user("ann"))
        assert lc.k == li.k == DEFAULT_K == 5
        [doc] = lc.invoke("bees")
        [node] = li.retrieve("bees")
        assert doc.metadata == node.node.metadata  # one metadata format: memos_core.os.hit_metadata
        assert doc.metadata["memory_metadata"]["topic"] == "hobby" and "metadata" not in doc.metadata
        assert doc.metadata["user_id"] == "ann" and doc.metadata["score"] == pytest.approx(node.score)
        assert lc.invoke("  ") == [] and li.retrieve(QueryBundle("  ")) == []  # blank query: nothing, both
        hit = mem.search("bees", user_id="ann")[0]
        assert set(hit_metadata(hit)) == set(doc.metadata)
    finally:
        mem.close()


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_adapter_checks_index_when_built(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``index=`` (a store URL's Chroma server) is checked at construction, before any connection: only with a
    ``postgresql://`` URL, only ``http(s)://host:port`` or ``'embedded'``; ``$MEMOS_INDEX`` is the fallback and
    is checked the same way."""
    build, key = BUILDERS[name], INDEX_KEYWORD[name]
    monkeypatch.delenv("MEMOS_INDEX", raising=False)
    mem = MemOS(tmp_path / "data", embedder=EMB)
    try:
        for memory, what in ((mem, "a MemOS"), (mem.cubes["default"], "a MemCube"), (tmp_path / "data", "a folder")):
            with pytest.raises(MemoryArgumentError, match="postgresql://") as err:
                build(memory, **{key: "http://127.0.0.1:8000"})
            assert what in str(err.value) and "index=" in str(err.value)
    finally:
        mem.close()
    for bad in ("127.0.0.1:8000", "ftp://host:21", "http://", "http://host:port", "http://host:8000/api?x=1", 42):
        with pytest.raises(MemoryArgumentError, match="index"):
            build(NOWHERE, **{key: bad})
    with pytest.raises(MemoryArgumentError, match="MEMOS_INDEX"):  # neither index= nor $MEMOS_INDEX
        build(NOWHERE)
    monkeypatch.setenv("MEMOS_INDEX", "chroma-host:8000")
    with pytest.raises(MemoryArgumentError, match=r"\$MEMOS_INDEX='chroma-host:8000'"):
        build(NOWHERE)


def test_the_store_keeps_langgraphs_index_and_names_the_server_vector_index(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vector_index="):  # a URL where LangGraph's IndexConfig goes
        MemOSStore(NOWHERE, index="http://127.0.0.1:8000")  # type: ignore[arg-type]
    with pytest.raises(MemoryArgumentError, match="index="):
        MemOSStore(tmp_path / "c", vector_index="http://127.0.0.1:8000")


def test_llamaindex_from_defaults_takes_index_with_a_store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMOS_INDEX", raising=False)
    for cls in (MemOSMemory, MemOSMemoryBlock):
        with pytest.raises(MemoryArgumentError, match="postgresql://"):
            cls.from_defaults(str(tmp_path / "folder"), index="http://127.0.0.1:8000", user_id="ann")
        with pytest.raises(MemoryArgumentError, match="index"):
            cls.from_defaults(NOWHERE, index="not a url", user_id="ann")
        with pytest.raises(MemoryArgumentError, match="MEMOS_INDEX"):
            cls.from_defaults(NOWHERE, user_id="ann")
        assert not (tmp_path / "folder").exists()


def _cube_of(adapter: Any) -> MemCube:
    cube = getattr(adapter, "cube", None)
    if isinstance(cube, MemCube):
        return cube
    mem = getattr(adapter, "memos", None) or adapter.memory
    return mem.cubes[mem.default_cube]


def test_every_adapter_opens_a_store_url_with_the_index_it_is_given(pg_server: Any, chroma_server: Any, minilm: Any,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``index=`` and no ``$MEMOS_INDEX`` each adapter class opens the PostgreSQL cube with that Chroma
    server; all of them see one memory (one shared cube), and ``index=`` wins over ``$MEMOS_INDEX``. (An adapter
    that opens a URL itself uses the default embedder, so the cube is built with it.)"""
    from pg_server import fresh_schema_name

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the local folder of a URL MemOS
    monkeypatch.delenv("MEMOS_INDEX", raising=False)
    url = pg_server.url() + "?cube=" + fresh_schema_name("ix")
    with MemOS(url, index=chroma_server.url, workdir=tmp_path / "w", embedder=minilm) as mem:
        item = mem.cubes["default"].add("Ann keeps bees in the garden", user_id="ann")
    monkeypatch.setenv("MEMOS_INDEX", "http://127.0.0.1:9")  # nothing there: index= must win
    for name in sorted(BUILDERS):
        adapter = BUILDERS[name](url, **{INDEX_KEYWORD[name]: chroma_server.url})
        cube = _cube_of(adapter)
        try:
            assert cube.records.backend == "postgresql", name
            assert cube.index.url == chroma_server.url, name
            assert [h.item.id for h in cube.search("bees", user_id="ann")] == [item.id], name
        finally:
            cube.close()


# The shared arguments (user_id / agent_id / session_id / k) are checked alike when each adapter is built
# (memos_core.adapter_args): a MemOS ValidationError naming the adapter, never pydantic's own error, never a
# failure on the first call (the middleware and the LlamaIndex retriever used to take k=0).
SHARED_ARGS: dict[str, Callable[..., Any]] = {
    "MemOSMiddleware": lambda m, **kw: MemOSMiddleware(m, **kw),
    "MemOSRetriever (LangChain)": lambda m, **kw: MemOSRetriever(memory=m, **kw),
    "MemOSMemory": lambda m, **kw: MemOSMemory(m, **kw),
    "MemOSMemoryBlock": lambda m, **kw: MemOSMemoryBlock(m, **kw),
    "MemOSRetriever (LlamaIndex)": lambda m, **kw: LIRetriever(m, **kw),
}


@pytest.mark.parametrize("name", sorted(SHARED_ARGS))
def test_shared_arguments_are_checked_alike_when_built(name: str, tmp_path: Path) -> None:
    from memos_core.errors import ValidationError

    build = SHARED_ARGS[name]
    with MemOS(tmp_path / "m", embedder=EMB) as mem:
        build(mem, user_id="ann", k=3)  # good arguments build
        for bad in ({"user_id": 123}, {"user_id": ""}, {"user_id": "a\nb"}, {"user_id": "ann", "k": 0},
                    {"user_id": "ann", "k": 1001}, {"user_id": "ann", "k": True}, {"user_id": "ann", "k": "5"},
                    {"user_id": "ann", "agent_id": 7}):
            with pytest.raises(ValidationError, match=name.split(" ")[0]) as ei:
                build(mem, **bad)
            assert type(ei.value).__module__.startswith("memos_core"), type(ei.value)
