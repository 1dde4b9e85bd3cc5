"""One constructor rule for every adapter class of both frameworks (issue 18, item 1), and the behaviours the
two adapters share (item 2): each accepts a MemOS, a user-bound or principal view, a MemCube or a folder path,
checked when it is built; the retrievers return the same metadata keys, the same default k and ``[]`` for a
blank query."""

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

BUILDERS: dict[str, Callable[[Any], Any]] = {
    "MemOSMiddleware": lambda m: MemOSMiddleware(m, user_id="ann"),
    "MemoryToolkit": lambda m: MemoryToolkit(m, user_id="ann"),
    "MemOSRetriever (LangChain)": lambda m: MemOSRetriever(memory=m, user_id="ann"),
    "MemOSChatMessageHistory": lambda m: MemOSChatMessageHistory(m, "s1", user_id="ann"),
    "MemOSVectorStore": lambda m: MemOSVectorStore(m, user_id="ann"),
    "MemOSStore": lambda m: MemOSStore(m),
    "MemOSMemory": lambda m: MemOSMemory.from_memos(m, user_id="ann"),
    "MemOSMemoryBlock": lambda m: MemOSMemoryBlock.from_memos(m, user_id="ann"),
    "MemOSRetriever (LlamaIndex)": lambda m: LIRetriever(m, user_id="ann"),
    "MemOSToolSpec": lambda m: MemOSToolSpec(m, user_id="ann"),
}


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
