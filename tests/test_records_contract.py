"""The RecordStore contract (memos_core/records/base.py), run on every backend: SQLite (a temp file) and
PostgreSQL (a temporary cluster started by the tests; skipped with the reason when PostgreSQL is absent, a
failure under MEMOS_REQUIRE_POSTGRES=1)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterator

import numpy as np
import pytest

from memos_core.errors import Conflict, SchemaVersionError, ValidationError
from memos_core.governance.audit import verify_rows
from memos_core.items import LifecycleState as S
from memos_core.items import MemoryItem, SearchFilter
from memos_core.records.base import GENESIS_HASH, CandidateReads, RecordStore

ALL_LIVE = [S.GENERATED, S.ACTIVATED]


@pytest.fixture(scope="module")
def pg() -> Iterator[Any]:
    from pg_server import running_pg

    yield from running_pg("memos-contract")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: Any) -> str:
    return request.param


@pytest.fixture
def open_store(backend: str, tmp_path: Any, request: Any) -> Iterator[Any]:
    """``open_store()`` opens the test's store (again: the same database) and closes everything at teardown."""
    opened: list[RecordStore] = []
    if backend == "postgresql":
        from pg_server import fresh_schema_name

        server = request.getfixturevalue("pg")
        name = fresh_schema_name()

        def _open() -> RecordStore:
            from memos_core.records.postgres import PostgresRecordStore

            s = PostgresRecordStore(server.url(), name)
            opened.append(s)
            return s
    else:
        def _open() -> RecordStore:
            from memos_core.records.sqlite import SQLiteRecordStore

            s = SQLiteRecordStore(tmp_path / "records.sqlite3")
            opened.append(s)
            return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store: Any) -> RecordStore:
    return open_store()


def vec(*xs: float, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(xs)] = xs
    return v / max(float(np.linalg.norm(v)), 1e-12)


def add(store: RecordStore, content: str, **kw: Any) -> tuple[int, MemoryItem]:
    v = kw.pop("vec", None)
    state = kw.pop("state", S.ACTIVATED)
    scope = {a: kw.pop(a) for a in ("user_id", "agent_id", "session_id") if a in kw}
    item = MemoryItem(content=content, cube_id="c", state=state, scope=scope, **kw)
    with store.transaction() as c:
        rowid = store.insert_item(c, item, vec(1.0) if v is None else v, True, "me", "add")
        store.set_state(c, rowid, item.id, None, item.state, 1.0, "me", "created")
        store.append_event(c, 1.0, "me", "add", item.id, detail={"version": 1})
    return rowid, item


# ---------------------------------------------------------------------------------------------- transactions
def test_a_failed_transaction_leaves_nothing(store: RecordStore) -> None:
    item = MemoryItem(content="half written", cube_id="c")
    with pytest.raises(RuntimeError):
        with store.transaction() as c:
            rowid = store.insert_item(c, item, vec(1.0), True, "me", "add")
            store.set_state(c, rowid, item.id, None, S.ACTIVATED, 0.0, "me", "created")
            store.append_event(c, 0.0, "me", "add", item.id)
            raise RuntimeError("crash in the middle")
    assert store.get(item.id) is None
    assert store.versions(item.id) == [] and store.transitions(item.id) == []
    assert store.raw_events() == [] and store.pending_vectors() == []
    assert store.lexical('"written"', store.compile_filter(SearchFilter(), ALL_LIVE, 0.0), 5) == []
    assert sum(len(b) for b in store.all_embeddings()) == 0 and store.embedding_count() == 0


def test_items_read_back_exactly(store: RecordStore) -> None:
    when = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    rowid, item = add(store, "Ann moved to Lisbon", user_id="ann", tags=["move", "city"], event_time=when,
                      metadata={"lang": "en", "n": 3, "deep": {"x": True}}, confidence=0.7)
    got = store.get(item.id)
    assert got is not None
    assert (got.content, got.scope.user_id, got.tags, got.metadata, got.event_time, got.confidence, got.version) == \
        ("Ann moved to Lisbon", "ann", item.tags, {"lang": "en", "n": 3, "deep": {"x": True}}, when, 0.7, 1)
    assert sorted(got.tags) == ["city", "move"]
    assert store.rowid(item.id) == rowid
    assert store.get_many([item.id, "nope"]).keys() == {item.id}
    assert store.get_many_by_rowid([rowid])[rowid].id == item.id
    assert store.rowids_of([item.id]) == {item.id: (rowid, "activated")}
    assert store.count() == 1 and store.count([S.DELETED]) == 0 and store.count_by_state() == {"activated": 1}
    assert [v.version for v in store.versions(item.id)] == [1]
    assert [(t.from_state, t.to_state) for t in store.transitions(item.id)] == [(None, S.ACTIVATED)]
    assert [it.id for it in store.iter_items(batch=1)] == [item.id]
    assert list(store.iter_items(states=[S.ARCHIVED])) == []
    assert np.allclose(store.embedding(rowid), vec(1.0))
    assert store.contents([rowid]) == {rowid: "Ann moved to Lisbon"}


