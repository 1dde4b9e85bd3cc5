"""Fail-closed user scoping in the LlamaIndex adapters (issue 13, part 1).

``MemOSMemory``, ``MemOSMemoryBlock``, ``MemOSRetriever`` and ``MemOSToolSpec`` learn the user at construction
(LlamaIndex passes no per-run context): without ``user_id``, a user-bound view or ``single_user=True`` they
raise :class:`memos_core.UserRequired` before anything is read or written.
"""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import ChatMessage
from llama_index.core.memory import Memory

from memos_core import PermissionDenied, UserRequired, ValidationError
from memos_core.os import SINGLE_USER
from memos_llamaindex import MemOSMemory, MemOSMemoryBlock, MemOSRetriever, MemOSToolSpec, register_memos
from test_llamaindex_support import hashed_embed

PIN = "My bank PIN is 4321"


@pytest.fixture
def mem(tmp_path: Path, open_memos: Any) -> Any:
    """A MemOS data folder; in tests marked ``records_backends`` also a MemOS over a PostgreSQL cube."""
    m = open_memos(tmp_path / "memos", embedder=hashed_embed)
    m.add([{"role": "ann", "content": PIN}], user_id="ann")
    return m


def test_every_class_refuses_without_a_user(mem: Any) -> None:
    for build in (lambda: MemOSMemory.from_memos(mem), lambda: MemOSMemory.from_memos(mem, session_id="s"),
                  lambda: MemOSMemoryBlock.from_memos(mem), lambda: MemOSRetriever(mem),
                  lambda: MemOSToolSpec(mem), lambda: MemOSRetriever.from_cube(mem.cubes["default"], memos=mem)):
        with pytest.raises(UserRequired) as err:
            build()
        assert isinstance(err.value, PermissionDenied)
        assert "user_id" in str(err.value) and "for_user" in str(err.value) and "single_user=True" in str(err.value)
    # before the change the memory put Ann's PIN into a user-less get(): it cannot even be built now
    with pytest.raises(UserRequired):
        MemOSMemory.from_defaults(memos=mem)


@pytest.mark.records_backends
def test_bound_views_need_no_user_argument_and_refuse_another(mem: Any) -> None:
    bob = mem.for_user("bob")
    memory = MemOSMemory.from_memos(bob, session_id="s1")
    assert memory.user_id == "bob"
    memory.put(ChatMessage(role="user", content="My bank is the blue one"))
    got = memory.get(input="What is my bank PIN?")
    assert all("4321" not in m.content for m in got)
    assert all(i.scope.user_id in ("ann", "bob") for i in mem.cubes["default"].list(limit=50))
    assert {i.scope.user_id for i in mem.cubes["default"].list({"user_id": "bob"}, limit=50)} == {"bob"}
    assert MemOSRetriever(bob).retrieve("bank PIN") == [] or \
        all(n.node.metadata["user_id"] == "bob" for n in MemOSRetriever(bob).retrieve("bank PIN"))
    ann_nodes = MemOSRetriever(mem.for_user("ann")).retrieve("bank PIN")
    assert ann_nodes and "4321" in ann_nodes[0].node.get_content()
    tools = MemOSToolSpec(bob)
    assert "4321" not in tools.search_memory("bank PIN")
    secret_id = ann_nodes[0].node.id_
    with pytest.raises(Exception) as err:  # the id of Ann's memory reads as unknown to Bob's tools
        tools.forget_memory(secret_id)
    assert "no memory" in str(err.value)
    for build in (lambda: MemOSMemory.from_memos(bob, user_id="ann"), lambda: MemOSMemoryBlock.from_memos(bob, user_id="ann"),
                  lambda: MemOSRetriever(bob, user_id="ann"), lambda: MemOSToolSpec(bob, user_id="ann")):
        with pytest.raises(PermissionDenied):
            build()
    # the block inside LlamaIndex's Memory
    block = MemOSMemoryBlock.from_memos(bob)
    li = Memory.from_defaults(session_id="s2", memory_blocks=[block], token_limit=200)
    out = li.get(input="What is my bank PIN?")
    assert all("4321" not in m.content for m in out)


def test_bound_user_survives_serialisation(mem: Any) -> None:
    register_memos(mem)
    memory = MemOSMemory.from_memos(mem.for_user("bob"), session_id="s1")
    data = memory.to_dict()
    assert data["user_id"] == "bob"
    again = MemOSMemory.from_dict(data)
    assert again.user_id == "bob" and again.memos.bound_user is None  # the saved user_id scopes it
    assert pickle.loads(pickle.dumps(memory)).user_id == "bob"
    with pytest.raises(ValidationError):
        register_memos(mem.for_user("bob"))


def test_single_user_mode_is_one_fixed_scope(mem: Any) -> None:
    memory = MemOSMemory.from_memos(mem, session_id="s1", single_user=True)
    memory.put(ChatMessage(role="user", content="My cat is called Tom"))
    assert all("4321" not in m.content for m in memory.get(input="What is my bank PIN?"))
    assert [i.scope.user_id for i in mem.cubes["default"].list({"kinds": ["episode"]}, limit=50)
            if "Tom" in i.content] == [SINGLE_USER]
    assert MemOSRetriever(mem, single_user=True).retrieve("cat Tom")[0].node.metadata["user_id"] == SINGLE_USER
    assert "Tom" in MemOSToolSpec(mem, single_user=True).search_memory("cat")
    block = MemOSMemoryBlock.from_memos(mem, single_user=True)
    assert "Tom" in asyncio.run(block._aget([ChatMessage(role="user", content="what is my cat called?")]))
    with pytest.raises(ValidationError):
        MemOSMemory.from_memos(mem, user_id="ann", single_user=True)
    with pytest.raises(ValidationError):
        MemOSRetriever(mem.for_user("ann"), single_user=True)
