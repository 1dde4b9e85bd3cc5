"""Dict values render as their text, never raw JSON (issue 15, item 5): store items (LangMem writes
``{"content": ...}`` with the default index ``"$"``) in middleware prompts, memory blocks, retrievers and tools."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from langchain.agents.middleware import ModelRequest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.runtime import Runtime
from llama_index.core.llms import ChatMessage

from memos_core import MemOS
from memos_core.os import memory_text, value_text
from memos_langchain import MemOSMiddleware, MemOSRetriever, MemOSStore, create_memory_tools
from memos_langchain.testing import HashingEmbeddings, ScriptedChatModel
from memos_llamaindex import MemOSMemoryBlock, MemOSToolSpec
from memos_llamaindex import MemOSRetriever as LIRetriever

EMB = HashingEmbeddings(64)


def test_value_text_rules() -> None:
    assert value_text({"content": "Ann's cat is Miso"}) == "Ann's cat is Miso"
    assert value_text({"kind": "Memory", "content": {"subject": "Ann", "predicate": "owns", "object": "a cat"}}) \
        == "subject: Ann; predicate: owns; object: a cat"
    assert value_text({"text": "lives in Porto", "topic": "home"}) == "lives in Porto"
    assert value_text({"city": "Porto", "since": 2021, "pets": ["cat", "dog"], "vip": True}) == \
        "city: Porto; since: 2021; pets: cat; dog; vip: true"


def test_store_items_reach_prompts_and_retrievers_as_text(tmp_path: Path) -> None:
    mem = MemOS(tmp_path / "m", embedder=EMB)
    try:
        store = MemOSStore(mem)  # default index: the whole value ("$")
        store.put(("memories", "ann"), "m1", {"content": "Ann's cat is called Miso"})
        store.put(("memories", "ann"), "m2", {"kind": "Memory",
                                              "content": {"subject": "Ann", "predicate": "drinks", "object": "green tea"}})
        assert store.get(("memories", "ann"), "m1").value == {"content": "Ann's cat is called Miso"}  # unchanged
        # an item written as JSON before values were rendered (or JSON any tool saved) renders too
        mem.add("x", user_id="ann")  # something else in Ann's scope
        old = mem.cubes["default"].add('{"content": "Ann was born in Faro"}', user_id="ann")
        shown: list[str] = []
        ann = mem.for_user("ann")
        mw = MemOSMiddleware(ann, k=10, token_budget=2000)
        for q in ("what is Ann's cat called?", "what does Ann drink?", "where was Ann born?"):
            mw.wrap_model_call(ModelRequest(model=ScriptedChatModel(), messages=[HumanMessage(q)],
                                            runtime=Runtime()),
                               lambda r: shown.append(r.system_message.text) or AIMessage("ok"))
        prompt = "\n".join(shown)
        assert "Ann's cat is called Miso" in prompt and "subject: Ann; predicate: drinks; object: green tea" in prompt
        assert "Ann was born in Faro" in prompt and '{"' not in prompt
        docs = MemOSRetriever(memory=ann, k=10).invoke("cat Miso")
        assert "Ann's cat is called Miso" in [d.page_content for d in docs]
        assert all(not d.page_content.startswith("{") for d in docs)
        nodes = LIRetriever(ann, k=10).retrieve("born Faro")
        assert "Ann was born in Faro" in [n.node.get_content() for n in nodes]
        block = MemOSMemoryBlock.from_memos(ann, k=10, token_budget=2000)
        text = asyncio.run(block._aget([ChatMessage(role="user", content="tell me about Ann's cat Miso")]))
        assert "Ann's cat is called Miso" in text and '{"' not in text
        tools = {t.name: t for t in create_memory_tools(ann)}
        assert '{"' not in tools["search_memory"].invoke({"query": "cat Miso tea Faro", "k": 10})
        assert '{"' not in MemOSToolSpec(ann).search_memory("cat Miso tea Faro", k=10)
        assert memory_text(old) == "Ann was born in Faro" and old.content.startswith("{")
    finally:
        mem.close()