def test_a_taken_id_is_a_validation_error_and_rolls_back(store: RecordStore) -> None:
    _, item = add(store, "first")
    other = MemoryItem(content="second", cube_id="c")
    with pytest.raises(ValidationError, match="already exists"):
        with store.transaction() as c:
            store.insert_item(c, other, vec(1.0), True, "me", "add")
            store.insert_item(c, MemoryItem(id=item.id, content="dup", cube_id="c"), vec(1.0), True, "me", "add")
    assert store.get(other.id) is None and store.count() == 1


# ---------------------------------------------------------------------------------------------- versions
def test_a_stale_update_is_a_conflict_and_versions_stay_contiguous(store: RecordStore) -> None:
    rowid, item = add(store, "v1")
    v2 = item.model_copy(update={"content": "v2", "version": 2})
    with store.transaction() as c:
        store.replace_item(c, rowid, v2, vec(0.0, 1.0), True, True, "me", "update")
    stale = item.model_copy(update={"content": "also v2", "version": 2})  # written by someone who read v1
    with pytest.raises(Conflict):
        with store.transaction() as c:
            store.replace_item(c, rowid, stale, vec(1.0), True, True, "you", "update")
            store.append_event(c, 2.0, "you", "update", item.id)
    assert store.get(item.id).content == "v2"  # type: ignore[union-attr]
    assert [(v.version, v.content) for v in store.versions(item.id)] == [(1, "v1"), (2, "v2")]
    assert store.version(item.id, 2).content == "v2" and store.version(item.id, 3) is None  # type: ignore[union-attr]
    assert [e["op"] for e in store.events()] == ["add"]


def test_a_transition_from_a_stale_state_is_a_conflict(store: RecordStore) -> None:
    rowid, item = add(store, "x")
    with store.transaction() as c:
        store.set_state(c, rowid, item.id, S.ACTIVATED, S.ARCHIVED, 2.0, "me", "archive")
    with pytest.raises(Conflict):
        with store.transaction() as c:
            store.set_state(c, rowid, item.id, S.ACTIVATED, S.DELETED, 3.0, "you", "delete")
    assert store.get(item.id).state == S.ARCHIVED  # type: ignore[union-attr]
    assert [t.to_state for t in store.transitions(item.id)] == [S.ACTIVATED, S.ARCHIVED]


# ---------------------------------------------------------------------------------------------- audit chain
def test_the_audit_chain_verifies_and_counts(store: RecordStore) -> None:
    assert not store.has_events() and store.audit_head() is None
    _, a = add(store, "one")
    add(store, "two")
    store.append_event_alone(5.0, "eve", "get", a.id, "denied", {"right": "read"})
    rows, counter = store.audit_chain()
    assert [r[0] for r in rows] == [1, 2, 3] and counter == 3 and rows[0][7] == GENESIS_HASH
    assert verify_rows(rows, counter).ok
    assert store.audit_head() == (3, rows[-1][8])
    assert [e["op"] for e in store.events(a.id)] == ["add", "get"]
    assert len(store.events(limit=2)) == 2 and store.events()[2]["outcome"] == "denied"
    with store.transaction() as c:
        assert store.restore_events(c, rows) is False  # only into an empty log


