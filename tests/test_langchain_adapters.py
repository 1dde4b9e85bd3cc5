"""MemOSRetriever (with LangChain's standard RetrieversIntegrationTests), MemOSChatMessageHistory (with
RunnableWithMessageHistory) and the memory tools."""

from __future__ import annotations

import asyncio
import functools
import inspect
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_tests.integration_tests.retrievers import RetrieversIntegrationTests

from memos_core import LifecycleState, MemOS, UserRequired
from memos_langchain import MemOSChatMessageHistory, MemOSRetriever, create_memory_tools
from memos_langchain.testing import HashingEmbeddings, ScriptedChatModel

EMB = HashingEmbeddings(64)


def mark_async_tests(cls: type) -> type:
    """langchain-tests' async tests carry no marker (they assume asyncio_mode=auto); mark them here."""
    for name in dir(cls):
        fn = getattr(cls, name)
        if name.startswith("test_") and inspect.iscoroutinefunction(fn):
            pytest.mark.asyncio(fn)
    return cls


@functools.lru_cache(maxsize=1)
def shared_memory() -> MemOS:
    mem = MemOS(tempfile.mkdtemp(prefix="memos-retriever-"), embedder=EMB)
    mem.add([{"role": "ann", "content": f"Ann's note number {i} about tea and travel"} for i in range(6)],
            user_id="ann")
    return mem


@pytest.fixture
def mem(tmp_path: Path, open_memos: Any) -> MemOS:
    """A MemOS data folder; in tests marked ``records_backends`` also a MemOS over a PostgreSQL cube."""
    return open_memos(tmp_path / "mem", embedder=EMB)


# ---------------------------------------------------------------------- retriever
@mark_async_tests
class TestMemOSRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[MemOSRetriever]:
        return MemOSRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"memory": shared_memory(), "k": 2, "user_id": "ann"}

    @property
    def retriever_query_example(self) -> str:
        return "tea"


@pytest.mark.records_backends
def test_retriever_scope_filters_and_metadata(mem: MemOS) -> None:
    mem.add("I love hiking in the Alps", user_id="ann", session_id="s1")
    mem.add("I love sailing", user_id="bob")
    r = MemOSRetriever(memory=mem, user_id="ann", k=5)
    docs = r.invoke("what do I love")
    assert [d.page_content for d in docs] == ["user: I love hiking in the Alps"] or \
        all("hiking" in d.page_content for d in docs)
    d = docs[0]
    assert d.id == d.metadata["memory_id"] and d.metadata["user_id"] == "ann" and d.metadata["kind"] == "episode"
    assert d.metadata["score"] > 0 and d.metadata["session_id"] == "s1"
    assert [x.page_content for x in r.invoke("love", user_id="bob")] == ["user: I love sailing"] or \
        all("sailing" in x.page_content for x in r.invoke("love", user_id="bob"))
    assert r.invoke("love", filter={"kinds": ["fact"]}) == []
    assert len(asyncio.run(r.ainvoke("love", k=1))) == 1
    with pytest.raises(ValueError):
        r.invoke("love", bogus=1)
    # over a bare cube too
    cube = mem.cubes["default"]
    assert all(isinstance(x, Document) for x in MemOSRetriever(memory=cube, k=2, user_id="bob").invoke("love"))
    assert MemOSRetriever(memory=cube, cubes=["default"], user_id="bob").invoke("love")  # a MemOS over the cube
    assert MemOSRetriever(memory=mem, user_id="ann").invoke("   ") == []  # blank: nothing to search, as LlamaIndex
    assert r.k == 5  # the default k of every adapter


def test_retriever_in_a_chain(mem: MemOS) -> None:
    mem.add("The launch code word is pelican", user_id="ann")
    retriever = MemOSRetriever(memory=mem, user_id="ann", k=1)
    model = ScriptedChatModel(script=[lambda msgs: "the word is " + ("pelican" if "pelican" in msgs[-1].content
                                                                       else "unknown")])
    prompt = ChatPromptTemplate.from_messages([("human", "Context: {context}\nQuestion: {question}")])
    chain = {"context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)),
             "question": lambda x: x} | prompt | model
    assert chain.invoke("what is the code word?").content == "the word is pelican"


