"""MemOSMemory on its own: history + long-term memory, set/reset, bad input, async, serialisation, restarts."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.utils import get_tokenizer

from memos_core import MemCube, MemOSError
from memos_llamaindex import MemOSMemory, register_memos
from test_llamaindex_support import REPO, hashed_embed, new_memos



@pytest.fixture
def mem(tmp_path: Path, open_memos: Any) -> Any:
    """A MemOS data folder; in tests marked ``records_backends`` also a MemOS over a PostgreSQL cube."""
    return open_memos(tmp_path / "memos", embedder=hashed_embed)


def _user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def _assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def _items(mem: Any, **kw: Any) -> list:
    return mem.cubes["default"].list(kw or None, limit=1000)


@pytest.mark.records_backends
def test_fact_from_one_session_is_in_another_sessions_get(mem: Any) -> None:
    s1 = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1")
    s1.put(_user("My favourite colour is teal."))
    s1.put(_assistant("Teal, got it."))
    s2 = MemOSMemory.from_memos(mem, user_id="ann", session_id="s2")
    assert s2.get() == []  # nothing to query with yet: history as is
    s2.put(_user("What is my favourite colour?"))
    out = s2.get()
    assert [m.role.value for m in out] == ["system", "user"]
    assert out[0].content.startswith("## Relevant memories")
    assert "user: My favourite colour is teal." in out[0].content
    # the question itself is in the history; it is not repeated as a memory
    assert "What is my favourite colour" not in out[0].content
    # the stored history is untouched
    assert [m.content for m in s2.get_all()] == ["What is my favourite colour?"]


@pytest.mark.records_backends
def test_messages_already_in_the_prompt_are_not_repeated(mem: Any) -> None:
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1")
    m.put(_user("My dog is called Rex."))
    m.put(_assistant("Rex is a great name."))
    m.put(_user("What is my dog called?"))
    out = m.get()
    assert [x.role.value for x in out] == ["user", "assistant", "user"]  # all memories are already in the window


def test_get_with_input_queries_the_input(mem: Any) -> None:
    MemOSMemory.from_memos(mem, user_id="ann", session_id="s1").put(_user("I work as a nurse in Lisbon."))
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s2")
    out = m.get(input="Where do I work?")
    assert out[0].role.value == "system" and "nurse in Lisbon" in out[0].content
    out = m.get(input=ChatMessage(role="user", content="what is my job"))
    assert "nurse" in out[0].content


@pytest.mark.records_backends
def test_scopes_do_not_leak(mem: Any) -> None:
    MemOSMemory.from_memos(mem, user_id="ann", session_id="a1").put(_user("My password hint is pelican."))
    bob = MemOSMemory.from_memos(mem, user_id="bob", session_id="b1")
    bob.put(_user("What is my password hint? pelican?"))
    assert all("pelican." not in (x.content or "") or x.role.value == "user" for x in bob.get())
    assert bob.get()[0].role.value == "user"


def test_insert_methods_and_existing_system_message(mem: Any) -> None:
    MemOSMemory.from_memos(mem, user_id="ann", session_id="s1").put(_user("My sister Mia lives in Porto."))
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s2")
    m.set([ChatMessage(role="system", content="Be kind."), _user("Where does Mia live?")])
    out = m.get()
    assert [x.role.value for x in out] == ["system", "user"]
    assert out[0].content.startswith("Be kind.") and "Mia lives in Porto" in out[0].content
    assert m.get_all()[0].content == "Be kind."  # stored system prompt unchanged

    u = MemOSMemory.from_memos(mem, user_id="ann", session_id="s3", insert_method="user")
    u.put(_user("Where does Mia live?"))
    out = u.get()
    assert [x.role.value for x in out] == ["user"]
    assert "Mia lives in Porto" in out[0].content and out[0].content.endswith("Where does Mia live?")
    assert u.get_all()[0].content == "Where does Mia live?"


def test_memory_token_budget_bounds_the_memory_message(mem: Any) -> None:
    w = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1")
    w.put_messages([_user(f"Fact number {i}: my cat likes fish and long naps in the sun.") for i in range(12)])
    tok = get_tokenizer()
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s2", k=12, memory_token_budget=60)
    out = m.get(input="What does my cat like?")
    assert out[0].role.value == "system" and len(tok(out[0].content)) <= 60
    assert "cat likes fish" in out[0].content


@pytest.mark.records_backends
def test_set_reads_only_new_messages_and_reset_keeps_long_term(mem: Any) -> None:
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1")
    m.put(_user("I moved to Lisbon."))
    assert len(_items(mem)) == 1
    m.set([_user("I moved to Lisbon."), _assistant("Welcome to Lisbon!"), _user("I have two cats.")])
    assert sorted(i.content for i in _items(mem)) == [
        "assistant: Welcome to Lisbon!", "user: I have two cats.", "user: I moved to Lisbon."]
    assert [x.content for x in m.get_all()] == ["I moved to Lisbon.", "Welcome to Lisbon!", "I have two cats."]
    m.reset()
    assert m.get_all() == [] and m.get() == []
    assert len(_items(mem)) == 3  # long-term memory stays
    m.set([])
    assert m.get_all() == []


@pytest.mark.records_backends
def test_what_is_read_into_long_term_memory(mem: Any) -> None:
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1", speaker_names={"user": "Ann"})
    m.put_messages([
        ChatMessage(role="system", content="You are a helpful assistant."),
        _user("I love hiking."),
        ChatMessage(role="assistant", content=""),  # e.g. a tool-call-only message
        ChatMessage(role="tool", content="tool output", additional_kwargs={"tool_call_id": "1"}),
        _user(""),
    ])
    items = _items(mem)
    assert [i.content for i in items] == ["Ann: I love hiking."]
    it = items[0]
    assert it.scope.user_id == "ann" and it.scope.session_id == "s1"
    assert it.provenance.session_id == "s1" and it.provenance.source_ids
    assert len(m.get_all()) == 5  # the history keeps everything, like LlamaIndex's Memory
    assert m.last_add_result is not None and m.last_add_result.ok


def test_bad_input_is_rejected_before_anything_is_written(mem: Any) -> None:
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1")
    m.put(_user("first"))
    for bad in ("hello", None, {"role": "user", "content": "x"}, 42):
        with pytest.raises(TypeError, match="ChatMessage"):
            m.put(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1"):
        m.put_messages([_user("ok"), "not a message"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        m.set("abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        asyncio.run(m.aput("abc"))  # type: ignore[arg-type]
    assert [x.content for x in m.get_all()] == ["first"]
    assert len(_items(mem)) == 1
    m.put_messages([])  # LlamaIndex's Memory crashes here; an empty list is a no-op
    assert m.get(input="") == m.get_all()  # blank input: the latest message is the query
    assert m.get(input="   ")[-1].content == "first"


def test_core_errors_propagate_and_nothing_half_written(mem: Any) -> None:
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1", cube="nope")
    with pytest.raises(MemOSError):
        m.put(_user("hello"))
    assert m.get_all() == []


@pytest.mark.records_backends
def test_async_api_is_native(mem: Any) -> None:
    async def run() -> None:
        w = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1")
        await w.aput(_user("My bike is red."))
        await w.aput_messages([_assistant("Nice bike."), _user("It has a basket.")])
        assert [x.content for x in await w.aget_all()] == ["My bike is red.", "Nice bike.", "It has a basket."]
        r = MemOSMemory.from_memos(mem, user_id="ann", session_id="s2")
        await r.aset([_user("What colour is my bike?")])
        out = await r.aget()
        assert out[0].role.value == "system" and "My bike is red." in out[0].content
        await r.areset()
        assert await r.aget_all() == []

    asyncio.run(run())


@pytest.mark.records_backends
def test_to_dict_from_dict_pickle_deepcopy(mem: Any) -> None:
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1", k=3, memory_token_budget=200)
    m.put_messages([_user("I play the cello."), _assistant("Lovely.")])
    data = json.loads(m.to_json())
    assert data["class_name"] == "MemOSMemory"
    if mem.store_url is None:  # a data folder
        assert data["memos_path"] == str(Path(mem.path).resolve()) and data["memos_index"] is None
    else:  # PostgreSQL: the store URL (a new process opens that, not the local folder) and its Chroma server
        assert (data["memos_path"], data["memos_index"]) == (mem.store_url, mem.cubes["default"].index.url)
    assert [c["blocks"][0]["text"] for c in data["chat_history"]] == ["I play the cello.", "Lovely."]
    for clone in (MemOSMemory.from_dict(data), pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert clone.memos is mem  # the live MemOS of this process is reused
        assert (clone.user_id, clone.session_id, clone.k, clone.memory_token_budget) == ("ann", "s1", 3, 200)
        assert [x.content for x in clone.get_all()] == ["I play the cello.", "Lovely."]
    moved = MemOSMemory.from_dict({**data, "memos_path": "/old/place"}, memos=mem)  # an explicit MemOS wins
    assert moved.memos is mem and moved.memos_path == data["memos_path"]
    # restoring does not read the history into long-term memory again
    assert len(_items(mem)) == 2
    c = copy.deepcopy(m)
    c.put(_user("copy only"))
    assert len(m.get_all()) == 2


def test_durable_chat_store(tmp_path: Path, mem: Any) -> None:
    uri = f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}"
    m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1", chat_store_uri=uri)
    m.put(_user("Remember the milk."))
    assert "chat_history" not in m.to_dict()  # the store keeps it
    again = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1", chat_store_uri=uri)
    assert [x.content for x in again.get_all()] == ["Remember the milk."]


def test_from_defaults_and_from_cube(tmp_path: Path) -> None:
    m = MemOSMemory.from_defaults(str(tmp_path / "data"), embedder=hashed_embed, user_id="ann", session_id="s1",
                                  chat_history=[_user("I speak Portuguese.")])
    assert [i.content for i in m.memos.cubes["default"].list()] == ["user: I speak Portuguese."]
    assert [x.content for x in m.get_all()] == ["I speak Portuguese."]

    cube = MemCube(tmp_path / "cubes" / "ann", embedder=hashed_embed)
    cm = MemOSMemory.from_cube(cube, user_id="ann", session_id="s1")
    assert cm.cube == "ann" and cm.memos.cubes["ann"] is cube
    cm.put(_user("I collect stamps."))
    assert [i.content for i in cube.list()] == ["user: I collect stamps."]
    with_memos = MemOSMemory.from_cube(tmp_path / "cubes" / "ann", memos=cm.memos, session_id="s2", user_id="ann")
    assert with_memos.cube == "ann"
    assert "I collect stamps." in with_memos.get(input="stamps")[0].content
    cm.memos.close()
    cube.close()
    m.memos.close()


_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from test_llamaindex_support import hashed_embed
from memos_core import MemOS
from memos_llamaindex import MemOSMemory
from llama_index.core.llms import ChatMessage
mem = MemOS({path!r}, embedder=hashed_embed)
m = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1", chat_store_uri={uri!r})
m.put(ChatMessage(role="user", content="My boat is called Albatross."))
m.put(ChatMessage(role="assistant", content="What a fine name."))
print("written")
"""