def test_an_exported_chain_is_copied_verbatim(store: RecordStore, open_store: Any, backend: str) -> None:
    add(store, "one")
    add(store, "two")
    rows = store.raw_events()
    if backend == "sqlite":
        from memos_core.records.sqlite import SQLiteRecordStore

        other: RecordStore = SQLiteRecordStore(store.path.with_name("other.sqlite3"))  # type: ignore[attr-defined]
    else:
        from memos_core.records.postgres import PostgresRecordStore

        other = PostgresRecordStore(store._pool.conninfo, store.cube + "_copy")  # type: ignore[attr-defined]
    try:
        with other.transaction() as c:
            assert other.restore_events(c, rows) is True
            other.append_event(c, 9.0, "me", "import", None)
        got, counter = other.audit_chain()
        assert got[:2] == [tuple(r) for r in rows] and counter == 3 and verify_rows(got, counter).ok
    finally:
        other.close()


# ---------------------------------------------------------------------------------------------- filters
@pytest.fixture
def corpus(store: RecordStore) -> dict[str, str]:
    day = lambda d: datetime(2024, 1, d, tzinfo=timezone.utc)  # noqa: E731
    specs = {
        "a": dict(content="alpha", user_id="ann", tags=["red", "big"], metadata={"n": 1, "lang": "en", "flag": True},
                  event_time=day(1)),
        "b": dict(content="beta", user_id="ann", agent_id="bot", tags=["red"], metadata={"n": 5, "lang": "fr"},
                  event_time=day(5)),
        "c": dict(content="gamma", user_id="bob", tags=["blue"], metadata={"n": "high", "flag": False,
                                                                         "deep": {"k": "v"}}, event_time=day(9)),
        "d": dict(content="delta", user_id="bob", session_id="s1", tags=[], metadata={"n": 2.5, "flag": 1}),
        "e": dict(content="epsilon", metadata={"lang": None}, expires_at=datetime(2000, 1, 1, tzinfo=timezone.utc)),
    }
    ids: dict[str, str] = {}
    for key, spec in specs.items():
        _, it = add(store, **spec)  # type: ignore[arg-type]
        ids[key] = it.id
    return ids


FILTERS: list[tuple[dict[str, Any], str]] = [
    ({}, "abcd"),
    ({"user_id": "ann"}, "ab"),
    ({"agent_id": "bot"}, "b"),
    ({"session_id": "s1"}, "d"),
    ({"tags_any": ["red", "blue"]}, "abc"),
    ({"tags_all": ["red", "big"]}, "a"),
    ({"metadata": {"lang": "en"}}, "a"),
    ({"metadata": {"lang": {"$ne": "en"}}}, "bcd"),
    ({"metadata": {"lang": {"$in": ["en", "fr"]}}}, "ab"),
    ({"metadata": {"lang": {"$nin": ["en"]}}}, "bcd"),
    ({"metadata": {"lang": {"$in": []}}}, ""),
    ({"metadata": {"n": {"$gt": 2}}}, "bd"),
    ({"metadata": {"n": {"$lte": 2.5}}}, "ad"),
    ({"metadata": {"n": {"$gt": "a"}}}, "c"),
    ({"metadata": {"n": 5}}, "b"),
    ({"metadata": {"flag": True}}, "ad"),
    ({"metadata": {"flag": False}}, "c"),
    ({"metadata": {"flag": {"$exists": True}}}, "acd"),
    ({"metadata": {"flag": {"$exists": False}}}, "b"),
    ({"metadata": {"deep.k": "v"}}, "c"),
    ({"event_after": "2024-01-04T00:00:00+00:00", "event_before": "2024-01-09T00:00:00+00:00"}, "bc"),
]


@pytest.mark.parametrize("spec,expected", FILTERS, ids=[json.dumps(f[0], sort_keys=True) for f in FILTERS])
def test_filters_select_the_same_memories(store: RecordStore, corpus: dict[str, str], spec: dict[str, Any],
                                          expected: str) -> None:
    cf = store.compile_filter(SearchFilter.coerce(spec), ALL_LIVE, datetime(2024, 6, 1, tzinfo=timezone.utc).timestamp())
    rowids = store.list_rowids(cf, "created", 100, 0)
    got = {it.id for it in store.get_many_by_rowid(rowids).values()}
    assert got == {corpus[k] for k in expected}


