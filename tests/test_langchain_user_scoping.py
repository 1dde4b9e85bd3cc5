"""Fail-closed user scoping in the LangChain / LangGraph adapters (issue 13, part 1).

No adapter reads or writes without knowing whose memory it is: without a user identity every class raises
:class:`memos_core.UserRequired` (a ``PermissionDenied``) with a message that says how to pass one, unless the
app opted in to one fixed scope with ``single_user=True``. A user-bound view (``mem.for_user("ann")``) is
accepted by every class without any further user argument, and naming another user through it is refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.runtime import Runtime

from memos_core import MemCube, MemOS, PermissionDenied, UserRequired, ValidationError
from memos_core.os import SINGLE_USER
from memos_langchain import (
    MemOSChatMessageHistory,
    MemOSMiddleware,
    MemOSRetriever,
    MemOSStore,
    MemOSVectorStore,
    create_memory_tools,
)
from memos_langchain.testing import HashingEmbeddings, ScriptedChatModel, tool_call

EMB = HashingEmbeddings(64)
PIN = "My bank PIN is 4321"


@dataclass
class Ctx:
    user_id: str


@pytest.fixture
def mem(tmp_path: Path, open_memos: Any) -> MemOS:
    """A MemOS data folder; in tests marked ``records_backends`` also a MemOS over a PostgreSQL cube."""
    m = open_memos(tmp_path / "mem", embedder=EMB)
    m.add([{"role": "ann", "content": PIN}], user_id="ann")
    return m


def everything_shown(model: ScriptedChatModel) -> str:
    return "\n".join(m.text for call in model.calls for m in call)


# ---------------------------------------------------------------------- the reproduction of the issue
def test_agent_run_without_a_user_id_gets_no_pin_and_an_actionable_error(mem: MemOS) -> None:
    """Issue 13: a config without a user id (``uid`` is not a key anyone reads) used to read unscoped and put
    Ann's PIN into the prompt and the tool result. Now the run stops with a typed error before the model
    sees anything from memory."""
    model = ScriptedChatModel(script=[tool_call("search_memory", {"query": "bank PIN"}), "done"],
                              default="done")
    agent = create_agent(model, tools=create_memory_tools(mem), middleware=[MemOSMiddleware(mem)],
                         checkpointer=InMemorySaver())
    with pytest.raises(UserRequired) as err:
        agent.invoke({"messages": [HumanMessage("What is my bank PIN?")]},
                     config={"configurable": {"thread_id": "x", "uid": "bob"}})
    assert isinstance(err.value, PermissionDenied)
    msg = str(err.value)
    assert "user_id" in msg and "for_user" in msg and "single_user=True" in msg
    assert "4321" not in everything_shown(model)
    # tools alone (no middleware) refuse the same way, before searching
    model2 = ScriptedChatModel(script=[tool_call("search_memory", {"query": "bank PIN"}), "done"])
    agent2 = create_agent(model2, tools=create_memory_tools(mem), checkpointer=InMemorySaver())
    with pytest.raises(UserRequired):
        agent2.invoke({"messages": [HumanMessage("What is my bank PIN?")]},
                      config={"configurable": {"thread_id": "y", "uid": "bob"}})
    assert "4321" not in everything_shown(model2)
    # the right user still gets it; another user does not
    model3 = ScriptedChatModel(default=lambda msgs: "ok")
    agent3 = create_agent(model3, middleware=[MemOSMiddleware(mem, save=False)], context_schema=Ctx)
    agent3.invoke({"messages": [HumanMessage("What is my bank PIN?")]}, context=Ctx(user_id="bob"))
    assert "4321" not in everything_shown(model3)
    agent3.invoke({"messages": [HumanMessage("What is my bank PIN?")]}, context=Ctx(user_id="ann"))
    assert "4321" in everything_shown(model3)


def test_middleware_refuses_to_save_without_a_user(mem: MemOS) -> None:
    mw = MemOSMiddleware(mem)
    state = {"messages": [HumanMessage("I was born in Faro", id="h1"), AIMessage("Lovely", id="a1")]}
    before = mem.cubes["default"].count()
    with pytest.raises(UserRequired):
        mw.after_agent(state, Runtime())
    with pytest.raises(UserRequired):
        asyncio.run(mw.aafter_agent(state, Runtime()))
    assert mem.cubes["default"].count() == before


def test_require_user_is_accepted_and_is_the_default(mem: MemOS) -> None:
    # it used to raise TypeError; fail-closed is now the default, so require_user=True changes nothing
    mw = MemOSMiddleware(mem, require_user=True)
    with pytest.raises(UserRequired):
        mw.after_agent({"messages": [HumanMessage("hi", id="h1")]}, Runtime())
    create_memory_tools(mem, require_user=True)
    with pytest.raises(ValidationError, match="single_user=True"):  # turning it off is spelled single_user
        MemOSMiddleware(mem, require_user=False)
    with pytest.raises(ValidationError, match="single_user=True"):
        create_memory_tools(mem, require_user=False)


def test_single_user_mode_is_one_fixed_scope(mem: MemOS) -> None:
    model = ScriptedChatModel(default=lambda msgs: "Noted.")
    agent = create_agent(model, middleware=[MemOSMiddleware(mem, single_user=True)], checkpointer=InMemorySaver())
    agent.invoke({"messages": [HumanMessage("My cat is called Tom", id="h1")]},
                 config={"configurable": {"thread_id": "t"}})
    eps = mem.cubes["default"].list({"user_id": SINGLE_USER}, limit=10)
    assert any("Tom" in e.content for e in eps)
    agent.invoke({"messages": [HumanMessage("What is my bank PIN?")]}, config={"configurable": {"thread_id": "u"}})
    assert "4321" not in everything_shown(model)  # Ann's memories are not in the single-user scope
    with pytest.raises(ValidationError):  # two answers to "who is the user" is a configuration error
        MemOSMiddleware(mem, single_user=True, user_id="ann")
    with pytest.raises(ValidationError):
        MemOSMiddleware(mem.for_user("ann"), single_user=True)


# ---------------------------------------------------------------------- user-bound views in every class
def test_middleware_and_tools_accept_a_bound_view(mem: MemOS) -> None:
    ann = mem.for_user("ann")
    model = ScriptedChatModel(script=[tool_call("search_memory", {"query": "bank PIN"}),
                                      lambda msgs: msgs[-1].text])
    agent = create_agent(model, tools=create_memory_tools(ann), middleware=[MemOSMiddleware(ann)],
                         checkpointer=InMemorySaver())
    out = agent.invoke({"messages": [HumanMessage("What is my bank PIN?")]}, config={"configurable": {"thread_id": "a"}})
    assert "4321" in out["messages"][-1].text and "4321" in "\n".join(m.text for m in model.calls[0])
    assert all(e.scope.user_id == "ann" for e in mem.cubes["default"].list(limit=50))
    # a run naming another user through a view bound to Ann is refused, not silently re-scoped
    with pytest.raises(PermissionDenied):
        agent.invoke({"messages": [HumanMessage("What is my bank PIN?")]},
                     config={"configurable": {"thread_id": "b", "user_id": "bob"}})
    with pytest.raises(PermissionDenied):
        MemOSMiddleware(ann, user_id="bob")


@pytest.mark.records_backends
def test_retriever_fails_closed_and_takes_a_bound_view(mem: MemOS) -> None:
    r = MemOSRetriever(memory=mem)
    with pytest.raises(UserRequired, match="user_id"):
        r.invoke("bank PIN")
    with pytest.raises(UserRequired):
        asyncio.run(r.ainvoke("bank PIN"))
    assert [d.page_content for d in r.invoke("bank PIN", user_id="ann")] == ["ann: " + PIN]
    assert r.invoke("bank PIN", user_id="bob") == []
    bound = MemOSRetriever(memory=mem.for_user("bob"))
    assert bound.invoke("bank PIN") == []
    with pytest.raises(PermissionDenied):
        bound.invoke("bank PIN", user_id="ann")
    assert MemOSRetriever(memory=mem.for_user("ann")).invoke("bank PIN")[0].metadata["user_id"] == "ann"
    # a bare cube too
    cube_r = MemOSRetriever(memory=mem.cubes["default"])
    with pytest.raises(UserRequired):
        cube_r.invoke("bank PIN")
    single = MemOSRetriever(memory=mem, single_user=True)
    assert single.invoke("bank PIN") == []


@pytest.mark.records_backends
def test_chat_history_fails_closed(mem: MemOS) -> None:
    with pytest.raises(UserRequired):
        MemOSChatMessageHistory(mem, session_id="s1")
    with pytest.raises(UserRequired):
        MemOSChatMessageHistory(mem.cubes["default"], session_id="s1")
    h = MemOSChatMessageHistory(mem.for_user("bob"), session_id="s1")
    h.add_messages([HumanMessage("bob's message")])
    assert h.user_id == "bob"
    assert [i.scope.user_id for i in mem.cubes["default"].list({"tags_all": ["lc:chat-history"],
                                                                "states": ["archived"]}, limit=10)] == ["bob"]
    # another user's history with the same session id is a different history
    assert MemOSChatMessageHistory(mem, session_id="s1", user_id="ann").messages == []
    with pytest.raises(PermissionDenied):
        MemOSChatMessageHistory(mem.for_user("bob"), session_id="s1", user_id="ann")
    single = MemOSChatMessageHistory(mem, session_id="s1", single_user=True)
    single.add_messages([HumanMessage("hello")])
    assert [m.text for m in single.messages] == ["hello"]


@pytest.mark.records_backends
def test_vectorstore_fails_closed(mem: MemOS) -> None:
    with pytest.raises(UserRequired):
        MemOSVectorStore(mem)
    with pytest.raises(UserRequired):
        MemOSVectorStore.from_texts(["x"], EMB, memory=mem)
    vs = MemOSVectorStore(mem.for_user("bob"))
    vs.add_texts(["bob likes chess"], ids=["d1"])
    assert mem.get("d1").scope.user_id == "bob"
    assert vs.similarity_search("bank PIN chess", k=5)[0].page_content == "bob likes chess"
    assert all("4321" not in d.page_content for d in vs.similarity_search("bank PIN", k=5))
    with pytest.raises(PermissionDenied):
        MemOSVectorStore(mem.for_user("bob"), user_id="ann")
    single = MemOSVectorStore(mem, single_user=True)
    assert single.similarity_search("chess", k=5) == []


@pytest.mark.records_backends
def test_store_fails_closed_per_namespace(mem: MemOS) -> None:
    store = MemOSStore(mem)
    with pytest.raises(UserRequired):  # no {user_id} label: whose memory is it?
        store.put(("facts",), "k", {"text": "shared?"})
    with pytest.raises(UserRequired):  # a prefix that spans every user
        store.search(("memories",), query="anything")
    with pytest.raises(UserRequired):
        store.get(("facts",), "k")
    with pytest.raises(UserRequired):
        store.list_namespaces()
    store.put(("memories", "ann"), "k", {"text": "ann's"})  # the namespace names the user
    assert store.get(("memories", "ann"), "k").value == {"text": "ann's"}
    assert store.list_namespaces(prefix=("memories", "ann")) == [("memories", "ann")]
    # a view bound to Bob: namespaces without a user label are Bob's, Ann's namespace is refused
    bob = MemOSStore(mem.for_user("bob"))
    bob.put(("facts",), "k", {"text": "bob's"})
    assert bob.get(("facts",), "k").value == {"text": "bob's"}
    assert [i.value for i in bob.search(("facts",))] == [{"text": "bob's"}]
    assert bob.list_namespaces() == [("facts",)]
    with pytest.raises(PermissionDenied):
        bob.get(("memories", "ann"), "k")
    with pytest.raises(PermissionDenied):
        bob.put(("memories", "ann"), "k", {"text": "overwrite"})
    eve = MemOSStore(mem.for_user("eve"))
    assert eve.get(("facts",), "k") is None and eve.search(("facts",)) == [] and eve.list_namespaces() == []
    eve.put(("facts",), "k", {"text": "eve's"})  # the same key in another user's scope is another item
    assert bob.get(("facts",), "k").value == {"text": "bob's"}
    assert store.get(("memories", "ann"), "k").value == {"text": "ann's"}
    # single-user mode: one fixed scope for every namespace
    single = MemOSStore(mem, single_user=True)
    single.put(("facts",), "k", {"text": "mine"})
    assert single.get(("facts",), "k").value == {"text": "mine"}
    assert mem.get(single.memory_id(("facts",), "k")).scope.user_id == SINGLE_USER
    with pytest.raises(ValidationError):
        MemOSStore(mem.for_user("bob"), single_user=True)


def test_store_on_a_bare_cube_fails_closed(tmp_path: Path) -> None:
    store = MemOSStore(MemCube(tmp_path / "c", embedder=EMB))
    with pytest.raises(UserRequired):
        store.put(("docs",), "a", {"text": "x"})
    store.put(("memories", "ann"), "a", {"text": "x"})
    assert store.search(("memories", "ann"))[0].value == {"text": "x"}
