"""End to end with create_agent and a scripted chat model: an agent remembers a fact in one thread and uses
it in another, through the middleware, through the memory tools (tool calls), and through LangMem's tools on
MemOSStore; plus MemOSStore under graph.compile(store=...) and runtime.store."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.tools import ToolRuntime
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.store.memory import InMemoryStore
from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from memos_core import MemCube, MemOS, MemoryKind
from memos_langchain import MemOSMiddleware, MemOSStore, create_memory_tools
from memos_langchain.testing import HashingEmbeddings, ScriptedChatModel, tool_call

EMB = HashingEmbeddings(64)


@dataclass
class Ctx:
    user_id: str


@pytest.fixture
def mem(tmp_path: Path, open_memos: Any) -> MemOS:
    """A MemOS data folder; in tests marked ``records_backends`` also a MemOS over a PostgreSQL cube."""
    return open_memos(tmp_path / "mem", embedder=EMB)


def system_text(msgs: list[BaseMessage]) -> str:
    return "\n".join(m.text for m in msgs if m.type == "system")


def colour_bot(msgs: list[BaseMessage]) -> str:
    """Answers from what is in its prompt: the memory block the middleware injected."""
    last = [m for m in msgs if m.type == "human"][-1].text.lower()
    if "favourite colour?" in last or "favorite color?" in last:
        return "Your favourite colour is teal." if "teal" in system_text(msgs) else "I don't know your favourite colour."
    return "Noted."


def run(agent: Any, text: str, thread: str, user: str, **kw: Any) -> str:
    out = agent.invoke({"messages": [HumanMessage(text)]}, config={"configurable": {"thread_id": thread}},
                       context=Ctx(user_id=user), **kw)
    return out["messages"][-1].text


# ---------------------------------------------------------------------- middleware
@pytest.mark.records_backends
def test_middleware_remembers_across_threads_without_double_writes(mem: MemOS) -> None:
    model = ScriptedChatModel(default=colour_bot)
    mw = MemOSMiddleware(mem, k=5)
    agent = create_agent(model, tools=[], middleware=[mw], checkpointer=InMemorySaver(), context_schema=Ctx,
                         system_prompt="You are helpful.")
    assert run(agent, "Hi! My favourite colour is teal.", "thread-1", "ann") == "Noted."
    assert run(agent, "What is my favourite colour?", "thread-2", "ann") == "Your favourite colour is teal."
    assert run(agent, "What is my favourite colour?", "thread-3", "bob") == "I don't know your favourite colour."
    # the injected block went into the system message of the request only, after the agent's own prompt
    sys_prompt = system_text(model.calls[1])
    assert sys_prompt.startswith("You are helpful.") and "## Relevant memories" in sys_prompt
    state = agent.get_state({"configurable": {"thread_id": "thread-2"}}).values
    assert all("Relevant memories" not in m.text for m in state["messages"])
    # thread-1 continues: only the new turn is written, earlier turns are not fed again
    run(agent, "I also like jazz.", "thread-1", "ann")
    eps = mem.cubes["default"].list({"user_id": "ann", "kinds": [MemoryKind.EPISODE]}, limit=100)
    texts = [e.content for e in eps]
    assert texts.count("ann: Hi! My favourite colour is teal.") == 1 and sum("jazz" in t for t in texts) == 1
    assert texts.count("assistant: Noted.") == 2  # one per turn of thread-1, each written once
    assert {e.scope.session_id for e in eps} == {"thread-1", "thread-2"}
    assert all(e.provenance.source_ids for e in eps)


def test_store_items_reach_the_middleware_prompt_through_the_memos_not_runtime_store(mem: MemOS) -> None:
    """README: the middleware reads the MemOS it was built on, not runtime.store; a MemOSStore on the same MemOS
    puts items under ("memories", user) into that user's scope, so they reach that user's prompt only."""
    store = MemOSStore(mem)
    store.put(("memories", "ann"), "colour", {"text": "Ann's favourite colour is teal"})
    other = InMemoryStore()  # an agent's runtime.store that is not the MemOS: never read by the middleware
    other.put(("memories", "bob"), "colour", {"text": "Bob's favourite colour is teal"})
    model = ScriptedChatModel(default=colour_bot)
    agent = create_agent(model, tools=[], middleware=[MemOSMiddleware(mem, k=5)], store=other,
                         checkpointer=InMemorySaver(), context_schema=Ctx)
    assert run(agent, "What is my favourite colour?", "t1", "ann") == "Your favourite colour is teal."
    assert run(agent, "What is my favourite colour?", "t2", "bob") == "I don't know your favourite colour."


def test_after_agent_retry_does_not_write_twice(mem: MemOS) -> None:
    mw = MemOSMiddleware(mem, user_id="ann")
    state = {"messages": [HumanMessage("I was born in Faro", id="h1"), AIMessage("Lovely", id="a1")]}
    update = mw.after_agent(state, Runtime())
    assert update == {"memos_saved_ids": ["h1", "a1"]}
    before = mem.cubes["default"].count()
    # the node is retried before its state update was committed: same messages, no saved ids
    assert mw.after_agent(state, Runtime()) == {"memos_saved_ids": ["h1", "a1"]}
    assert asyncio.run(mw.aafter_agent(state, Runtime())) == {"memos_saved_ids": ["h1", "a1"]}
    assert mem.cubes["default"].count() == before == 2
    # nothing new: nothing to do
    assert mw.after_agent({**state, "memos_saved_ids": ["h1", "a1"]}, Runtime()) is None


@pytest.mark.records_backends
def test_after_agent_retried_on_another_worker_does_not_write_twice(mem: MemOS, tmp_path: Path,
                                                                    open_memos: Any) -> None:
    """The retry runs in another worker (its own MemOS on the same folder or PostgreSQL cube, nothing shared in
    memory): the turn is still stored once."""
    state = {"messages": [HumanMessage("I was born in Faro", id="h1"), AIMessage("Lovely", id="a1")]}
    assert MemOSMiddleware(mem, user_id="ann").after_agent(state, Runtime()) == {"memos_saved_ids": ["h1", "a1"]}
    other = open_memos(tmp_path / "mem", embedder=EMB)
    assert MemOSMiddleware(other, user_id="ann").after_agent(state, Runtime()) == {"memos_saved_ids": ["h1", "a1"]}
    assert sorted(i.content for i in other.cubes["default"].list()) == ["ann: I was born in Faro",
                                                                        "assistant: Lovely"]


def test_middleware_async_agent_and_options(mem: MemOS) -> None:
    model = ScriptedChatModel(default=colour_bot)
    agent = create_agent(model, tools=[], middleware=[MemOSMiddleware(mem, roles=("human",))],
                         checkpointer=InMemorySaver(), context_schema=Ctx)

    async def go() -> tuple[str, str]:
        cfg = {"configurable": {"thread_id": "a1"}}
        await agent.ainvoke({"messages": [HumanMessage("my favourite colour is teal")]}, config=cfg,
                            context=Ctx(user_id="ann"))
        out = await agent.ainvoke({"messages": [HumanMessage("What is my favourite colour?")]},
                                  config={"configurable": {"thread_id": "a2"}}, context=Ctx(user_id="ann"))
        return out["messages"][-1].text, system_text(model.calls[-1])

    answer, prompt = asyncio.run(go())
    assert answer == "Your favourite colour is teal." and "teal" in prompt
    eps = mem.cubes["default"].list({"user_id": "ann"}, limit=50)
    assert eps and all(not e.content.startswith("assistant:") for e in eps)  # roles=("human",)
    # user id from config instead of context, and inject/save switches
    agent2 = create_agent(ScriptedChatModel(default=colour_bot), middleware=[MemOSMiddleware(mem, save=False)])
    out = agent2.invoke({"messages": [HumanMessage("What is my favourite colour?")]},
                        config={"configurable": {"user_id": "ann"}})
    assert out["messages"][-1].text == "Your favourite colour is teal."
    agent3 = create_agent(ScriptedChatModel(default=colour_bot), middleware=[MemOSMiddleware(mem, inject=False)])
    out = agent3.invoke({"messages": [HumanMessage("What is my favourite colour?")]},
                        config={"configurable": {"user_id": "ann"}})
    assert out["messages"][-1].text == "I don't know your favourite colour."
    with pytest.raises(ValueError):
        MemOSMiddleware(object())  # checked when built: a MemOS, a view, a MemCube or a folder path
    assert MemOSMiddleware(mem.cubes["default"]).memory.cubes["default"] is mem.cubes["default"]
    with pytest.raises(ValueError):
        MemOSMiddleware(mem, template="no placeholder")


# ---------------------------------------------------------------------- memory tools, called by the model
@pytest.mark.records_backends
def test_agent_with_memory_tools_remembers_across_threads(mem: MemOS) -> None:
    def answer_from_tool(msgs: list[BaseMessage]) -> str:
        found = msgs[-1].text
        return "It is teal." if "teal" in found else "I could not find it."

    model = ScriptedChatModel(script=[
        tool_call("save_memory", {"content": "The user's favourite colour is teal", "kind": "preference"}),
        "Saved that.",
        tool_call("search_memory", {"query": "favourite colour"}),
        answer_from_tool,
        tool_call("search_memory", {"query": "favourite colour"}),
        answer_from_tool,
    ])
    agent = create_agent(model, tools=create_memory_tools(mem), checkpointer=InMemorySaver(), context_schema=Ctx)
    assert run(agent, "Remember: my favourite colour is teal", "t1", "ann") == "Saved that."
    assert run(agent, "What's my favourite colour?", "t2", "ann") == "It is teal."
    assert run(agent, "What's my favourite colour?", "t3", "bob") == "I could not find it."
    saved = mem.search("favourite colour", user_id="ann")
    assert saved[0].item.kind == MemoryKind.PREFERENCE and saved[0].item.provenance.source.value == "tool"


# ---------------------------------------------------------------------- LangMem's tools on MemOSStore
@pytest.mark.records_backends
def test_langmem_tools_on_memos_store(tmp_path: Path, open_cube: Any) -> None:
    from langmem import create_manage_memory_tool, create_search_memory_tool

    store = MemOSStore(open_cube(tmp_path / "cube", embedder=EMB, clock=None))
    ns = ("memories", "{langgraph_user_id}")

    def answer(msgs: list[BaseMessage]) -> str:
        found = json.loads(msgs[-1].text)
        return "It is teal." if any("teal" in json.dumps(m["value"]) for m in found) else "No idea."

    model = ScriptedChatModel(script=[
        tool_call("manage_memory", {"content": "favourite colour is teal", "action": "create"}),
        "Noted.",
        tool_call("search_memory", {"query": "favourite colour"}),
        answer,
        tool_call("search_memory", {"query": "favourite colour"}),
        answer,
    ])
    agent = create_agent(model, tools=[create_manage_memory_tool(namespace=ns), create_search_memory_tool(namespace=ns)],
                         store=store, checkpointer=InMemorySaver())

    def ask(text: str, thread: str, user: str) -> str:
        out = agent.invoke({"messages": [HumanMessage(text)]},
                           config={"configurable": {"thread_id": thread, "langgraph_user_id": user}})
        return out["messages"][-1].text

    assert ask("remember my favourite colour is teal", "t1", "ann") == "Noted."
    assert ask("what's my favourite colour?", "t2", "ann") == "It is teal."
    assert ask("what's my favourite colour?", "t3", "bob") == "No idea."
    # the LangMem memory is a MemOS memory in Ann's scope: the core (and the middleware) can recall it
    assert store.list_namespaces(prefix=("memories", "ann")) == [("memories", "ann")]
    [item] = store.search(("memories", "ann"))
    hits = store.cube.search("favourite colour", user_id="ann")
    assert hits and hits[0].item.metadata["langgraph"]["key"] == item.key


# ---------------------------------------------------------------------- graph.compile(store=...) / runtime.store
class S(TypedDict, total=False):
    fact: str
    answer: str


@pytest.mark.records_backends
def test_store_in_graph_compile_and_runtime_store(tmp_path: Path, open_cube: Any) -> None:
    store = MemOSStore(open_cube(tmp_path / "cube", embedder=EMB, clock=None))

    def remember(state: S, runtime: Runtime[Ctx]) -> S:
        if state.get("fact"):
            assert runtime.store is store
            runtime.store.put(("memories", runtime.context.user_id), "fact", {"text": state["fact"]})
        return {}

    def recall(state: S, runtime: Runtime[Ctx]) -> S:
        hits = runtime.store.search(("memories", runtime.context.user_id), query="where does the user live")
        return {"answer": hits[0].value["text"] if hits else "unknown"}

    graph = (StateGraph(S, context_schema=Ctx).add_node("remember", remember).add_node("recall", recall)
             .add_edge(START, "remember").add_edge("remember", "recall").compile(store=store))
    graph.invoke({"fact": "Ann lives in Lisbon"}, context=Ctx(user_id="ann"))
    assert graph.invoke({}, context=Ctx(user_id="ann"))["answer"] == "Ann lives in Lisbon"
    assert graph.invoke({}, context=Ctx(user_id="bob"))["answer"] == "unknown"
    assert asyncio.run(graph.ainvoke({}, context=Ctx(user_id="ann")))["answer"] == "Ann lives in Lisbon"


def test_create_agent_store_through_tool_runtime(tmp_path: Path) -> None:
    store = MemOSStore(MemCube(tmp_path / "cube", embedder=EMB))

    @tool
    def remember_city(city: str, runtime: ToolRuntime[Ctx]) -> str:
        """Remember the user's city."""
        runtime.store.put(("memories", runtime.context.user_id), "city", {"text": f"lives in {city}"})
        return "ok"

    @tool
    def recall_city(runtime: ToolRuntime[Ctx]) -> str:
        """Recall the user's city."""
        item = runtime.store.get(("memories", runtime.context.user_id), "city")
        return item.value["text"] if item else "unknown"

    model = ScriptedChatModel(script=[tool_call("remember_city", {"city": "Porto"}), "done",
                                      tool_call("recall_city", {}), lambda msgs: msgs[-1].text])
    agent = create_agent(model, tools=[remember_city, recall_city], store=store, context_schema=Ctx)
    agent.invoke({"messages": [HumanMessage("I live in Porto")]}, context=Ctx(user_id="ann"))
    out = agent.invoke({"messages": [HumanMessage("where do I live?")]}, context=Ctx(user_id="ann"))
    assert out["messages"][-1].text == "lives in Porto"
    assert store.cube.search("Porto", user_id="ann")  # namespace ("memories", "ann") -> scope user_id="ann"
