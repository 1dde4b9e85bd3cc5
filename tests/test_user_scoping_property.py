"""Property-based test of user scoping through every adapter (issue 13, part 1): zero cross-user reads.

Random sequences of adds, searches, updates, forgets and reads by several users, each through one of many
channels (the core's user-bound views, the LangChain middleware / tools / retriever, the LangGraph store on
namespaces and on a bound view, the LlamaIndex memory / retriever / tools), plus attempts to reach another
user's memory by id and calls that name no user at all. A reference model knows whose every piece of content
is (each memory carries a unique marker ``zq<n>x``). After every read, the text the channel returned may only
hold markers of the reading user; forgotten and overwritten content never comes back; refused writes change
nothing.

The contents share a small vocabulary across users, so an unscoped search *would* find other users' memories:
a leak is not hidden by unrelated texts. The vector index is the exact in-memory stand-in of the governance
property test (Chroma is covered elsewhere), and the embedder is a 32-dimension hashed bag of words, so a run
takes seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import emb32
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from langchain.agents.middleware import ModelRequest
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import ToolException
from langgraph.runtime import Runtime
from llama_index.core.llms import ChatMessage
from test_governance_property import MemIndex

import memos_core.cube as cube_module
from memos_core import MemOS, NotFound, PermissionDenied, UserRequired
from memos_langchain import MemOSMiddleware, MemOSRetriever, MemOSStore, create_memory_tools
from memos_langchain.testing import ScriptedChatModel
from memos_llamaindex import MemOSMemory, MemOSToolSpec
from memos_llamaindex import MemOSRetriever as LIRetriever

USERS = ["ann", "bob", "cy"]
WORDS = ["tea", "garden", "bank", "code", "travel", "dog", "piano", "lisbon"]
MARK = re.compile(r"zq\d+x")
users = st.sampled_from(USERS)
words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=3)


@dataclass
class Ctx:
    user_id: str


def _by_name(tools: list[Any]) -> dict[str, Any]:
    return {t.name: t for t in tools}


class Scoped(RuleBasedStateMachine):
    total_ops = 0
    nonempty_reads = 0

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="memos-userprop-")
        self.mem = MemOS(os.path.join(self.tmp, "m"), embedder=emb32)
        self.n = 0
        self.owner: dict[str, str] = {}  # marker -> user
        self.live: dict[str, dict[str, str]] = {u: {} for u in USERS}  # user -> memory id -> current marker
        self.gone: set[str] = set()  # markers of forgotten or overwritten content
        self.keys: dict[str, int] = {u: 0 for u in USERS}
        self.views = {u: self.mem.for_user(u) for u in USERS}
        self.lc_tools = {u: _by_name(create_memory_tools(self.views[u])) for u in USERS}
        self.run_tools = _by_name(create_memory_tools(self.mem))  # the user comes from the run
        self.mw = MemOSMiddleware(self.mem, k=10, token_budget=4000)
        self.lc_ret = {u: MemOSRetriever(memory=self.views[u], k=10) for u in USERS}
        self.store = MemOSStore(self.mem, index={"fields": ["text"]})
        self.bound_store = {u: MemOSStore(self.views[u], index={"fields": ["text"]}) for u in USERS}
        self.li_mem = {u: MemOSMemory.from_memos(self.mem, user_id=u, session_id=f"s-{u}", k=10,
                                                 memory_token_budget=4000) for u in USERS}
        self.li_ret = {u: LIRetriever(self.views[u], k=10) for u in USERS}
        self.li_tools = {u: MemOSToolSpec(self.mem, user_id=u, k=10) for u in USERS}

    def teardown(self) -> None:
        self.mem.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ helpers
    def _text(self, user: str, ws: list[str]) -> str:
        self.n += 1
        Scoped.total_ops += 1
        marker = f"zq{self.n}x"
        self.owner[marker] = user
        return f"{user.capitalize()} talks about {' '.join(ws)} note {marker}", marker

    def _check(self, user: str, text: str) -> None:
        """What ``user`` was shown holds only ``user``'s own, current content."""
        Scoped.total_ops += 1
        found = set(MARK.findall(text))
        if found:
            Scoped.nonempty_reads += 1
        for marker in found:
            assert self.owner.get(marker) == user, f"{user} was shown {marker} of {self.owner.get(marker)}: {text!r}"
            assert marker not in self.gone, f"{user} was shown forgotten/overwritten {marker}: {text!r}"

    def _others_id(self, user: str, data: Any) -> str | None:
        ids = [(u, i) for u in USERS if u != user for i in self.live[u]]
        return data.draw(st.sampled_from(ids))[1] if ids else None

    def _own(self, user: str, data: Any) -> str | None:
        ids = sorted(self.live[user])
        return data.draw(st.sampled_from(ids)) if ids else None

    # ------------------------------------------------------------------ writes
    @rule(user=users, ws=words)
    def add_through_bound_view(self, user: str, ws: list[str]) -> None:
        text, marker = self._text(user, ws)
        res = self.views[user].add(text)
        assert res.added and res.added[0].scope.user_id == user
        self.live[user][res.added[0].id] = marker

    @rule(user=users, ws=words)
    def save_through_langchain_tool(self, user: str, ws: list[str]) -> None:
        text, marker = self._text(user, ws)
        out = self.lc_tools[user]["save_memory"].invoke({"content": text})
        self.live[user][re.search(r"(tool-[0-9a-f]+)", out).group(1)] = marker

    @rule(user=users, ws=words)
    def save_through_llamaindex_tool(self, user: str, ws: list[str]) -> None:
        text, marker = self._text(user, ws)
        out = self.li_tools[user].save_memory(text)
        self.live[user][re.search(r"\[([^\]]+)\]", out).group(1)] = marker

    @rule(user=users, ws=words)
    def save_through_middleware(self, user: str, ws: list[str]) -> None:
        text, marker = self._text(user, ws)
        self.n += 1
        state = {"messages": [HumanMessage(text, id=f"h{self.n}"), AIMessage("Noted.", id=f"a{self.n}")]}
        self.mw.after_agent(state, Runtime(context=Ctx(user_id=user)))
        self.owner.setdefault("", "")  # the AI's "Noted." carries no marker
        items = self.mem.cubes["default"].list({"user_id": user, "metadata": {}}, limit=1000)
        [item] = [it for it in items if marker in it.content]
        self.live[user][item.id] = marker

    @rule(user=users, ws=words)
    def put_through_llamaindex_memory(self, user: str, ws: list[str]) -> None:
        text, marker = self._text(user, ws)
        self.li_mem[user].put(ChatMessage(role="user", content=text))
        res = self.li_mem[user].last_add_result
        assert res is not None and res.added
        self.live[user][res.added[0].id] = marker

    @rule(user=users, ws=words, bound=st.booleans())
    def put_through_store(self, user: str, ws: list[str], bound: bool) -> None:
        text, marker = self._text(user, ws)
        self.keys[user] += 1
        key = f"k{self.keys[user] % 3}"  # keys repeat: a put may overwrite the user's earlier value
        store, ns = (self.bound_store[user], ("notes",)) if bound else (self.store, ("memories", user))
        mid = store.memory_id(ns, key)
        old = self.live[user].get(mid)
        store.put(ns, key, {"text": text})
        if old is not None:
            self.gone.add(old)
        self.live[user][mid] = marker

    # ------------------------------------------------------------------ reads
    @rule(user=users, ws=words, channel=st.sampled_from(["view", "context", "lc_ret", "lc_tool", "run_tool",
                                                          "middleware", "store", "bound_store", "li_mem",
                                                          "li_ret", "li_tool"]))
    def search(self, user: str, ws: list[str], channel: str) -> None:
        q = " ".join(ws)
        if channel == "view":
            text = "\n".join(h.item.content for h in self.views[user].search(q, k=20))
        elif channel == "context":
            text = self.views[user].get_context(q, k=20, token_budget=5000)
        elif channel == "lc_ret":
            text = "\n".join(d.page_content for d in self.lc_ret[user].invoke(q))
        elif channel == "lc_tool":
            text = self.lc_tools[user]["search_memory"].invoke({"query": q, "k": 20})
        elif channel == "run_tool":  # the user from the run's config, as LangGraph's ToolRuntime carries it
            runtime = type("R", (), {"context": None, "config": {"configurable": {"user_id": user}}})()
            text = self.run_tools["search_memory"].func(query=q, k=20, runtime=runtime)
        elif channel == "middleware":
            seen: list[str] = []
            request = ModelRequest(model=ScriptedChatModel(), messages=[HumanMessage(q)],
                                   runtime=Runtime(context=Ctx(user_id=user)))
            self.mw.wrap_model_call(request, lambda r: seen.append(r.system_message.text if r.system_message
                                                                    else "") or AIMessage("ok"))
            text = "\n".join(seen)
        elif channel == "store":
            text = "\n".join(i.value["text"] for i in self.store.search(("memories", user), query=q, limit=20))
        elif channel == "bound_store":
            text = "\n".join(i.value["text"] for i in self.bound_store[user].search(("notes",), query=q, limit=20))
            text += "\n".join(str(ns) for ns in self.bound_store[user].list_namespaces())
        elif channel == "li_mem":  # the memory block (the chat history is the user's own conversation)
            text = "\n".join(m.content or "" for m in self.li_mem[user].get(input=q) if m.role.value == "system")
        elif channel == "li_ret":
            text = "\n".join(n.node.get_content() for n in self.li_ret[user].retrieve(q))
        else:
            text = self.li_tools[user].search_memory(q, k=20)
        self._check(user, text)

    @rule(user=users, data=st.data())
    def read_own_by_id(self, user: str, data: Any) -> None:
        mid = self._own(user, data)
        if mid is None:
            return
        item = self.views[user].get(mid)
        assert item.scope.user_id == user
        self._check(user, item.content)

    # ------------------------------------------------------------------ updates and forgets
    @rule(user=users, ws=words, data=st.data(), channel=st.sampled_from(["view", "lc_tool", "li_tool"]))
    def update_own(self, user: str, ws: list[str], data: Any, channel: str) -> None:
        mid = self._own(user, data)
        if mid is None or mid.startswith("lg-"):  # store items change through put
            return
        text, marker = self._text(user, ws)
        if channel == "view":
            self.views[user].update(mid, text)
        elif channel == "lc_tool":
            assert "Updated" in self.lc_tools[user]["update_memory"].invoke({"memory_id": mid, "content": text})
        else:
            self.li_tools[user].update_memory(mid, text)
        self.gone.add(self.live[user][mid])
        self.live[user][mid] = marker

    @rule(user=users, data=st.data(), channel=st.sampled_from(["view", "lc_tool", "li_tool"]))
    def forget_own(self, user: str, data: Any, channel: str) -> None:
        mid = self._own(user, data)
        if mid is None or mid.startswith("lg-"):
            return
        if channel == "view":
            self.views[user].delete(mid)
        elif channel == "lc_tool":
            assert "Forgot" in self.lc_tools[user]["forget_memory"].invoke({"memory_id": mid})
        else:
            self.li_tools[user].forget_memory(mid)
        self.gone.add(self.live[user].pop(mid))

    @rule(user=users, ws=words, data=st.data(),
          channel=st.sampled_from(["get", "update", "delete", "forget", "lc_update", "lc_forget", "li_update",
                                   "li_forget", "search_as"]))
    def reach_for_another_users_memory(self, user: str, ws: list[str], data: Any, channel: str) -> None:
        mid = self._others_id(user, data)
        if mid is None:
            return
        view = self.views[user]
        before = self.mem.get(mid, include_deleted=True)
        if channel in ("get", "update", "delete", "forget"):
            call = {"get": lambda: view.get(mid), "update": lambda: view.update(mid, "hijacked zq0x"),
                    "delete": lambda: view.delete(mid), "forget": lambda: view.forget(mid)}[channel]
            with pytest.raises(NotFound):
                call()
        elif channel in ("lc_update", "lc_forget"):
            tool = self.lc_tools[user]["update_memory" if channel == "lc_update" else "forget_memory"]
            args = {"memory_id": mid, "content": "hijacked zq0x"} if channel == "lc_update" else {"memory_id": mid}
            assert "no memory" in tool.invoke(args)  # a tool error the model reads; nothing revealed
        elif channel in ("li_update", "li_forget"):
            with pytest.raises(NotFound):
                if channel == "li_update":
                    self.li_tools[user].update_memory(mid, "hijacked zq0x")
                else:
                    self.li_tools[user].forget_memory(mid)
        else:
            victim = self.mem.get(mid).scope.user_id
            with pytest.raises(PermissionDenied):
                view.search(" ".join(ws), user_id=victim)
        after = self.mem.get(mid, include_deleted=True)
        assert (after.version, after.state, after.content) == (before.version, before.state, before.content)
        Scoped.total_ops += 1

    @rule(ws=words, channel=st.sampled_from(["middleware", "run_tool", "store", "retriever"]))
    def no_user_is_refused(self, ws: list[str], channel: str) -> None:
        q = " ".join(ws)
        count = self.mem.cubes["default"].count(include_deleted=True)
        with pytest.raises(UserRequired):
            if channel == "middleware":
                request = ModelRequest(model=ScriptedChatModel(), messages=[HumanMessage(q)], runtime=Runtime())
                self.mw.wrap_model_call(request, lambda r: AIMessage("never"))
            elif channel == "run_tool":
                self.run_tools["save_memory"].invoke({"content": q})
            elif channel == "store":
                self.store.put(("shared",), "k", {"text": q})
            else:
                MemOSRetriever(memory=self.mem).invoke(q)
        assert self.mem.cubes["default"].count(include_deleted=True) == count
        Scoped.total_ops += 1

    @precondition(lambda self: self.n > 0)
    @rule(user=users, data=st.data())
    def own_content_is_findable(self, user: str, data: Any) -> None:
        """Not vacuous: a user's own live memory is found by its marker (lexical search)."""
        mid = self._own(user, data)
        if mid is None or mid.startswith("lg-"):
            return
        marker = self.live[user][mid]
        hits = self.views[user].search(marker, k=5, mode="lexical")
        assert any(marker in h.item.content for h in hits), marker
        self._check(user, "\n".join(h.item.content for h in hits))


def test_no_cross_user_reads_through_any_adapter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cube_module, "ChromaVectorIndex", MemIndex)
    Scoped.total_ops = Scoped.nonempty_reads = 0
    # The same generated runs every time (derandomized), as in test_fuzz: with fresh draws the non-vacuity count
    # below fell under its floor about once in a hundred runs (10 reads with a marker; 20-52 over 15 seeds), which
    # made the suite flaky. MEMOS_SCOPE_EXPLORE=1 draws fresh runs for exploring.
    explore = os.environ.get("MEMOS_SCOPE_EXPLORE") == "1"
    run_state_machine_as_test(Scoped, settings=settings(
        max_examples=int(os.environ.get("MEMOS_SCOPE_EXAMPLES", "12")), stateful_step_count=30, deadline=None,
        derandomize=not explore, database=None if not explore else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], print_blob=True))
    assert Scoped.total_ops >= 100 and Scoped.nonempty_reads >= 20, (Scoped.total_ops, Scoped.nonempty_reads)
