"""MemOSStore: LangGraph's long-term memory store, backed by a MemOS cube.

What it shows:

1. The ``BaseStore`` API (put / get / search with a query and filters / list_namespaces / delete), the same
   calls you would make on ``InMemoryStore`` or ``PostgresStore``, but durable, versioned and hybrid-searched.
2. The namespace mapping: ``("memories", "<user>")`` becomes the memory's ``user_id`` scope, so MemOS's own
   search (and the retriever / middleware) find what a graph stored.
3. What MemOS adds underneath: every overwrite is a version (history), a delete is a tombstone, TTLs slide on
   read and expire through the core's retention.
4. A graph compiled with ``store=`` that reads and writes ``runtime.store``.
5. Fail-closed user scoping: an operation whose namespace names no user is refused (``UserRequired``); a store
   on a user-bound view (``mem.for_user("ann")``) is Ann's alone.

Run:  python examples/langgraph_store.py          (about a second; ``--minilm`` for the real embedder)
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from dataclasses import dataclass

from langgraph.graph import START, StateGraph
from langgraph.runtime import Runtime
from typing_extensions import TypedDict

from memos_core import MemOS, UserRequired
from memos_langchain import MemOSStore
from memos_langchain.testing import HashingEmbeddings


@dataclass
class Ctx:
    user_id: str


class State(TypedDict, total=False):
    question: str
    answer: str


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minilm", action="store_true", help="use the real offline embedder (all-MiniLM-L6-v2)")
    ap.add_argument("--dir", help="memory folder (default: a temporary one, removed at the end)")
    args = ap.parse_args(argv)
    folder = args.dir or tempfile.mkdtemp(prefix="memos-store-")
    mem = MemOS(folder, embedder=None if args.minilm else HashingEmbeddings(256))
    try:
        # Index the "text" field of each value (LangGraph's IndexConfig); the cube's embedder does the work.
        # Namespaces that match a scope template name the user whose memory an item is.
        store = MemOSStore(mem, index={"fields": ["text"]}, ttl={"refresh_on_read": True},
                           scope_templates=[("memories", "{user_id}"), ("questions", "{user_id}")])

        # 1. the BaseStore API
        ann = ("memories", "ann")
        store.put(ann, "diet", {"text": "Ann is vegetarian", "topic": "food", "confidence": 0.9})
        store.put(ann, "city", {"text": "Ann lives in Lisbon", "topic": "home", "confidence": 0.8})
        store.put(ann, "trip", {"text": "Ann flies to Tokyo in May", "topic": "travel", "confidence": 0.7})
        store.put(("memories", "bob"), "diet", {"text": "Bob eats everything", "topic": "food"})
        print("get:", store.get(ann, "diet").value)
        print("search 'where does she live':",
              [(h.key, round(h.score, 4)) for h in store.search(ann, query="where does she live", limit=2)])
        print("filter confidence >= 0.8:", [h.key for h in store.search(ann, filter={"confidence": {"$gte": 0.8}})])
        print("namespaces:", store.list_namespaces(prefix=ann))

        # 2. the namespace -> scope mapping: MemOS itself sees Ann's store items as Ann's memories
        hits = mem.search("Tokyo", user_id="ann")
        print("MemOS.search(user_id='ann'):", [h.item.content for h in hits[:1]])
        assert hits and "Tokyo" in hits[0].item.content

        # 3. versions, tombstones, TTL
        store.put(ann, "city", {"text": "Ann lives in Porto now", "topic": "home", "confidence": 0.95})
        item_id = store.memory_id(ann, "city")  # the MemOS memory behind this namespace/key
        print("history of 'city':", [v.content for v in mem.history(item_id)])
        store.delete(ann, "trip")
        print("after delete:", store.get(ann, "trip"), "| still recoverable:",
              mem.get(store.memory_id(ann, "trip"), include_deleted=True).state.value)
        store.put(ann, "reminder", {"text": "Call the dentist"}, ttl=60)  # minutes; each read restarts the clock
        print("TTL item expires at:", mem.get(store.memory_id(ann, "reminder")).expires_at)

        # 4. in a graph: nodes read and write runtime.store
        def answer(state: State, runtime: Runtime[Ctx]) -> State:
            found = runtime.store.search(("memories", runtime.context.user_id), query=state["question"], limit=1)
            return {"answer": found[0].value["text"] if found else "I know nothing about you."}

        def remember(state: State, runtime: Runtime[Ctx]) -> State:
            runtime.store.put(("questions", runtime.context.user_id), "last", {"text": state["question"]})
            return {}

        graph = (StateGraph(State, context_schema=Ctx).add_node("answer", answer).add_node("remember", remember)
                 .add_edge(START, "answer").add_edge("answer", "remember").compile(store=store))
        out = graph.invoke({"question": "what does Ann eat, is she vegetarian?"}, context=Ctx(user_id="ann"))
        print("graph answer:", out["answer"])
        assert "vegetarian" in out["answer"]

        # 5. fail closed: whose memory would ("facts",) be? The store refuses rather than guess.
        try:
            store.put(("facts",), "k", {"text": "no owner"})
        except UserRequired as exc:
            print("refused:", type(exc).__name__)
        anns = MemOSStore(mem.for_user("ann"), index={"fields": ["text"]})  # per request: a user-bound view
        anns.put(("facts",), "pet", {"text": "Ann has a cat called Tom"})
        print("Ann's namespaces:", anns.list_namespaces())
        assert MemOSStore(mem.for_user("bob")).get(("facts",), "pet") is None
        print("OK")
    finally:
        mem.close()
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