# ---------------------------------------------------------------------- chat history
@pytest.mark.records_backends
def test_history_is_durable_ordered_and_exact(tmp_path: Path, open_memos: Any) -> None:
    mem = open_memos(tmp_path / "m", embedder=EMB)
    h = MemOSChatMessageHistory(mem, "s1", user_id="ann")
    msgs = [SystemMessage("be nice"), HumanMessage("hi, I'm Ann", id="h1"),
            AIMessage("", tool_calls=[{"name": "lookup", "args": {"q": "x"}, "id": "c1", "type": "tool_call"}]),
            ToolMessage("result", tool_call_id="c1"), AIMessage("hello Ann", response_metadata={"model": "m"})]
    h.add_messages(msgs)
    h.add_user_message("second")
    got = h.messages
    assert [m.type for m in got] == ["system", "human", "ai", "tool", "ai", "human"]
    assert got[:5] == msgs and got[2].tool_calls[0]["name"] == "lookup"
    # another session is separate; transcripts are not in default search
    other = MemOSChatMessageHistory(mem, "s2", user_id="ann")
    assert other.messages == []
    assert mem.search("hello Ann", user_id="ann") == []
    mem.close()
    # durable: a new process-level object over the same folder sees the same messages
    mem2 = open_memos(tmp_path / "m", embedder=EMB)  # the same folder, or the same PostgreSQL cube
    assert MemOSChatMessageHistory(mem2, "s1", user_id="ann").messages == got
    h2 = MemOSChatMessageHistory(mem2, "s1", user_id="ann")
    h2.clear()
    assert h2.messages == [] and asyncio.run(h2.aget_messages()) == []
    asyncio.run(h2.aadd_messages([HumanMessage("again")]))
    assert [m.content for m in h2.messages] == ["again"]
    asyncio.run(h2.aclear())
    assert h2.messages == []
    mem2.close()


@pytest.mark.records_backends
def test_history_memorize_feeds_the_reader(mem: MemOS) -> None:
    h = MemOSChatMessageHistory(mem, "s1", user_id="ann", memorize=True)
    h.add_messages([HumanMessage("My sister Joana lives in Porto", id="m1"), AIMessage("Nice!", id="m2")])
    hits = [h for h in mem.search("where does Joana live", user_id="ann") if "Porto" in h.item.content]
    assert hits and hits[0].item.scope.session_id == "s1" and hits[0].item.provenance.source_ids == ["m1"]
    # a bare cube works too: the MemReader comes from a MemOS over it (the constructor rule of every adapter)
    hc = MemOSChatMessageHistory(mem.cubes["default"], "s9", user_id="ann", memorize=True)
    hc.add_messages([HumanMessage("My brother Rui lives in Faro", id="m9")])
    assert any("Faro" in h.item.content for h in mem.search("where does Rui live", user_id="ann"))
    with pytest.raises(ValueError):
        MemOSChatMessageHistory(42, "s1", user_id="ann")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MemOSChatMessageHistory(mem, "", user_id="ann")


def test_history_with_runnable_with_message_history(mem: MemOS) -> None:
    from langchain_core.runnables.history import RunnableWithMessageHistory

    def answer(msgs: list[Any]) -> str:
        said = [m.content for m in msgs if m.type == "human"]
        return f"you said {len(said)} things; first: {said[0]}"

    model = ScriptedChatModel(default=answer)
    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("history"), ("human", "{input}")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        chain = RunnableWithMessageHistory(
            prompt | model, lambda session_id: MemOSChatMessageHistory(mem, session_id, user_id="ann"),
            input_messages_key="input", history_messages_key="history")
        cfg = {"configurable": {"session_id": "s42"}}
        assert chain.invoke({"input": "I like tea"}, config=cfg).content == "you said 1 things; first: I like tea"
        assert chain.invoke({"input": "and you?"}, config=cfg).content == "you said 2 things; first: I like tea"
        out = asyncio.run(chain.ainvoke({"input": "third"}, config=cfg))
    assert out.content == "you said 3 things; first: I like tea"
    assert len(MemOSChatMessageHistory(mem, "s42", user_id="ann").messages) == 6


# ---------------------------------------------------------------------- tools
def by_name(tools: list[Any]) -> dict[str, Any]:
    return {t.name: t for t in tools}