def test_filtered_reads_agree(store: RecordStore, corpus: dict[str, str]) -> None:
    now = datetime(2024, 6, 1, tzinfo=timezone.utc).timestamp()
    cf = store.compile_filter(SearchFilter.coerce({"user_id": "ann"}), ALL_LIVE, now)
    rowids, blobs = store.filtered_vectors(cf, 10)
    assert len(rowids) == 2 and all(len(b) == 8 * 4 for b in blobs)
    assert set(store.rowids_passing([corpus["a"], corpus["c"]], cf)) == {corpus["a"]}
    assert store.embeddings_of(rowids)[0] == rowids or sorted(store.embeddings_of(rowids)[0]) == sorted(rowids)
    assert sorted(store.distinct_metadata("lang", store.compile_filter(SearchFilter(), ALL_LIVE, now), 10)) == ["en", "fr"]
    order_event = store.list_rowids(store.compile_filter(SearchFilter(), ALL_LIVE, now), "event_time", 2, 1)
    assert [store.get_many_by_rowid(order_event)[r].content for r in order_event] == ["beta", "gamma"]
    assert store.expired_ids(now, ALL_LIVE) == [corpus["e"]]


def test_filter_values_are_bound_not_spliced(store: RecordStore, corpus: dict[str, str]) -> None:
    evil = "x' OR '1'='1"
    cf = store.compile_filter(SearchFilter.coerce({"user_id": evil, "metadata": {"lang": evil}}), ALL_LIVE, 0.0)
    assert store.list_rowids(cf, "created", 10, 0) == []


# ---------------------------------------------------------------------------------------------- lexical
def test_lexical_search_ranks_rare_terms_and_respects_the_filter(store: RecordStore) -> None:
    for i in range(12):
        add(store, f"we talked about the weather again, day {i}", user_id="ann")
    _, hit = add(store, "Ann adopted a kitten called Biscuit", user_id="ann")
    _, other = add(store, "Bob adopted a kitten called Biscuit", user_id="bob")
    cf = store.compile_filter(SearchFilter.coerce({"user_id": "ann"}), ALL_LIVE, 0.0)
    res = store.lexical('"weather" OR "biscuit"', cf, 5)
    assert store.get_many_by_rowid([res[0][0]])[res[0][0]].id == hit.id  # the rare term wins
    assert all(s > 0 for _, s in res) and [s for _, s in res] == sorted((s for _, s in res), reverse=True)
    assert store.rowid(other.id) not in {r for r, _ in res}
    # stemming: "kittens" finds "kitten"
    assert store.lexical('"kittens"', cf, 5)[0][0] == store.rowid(hit.id)
    assert store.lexical("", cf, 5) == []


def test_the_lexical_index_follows_every_change(store: RecordStore) -> None:
    rowid, item = add(store, "apples and pears")
    everything = store.compile_filter(SearchFilter(), list(S), 0.0)
    assert [r for r, _ in store.lexical('"pears"', everything, 5)] == [rowid]
    new = item.model_copy(update={"content": "apples and quinces", "version": 2})
    with store.transaction() as c:
        store.replace_item(c, rowid, new, vec(1.0), True, True, "me", "update")
    assert store.lexical('"pears"', everything, 5) == []
    assert [r for r, _ in store.lexical('"quinces"', everything, 5)] == [rowid]
    with store.transaction() as c:
        store.unindex(c, rowid)
    assert store.lexical('"quinces"', everything, 5) == [] and store.embedding(rowid) is None
    with store.transaction() as c:
        store.reindex_row(c, rowid, new, vec(1.0))
    assert [r for r, _ in store.lexical('"quinces"', everything, 5)] == [rowid]


# ---------------------------------------------------------------------------------------------- vector bookkeeping
def test_pending_marks_follow_the_vector_index_protocol(store: RecordStore) -> None:
    rowid, item = add(store, "x", user_id="ann")
    assert store.pending_vectors() == [rowid] and store.embedding_count() == 1
    row = store.index_rows([rowid])[0]
    assert (row.id, row.state, row.user_id) == (item.id, "activated", "ann")
    assert np.allclose(np.frombuffer(row.vec, dtype=np.float32), vec(1.0))  # type: ignore[arg-type]
    store.mark_vectors_applied([rowid])
    store.flush()
    assert store.pending_vectors() == []
    with store.transaction() as c:
        store.mark_pending(c, rowid)
    assert store.pending_vectors() == [rowid]


def test_a_row_pending_again_after_listing_stays_pending(store: RecordStore, open_store: Any) -> None:
    rowid, item = add(store, "x")
    listed = store.pending_vectors()
    other = open_store()  # another worker writes the row again before this one reports it applied
    with other.transaction() as c:
        other.mark_pending(c, rowid)
    store.mark_vectors_applied(listed)
    store.flush()
    assert rowid in other.pending_vectors()