def _run(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240,
                         cwd=str(REPO))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_persistence_across_process_restarts(tmp_path: Path) -> None:
    """A process writes and exits; a new one (this test) finds the history and the memories."""
    path, uri = str(tmp_path / "memos"), f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}"
    tests = str(Path(__file__).parent)
    assert _run(textwrap.dedent(_WRITER.format(tests=tests, path=path, uri=uri))) == "written"
    mem = register_memos(new_memos(Path(path)))
    try:
        saved = {"class_name": "MemOSMemory", "memos_path": path, "user_id": "ann", "session_id": "s1",
                 "chat_store_uri": uri}
        old = MemOSMemory.from_dict(saved)
        assert old.memos is mem
        assert [m.content for m in old.get_all()] == ["My boat is called Albatross.", "What a fine name."]
        new = MemOSMemory.from_dict({**saved, "session_id": "s2"})
        new.put(_user("What is my boat called?"))
        prompt = new.get()
        assert prompt[0].role.value == "system" and "user: My boat is called Albatross." in prompt[0].content
        assert prompt[-1].content == "What is my boat called?"
    finally:
        mem.close()


def test_register_memos_rejects_other_objects() -> None:
    with pytest.raises(TypeError):
        register_memos("not a memos")  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # checked when built: a MemOS, a view of one, a MemCube or a folder path
        MemOSMemory(memos=42, user_id="ann")  # type: ignore[arg-type]


