"""MemOSMemory inside LlamaIndex's chat engines and agent workflows, with scripted LLMs.

Each test tells a fact in one session and checks that what the LLM *received* in a later session (a new
memory object, a new engine or agent) contains it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, List, Sequence

import pytest
from llama_index.core.agent.workflow import AgentWorkflow, FunctionAgent, ReActAgent
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ToolCallBlock
from llama_index.core.chat_engine import CondensePlusContextChatEngine, ContextChatEngine, SimpleChatEngine
from llama_index.core.llms import ChatMessage
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from workflows import Context

from memos_llamaindex import MemOSMemory, MemOSToolSpec
from test_llamaindex_support import RecordingLLM, ScriptedAgentLLM, hashed_embed, text_of


@pytest.fixture
def mem(tmp_path: Path, open_memos: Any) -> Any:
    """A MemOS data folder; in tests marked ``records_backends`` also a MemOS over a PostgreSQL cube."""
    return open_memos(tmp_path / "memos", embedder=hashed_embed)


def _memory(mem: Any, session: str, **kw: Any) -> MemOSMemory:
    return MemOSMemory.from_memos(mem, user_id="ann", session_id=session, **kw)


class FixedRetriever(BaseRetriever):
    """A knowledge base with one document (what the context engines retrieve besides memory)."""

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return [NodeWithScore(node=TextNode(text="The office opens at 9am."), score=1.0)]


SESSION_1 = ["Hi, I'm Ann.", "My favourite colour is teal.", "I'm planning a trip to Kyoto in April."]


def _system_texts(messages: Sequence[ChatMessage]) -> str:
    return "\n".join(m.content or "" for m in messages if m.role.value == "system")


@pytest.mark.records_backends
def test_simple_chat_engine_remembers_across_sessions(mem: Any) -> None:
    llm = RecordingLLM()
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=_memory(mem, "s1"), system_prompt="Be brief.")
    for text in SESSION_1:
        assert str(engine.chat(text)) == "Noted."
    assert len(engine.chat_history) == 6
    engine2 = SimpleChatEngine.from_defaults(llm=llm, memory=_memory(mem, "s2"), system_prompt="Be brief.")
    engine2.chat("What is my favourite colour?")
    got = llm.calls[-1]
    assert got[0].content == "Be brief."
    assert "user: My favourite colour is teal." in _system_texts(got)
    assert got[-1].content == "What is my favourite colour?"
    # streaming and async chat go through the same memory
    resp = engine2.stream_chat("And where am I travelling?")
    assert "".join(resp.response_gen) == "Noted."
    assert "Kyoto in April" in _system_texts(llm.calls[-1])
    asyncio.run(engine2.achat("Remind me of my trip."))
    assert "Kyoto in April" in _system_texts(llm.calls[-1])
    assert [m.content for m in engine2.chat_history][-2:] == ["Remind me of my trip.", "Noted."]


def test_context_chat_engine_remembers_across_sessions(mem: Any) -> None:
    llm = RecordingLLM()
    engine = ContextChatEngine.from_defaults(retriever=FixedRetriever(), llm=llm, memory=_memory(mem, "s1"))
    for text in SESSION_1:
        engine.chat(text)
    engine2 = ContextChatEngine.from_defaults(retriever=FixedRetriever(), llm=llm, memory=_memory(mem, "s2"))
    engine2.chat("Which city am I visiting?")
    received = text_of(llm.calls[-1])
    assert "The office opens at 9am." in received  # the engine's own context
    assert "user: I'm planning a trip to Kyoto in April." in received  # MemOS memory
    asyncio.run(engine2.achat("When is the trip?"))
    assert "Kyoto in April" in text_of(llm.calls[-1])


def test_condense_plus_context_chat_engine_remembers_across_sessions(mem: Any) -> None:
    llm = RecordingLLM()
    engine = CondensePlusContextChatEngine.from_defaults(retriever=FixedRetriever(), llm=llm,
                                                         memory=_memory(mem, "s1"))
    for text in SESSION_1:
        engine.chat(text)
    engine2 = CondensePlusContextChatEngine.from_defaults(retriever=FixedRetriever(), llm=llm,
                                                          memory=_memory(mem, "s2"))
    engine2.chat("What colour do I like?")
    assert "user: My favourite colour is teal." in text_of(llm.calls[-1])
    engine2.chat("And my travel plans?")  # second turn: the engine condenses with history first
    assert "Kyoto in April" in text_of(llm.calls[-1])


def _agent_script(messages: Sequence[ChatMessage], tools: Any) -> ChatMessage:
    last = messages[-1]
    if tools and last.role.value == "user" and "remember" in (last.content or "").lower():
        fact = (last.content or "").split(":", 1)[-1].strip()
        return ChatMessage(role="assistant", blocks=[
            ToolCallBlock(tool_call_id="call-1", tool_name="save_memory", tool_kwargs={"content": fact})])
    return ChatMessage(role="assistant", content="Done.")


def test_function_agent_with_memory_and_tools(mem: Any) -> None:
    llm = ScriptedAgentLLM(_agent_script)
    tools = MemOSToolSpec(mem, user_id="ann").to_tool_list()
    agent = FunctionAgent(tools=tools, llm=llm, system_prompt="You help Ann.")

    async def run() -> None:
        m1 = _memory(mem, "s1")
        for text in SESSION_1:
            assert str(await agent.run(text, memory=m1)) == "Done."
        out = await agent.run("Please remember this: Ann's passport expires in 2031.", memory=m1)
        assert out.tool_calls and out.tool_calls[0].tool_name == "save_memory"
        assert not out.tool_calls[0].tool_output.is_error
        # the tool call, its result and the final answer are in the history; only text was read into memory
        roles = [m.role.value for m in await m1.aget_all()]
        assert roles[-4:] == ["user", "assistant", "tool", "assistant"]

        m2 = _memory(mem, "s2")
        await agent.run("What is my favourite colour?", memory=m2)
        received = llm.calls[-1]
        assert received[0].content == "You help Ann."
        assert "user: My favourite colour is teal." in _system_texts(received)
        await agent.run("When does my passport expire?", memory=m2)
        assert "Ann's passport expires in 2031." in _system_texts(llm.calls[-1])

    asyncio.run(run())


def test_agent_context_with_memory_serialises(mem: Any) -> None:
    llm = ScriptedAgentLLM(_agent_script)
    agent = FunctionAgent(tools=MemOSToolSpec(mem, user_id="ann").to_tool_list(), llm=llm)

    async def run() -> None:
        ctx = Context(agent)
        await agent.run("My cat is called Miso.", memory=_memory(mem, "s1"), ctx=ctx)
        payload = json.dumps(ctx.to_dict())  # the memory lives in the context store
        restored = Context.from_dict(agent, json.loads(payload))
        memory = await restored.store.get("memory")
        assert isinstance(memory, MemOSMemory) and memory.memos is mem and memory.session_id == "s1"
        assert [m.content for m in await memory.aget_all()] == ["My cat is called Miso.", "Done."]
        await agent.run("What is my cat called?", ctx=restored)
        assert [m.content for m in llm.calls[-1] if m.role.value == "user"][-2:] == [
            "My cat is called Miso.", "What is my cat called?"]

    asyncio.run(run())


def _react_script(messages: Sequence[ChatMessage], tools: Any) -> ChatMessage:
    return ChatMessage(role="assistant", content="Thought: I can answer without using any more tools.\n"
                                                 "Answer: Done.")


def test_react_agent_and_agent_workflow(mem: Any) -> None:
    llm = ScriptedAgentLLM(_react_script)
    tools = MemOSToolSpec(mem, user_id="ann").to_tool_list()
    react = ReActAgent(tools=tools, llm=llm, system_prompt="You help Ann.")

    async def run() -> None:
        m1 = _memory(mem, "s1")
        for text in SESSION_1:
            assert str(await react.run(text, memory=m1)) == "Done."
        await react.run("What is my favourite colour?", memory=_memory(mem, "s2"))
        assert "user: My favourite colour is teal." in text_of(llm.calls[-1])
        # ReActAgent replaces the first system message of its input with its own header: without a system
        # prompt the memory notices and puts the memories into the user message instead (no silent drop)
        bare = ReActAgent(tools=tools, llm=llm)
        await bare.run("Where am I travelling?", memory=_memory(mem, "s4", insert_method="user"))
        assert "Kyoto in April" in [m.content for m in llm.calls[-1] if m.role.value == "user"][-1]
        await bare.run("Which trip am I planning in April?", memory=_memory(mem, "s5"))
        assert "Kyoto in April" in text_of(llm.calls[-1])
        assert "Kyoto in April" in [m.content for m in llm.calls[-1] if m.role.value == "user"][-1]
        await AgentWorkflow(agents=[ReActAgent(name="r", description="d", tools=tools, llm=llm)]).run(
            user_msg="Remind me of my April trip plans", memory=_memory(mem, "s6"))
        assert "Kyoto in April" in text_of(llm.calls[-1])
        # with a system prompt the block stays a system message (ReAct keeps the second one)
        await react.run("What trip to Kyoto?", memory=_memory(mem, "s7"))
        assert "Kyoto in April" in _system_texts(llm.calls[-1])

        fn_llm = ScriptedAgentLLM(_agent_script)
        workflow = AgentWorkflow(agents=[FunctionAgent(name="helper", description="Helps Ann.", llm=fn_llm,
                                                       tools=MemOSToolSpec(mem, user_id="ann").to_tool_list())])
        await workflow.run(user_msg="Where am I travelling in April?", memory=_memory(mem, "s3"))
        assert "Kyoto in April" in _system_texts(fn_llm.calls[-1])

    asyncio.run(run())


@pytest.mark.records_backends
def test_tool_spec(mem: Any) -> None:
    spec = MemOSToolSpec(mem, user_id="ann", session_id="t1")
    tools = {t.metadata.name: t for t in spec.to_tool_list()}
    assert set(tools) == {"search_memory", "save_memory", "update_memory", "forget_memory"}
    assert "memory_id" in json.dumps(tools["forget_memory"].metadata.get_parameters_dict())

    saved = tools["save_memory"].call(content="Ann is allergic to peanuts.")
    assert "saved" in saved.content
    found = tools["search_memory"].call(query="allergies peanuts").content
    memory_id = found.split("[", 1)[1].split("]", 1)[0]
    assert "Ann is allergic to peanuts." in found and "(v1," in found

    upd = tools["update_memory"].call(memory_id=memory_id, content="Ann is allergic to peanuts and shellfish.")
    assert "version 2" in upd.content
    assert [v.version for v in mem.history(memory_id)] == [1, 2]

    # another user's tools cannot see or touch Ann's memory
    bob = {t.metadata.name: t for t in MemOSToolSpec(mem, user_id="bob").to_tool_list()}
    assert "No memories found" in bob["search_memory"].call(query="peanuts shellfish").content
    with pytest.raises(KeyError, match="no memory"):
        bob["forget_memory"].call(memory_id=memory_id)

    async def arun() -> None:
        assert "shellfish" in (await tools["search_memory"].acall(query="shellfish")).content
        assert "forgotten" in (await tools["forget_memory"].acall(memory_id=memory_id)).content
        assert "No memories found" in (await tools["search_memory"].acall(query="shellfish peanuts")).content
        again = await tools["save_memory"].acall(content="Ann prefers window seats.")
        assert "saved" in again.content

    asyncio.run(arun())
    assert mem.get(memory_id, include_deleted=True).state.value == "deleted"  # a tombstone, restorable

    hard = {t.metadata.name: t for t in MemOSToolSpec(mem, user_id="ann", hard_forget=True).to_tool_list()}
    other = hard["search_memory"].call(query="window seats").content.split("[", 1)[1].split("]", 1)[0]
    assert "erased" in hard["forget_memory"].call(memory_id=other).content
    gone = mem.cubes["default"].lookup(other)
    assert gone is None or gone.state.value == "purged"  # content erased
    with pytest.raises(KeyError):
        mem.get(other)


def test_engine_chat_history_argument_reset_and_empty_message(mem: Any) -> None:
    llm = RecordingLLM(reply=lambda messages: f"Reply {len(llm.calls)}.")
    memory = _memory(mem, "s1")
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)
    history = [ChatMessage(role="user", content="I run marathons."), ChatMessage(role="assistant", content="Wow.")]
    engine.chat("How far is a marathon?", chat_history=history)  # LlamaIndex: memory.set(chat_history) first
    assert [m.content for m in engine.chat_history] == ["I run marathons.", "Wow.", "How far is a marathon?",
                                                        "Reply 1."]
    count = len(mem.cubes["default"].list(limit=100))
    assert count == 4
    engine.chat("", chat_history=history + [ChatMessage(role="user", content="How far is a marathon?")])
    # set() read nothing (all known), the empty message is kept in the history but not read; the reply is
    contents = [i.content for i in mem.cubes["default"].list(limit=100)]
    assert len(contents) == count + 1 and contents[-1] == "assistant: Reply 2."
    assert [m.content for m in engine.chat_history][-2:] == ["", "Reply 2."]
    count += 1
    engine.reset()
    assert engine.chat_history == []
    assert len(mem.cubes["default"].list(limit=100)) == count  # long-term memory survives a reset
    engine.chat("Do I do any sport?")
    assert "user: I run marathons." in _system_texts(llm.calls[-1])