# ---------------------------------------------------------------------------------------------- usage, expiry
def test_usage_is_buffered_then_written(store: RecordStore, open_store: Any) -> None:
    rowid, item = add(store, "x")
    store.record_usage([rowid, rowid], 50.0)
    store.flush()
    got = open_store().get(item.id)
    assert got.usage.access_count == 2 and got.usage.last_access.timestamp() == 50.0  # type: ignore[union-attr]


def test_refresh_expiry_only_touches_live_expiring_items(store: RecordStore) -> None:
    _, a = add(store, "a", expires_at=datetime(2030, 1, 1, tzinfo=timezone.utc))
    _, b = add(store, "b")
    now = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()
    with store.transaction() as c:
        assert store.refresh_expiry(c, a.id, now + 10, now, ALL_LIVE) is True
        assert store.refresh_expiry(c, b.id, now + 10, now, ALL_LIVE) is False
    assert store.get(a.id).expires_at.timestamp() == now + 10  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------- erasure
def test_forget_leaves_no_content_in_live_rows(store: RecordStore) -> None:
    rowid, item = add(store, "my secret phrase zanzibar", user_id="ann")
    _, keep = add(store, "unrelated")
    new = item.model_copy(update={"content": "my secret phrase zanzibar, edited", "version": 2})
    with store.transaction() as c:
        store.replace_item(c, rowid, new, vec(1.0), True, True, "me", "update")
        store.set_state(c, rowid, item.id, S.ACTIVATED, S.DELETED, 2.0, "me", "delete")
    with store.transaction() as c:
        store.erase_item(c, rowid, item.id)
        store.add_forget_pending(c, [item.id])
        store.append_event(c, 3.0, "me", "forget", item.id, detail={"ids": [item.id]})
    store.compact_erased()
    assert store.get(item.id) is None and store.versions(item.id) == [] and store.transitions(item.id) == []
    assert store.embedding(rowid) is None and rowid not in store.pending_vectors()
    assert store.lexical('"zanzibar"', store.compile_filter(SearchFilter(), list(S), 0.0), 5) == []
    assert all("zanzibar" not in json.dumps(e, default=str) for e in store.events())
    assert store.forget_pending() == [item.id]
    store.clear_forget_pending([item.id])
    assert store.forget_pending() == [] and store.get(keep.id) is not None


def test_purge_blanks_every_version(store: RecordStore) -> None:
    rowid, item = add(store, "remember zanzibar", tags=["t"], metadata={"k": "v"})
    with store.transaction() as c:
        store.erase_content(c, rowid, item.id)
    got = store.get(item.id)
    assert (got.content, got.tags, got.metadata) == ("", [], {})  # type: ignore[union-attr]
    assert [(v.content, v.metadata) for v in store.versions(item.id)] == [("", {})]
    assert store.lexical('"zanzibar"', store.compile_filter(SearchFilter(), list(S), 0.0), 5) == []


# ---------------------------------------------------------------------------------------------- governance tables
def test_governance_tables(store: RecordStore) -> None:
    assert not store.governance_ready()
    with store.transaction() as c:
        assert store.bootstrap_governance(c, "owner1", "user", 1.0, "ab" * 32) is True
    with store.transaction() as c:
        assert store.bootstrap_governance(c, "someone", "user", 2.0, "cd" * 32) is False
    assert store.governance_ready() and store.role("owner1") == "owner" and store.role("someone") is None
    with store.transaction() as c:
        assert store.principal_kind(c, "svc") is None
        store.add_principal(c, "svc", "service", 3.0, "owner1")
        store.put_grant(c, "svc", "reader", "owner1", 3.0)
        store.put_grant(c, "svc", "writer", "owner1", 4.0)
        store.put_settings(c, {"audit_reads": "true", "retention": "{}"})
        assert store.count_role(c, "owner") == 1 and store.principal_kind(c, "svc") == "service"
    assert store.grants() == [("owner1", "user", "owner", "owner1", 1.0), ("svc", "service", "writer", "owner1", 4.0)]
    assert store.governance_settings() == {"redaction_key": "ab" * 32, "audit_reads": "true", "retention": "{}"}
    with store.transaction() as c:
        store.delete_grant(c, "svc")
    assert store.role("svc") is None