def test_llm_reader_extracts_facts_from_put_messages(tmp_path: Path) -> None:
    """With an LLM (any LlamaIndex LLM) the MemOS reader turns chat messages into facts; the adapter only
    passes the messages on."""
    from test_llamaindex_support import RecordingLLM

    def reply(messages: Any) -> str:
        prompt = messages[-1].content or ""
        if "New facts:" in prompt:
            return json.dumps({"decisions": [{"fact": "F1", "op": "ADD"}]})
        if "teal" in prompt.split("Turns:", 1)[-1]:
            return json.dumps({"facts": [{"text": "Ann's favourite colour is teal", "kind": "preference",
                                          "turns": ["T1"]}]})
        return json.dumps({"facts": []})

    reader = RecordingLLM(reply=reply)
    m = MemOSMemory.from_defaults(str(tmp_path / "data"), embedder=hashed_embed, llm=reader, user_id="ann",
                                  session_id="s1")
    try:
        m.put(_user("By the way, my favourite colour is teal."))
        assert reader.prompts, "the reader LLM was asked"
        res = m.last_add_result
        assert res is not None and res.mode == "llm" and [i.content for i in res.added] == [
            "Ann's favourite colour is teal"]
        assert res.added[0].kind.value == "preference" and res.added[0].provenance.session_id == "s1"
        other = MemOSMemory.from_memos(m.memos, user_id="ann", session_id="s2")
        assert "Ann's favourite colour is teal" in other.get(input="Which colour do I like?")[0].content
    finally:
        m.memos.close()


