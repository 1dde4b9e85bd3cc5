"""The in-process chat history of ``MemOSMemory`` (no ``chat_store_uri``) behaves as LlamaIndex's SQL chat store.

``MemOSMemory`` keeps its short-term history in LlamaIndex's ``Memory``; without ``chat_store_uri`` the rows live
in a list of the process (``_ProcessChatStore``) instead of an in-memory aiosqlite database, which cost 5-30 ms per
``put``. A user relies on the history behaving the same: order, status (active / archived by the token window),
limits and offsets, deletes, keys, and messages coming back equal (copies: changing one read changes nothing
stored). Checked here operation by operation against ``SQLAlchemyChatStore`` on the in-memory URI.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage, MessageRole  # noqa: E402
from llama_index.core.storage.chat_store.sql import MessageStatus, SQLAlchemyChatStore  # noqa: E402

from memos_llamaindex.memory import IN_MEMORY_URI, _ProcessChatStore  # noqa: E402

A, X = MessageStatus.ACTIVE, MessageStatus.ARCHIVED


def _msgs(prefix: str, n: int) -> list[ChatMessage]:
    roles = [MessageRole.USER, MessageRole.ASSISTANT]
    return [ChatMessage(role=roles[i % 2], content=f"{prefix} {i}", additional_kwargs={"n": i, "tags": [prefix]})
            for i in range(n)]


def _dump(out: object) -> object:
    if isinstance(out, list):
        return [m.model_dump() if isinstance(m, ChatMessage) else m for m in out]
    return out.model_dump() if isinstance(out, ChatMessage) else out


SCRIPT: list[tuple[str, tuple, dict]] = [
    ("get_keys", (), {}),
    ("add_message", ("s1", _msgs("hello", 1)[0]), {}),
    ("add_messages", ("s1", _msgs("turn", 7)), {}),
    ("add_messages", ("s2", _msgs("other", 3)), {}),
    ("add_message", ("s2", _msgs("archived", 1)[0]), {"status": X}),
    ("get_messages", ("s1",), {}),
    ("get_messages", ("s1",), {"limit": 3}),
    ("get_messages", ("s1",), {"offset": 2, "limit": 4}),
    ("get_messages", ("s1",), {"offset": 6}),
    ("get_messages", ("s2",), {"status": None}),
    ("get_messages", ("s2",), {"status": X}),
    ("count_messages", ("s1",), {}),
    ("count_messages", ("s2",), {"status": None}),
    ("archive_oldest_messages", ("s1", 3), {}),
    ("get_messages", ("s1",), {}),
    ("get_messages", ("s1",), {"status": X}),
    ("count_messages", ("s1",), {"status": X}),
    ("delete_oldest_messages", ("s1", 2), {}),
    ("get_messages", ("s1",), {"status": None}),
    ("delete_message", ("s1", 4), {}),  # ids count from 1 in insertion order, as the SQL table's
    ("delete_message", ("s1", 4), {}),
    ("delete_message", ("s2", 2), {}),  # another key's id: nothing
    ("get_messages", ("s1",), {"status": None}),
    ("delete_messages", ("s2",), {"status": A}),
    ("get_messages", ("s2",), {"status": None}),
    ("set_messages", ("s1", _msgs("fresh", 2)), {}),
    ("get_messages", ("s1",), {"status": None}),
    ("archive_oldest_messages", ("missing", 2), {}),
    ("delete_oldest_messages", ("missing", 2), {}),
    ("delete_messages", ("s2",), {}),
    ("count_messages", ("s2",), {"status": None}),
]


def test_same_results_as_the_sql_chat_store_operation_by_operation() -> None:
    async def run(store: object) -> list[object]:
        out = []
        for name, args, kwargs in SCRIPT:
            got = await getattr(store, name)(*args, **kwargs)
            out.append(sorted(got) if name == "get_keys" else _dump(got))
        out.append(sorted(await store.get_keys()))  # type: ignore[attr-defined]
        return out

    sql = asyncio.run(run(SQLAlchemyChatStore(table_name="t", async_database_uri=IN_MEMORY_URI)))
    mine = asyncio.run(run(_ProcessChatStore()))
    for step, (a, b) in enumerate(zip(sql, mine)):
        assert a == b, f"step {step}: {SCRIPT[step][0] if step < len(SCRIPT) else 'get_keys'}"
    assert len(sql) == len(mine)


def test_a_read_is_a_copy() -> None:
    async def run() -> None:
        store = _ProcessChatStore()
        await store.add_messages("s", _msgs("kept", 2))
        first = await store.get_messages("s")
        first[0].additional_kwargs["tags"].append("changed")
        first[0].blocks[0].text = "changed"  # type: ignore[union-attr]
        again = await store.get_messages("s")
        assert again[0].content == "kept 0" and again[0].additional_kwargs["tags"] == ["kept"]

    asyncio.run(run())


def test_memos_memory_history_without_uri_matches_one_with_the_sql_store(tmp_path) -> None:
    """The token window flushes (archives) the same messages on both stores; get/get_all/reset agree."""
    from conftest import hashed_embed

    from memos_core import MemOS
    from memos_llamaindex import MemOSMemory

    with MemOS(tmp_path / "m", embedder=hashed_embed) as mem:
        plain = MemOSMemory.from_memos(mem, user_id="ann", session_id="s1", token_limit=60)
        sql = MemOSMemory.from_memos(mem, user_id="bob", session_id="s1", token_limit=60,
                                     chat_store_uri=IN_MEMORY_URI)
        assert plain.short_term.sql_store.__class__.__name__ == "_ProcessChatStore"
        for i in range(12):
            msg = ChatMessage(role=MessageRole.USER if i % 2 == 0 else MessageRole.ASSISTANT,
                              content=f"message {i} about the ferry timetable to the northern islands")
            plain.put(msg)
            sql.put(msg)
        assert [m.content for m in plain.get_all()] == [m.content for m in sql.get_all()]
        active = plain.short_term.get_all(status=MessageStatus.ACTIVE)
        assert [m.content for m in active] == [m.content for m in sql.short_term.get_all(status=MessageStatus.ACTIVE)]
        assert 0 < len(active) < 12  # the token window archived the oldest ones
        assert plain.to_dict()["chat_history"] == [m.model_dump(mode="json") for m in active]
        plain.reset()
        assert plain.get_all() == []


def test_a_message_the_history_cannot_store_is_refused_before_anything_is_written(tmp_path) -> None:
    """A message whose extra fields cannot be stored as JSON (a lone surrogate in ``additional_kwargs``) is a typed
    ValidationError up front: neither long-term memory nor the chat history gets half of the put."""
    from memos_core import MemOS, ValidationError
    from memos_llamaindex.memory import MemOSMemory

    from conftest import hashed_embed

    with MemOS(tmp_path / "m", embedder=hashed_embed) as mem:
        memory = MemOSMemory.from_memos(mem, user_id="ann")
        bad = ChatMessage(role="user", content="My cat is called Pixel", additional_kwargs={"name": "\ud800"})
        with pytest.raises(ValidationError, match="item 0 cannot be stored in the chat history"):
            memory.put(bad)
        with pytest.raises(ValidationError):
            asyncio.run(memory.aput_messages([ChatMessage(role="user", content="fine"), bad]))
        assert memory.get_all() == []
        assert mem.search("Pixel cat", user_id="ann", k=5) == []