# ---------------------------------------------------------------------------------------------- schema version
def test_the_schema_version_is_recorded_and_a_newer_one_refused(store: RecordStore, open_store: Any) -> None:
    assert store.stored_schema_version() == store.schema_version
    with store.transaction() as c:
        store.set_meta(c, "records_schema", str(store.schema_version + 1))
    with pytest.raises(SchemaVersionError):
        open_store()


def test_closing_twice_is_harmless_and_data_survives_reopening(store: RecordStore, open_store: Any) -> None:
    _, item = add(store, "durable")
    store.close()
    store.close()
    assert store.closed
    again = open_store()
    assert again.get(item.id).content == "durable"  # type: ignore[union-attr]
    assert verify_rows(*again.audit_chain()).ok


def test_the_audit_head_is_kept_with_the_records(store: RecordStore) -> None:
    _, a = add(store, "one")
    rows = store.raw_events()
    assert store.get_meta("audit_head") == f"{rows[-1][0]}:{rows[-1][8]}"


def test_a_snapshot_reads_one_state(store: RecordStore, open_store: Any) -> None:
    add(store, "one")
    other = open_store()
    with store.read_snapshot():
        before = store.count()
        add(other, "two")  # another worker commits meanwhile
        assert store.count() == before and len(store.raw_events()) == 1
    assert store.count() == 2


def test_setdefault_meta_keeps_the_first_value(store: RecordStore, open_store: Any) -> None:
    assert store.setdefault_meta("cube_manifest", "first") == "first"
    assert open_store().setdefault_meta("cube_manifest", "second") == "first"


def test_add_items_writes_rows_versions_transitions_and_one_chain(store: RecordStore) -> None:
    _, first = add(store, "before")
    items = [MemoryItem(content=f"batch {i}", cube_id="c", state=S.ACTIVATED if i % 2 else S.ARCHIVED)
             for i in range(5)]
    with store.transaction() as c:
        rowids = store.add_items(c, items, [vec(1.0, float(i)) for i in range(5)], [True, True, False, True, True],
                                 "me", 7.0)
    assert len(set(rowids)) == 5 and store.get_many_by_rowid(rowids)[rowids[2]].id == items[2].id
    assert [store.get(it.id).state for it in items] == [it.state for it in items]  # type: ignore[union-attr]
    assert store.embedding(rowids[2]) is None and store.embedding(rowids[3]) is not None
    assert all(len(store.versions(it.id)) == 1 and len(store.transitions(it.id)) == 1 for it in items)
    rows, counter = store.audit_chain()
    assert [r[4] for r in rows] == [first.id] + [it.id for it in items] and counter == 6
    assert verify_rows(rows, counter).ok and store.get_meta("audit_head") == f"6:{rows[-1][8]}"
    with pytest.raises(ValidationError, match="already exists"):
        with store.transaction() as c:
            store.add_items(c, [MemoryItem(content="new", cube_id="c"), MemoryItem(id=items[0].id, content="dup",
                                                                                   cube_id="c")],
                            [vec(1.0), vec(1.0)], [True, True], "me", 8.0)
    assert store.count() == 6 and len(store.raw_events()) == 6


def test_contents_with_a_metadata_value_and_pending_vectors(store: RecordStore) -> None:
    ra, a = add(store, "weighted", metadata={"recall_weight": 2.5})
    rb, b = add(store, "plain")
    assert store.contents_with([ra, rb], "recall_weight") == {ra: ("weighted", 2.5), rb: ("plain", None)}
    everything = store.compile_filter(SearchFilter(), ALL_LIVE, 0.0)
    assert sorted(store.filtered_vectors(everything, 10, pending_only=True)[0]) == [ra, rb]
    store.pending_vectors()
    store.mark_vectors_applied([ra])
    store.flush()
    assert store.filtered_vectors(everything, 10, pending_only=True)[0] == [rb]


def test_lexical_search_survives_a_cube_that_grew_since_its_statistics(store: RecordStore) -> None:
    everything = store.compile_filter(SearchFilter(), ALL_LIVE, 0.0)
    add(store, "alpha one")
    assert len(store.lexical('"alpha"', everything, 5)) == 1  # statistics taken now (one row)
    for i in range(6):  # other workers write; a term first searched now matches more rows than were counted
        add(store, f"zephyr {i} again")
    assert len(store.lexical('"zephyr"', everything, 10)) == 6