def test_a_memory_on_postgresql_is_restored_without_its_memos(pg_server: Any, chroma_server: Any, minilm: Any,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A memory saved (to_json) over a MemOS on a PostgreSQL store comes back, once no MemOS for it is open (as in
    a new process), on the same PostgreSQL cube and Chroma server -- not on a new local folder; the saved dict
    carries no password. (The MemOS is built with the default embedder, which a restore opens with.)"""
    from memos_core import MemOS
    from pg_server import fresh_schema_name

    base = pg_server.url()
    url = base.replace("://memos@", "://memos:s3cret@", 1) + "?cube=" + fresh_schema_name("li")  # trust: ignored
    assert ":s3cret@" in url
    uri = f"sqlite+aiosqlite:///{tmp_path / 'chat.sqlite3'}"
    with MemOS(url, index=chroma_server.url, workdir=tmp_path / "w1", embedder=minilm) as writer:
        m = MemOSMemory.from_memos(writer, user_id="ann", session_id="s1", chat_store_uri=uri)
        m.put(_user("My boat is called Albatross."))
        saved = m.to_json()
    assert "s3cret" not in saved
    data = json.loads(saved)
    assert data["memos_path"] == url.replace(":s3cret", "") and data["memos_index"] == chroma_server.url
    monkeypatch.delenv("MEMOS_INDEX", raising=False)  # the saved index is used
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # this process's local folder for the store
    restored = MemOSMemory.from_dict(data)
    try:
        assert restored.memos.store_url == data["memos_path"]
        assert restored.memos.cubes["default"].records.backend == "postgresql"
        assert [x.content for x in restored.get_all()] == ["My boat is called Albatross."]
        other = MemOSMemory.from_dict({**data, "session_id": "s2", "chat_history": []})
        other.put(_user("What is my boat called?"))
        assert "My boat is called Albatross." in other.get()[0].content  # long-term memory, from PostgreSQL
    finally:
        restored.memos.close()
    # a block over the PostgreSQL cube itself (from_cube: a MemOS over that cube only) is restored the same way
    from memos_core import MemCube
    from memos_llamaindex import MemOSMemoryBlock

    with MemCube(url, index=chroma_server.url, workdir=tmp_path / "w2" / "boats", embedder=minilm) as cube:
        block = MemOSMemoryBlock.from_cube(cube, user_id="ann")
        dumped, cube_name = block.model_dump(), block.cube
        block.memos.close()  # the MemOS over the cube; the cube itself is closed by the with
    assert dumped["memos_path"] == data["memos_path"] and dumped["memos_index"] == chroma_server.url
    again = MemOSMemoryBlock.model_validate(dumped)
    try:
        assert again.memos.cubes[cube_name].records.backend == "postgresql"
        assert "Albatross" in asyncio.run(again.aget([_user("what is my boat called?")]))
    finally:
        again.memos.close()


def test_a_saved_store_url_never_carries_a_password() -> None:
    from types import SimpleNamespace

    from memos_llamaindex._common import memos_spec

    for url, saved in [("postgresql://memos:s3cret@db:5432/m?cube=a&pool_size=4",
                        "postgresql://memos@db:5432/m?cube=a&pool_size=4"),
                       ("postgresql://memos@db/m?password=s3cret&cube=a", "postgresql://memos@db/m?cube=a"),
                       ("postgresql://memos@db/m?cube=a%2Fb", "postgresql://memos@db/m?cube=a%2Fb")]:
        mem = SimpleNamespace(store_url=url, principal="local", cubes={}, default_cube="default")
        assert memos_spec(mem) == (saved, "local")  # type: ignore[arg-type]
