"""The bulk form of ``RecordStore.add_items`` (a large ``add_many``): on PostgreSQL a batch of
``_COPY_MIN_ROWS`` items or more is written with COPY instead of one statement per item. Whatever path a batch
takes, the same rows must come out: items read back exactly, first versions, creation transitions, one audit
chain, the lexical postings, stored embeddings, pending marks and the vector change log; a taken id rolls the
whole batch back. Run on SQLite (a temp file) and PostgreSQL (a temporary cluster, skipped when absent)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterator

import numpy as np
import pytest

from memos_core.errors import ValidationError
from memos_core.governance.audit import verify_rows
from memos_core.items import LifecycleState as S
from memos_core.items import MemoryItem, SearchFilter
from memos_core.records.base import RecordStore


@pytest.fixture(scope="module")
def pg() -> Iterator[Any]:
    from pg_server import running_pg

    yield from running_pg("memos-bulk")


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: Any, tmp_path: Any) -> Iterator[Any]:
    """``open_store(name)``: a fresh store (a schema on the test cluster, or a SQLite file) per name."""
    opened: list[RecordStore] = []

    def _open(name: str) -> RecordStore:
        if request.param == "postgresql":
            from pg_server import fresh_schema_name

            from memos_core.records.postgres import PostgresRecordStore

            s: RecordStore = PostgresRecordStore(request.getfixturevalue("pg").url(), fresh_schema_name(name))
        else:
            from memos_core.records.sqlite import SQLiteRecordStore

            s = SQLiteRecordStore(tmp_path / f"{name}.sqlite3")
        opened.append(s)
        return s

    _open.backend = request.param  # type: ignore[attr-defined]
    yield _open
    for s in opened:
        s.close()


N = 150  # over _COPY_MIN_ROWS (64): the COPY path on PostgreSQL


def batch(n: int = N) -> tuple[list[MemoryItem], list[np.ndarray | None], list[bool]]:
    rng = np.random.default_rng(5)
    items, vecs, indexed = [], [], []
    for i in range(n):
        items.append(MemoryItem(
            content=f"Memory {i}: Ann visited Lisbon and ate pastel de nata — café ñ 日本 #{i}" if i % 3 else
            f"Bob's kitten number {i} chased a red umbrella\twith a tab and a \\backslash",
            cube_id="c", state=S.ARCHIVED if i % 7 == 0 else S.ACTIVATED, scope={"user_id": f"u{i % 4}"},
            kind="episode" if i % 2 else "fact", tags=["travel", f"t{i % 3}"],
            metadata={"n": i, "nested": {"x": [1, 2.5, None]}, "text": "quote \" and newline \n"},
            event_time=datetime(2024, 1, 1 + i % 28, tzinfo=timezone.utc), confidence=0.5 + (i % 5) / 10,
            provenance={"source": "conversation", "source_ids": [f"t{i}"]},
            index_text=f"indexed text {i} about kittens" if i % 11 == 0 else None))
        v = rng.standard_normal(8).astype(np.float32)
        vecs.append(None if i % 13 == 5 else v / np.linalg.norm(v))  # a few wait for their embedding
        indexed.append(i % 17 != 3)  # a few not indexed (e.g. a state outside the index)
    return items, vecs, indexed


def _add(store: RecordStore, items: list[MemoryItem], vecs: list[Any], indexed: list[bool]) -> list[int]:
    with store.transaction() as c:
        return store.add_items(c, items, vecs, indexed, "me", 7.0)


def test_a_large_batch_reads_back_exactly_and_in_order(open_store: Any) -> None:
    store = open_store("bulk")
    items, vecs, indexed = batch()
    rowids = _add(store, items, vecs, indexed)
    assert rowids == sorted(rowids) and len(set(rowids)) == N  # later items get larger rowids
    got = store.get_many([it.id for it in items])
    assert [got[it.id] for it in items] == items
    assert store.get_many_by_rowid(rowids)[rowids[10]].id == items[10].id
    for it in items[:20]:
        (v,) = store.versions(it.id)
        assert (v.version, v.content, v.author, v.reason, v.metadata) == (1, it.content, "me", "add", it.metadata)
        (t,) = store.transitions(it.id)
        assert (t.from_state, t.to_state, t.actor, t.reason) == (None, it.state, "me", "created")
    rows, counter = store.audit_chain()
    assert [r[4] for r in rows] == [it.id for it in items] and counter == N
    assert verify_rows(rows, counter).ok and store.get_meta("audit_head") == f"{N}:{rows[-1][8]}"
    for r, v, idx in zip(rowids, vecs, indexed):
        e = store.embedding(r)
        if idx and v is not None:
            assert e is not None and np.array_equal(e, v)
        else:
            assert e is None
    # every indexed row is pending for the vector index, with or without its embedding yet
    assert sorted(store.pending_vectors()) == [r for r, idx in zip(rowids, indexed) if idx]


def test_the_lexical_index_and_filters_see_a_large_batch(open_store: Any) -> None:
    store = open_store("bulklex")
    items, vecs, indexed = batch()
    rowids = _add(store, items, vecs, indexed)
    live = store.compile_filter(SearchFilter(), [S.ACTIVATED, S.ARCHIVED], 0.0)
    want = {r for r, it, idx in zip(rowids, items, indexed) if idx and "kitten" in (it.index_text or it.content)}
    got = {r for r, _ in store.lexical('"kittens"', live, 200)}
    assert got == want and want
    only_u1 = store.compile_filter(SearchFilter.coerce({"user_id": "u1"}), [S.ACTIVATED], 0.0)
    passing = store.passing_rowids(rowids, only_u1)
    assert passing == {r for r, it in zip(rowids, items) if it.scope.user_id == "u1" and it.state == S.ACTIVATED}


def test_the_copy_path_writes_what_the_per_item_path_writes(open_store: Any, monkeypatch: Any) -> None:
    """The same batch through the bulk path and the per-item statements gives the same rows, lexical scores,
    stored vectors and vector change log (on SQLite both are the one path)."""
    items, vecs, indexed = batch()
    bulk = open_store("viacopy")
    bulk_rows = _add(bulk, items, vecs, indexed)
    if open_store.backend == "postgresql":
        import memos_core.records.postgres as pgm

        monkeypatch.setattr(pgm, "_COPY_MIN_ROWS", 10**9)
    plain = open_store("viaexec")
    plain_rows = _add(plain, items, vecs, indexed)
    assert plain.get_many([it.id for it in items]) == bulk.get_many([it.id for it in items])
    live = bulk.compile_filter(SearchFilter(), [S.ACTIVATED], 0.0)
    for q in ('"kittens"', '"lisbon" OR "umbrella"', '"memory" OR "bob"'):
        a = [(bulk_rows.index(r), round(s, 6)) for r, s in bulk.lexical(q, live, 20)]
        b = [(plain_rows.index(r), round(s, 6)) for r, s in plain.lexical(q, live, 20)]
        assert a == b and a
    assert [bulk_rows.index(r) for r in bulk.pending_vectors()] == [plain_rows.index(r) for r in plain.pending_vectors()]
    a_changes, b_changes = bulk.vector_changes(None), plain.vector_changes(None)
    if a_changes is not None and b_changes is not None:  # a position only: nothing written since it
        assert bulk.vector_changes(a_changes[0])[1] == [] and plain.vector_changes(b_changes[0])[1] == []
    assert [r[3:5] + r[5:7] for r in bulk.raw_events()] == [r[3:5] + r[5:7] for r in plain.raw_events()]


def test_a_taken_id_in_a_large_batch_rolls_the_whole_batch_back(open_store: Any) -> None:
    store = open_store("bulkdup")
    items, vecs, indexed = batch()
    _add(store, items[:1], vecs[:1], indexed[:1])
    more, mvecs, mindexed = batch(N)
    more = [it.model_copy(update={"id": f"fresh-{i}"}) for i, it in enumerate(more)]
    more[100] = more[100].model_copy(update={"id": items[0].id})
    with pytest.raises(ValidationError, match="already exists"):
        _add(store, more, mvecs, mindexed)
    assert store.count() == 1 and len(store.raw_events()) == 1
    assert store.get("fresh-0") is None and store.pending_vectors() in ([], [store.rowid(items[0].id)])
    # the store takes the next batch normally afterwards
    rowids = _add(store, more[:100], mvecs[:100], mindexed[:100])
    assert store.count() == 101 and len(rowids) == 100
    rows, counter = store.audit_chain()
    assert verify_rows(rows, counter).ok and counter == 101


def test_a_large_batch_appears_in_the_vector_change_log(open_store: Any) -> None:
    """The scope cache replays the change log: every stored embedding of the batch is in it."""
    store = open_store("bulklog")
    start = store.vector_changes(None)
    if start is None:
        pytest.skip("this backend keeps no vector change log")
    items, vecs, indexed = batch()
    rowids = _add(store, items, vecs, indexed)
    pos, changed = store.vector_changes(start[0])  # type: ignore[misc]
    assert changed is not None
    assert set(changed) >= {r for r, v, idx in zip(rowids, vecs, indexed) if idx and v is not None}


# ---------------------------------------------------------------------------------------------- through the cube
@pytest.mark.records_backends
def test_add_many_over_the_bulk_size_keeps_given_ids_and_makes_fresh_ones(cube: Any) -> None:
    """add_many makes the ids of a large batch in one go: given ids are kept, the others are new UUID4 hex ids,
    all distinct, and every memory reads back and is found."""
    import re
    import uuid

    specs: list[Any] = [f"plain memory {i} about gardening" for i in range(40)]
    specs += [{"content": f"memory {i} with an id", "id": f"given-{i}"} for i in range(40)]
    specs += [{"content": f"memory {i} with id None", "id": None, "user_id": "ann"} for i in range(40)]
    items = cube.add_many(specs)
    assert [it.id for it in items[40:80]] == [f"given-{i}" for i in range(40)]
    fresh = [it.id for it in items[:40] + items[80:]]
    assert len(set(fresh)) == 80 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in fresh)
    assert all(uuid.UUID(hex=i).version == 4 for i in fresh)
    assert cube.count() == 120 and cube.get(items[0].id).content == "plain memory 0 about gardening"
    assert any(h.item.id == items[100].id for h in cube.search("memory 20 with id None", k=5, user_id="ann"))


# ---------------------------------------------------------------------------------------------- pending marks
def test_rows_applied_but_not_yet_flushed_are_not_listed_again(open_store: Any) -> None:
    """A vector-index apply that ends while another one waits (a background flush, then repair_index) must not
    push the same rows twice: rows marked applied whose marks are still buffered are not pending; a row written
    again since it was listed (a new mark) is."""
    store = open_store("pendingbuf")
    items, vecs, indexed = batch(100)
    rowids = _add(store, items, [v if v is not None else np.ones(8, np.float32) for v in vecs], [True] * 100)
    listed = store.pending_vectors()
    assert listed == rowids
    with store.transaction() as c:  # another writer marks one row again after it was listed
        store.mark_pending(c, rowids[7])
    store.mark_vectors_applied(listed[:60])  # buffered: no transaction or flush since
    assert store.pending_vectors() == [rowids[7]] + rowids[60:]
    store.flush()
    assert store.pending_vectors() == [rowids[7]] + rowids[60:]