def test_candidate_rows_read_embedding_text_and_weight_at_once(store: RecordStore) -> None:
    """What hybrid search reads about each candidate (exact scoring and fusion), in one call on each backend."""
    ra, _ = add(store, "weighted", metadata={"recall_weight": 0.25, "flag": True}, vec=vec(0.0, 1.0))
    rb, _ = add(store, "plain")
    with store.transaction() as c:
        rn = store.insert_item(c, MemoryItem(content="no vector", cube_id="c"), None, False, "me", "add")
    got = store.candidate_rows([rn, rb, ra, rb, 10**9], "recall_weight")
    assert list(got) == sorted([ra, rb, rn])  # rowid order; unknown rows left out
    assert got[ra][1:] == ("weighted", 0.25) and np.array_equal(np.frombuffer(got[ra][0], np.float32), vec(0.0, 1.0))
    assert got[rb][1:] == ("plain", None) and got[rn] == (None, "no vector", None)
    assert store.candidate_rows([ra], "flag")[ra][2] == 1  # booleans as 0/1, as json_extract gives them
    # the same answer as the reads it replaces (the interface's derived version)
    assert RecordStore.candidate_rows(store, [rn, rb, ra, rb, 10**9], "recall_weight") == got
    assert store.candidate_rows([], "recall_weight") == {}


def test_candidates_passing_checks_the_filter_and_reads_the_rows_at_once(store: RecordStore) -> None:
    """The dense leg's filter check of vector-index hits, with the rows of every candidate, in one call."""
    ra, a = add(store, "alpha", user_id="ann", metadata={"recall_weight": 0.5})
    rb, b = add(store, "beta", user_id="bob")
    rc, _ = add(store, "gamma", user_id="bob")
    cf = store.compile_filter(SearchFilter(user_id="ann"), ALL_LIVE, 0.0)
    got = store.candidates_passing([a.id, b.id, "unknown"], [rc], cf, "recall_weight")
    ok, rows = got.passing, got.rows
    assert ok == {a.id: ra}  # bob's hit fails the filter; rc comes from another leg and is read as given
    assert list(rows) == [ra, rc] and rows[ra][1:] == ("alpha", 0.5) and rows[rc][1:] == ("gamma", None)
    assert rows[ra][0] is not None and len(rows[ra][0]) == 8 * 4 and got.items == {}
    assert got == RecordStore.candidates_passing(store, [a.id, b.id, "unknown"], [rc], cf, "recall_weight")
    assert store.candidates_passing([], [], cf, "recall_weight") == CandidateReads({}, {}, {})
    # with the items: the same reads, plus (where the backend reads them in the same query) the full items
    full = store.candidates_passing([a.id, b.id], [rc], cf, "recall_weight", with_items=True)
    assert (full.passing, full.rows) == (ok, rows)
    if store.concurrent_reads:  # a server reads them in the same round trip
        assert sorted(full.items) == [ra, rc]
    assert {r: load() for r, load in full.items.items()} == store.get_many_by_rowid(list(full.items))


def test_lexical_rows_are_the_lexical_hits_with_their_rows(store: RecordStore) -> None:
    """The lexical leg of a search on a server also brings its candidates' rows (and items) in the same query."""
    ra, _ = add(store, "zebra crossing near the zebra enclosure", metadata={"recall_weight": 0.5})
    rb, _ = add(store, "a zebra at the zoo")
    add(store, "nothing striped here")
    everything = store.compile_filter(SearchFilter(), ALL_LIVE, 0.0)
    ranked, got = store.lexical_rows('"zebra"', everything, 10, "recall_weight")
    assert ranked == store.lexical('"zebra"', everything, 10) and [r for r, _ in ranked] == [ra, rb]
    assert got.passing == {} and got.rows == store.candidate_rows([ra, rb], "recall_weight") and got.items == {}
    _, full = store.lexical_rows('"zebra"', everything, 1, "recall_weight", with_items=True)
    assert list(full.rows) == [ra]
    if store.concurrent_reads:  # a server reads the items in the same round trip
        assert list(full.items) == [ra]
    assert {r: load() for r, load in full.items.items()} == store.get_many_by_rowid(list(full.items))
    # topic vectors read with the items are those topic_vectors gives (None: the row has none)
    assert {r: t for r, t in full.topics.items() if t is not None} == store.topic_vectors(list(full.topics))
    assert store.lexical_rows("", everything, 10, "recall_weight") == ([], CandidateReads({}, {}, {}))