@pytest.mark.records_backends
def test_memory_tools_schemas_and_governance(mem: MemOS) -> None:
    tools = by_name(create_memory_tools(mem, user_id="ann"))
    assert set(tools) == {"search_memory", "save_memory", "update_memory", "forget_memory"}
    schema = tools["save_memory"].tool_call_schema.model_json_schema()
    assert set(schema["properties"]) == {"content", "kind"} and schema["required"] == ["content"]
    assert "runtime" not in tools["search_memory"].tool_call_schema.model_json_schema()["properties"]
    assert all(len(t.description) > 60 for t in tools.values())

    out = tools["save_memory"].invoke({"content": "Ann's favourite colour is teal", "kind": "preference"})
    assert out.startswith("Saved memory ")
    mid = out.split()[-1].rstrip(".")
    assert tools["save_memory"].invoke({"content": "Ann's  favourite colour is teal"}).startswith("Already")
    found = tools["search_memory"].invoke({"query": "favourite colour"})
    assert mid in found and "teal" in found and "preference" in found

    assert "version 2" in tools["update_memory"].invoke({"memory_id": mid, "content": "Ann's favourite colour is "
                                                                                     "navy", "reason": "changed"})
    assert [v.content for v in mem.history(mid)][-1] == "Ann's favourite colour is navy"

    # another user's tools cannot see or touch Ann's memory ("not found", never "forbidden")
    bob = by_name(create_memory_tools(mem, user_id="bob"))
    assert bob["search_memory"].invoke({"query": "favourite colour"}) == "No memories found."
    assert "no memory with id" in bob["forget_memory"].invoke({"memory_id": mid})
    assert "no memory with id" in bob["update_memory"].invoke({"memory_id": mid, "content": "x"})

    # a memory under legal hold cannot be changed: the model gets the core's reason
    mem.cubes["default"].legal_hold(mid)
    assert "frozen" in tools["update_memory"].invoke({"memory_id": mid, "content": "y"}).lower()
    mem.cubes["default"].lift_hold(mid)

    assert "Forgot" in tools["forget_memory"].invoke({"memory_id": mid, "reason": "user asked"})
    assert mem.get(mid, include_deleted=True).state == LifecycleState.DELETED
    assert tools["search_memory"].invoke({"query": "favourite colour"}) == "No memories found."
    # erase mode removes it for good
    erase = by_name(create_memory_tools(mem, user_id="ann", forget_mode="erase"))
    out = erase["save_memory"].invoke({"content": "temporary"})
    tmp_id = out.split()[-1].rstrip(".")
    assert "Erased" in erase["forget_memory"].invoke({"memory_id": tmp_id})
    assert "no memory" in erase["forget_memory"].invoke({"memory_id": tmp_id})


def test_memory_tools_subset_async_and_errors(mem: MemOS) -> None:
    tools = by_name(create_memory_tools(mem, include=("search", "save"), require_user=True, prefix="mem_"))
    assert set(tools) == {"mem_search_memory", "mem_save_memory"}
    # no user in the run: refused with a typed error the app must fix (not a tool error the model could ignore)
    with pytest.raises(UserRequired, match="context=.*user_id"):
        tools["mem_save_memory"].invoke({"content": "x"})
    with pytest.raises(ValueError):
        create_memory_tools(mem, include=("explode",))
    with pytest.raises(TypeError):  # checked when built: a MemOS, a view, a MemCube or a folder path
        create_memory_tools(42)  # type: ignore[arg-type]
    assert "Saved" in by_name(create_memory_tools(mem.cubes["default"], user_id="cy"))["save_memory"].invoke(
        {"content": "Cy owns a kayak"})
    open_tools = by_name(create_memory_tools(mem, user_id="ann"))
    out = asyncio.run(open_tools["save_memory"].ainvoke({"content": "async fact"}))
    assert out.startswith("Saved")
    assert "async fact" in asyncio.run(open_tools["search_memory"].ainvoke({"query": "async fact"}))
    with pytest.raises(ValueError):  # pydantic's ValidationError: the argument schema is enforced
        open_tools["save_memory"].invoke({"content": "x", "kind": "not-a-kind"})  # schema validation


# ---------------------------------------------------------------------- several workers on one cube
@pytest.mark.records_backends
def test_history_clear_and_vectorstore_delete_tolerate_another_worker_deleting(tmp_path: Path,
                                                                               open_memos: Any) -> None:
    """Another worker (its own handle on the cube) deletes a message or document between our read and our
    delete: clear() and delete() still end with everything deleted, with no error."""
    from memos_langchain import MemOSVectorStore

    mem = open_memos(tmp_path / "m", embedder=EMB)
    other = open_memos(tmp_path / "m", embedder=EMB).cubes["default"]  # the same folder, or the same PostgreSQL cube
    h = MemOSChatMessageHistory(mem, "s1", user_id="ann")
    h.add_messages([HumanMessage("one"), AIMessage("two"), HumanMessage("three")])
    listed = h._items()
    h._items = lambda: listed  # type: ignore[method-assign]  # what we read before the other worker acted
    other.delete(listed[1].id)
    h.clear()
    del h._items
    assert h.messages == []

    vs = MemOSVectorStore(mem, user_id="ann")
    vs.add_texts(["alpha", "beta"], ids=["a", "b"])
    cube = vs.cube
    real_lookup = cube.lookup

    fired: list[str] = []

    def lookup_then_the_other_worker_deletes(item_id: str, **kw: Any) -> Any:
        found = real_lookup(item_id, **kw)
        if item_id == "a" and not fired:
            fired.append(item_id)
            other.delete("a")
        return found

    cube.lookup = lookup_then_the_other_worker_deletes  # type: ignore[method-assign]
    try:
        assert vs.delete(["a", "b"]) is True
    finally:
        del cube.lookup
    assert fired and vs.get_by_ids(["a", "b"]) == []
