"""MemOSStore against LangGraph's own InMemoryStore: a differential suite.

LangGraph ships no standard test suite for ``BaseStore``, so the same operation sequences (hand-written and
hypothesis-generated) run against ``langgraph.store.memory.InMemoryStore`` and ``MemOSStore`` and the
observable results are compared wherever the two promise the same semantics:

* get / put / delete / overwrite: identical items (namespace, key, value);
* search without a query (prefix + filters): the same *set* of items; pages of a paginated search are
  consistent slices of the full result with the same sizes. The order itself is not compared: LangGraph
  leaves it unspecified (InMemoryStore: namespace then insertion order; MemOSStore: creation order);
* list_namespaces (prefix / suffix / wildcards / max_depth / limit / offset): identical lists, after removing
  from the reference the namespaces that hold no item (InMemoryStore keeps a namespace after its last item is
  deleted, or after a get on a missing key; MemOSStore, like LangGraph's database stores, lists namespaces of
  live items only);
* bad input: the same kind of exception.

Where search ranking legitimately differs (query search: MemOS fuses dense and BM25 ranks, InMemoryStore
ranks by cosine per field vector) the tests check what both promise: the same result set, and the clear
winner first.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    ListNamespacesOp,
    MatchCondition,
    PutOp,
    SearchOp,
)
from langgraph.store.memory import InMemoryStore

from memos_core import Conflict, LifecycleState, MemCube
from memos_langchain.store import InvalidStoreValue, MemOSStore
from memos_langchain.testing import HashingEmbeddings

EMB = HashingEmbeddings(64)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


def make_store(path: Path, *, clock: Clock | None = None, opener: Any = None, **kw: Any) -> MemOSStore:
    """A store on a fresh cube. Single-user by default (one fixed user scope, so any namespace works, as in
    ``InMemoryStore``); ``single_user=False`` gives the per-user store that needs a user label in namespaces.
    ``opener`` is conftest's ``open_cube`` in tests marked ``records_backends`` (a SQLite cube at ``path``, or a
    PostgreSQL cube whose local folder is ``path``); default a SQLite cube."""
    cube = (opener or MemCube)(path, embedder=EMB, clock=clock)
    kw.setdefault("single_user", True)
    return MemOSStore(cube, **kw)


@pytest.fixture
def store(tmp_path: Path, open_cube: Any):
    """A single-user store with an index on ``text``; on PostgreSQL too in tests marked ``records_backends``."""
    s = make_store(tmp_path / "cube", opener=open_cube, index={"dims": 64, "fields": ["text"]})
    yield s
    s.cube.close()


def prune(ref: InMemoryStore) -> None:
    """Drop namespaces without items from the reference (see the module docstring)."""
    for ns in [ns for ns, items in ref._data.items() if not items]:
        del ref._data[ns]


def as_set(items: list[Any]) -> set[tuple[Any, ...]]:
    return {(tuple(i.namespace), i.key, repr(sorted(i.value.items()))) for i in items}


def same_item(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (tuple(a.namespace), a.key, a.value) == (tuple(b.namespace), b.key, b.value)


# ---------------------------------------------------------------------- a hand-written sequence
@pytest.mark.records_backends
def test_basic_sequence_matches_inmemory(store: MemOSStore) -> None:
    ref = InMemoryStore()
    puts = [
        (("users", "ann", "prefs"), "theme", {"text": "dark theme", "n": 1, "tag": "ui"}),
        (("users", "ann", "prefs"), "lang", {"text": "speaks Portuguese", "n": 2}),
        (("users", "bob"), "theme", {"text": "light theme", "n": 3, "tag": "ui", "meta": {"color": "red"}}),
        (("docs",), "d1", {"text": "Python tutorial", "n": 4}),
        (("docs", "v1"), "d2", {"text": "TypeScript guide", "n": 5}),
    ]
    for s in (store, ref):
        for ns, key, val in puts:
            s.put(ns, key, val)
    for ns, key, _ in puts:
        assert same_item(store.get(ns, key), ref.get(ns, key))
    assert store.get(("users", "ann", "prefs"), "nope") is None
    assert store.get(("nope",), "theme") is None
    # overwrite and delete
    for s in (store, ref):
        s.put(("users", "ann", "prefs"), "theme", {"text": "solarized theme", "n": 10})
        s.delete(("docs",), "d1")
        s.delete(("docs",), "never-existed")
    prune(ref)
    assert same_item(store.get(("users", "ann", "prefs"), "theme"), ref.get(("users", "ann", "prefs"), "theme"))
    assert store.get(("docs",), "d1") is None
    for prefix, flt in [((), None), (("users",), None), (("users",), {"tag": "ui"}), ((), {"n": {"$gte": 3}}),
                        ((), {"meta": {"color": "red"}}), ((), {"tag": None}), ((), {"n": {"$ne": 5, "$lt": 6}}),
                        (("users", "ann"), {"n": {"$gt": 1, "$lte": 10}}), (("nomatch",), None)]:
        assert as_set(store.search(prefix, filter=flt, limit=100)) == as_set(ref.search(prefix, filter=flt, limit=100))
    for kw in [{}, {"prefix": ("users",)}, {"suffix": ("prefs",)}, {"prefix": ("users", "*", "prefs")},
               {"max_depth": 1}, {"max_depth": 2, "prefix": ("users",)}, {"limit": 2, "offset": 1},
               {"suffix": ("*",), "max_depth": 2}]:
        assert store.list_namespaces(**kw) == ref.list_namespaces(**kw), kw


@pytest.mark.records_backends
def test_batch_mixed_ops_apply_in_order(store: MemOSStore) -> None:
    res = store.batch([
        PutOp(("a",), "k", {"text": "one"}),
        GetOp(("a",), "k"),
        PutOp(("a",), "k", {"text": "two"}),
        PutOp(("a",), "k", {"text": "three"}),  # last write of a run of puts wins
        GetOp(("a",), "k"),
        SearchOp(("a",), None, 10, 0, None),
        ListNamespacesOp(match_conditions=(MatchCondition("prefix", ("a",)),)),
        PutOp(("a",), "k", None),
        GetOp(("a",), "k"),
    ])
    assert res[0] is None and res[1].value == {"text": "one"}
    assert res[4].value == {"text": "three"} and [i.value for i in res[5]] == [{"text": "three"}]
    assert res[6] == [("a",)] and res[8] is None
    # a batch of reads gives what the reference gives
    ref = InMemoryStore()
    for s in (store, ref):
        s.put(("x", "y"), "1", {"text": "alpha"})
        s.put(("x",), "2", {"text": "beta"})
    ops = [GetOp(("x", "y"), "1"), GetOp(("x",), "2"), GetOp(("x",), "3"), SearchOp(("x",), {"text": "beta"}),
           ListNamespacesOp(max_depth=1)]
    ours, theirs = store.batch(ops), ref.batch(ops)
    prune(ref)
    assert same_item(ours[0], theirs[0]) and same_item(ours[1], theirs[1]) and ours[2] is theirs[2] is None
    assert as_set(ours[3]) == as_set(theirs[3]) and ours[4] == theirs[4]


# ---------------------------------------------------------------------- hypothesis: random sequences
LABELS = ["a", "b", "memories", "u1"]
namespaces = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(tuple)
keys = st.sampled_from(["k1", "k2", "k3"])
values = st.fixed_dictionaries(
    {"text": st.sampled_from(["green tea", "black coffee", "tea and cake", "lisbon trip"]),
     "n": st.integers(-3, 3)},
    optional={"tag": st.sampled_from(["x", "y"]), "meta": st.fixed_dictionaries({"color": st.sampled_from(["r", "g"])}),
              "flag": st.booleans()},
)
filters = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={
        "tag": st.one_of(st.sampled_from(["x", "y"]), st.none()),
        "n": st.one_of(st.integers(-3, 3), st.dictionaries(st.sampled_from(["$gt", "$gte", "$lt", "$lte", "$ne",
                                                                              "$eq"]), st.integers(-3, 3),
                                                             min_size=1, max_size=2)),
        "meta": st.fixed_dictionaries({"color": st.sampled_from(["r", "g"])}),
        "flag": st.booleans(),
    }),
)
prefixes = st.lists(st.sampled_from(LABELS), max_size=2).map(tuple)
patterns = st.lists(st.sampled_from(LABELS + ["*"]), min_size=1, max_size=2).map(tuple)
ops = st.one_of(
    st.tuples(st.just("put"), namespaces, keys, values),
    st.tuples(st.just("put"), namespaces, keys, values),
    st.tuples(st.just("delete"), namespaces, keys),
    st.tuples(st.just("get"), namespaces, keys),
    st.tuples(st.just("search"), prefixes, filters, st.integers(1, 4), st.integers(0, 3)),
    st.tuples(st.just("list"), st.one_of(st.none(), patterns), st.one_of(st.none(), patterns),
              st.one_of(st.none(), st.integers(1, 3)), st.integers(1, 5), st.integers(0, 2)),
)


def check_step(store: MemOSStore, ref: InMemoryStore, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "put":
        _, ns, key, val = op
        store.put(ns, key, val)
        ref.put(ns, key, val)
    elif kind == "delete":
        _, ns, key = op
        store.delete(ns, key)
        ref.delete(ns, key)
    elif kind == "get":
        _, ns, key = op
        assert same_item(store.get(ns, key), ref.get(ns, key))
    elif kind == "search":
        _, prefix, flt, limit, offset = op
        full = store.search(prefix, filter=flt, limit=1000)
        assert as_set(full) == as_set(ref.search(prefix, filter=flt, limit=1000))
        page = store.search(prefix, filter=flt, limit=limit, offset=offset)
        assert [(i.namespace, i.key) for i in page] == [(i.namespace, i.key) for i in full[offset:offset + limit]]
        assert len(page) == len(ref.search(prefix, filter=flt, limit=limit, offset=offset))
    elif kind == "list":
        _, prefix, suffix, depth, limit, offset = op
        kw = dict(prefix=prefix, suffix=suffix, max_depth=depth, limit=limit, offset=offset)
        prune(ref)
        assert store.list_namespaces(**kw) == ref.list_namespaces(**kw), kw
    prune(ref)


def random_sequences_match_inmemory(opener: Any, max_examples: int) -> None:
    """Hypothesis-generated sequences, each on a fresh store from ``opener(path, **kw)``, against InMemoryStore."""

    @settings(max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(ops, min_size=1, max_size=14))
    def run(seq: list[tuple[Any, ...]]) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="memos-lg-"))
        store = make_store(tmp / "cube", opener=opener, index={"fields": ["text"]})
        ref = InMemoryStore()
        try:
            for op in seq:
                check_step(store, ref, op)
            # and a final full comparison
            for ns in {tuple(ns) for ns in ref._data}:
                for key in ref._data[ns]:
                    assert same_item(store.get(ns, key), ref.get(ns, key))
            assert store.list_namespaces(limit=1000) == ref.list_namespaces(limit=1000)
        finally:
            store.cube.close()
            shutil.rmtree(tmp, ignore_errors=True)

    run()


def test_random_sequences_match_inmemory() -> None:
    random_sequences_match_inmemory(MemCube, 25)


def test_random_sequences_match_inmemory_on_postgresql(pg_server: Any, chroma_server: Any) -> None:
    """The same differential check on PostgreSQL records + the Chroma server (fewer examples: a fresh cube schema
    each)."""
    from pg_server import fresh_schema_name

    def opener(path: Path, **kw: Any) -> MemCube:
        return MemCube(pg_server.url() + "?cube=" + fresh_schema_name("lg"), index=chroma_server.url, workdir=path,
                       **kw)

    random_sequences_match_inmemory(opener, 10)


# ---------------------------------------------------------------------- query search
@pytest.mark.records_backends
def test_query_search_same_results_clear_winner_first(tmp_path: Path, open_cube: Any) -> None:
    emb = HashingEmbeddings(1024)  # few hash collisions, so cosine ranking alone is meaningful too
    ours = MemOSStore(open_cube(tmp_path / "c", embedder=emb, clock=None), index={"dims": 1024, "fields": ["text"]},
                      single_user=True)
    ref = InMemoryStore(index={"dims": 1024, "embed": emb, "fields": ["text"]})
    docs = {"1": "Ann moved to Lisbon in May", "2": "Bob prefers black coffee", "3": "Carol plays the cello",
            "4": "Dan is allergic to peanuts"}
    for s in (ours, ref):
        for k, text in docs.items():
            s.put(("facts",), k, {"text": text})
    for query, winner in [("where did Ann move", "1"), ("coffee preference", "2"), ("peanuts allergy", "4")]:
        a = ours.search(("facts",), query=query, limit=10)
        b = ref.search(("facts",), query=query, limit=10)
        assert as_set(a) == as_set(b)
        assert a[0].key == b[0].key == winner
        assert a[0].score is not None and a[0].score >= a[-1].score
    # ranked pages are consistent slices
    full = ours.search(("facts",), query="coffee", limit=10)
    assert [i.key for i in ours.search(("facts",), query="coffee", limit=2, offset=1)] == [i.key for i in full[1:3]]


@pytest.mark.records_backends
def test_index_config_fields_and_index_false(store: MemOSStore) -> None:
    store.put(("n",), "a", {"text": "green tea", "other": "zebra"})
    store.put(("n",), "b", {"text": "coffee", "other": "green tea"}, index=["other"])
    store.put(("n",), "c", {"text": "green tea"}, index=False)
    store.put(("n",), "d", {"no_text_field": "green tea"})  # nothing at the index fields: not indexed
    items = {it.id: it for it in store.cube.list()}
    contents = sorted(it.content for it in items.values())
    assert "green tea" in contents and "zebra" not in contents
    hits = store.search(("n",), query="green tea", limit=10)
    assert {h.key for h in hits[:2]} == {"a", "b"} and all(h.score is not None for h in hits[:2])
    assert {h.key for h in hits[2:]} == {"c", "d"} and all(h.score is None for h in hits[2:])
    # pagination runs through ranked then unranked items without repeats
    keys = [h.key for off in range(4) for h in store.search(("n",), query="green tea", limit=1, offset=off)]
    assert keys == [h.key for h in hits]
    assert store.search(("n",), query="green tea", limit=0) == []


def test_plain_kv_store_ignores_queries(tmp_path: Path) -> None:
    s = make_store(tmp_path / "c", index=False)
    s.put(("n",), "a", {"text": "green tea"})
    s.put(("n",), "b", {"text": "coffee"})
    assert [h.key for h in s.search(("n",), query="coffee")] == ["a", "b"]
    assert all(h.score is None for h in s.search(("n",), query="coffee"))


# ---------------------------------------------------------------------- MemOS semantics behind the store
@pytest.mark.records_backends
def test_versions_tombstones_and_scope(tmp_path: Path, open_cube: Any) -> None:
    store = make_store(tmp_path / "u", opener=open_cube, index={"dims": 64, "fields": ["text"]}, single_user=False)
    ns = ("memories", "ann")
    store.put(ns, "fav", {"text": "likes tea"})
    store.put(ns, "fav", {"text": "likes tea"})  # identical: no new version
    store.put(ns, "fav", {"text": "likes coffee"})
    item_id, item = store._resolve(ns, "fav")
    assert [v.version for v in store.cube.history(item_id)] == [1, 2]
    assert item.scope.user_id == "ann"  # ("memories", "{user_id}") -> scope
    assert [h.item.id for h in store.cube.search("coffee", user_id="ann")] == [item_id]
    store.delete(ns, "fav")
    assert store.get(ns, "fav") is None
    assert store.cube.lookup(item_id).state == LifecycleState.DELETED  # a tombstone, not gone
    store.put(ns, "fav", {"text": "likes cocoa"})
    assert store.get(ns, "fav").value == {"text": "likes cocoa"}
    assert [v.version for v in store.cube.history(item_id)][-1] == 3
    # frozen (legal hold) memories are not overwritten
    store.cube.transition(item_id, LifecycleState.FROZEN)
    with pytest.raises(Conflict):
        store.put(ns, "fav", {"text": "likes water"})
    with pytest.raises(Conflict):
        store.delete(ns, "fav")
    assert store.get(ns, "fav").value == {"text": "likes cocoa"}


@pytest.mark.records_backends
def test_purged_key_can_be_written_again(store: MemOSStore) -> None:
    store.put(("p",), "k", {"text": "secret"})
    item_id, _ = store._resolve(("p",), "k")
    store.delete(("p",), "k")
    store.cube.purge(item_id)
    assert store.get(("p",), "k") is None
    store.put(("p",), "k", {"text": "fresh"})
    assert store.get(("p",), "k").value == {"text": "fresh"}
    assert store._resolve(("p",), "k")[0] == item_id + "-2"


@pytest.mark.records_backends
def test_scope_templates_and_reversibility(tmp_path: Path, open_cube: Any) -> None:
    from memos_core import UserRequired
    from memos_core.os import SINGLE_USER

    s = make_store(tmp_path / "c", opener=open_cube, scope_templates=[("agents", "{agent_id}", "{user_id}")],
                   single_user=False)
    s.put(("agents", "helper", "ann", "notes"), "k", {"text": "hello", "nested": {"a": [1, 2]}})
    with pytest.raises(UserRequired):  # a namespace that names no user: refused (fail closed)
        s.put(("other",), "k", {"text": "hello"})
    one = MemOSStore(s.cube, scope_templates=[("agents", "{agent_id}", "{user_id}")], single_user=True)
    one.put(("other",), "k", {"text": "hello"})
    by_ns = {tuple(s._to_item(it).namespace): it for it in s.cube.list()}
    scoped = by_ns[("agents", "helper", "ann", "notes")]
    assert (scoped.scope.agent_id, scoped.scope.user_id) == ("helper", "ann")
    assert by_ns[("other",)].scope.user_id == SINGLE_USER
    assert s._to_item(scoped).value == {"text": "hello", "nested": {"a": [1, 2]}}
    with pytest.raises(ValueError):
        make_store(tmp_path / "d", scope_templates=[("x", "{tenant}")])


@pytest.mark.records_backends
def test_memories_not_written_by_the_store_stay_out(store: MemOSStore) -> None:
    store.cube.add("a conversation memory", user_id="ann")
    store.put(("memories", "ann"), "k", {"text": "store memory"})
    assert [i.key for i in store.search(())] == ["k"]
    assert [i.key for i in store.search((), query="memory")] == ["k"]
    assert store.list_namespaces() == [("memories", "ann")]


@pytest.mark.records_backends
def test_durable_across_reopen(tmp_path: Path, open_cube: Any) -> None:
    s = make_store(tmp_path / "c", opener=open_cube)
    s.put(("a",), "k", {"text": "kept"})
    s.cube.close()
    s2 = make_store(tmp_path / "c", opener=open_cube)  # the same folder, or the same PostgreSQL cube
    assert s2.get(("a",), "k").value == {"text": "kept"}


def test_store_from_path_with_embed(tmp_path: Path) -> None:
    s = MemOSStore(tmp_path / "c", index={"dims": 64, "embed": EMB, "fields": ["text"]}, single_user=True)
    s.put(("a",), "k", {"text": "hello"})
    assert s.search(("a",), query="hello")[0].key == "k"
    with pytest.raises(ValueError):
        MemOSStore(s.cube, index={"embed": EMB})
    with pytest.raises(ValueError):
        MemOSStore(s.cube, index={"dims": 12})


# ---------------------------------------------------------------------- TTL
@pytest.mark.records_backends
def test_ttl_refresh_on_read_and_sweep(tmp_path: Path, open_cube: Any) -> None:
    clock = Clock()
    s = make_store(tmp_path / "c", clock=clock, opener=open_cube)
    assert s.supports_ttl
    s.put(("t",), "short", {"text": "short lived"}, ttl=1.0)
    s.put(("t",), "keep", {"text": "no ttl"})
    clock.advance(seconds=45)
    assert s.get(("t",), "short") is not None  # a read slides the expiry: now + 60s
    clock.advance(seconds=45)
    assert s.search(("t",), filter={"text": "short lived"})  # still alive (refreshed 45s ago), refreshes again
    clock.advance(seconds=45)
    assert s.get(("t",), "short", refresh_ttl=False) is not None
    clock.advance(seconds=30)  # 75s since the last refreshing read
    assert s.get(("t",), "short") is None  # expired: invisible at once
    assert s.list_namespaces() == [("t",)]
    assert [i.key for i in s.search(("t",))] == ["keep"]
    assert s.sweep_ttl() == 1
    item_id, item = s._resolve(("t",), "short")
    assert item.state == LifecycleState.DELETED
    # a put revives the key with a fresh TTL; no version is written by reads
    s.put(("t",), "short", {"text": "short lived"}, ttl=1.0)
    assert s.get(("t",), "short") is not None
    assert len(s.cube.history(item_id)) <= 2


@pytest.mark.records_backends
def test_ttl_config_default_and_refresh_off(tmp_path: Path, open_cube: Any) -> None:
    clock = Clock()
    s = make_store(tmp_path / "c", clock=clock, opener=open_cube, ttl={"default_ttl": 2.0, "refresh_on_read": False})
    s.put(("t",), "k", {"text": "x"})
    clock.advance(seconds=90)
    assert s.get(("t",), "k") is not None  # no refresh by default
    clock.advance(seconds=40)
    assert s.get(("t",), "k") is None
    s.put(("t",), "k2", {"text": "y"}, ttl=None)  # explicit None: never expires
    clock.advance(days=30)
    assert s.get(("t",), "k2") is not None


def test_ttl_sweeper_thread(tmp_path: Path) -> None:
    s = make_store(tmp_path / "c")
    t = s.start_ttl_sweeper(sweep_interval_minutes=0.001)
    assert t.is_alive()
    assert s.stop_ttl_sweeper(timeout=5)


# ---------------------------------------------------------------------- async
@pytest.mark.records_backends
def test_async_api(store: MemOSStore) -> None:
    async def run() -> None:
        await store.aput(("a", "b"), "k", {"text": "async hello"})
        assert (await store.aget(("a", "b"), "k")).value == {"text": "async hello"}
        assert [i.key for i in await store.asearch(("a",), query="hello")] == ["k"]
        assert await store.alist_namespaces(prefix=("a",)) == [("a", "b")]
        res = await store.abatch([GetOp(("a", "b"), "k"), PutOp(("a", "b"), "k2", {"text": "x"})])
        assert res[0].key == "k"
        await store.adelete(("a", "b"), "k")
        assert await store.aget(("a", "b"), "k") is None
        await asyncio.gather(*(store.aput(("c",), str(i), {"text": f"item {i}"}) for i in range(8)))
        assert len(await store.asearch(("c",), limit=20)) == 8

    asyncio.run(run())


# ---------------------------------------------------------------------- bad input: same kind of error
BAD_NAMESPACES = [("a", ""), ("a.b",), ("a", 1), ("a\x00",)]


@pytest.mark.parametrize("ns", BAD_NAMESPACES)
def test_bad_namespaces_raise_like_langgraph(store: MemOSStore, ns: tuple[Any, ...]) -> None:
    ref = InMemoryStore()
    for s in (store, ref):
        with pytest.raises(InvalidNamespaceError):
            s.put(ns, "k", {"text": "x"})
        with pytest.raises(InvalidNamespaceError):
            s.get(ns, "k")
        with pytest.raises(InvalidNamespaceError):
            s.search(ns)
        with pytest.raises(InvalidNamespaceError):
            s.list_namespaces(prefix=ns)
    # ops sent straight to batch are checked too (InMemoryStore does not check them there)
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp(ns, "k", {"text": "x"})])
    with pytest.raises(InvalidNamespaceError):
        store.batch([GetOp(ns, "k")])


@pytest.mark.parametrize("ns", BAD_NAMESPACES + [(), "memories"])
def test_bad_namespaces_are_typed_memos_errors_with_a_hint(store: MemOSStore, ns: Any) -> None:
    """Ours is LangGraph's InvalidNamespaceError (above) and a MemOS ValidationError saying what to do, from the
    convenience methods (where LangGraph itself checks the namespace) and from batch alike, sync and async."""
    from memos_core.errors import ValidationError
    from memos_langchain import InvalidNamespace

    calls = [lambda: store.put(ns, "k", {"text": "x"}), lambda: store.delete(ns, "k"),
             lambda: store.batch([PutOp(ns, "k", {"text": "x"})]),
             lambda: asyncio.run(store.aput(ns, "k", {"text": "x"}))]
    if ns != ():  # an empty namespace is a valid search/get prefix for LangGraph (refused here as UserRequired)
        calls += [lambda: store.get(ns, "k"), lambda: store.search(ns), lambda: asyncio.run(store.asearch(ns))]
    for call in calls:
        with pytest.raises(InvalidNamespace) as ei:
            call()
        assert isinstance(ei.value, ValidationError) and isinstance(ei.value, InvalidNamespaceError)
        assert any(hint in str(ei.value) for hint in ("non-empty string", "replace the '.'", "str()", "NUL",
                                                      "at least one label", "namespace of one label")), str(ei.value)


@pytest.mark.parametrize("ns", [(), ("langgraph",), ("langgraph", "x")])
def test_reserved_and_empty_namespaces(store: MemOSStore, ns: tuple[str, ...]) -> None:
    for s in (store, InMemoryStore()):
        with pytest.raises(InvalidNamespaceError):
            s.put(ns, "k", {"text": "x"})
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp(ns, "k", {"text": "x"})])


@pytest.mark.parametrize("value", ["a string", 42, ["a", "list"], {1: "int key"}, {"d": datetime.now()}])
def test_non_dict_values(store: MemOSStore, value: Any) -> None:
    with pytest.raises((ValueError, TypeError)) as ours:
        store.put(("a",), "k", value)
    assert isinstance(ours.value, InvalidStoreValue)
    assert isinstance(ours.value, ValueError) and isinstance(ours.value, TypeError)
    if not isinstance(value, (list, dict)):  # InMemoryStore accepts some lists and dicts, we do not
        with pytest.raises((ValueError, TypeError)):
            InMemoryStore().put(("a",), "k", value)
    assert store.get(("a",), "k") is None  # nothing half-written


@pytest.mark.parametrize("flt", [{"n": {"$regex": "x"}}, {"n": {"$foo": 1}}])
def test_unknown_filter_operators(store: MemOSStore, flt: dict[str, Any]) -> None:
    ref = InMemoryStore()
    for s in (store, ref):
        s.put(("a",), "k", {"text": "x", "n": 1})
        with pytest.raises(ValueError):
            s.search(("a",), filter=flt)


@pytest.mark.parametrize("flt", [{"bad key": 1}, {"a.b": 1}, {"n": [1, 2]}, {"n": {"$in": 3}}, {"n": {}}])
def test_unsupported_filters_raise_value_error(store: MemOSStore, flt: dict[str, Any]) -> None:
    store.put(("a",), "k", {"text": "x", "n": 1})
    with pytest.raises(ValueError):
        store.search(("a",), filter=flt)


def test_bad_limits_ttl_and_ops(store: MemOSStore) -> None:
    with pytest.raises(ValueError):
        store.search(("a",), limit=-1)
    with pytest.raises(ValueError):
        store.put(("a",), "k", {"text": "x"}, ttl=-5)
    with pytest.raises(ValueError):
        store.batch(["not an op"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        store.put(("a",), "k", {"text": "x"}, index="text")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- governance, concurrency, core helpers
@pytest.mark.records_backends
def test_store_acts_under_the_cubes_governance(store: MemOSStore) -> None:
    from memos_core import PermissionDenied

    store.put(("memories", "ann"), "k", {"text": "owned by local"})
    stranger = MemOSStore(store.cube, actor="mallory", single_user=True)
    with pytest.raises(PermissionDenied):
        stranger.search(("memories", "ann"))
    store.cube.share("reader-bot", "reader")
    reader = MemOSStore(store.cube, actor="reader-bot", single_user=True)
    assert reader.get(("memories", "ann"), "k").value == {"text": "owned by local"}
    with pytest.raises(PermissionDenied):
        reader.put(("memories", "ann"), "k", {"text": "overwritten"})
    with pytest.raises(PermissionDenied):
        reader.delete(("memories", "ann"), "k")
    assert store.get(("memories", "ann"), "k").value == {"text": "owned by local"}


def test_store_over_a_memos_facade_acts_as_its_principal(tmp_path: Path) -> None:
    from memos_core import MemOS

    mem = MemOS(tmp_path / "m", embedder=EMB)
    try:
        s = MemOSStore(mem)
        assert s.cube is mem.cubes["default"] and s.actor == mem.principal
        s.put(("memories", "ann"), "k", {"text": "Ann likes figs"})
        assert [h.item.content for h in mem.search("figs", user_id="ann")] == ["Ann likes figs"]  # text, not JSON
        mem.create_cube("team")
        assert MemOSStore(mem, cube="team").search(("memories", "ann")) == []
    finally:
        mem.close()


@pytest.mark.records_backends
def test_concurrent_puts_of_one_key(store: MemOSStore) -> None:
    async def run() -> None:
        await asyncio.gather(*(store.aput(("c",), "same", {"text": f"v{i}"}) for i in range(6)))

    asyncio.run(run())
    assert store.get(("c",), "same").value["text"].startswith("v")
    assert len(store.search(("c",))) == 1


def test_core_helpers_used_by_the_store(tmp_path: Path) -> None:
    clock = Clock()
    cube = MemCube(tmp_path / "c", embedder=EMB, clock=clock)
    a = cube.add("a", metadata={"g": {"p": "x"}}, ttl=60)
    cube.add("b", metadata={"g": {"p": "y"}})
    cube.add("c", metadata={"g": {"p": "x"}})
    cube.add("d")
    assert sorted(cube.distinct_metadata("g.p")) == ["x", "y"]
    assert cube.distinct_metadata("g.p", {"metadata": {"g.p": {"$ne": "x"}}}) == ["y"]
    clock.advance(seconds=30)
    assert cube.refresh_expiry({a.id: 60}) == 1
    got = cube.get(a.id)
    assert got.version == 1 and got.expires_at == clock.now + timedelta(seconds=60)  # no new version
    clock.advance(seconds=61)
    assert cube.refresh_expiry({a.id: 60}) == 0  # an expired memory is not revived by a read
    assert sorted(cube.distinct_metadata("g.p")) == ["x", "y"]  # "c" still carries x; "a" expired
    with pytest.raises(ValueError):
        cube.refresh_expiry({a.id: -1})
    with pytest.raises(ValueError):
        cube.distinct_metadata("bad key")


@pytest.mark.records_backends
def test_query_search_beyond_the_ranking_window_is_an_error_not_a_short_page(store: MemOSStore) -> None:
    store.put(("a",), "k", {"text": "hello world"})
    assert [i.key for i in store.search(("a",), query="hello", limit=10, offset=990)] == []
    # few matches: a page past the window is just empty, as in InMemoryStore
    assert store.search(("a",), query="hello", limit=10, offset=995) == []
    assert [i.key for i in store.search(("a",), limit=10, offset=0)] == ["k"]  # without a query: no window
    # more than 1000 matches: a page reaching beyond what the core ranks is an error, not a short page
    store.batch([PutOp(("b",), f"k{i}", {"text": f"hello number {i}"}) for i in range(1001)])
    assert len(store.search(("b",), query="hello", limit=10, offset=990)) == 10
    with pytest.raises(ValueError, match="at most 1000"):
        store.search(("b",), query="hello", limit=10, offset=995)


# ---------------------------------------------------------------------- progress of a large batch
def test_a_large_batch_shows_progress_only_in_a_terminal_or_when_forced(tmp_path: Path, capsys: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """store.batch of many puts shows the bulk-ingest progress bar (memos_core.log): off when stderr is not a
    terminal, on with MEMOS_PROGRESS=1 or progress=True, off with MEMOS_PROGRESS=0, never for a small batch."""
    import memos_langchain.store as store_module
    from memos_core.log import PROGRESS_MIN, Progress

    bars: list[list[int]] = []  # [total, units advanced] of every bar shown

    class Recording(Progress):
        def __init__(self, total: int | None, *a: Any, **kw: Any) -> None:
            super().__init__(total, *a, **kw)
            if self.shown:
                bars.append([int(total or 0), 0])

        def update(self, n: int = 1) -> None:
            if self.shown:
                bars[-1][1] += n
            super().update(n)

    monkeypatch.setattr(store_module, "Progress", Recording)
    monkeypatch.delenv("MEMOS_PROGRESS", raising=False)
    store = make_store(tmp_path / "c", index={"fields": ["text"]})
    n = PROGRESS_MIN + 50

    def puts(tag: str, count: int = n) -> list[PutOp]:
        return [PutOp(("docs", tag), f"k{i}", {"text": f"{tag} note {i}"}) for i in range(count)]

    try:
        store.batch(puts("quiet"))  # pytest's stderr is not a terminal
        assert "storing items" not in capsys.readouterr().err and bars == []
        monkeypatch.setenv("MEMOS_PROGRESS", "1")
        # new items, one written twice (the last wins), a delete, and a get between the puts
        ops: list[Any] = [*puts("shown"), PutOp(("docs", "shown"), "k1", {"text": "again"}), GetOp(("docs",), "x"),
                          PutOp(("docs", "quiet"), "k0", None)]
        store.batch(ops)
        assert "storing items" in capsys.readouterr().err and bars == [[n + 2, n + 2]]  # every put, once
        store.batch(puts("shown"))  # overwrites (one changed value, the rest identical) count too
        assert f"/{n}" in capsys.readouterr().err and bars[-1] == [n, n]
        store.batch(puts("small", PROGRESS_MIN - 1))  # too small to bother
        assert "storing items" not in capsys.readouterr().err and len(bars) == 2
        monkeypatch.setenv("MEMOS_PROGRESS", "0")
        asyncio.run(store.abatch(puts("async")))
        assert "storing items" not in capsys.readouterr().err and len(bars) == 2
        forced = MemOSStore(store.cube, index={"fields": ["text"]}, single_user=True, progress=True)
        asyncio.run(forced.abatch(puts("forced")))
        assert "storing items" in capsys.readouterr().err and bars[-1] == [n, n]
        # every batch was written: quiet (less the deleted k0), shown, small, async, forced
        assert len(store.search(("docs",), limit=10_000)) == (n - 1) + n + (PROGRESS_MIN - 1) + n + n
    finally:
        store.cube.close()


@pytest.mark.records_backends
def test_concurrent_puts_from_several_workers_last_write_wins(tmp_path: Path, open_cube: Any) -> None:
    """Workers with their own handle on one cube (as processes on a shared PostgreSQL cube) put the same keys at
    once: every put succeeds (a put is an upsert, as in LangGraph's database stores; a version conflict with
    another writer is retried on a fresh read, never raised), and each key ends with one of the written values
    and contiguous versions."""
    import threading

    first = open_cube(tmp_path / "c", embedder=EMB, clock=None)
    stores = [MemOSStore(first, single_user=True)] + [
        MemOSStore(open_cube(tmp_path / "c", embedder=EMB, clock=None, create=False), single_user=True)
        for _ in range(3)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def work(i: int, s: MemOSStore) -> None:
        start.wait()
        for r in range(12):
            try:
                if i % 2:
                    s.batch([PutOp(("ns",), f"k{r}-{j}", {"text": f"w{i} r{r} j{j}"}) for j in range(4)])
                else:
                    for j in range(4):
                        s.put(("ns",), f"k{r}-{j}", {"text": f"w{i} r{r} j{j}"})
            except BaseException as exc:  # noqa: BLE001 - collected and reported below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    items = stores[0].search(("ns",), limit=1000)
    assert sorted(i.key for i in items) == sorted(f"k{r}-{j}" for r in range(12) for j in range(4))
    for it in items:
        r, j = it.key[1:].split("-")
        assert it.value["text"] in {f"w{w} r{r} j{j}" for w in range(4)}
        versions = [v.version for v in first.history(stores[0].memory_id(("ns",), it.key))]
        assert versions == list(range(1, len(versions) + 1))
