"""MemOSMemoryBlock inside LlamaIndex's Memory, and MemOSRetriever (alone and in a RetrieverQueryEngine)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any, List

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory, StaticMemoryBlock
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode

from memos_core import MemCube
from memos_llamaindex import MemOSMemoryBlock, MemOSRetriever
from test_llamaindex_support import RecordingLLM, hashed_embed


@pytest.fixture
def mem(tmp_path: Path, open_memos: Any) -> Any:
    """A MemOS data folder; in tests marked ``records_backends`` also a MemOS over a PostgreSQL cube."""
    return open_memos(tmp_path / "memos", embedder=hashed_embed)


CHAT = [
    ("user", "My dog is called Rex and he loves running on the beach every morning."),
    ("assistant", "Rex sounds like a happy dog, the beach is a great place for him."),
    ("user", "I work as a nurse at the big hospital in Lisbon, mostly night shifts."),
    ("assistant", "Night shifts are hard, I hope you get enough rest between them."),
    ("user", "My sister Mia lives in Porto and visits me every second weekend."),
    ("assistant", "It is lovely that Mia visits you so often."),
]


def _memory(block: MemOSMemoryBlock, session: str, **kw: Any) -> Memory:
    kw.setdefault("token_limit", 200)
    kw.setdefault("chat_history_token_ratio", 0.35)
    kw.setdefault("token_flush_size", 20)
    return Memory.from_defaults(session_id=session, memory_blocks=[block], **kw)


def _put_chat(memory: Memory) -> None:
    for role, text in CHAT:
        memory.put(ChatMessage(role=role, content=text))


@pytest.mark.records_backends
def test_block_receives_flushed_messages_and_contributes_text(mem: Any) -> None:
    block = MemOSMemoryBlock.from_memos(mem, user_id="ann")
    memory = _memory(block, "s1")
    _put_chat(memory)
    active = memory.get_all(status=None)
    window = memory.get()
    flushed = [m for m in active if m.content not in {w.content for w in window}]
    assert flushed, "the window should have flushed the oldest turns"
    items = mem.cubes["default"].list(limit=100)
    assert sorted(i.content for i in items) == sorted(f"{m.role.value}: {m.content}" for m in flushed)
    assert all(i.scope.user_id == "ann" and i.provenance.session_id == "s1" for i in items)

    # the same session, asking about a flushed fact: the block puts it into the system message
    memory.put(ChatMessage(role="user", content="What is my dog called?"))
    out = memory.get()
    assert out[0].role.value == "system"
    system = out[0].content
    assert "<memos_memory>" in system and "## Relevant memories" in system
    assert "Rex" in system

    # another session (a new Memory) sees it too
    other = _memory(MemOSMemoryBlock.from_memos(mem, user_id="ann"), "s2")
    got = other.get(input="Tell me about my dog")
    assert "My dog is called Rex" in got[0].content


def test_block_aget_directly_and_no_query(mem: Any) -> None:
    block = MemOSMemoryBlock.from_memos(mem, user_id="ann", k=2)
    mem.add("user: I grow tomatoes on my balcony.", user_id="ann")

    async def run() -> None:
        assert await block.aget([]) == ""
        assert await block.aget(None) == ""
        assert await block.aget([ChatMessage(role="system", content="rules")]) == ""
        text = await block.aget([ChatMessage(role="user", content="What do I grow?")], session_id="x")
        assert "tomatoes" in text
        await block.aput([ChatMessage(role="user", content="I also grow basil.")], session_id="x")
        assert block.last_add_result is not None and block.last_add_result.ok
        item = block.last_add_result.added[0]
        assert item.provenance.session_id == "x" and item.scope.user_id == "ann"

    asyncio.run(run())



def test_block_rejects_bad_input_before_writing(mem: Any) -> None:
    block = MemOSMemoryBlock.from_memos(mem, user_id="ann")
    before = mem.cubes["default"].count()

    async def run() -> None:
        for bad in ("I grow tomatoes", ChatMessage(role="user", content="x"), [{"role": "user", "content": "x"}],
                    [ChatMessage(role="user", content="ok"), "not a message"]):
            with pytest.raises(TypeError, match="ChatMessage"):
                await block.aput(bad)  # type: ignore[arg-type]

    asyncio.run(run())
    assert mem.cubes["default"].count() == before  # nothing half-written, not even the valid first message

def test_block_ignores_short_term_when_asked(mem: Any) -> None:
    block = MemOSMemoryBlock.from_memos(mem, user_id="ann", accept_short_term_memory=False)
    _put_chat(_memory(block, "s1"))
    assert mem.cubes["default"].list() == []


def test_block_truncation_under_the_token_limit(mem: Any) -> None:
    for i in range(8):
        mem.add(f"user: Fact {i}: my garden has {i + 2} apple trees and a small pond.", user_id="ann")
    block = MemOSMemoryBlock.from_memos(mem, user_id="ann", k=8, priority=1)

    async def run() -> None:
        full = await block.aget([ChatMessage(role="user", content="How many apple trees are in my garden?")])
        assert full.count("apple trees") == 8
        smaller = await block.atruncate(full, 40)
        assert smaller is not None and 0 < smaller.count("apple trees") < 8
        assert await block.atruncate(full, 10_000) is None
        assert await block.atruncate("not mine", 5) is None
        assert await block.atruncate(full, 0) == full

    asyncio.run(run())

    # inside Memory: a tight limit truncates the MemOS block (priority 1), never the priority-0 static block
    static = StaticMemoryBlock(static_content="Always answer in English.", priority=0)
    question = ChatMessage(role="user", content="How many apple trees are in my garden?")
    roomy = Memory.from_defaults(session_id="r", token_limit=2000, memory_blocks=[static, block])
    roomy.put(question)
    tight = Memory.from_defaults(session_id="t", token_limit=120, memory_blocks=[static, block])
    tight.put(question)
    roomy_system, tight_system = roomy.get()[0].content, tight.get()[0].content
    assert roomy_system.count("apple trees") == 8
    assert "Always answer in English." in tight_system
    assert tight_system.count("apple trees") < 8


@pytest.mark.records_backends
def test_block_serialises(mem: Any) -> None:
    block = MemOSMemoryBlock.from_memos(mem, user_id="ann", k=3, token_budget=300, priority=2)
    dumped = block.model_dump()
    # where a restored block finds its MemOS: the data folder, or the store URL and its Chroma server
    where = (str(Path(mem.path).resolve()), None) if mem.store_url is None else \
        (mem.store_url, mem.cubes["default"].index.url)
    assert (dumped["memos_path"], dumped["memos_index"]) == where and dumped["k"] == 3
    for clone in (MemOSMemoryBlock.model_validate(dumped), copy.deepcopy(block)):
        assert clone.memos is mem and (clone.user_id, clone.k, clone.priority) == ("ann", 3, 2)


def _seed(mem: Any) -> List[str]:
    res = mem.add([{"role": "Ann", "content": "I adopted a grey cat called Miso.", "id": "D1:1",
                    "time": "2023-05-08T10:00:00Z"},
                   {"role": "Ben", "content": "Miso is a great name for a cat!", "id": "D1:2",
                    "time": "2023-05-08T10:01:00Z"}], user_id="ann", session_id="chat-1")
    mem.add("user: I drink green tea every morning.", user_id="ann")
    return [i.id for i in res.added]


@pytest.mark.records_backends
def test_retriever_nodes_carry_ids_versions_provenance(mem: Any) -> None:
    ids = _seed(mem)
    mem.update(ids[0], "Ann: I adopted a grey cat called Miso in May.")
    retriever = MemOSRetriever(mem, user_id="ann", k=3)
    nodes = retriever.retrieve("Which grey cat did I adopt?")
    assert nodes and nodes[0].node.node_id == ids[0]
    # nodes come in the fusion's order; each score is the memory's absolute score in [0, 1] (the same as the
    # core's hit.score, which does not depend on the other hits, so it need not decrease down the list)
    hits = mem.search("Which grey cat did I adopt?", user_id="ann", k=3)
    assert [n.node.node_id for n in nodes] == [h.item.id for h in hits]
    assert [n.score for n in nodes] == pytest.approx([h.score for h in hits])
    assert all(0.0 <= n.score <= 1.0 for n in nodes)
    top = nodes[0]
    meta = top.node.metadata
    assert top.node.get_content() == "Ann: I adopted a grey cat called Miso in May."
    assert meta["memory_id"] == ids[0] and meta["version"] == 2 and meta["kind"] == "episode"
    assert meta["source_ids"] == ["D1:1"] and meta["session_id"] == "chat-1" and meta["speaker"] == "Ann"
    assert meta["event_time"].startswith("2023-05-08T10:00:00") and meta["source"] == "conversation"
    assert meta["user_id"] == "ann" and meta["cube_id"] == mem.cubes["default"].cube_id
    assert set(meta["retrievers"]) <= {"dense", "lexical"} and meta["ranks"]
    llm_view = top.node.get_content(metadata_mode=MetadataMode.LLM)
    assert "event_time" in llm_view and "memory_id" not in llm_view and "retrievers" not in llm_view
    assert top.node.get_content(metadata_mode=MetadataMode.EMBED) == top.node.get_content()

    async_nodes = asyncio.run(retriever.aretrieve("Which grey cat did I adopt?"))
    assert [n.node.node_id for n in async_nodes] == [n.node.node_id for n in nodes]
    assert retriever.retrieve("   ") == [] and asyncio.run(retriever.aretrieve("")) == []
    assert MemOSRetriever(mem, user_id="bob").retrieve("cat") == []
    assert [n.node.node_id for n in MemOSRetriever(mem, user_id="ann", filter={"ids": [ids[1]]})
            .retrieve("cat")] == [ids[1]]


def test_retriever_in_a_query_engine(mem: Any) -> None:
    _seed(mem)
    llm = RecordingLLM(reply=lambda messages: "Your cat is called Miso.")
    engine = RetrieverQueryEngine.from_args(MemOSRetriever(mem, user_id="ann", k=2), llm=llm)
    response = engine.query("What is my cat called?")
    assert str(response) == "Your cat is called Miso."
    prompt = "\n".join(m.content or "" for m in llm.calls[-1])
    assert "I adopted a grey cat called Miso." in prompt
    assert "memory_id" not in prompt  # ids stay out of the prompt
    assert ["D1:1"] in [n.node.metadata["source_ids"] for n in response.source_nodes]
    aresponse = asyncio.run(engine.aquery("What is my cat called?"))
    assert str(aresponse) == "Your cat is called Miso."


def test_retriever_from_cube(tmp_path: Path) -> None:
    cube = MemCube(tmp_path / "cubes" / "notes", embedder=hashed_embed)
    cube.add("The wifi password is on the fridge.", user_id="ann")
    retriever = MemOSRetriever.from_cube(cube, user_id="ann")
    assert retriever.cubes == ["notes"]
    assert "fridge" in retriever.retrieve("where is the wifi password")[0].node.get_content()
    with pytest.raises(TypeError):  # checked when built: a MemOS, a view of one, a MemCube or a folder path
        MemOSRetriever(3.5, user_id="ann")  # type: ignore[arg-type]
    # the same constructor rule as every adapter: a MemCube or a cube folder works in place of a MemOS
    assert "fridge" in MemOSRetriever(cube, user_id="ann").retrieve("wifi password")[0].node.get_content()
    retriever.memos.close()
    cube.close()
