"""The SQLite system of record: transactions are all-or-nothing, the lexical index and the event chain agree."""

from __future__ import annotations

import sqlite3

import pytest

from memos_core.errors import CorruptData
from memos_core.items import LifecycleState as S
from memos_core.items import MemoryItem
from memos_core.records.base import GENESIS_HASH, event_hash
from memos_core.records.sqlite import SQLiteRecordStore


def test_a_failed_transaction_leaves_nothing(tmp_path) -> None:
    store = SQLiteRecordStore(tmp_path / "r.sqlite3")
    item = MemoryItem(content="half written", cube_id="c")
    with pytest.raises(RuntimeError):
        with store.transaction() as c:
            rowid = store.insert_item(c, item, [0.1] * 8, True, "me", "add")
            store.set_state(c, rowid, item.id, None, S.ACTIVATED, 0.0, "me", "created")
            store.append_event(c, 0.0, "me", "add", item.id)
            raise RuntimeError("crash in the middle")
    assert store.get(item.id) is None
    conn = store._conn
    for table in ("items", "versions", "transitions", "events", "embeddings", "vec_pending"):
        assert conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table
    assert conn.execute("SELECT COUNT(*) FROM fts WHERE fts MATCH 'written'").fetchone()[0] == 0
    store.close()


def test_event_log_is_a_hash_chain(cube) -> None:
    a = cube.add("first")
    cube.update(a.id, "second")
    cube.delete(a.id)
    cube.restore(a.id)
    events = cube.events()
    assert [e["op"] for e in events] == ["add", "update", "transition", "transition"]
    prev = GENESIS_HASH
    for e in events:
        assert e["prev_hash"] == prev
        conn = cube.records._conn
        raw = conn.execute("SELECT at, detail FROM events WHERE seq=?", (e["seq"],)).fetchone()
        assert e["hash"] == event_hash(prev, e["seq"], raw[0], e["actor"], e["op"], e["item_id"], e["outcome"],
                                       raw[1])
        prev = e["hash"]


def _fts_rowids(cube, term: str) -> set[int]:
    return {r[0] for r in cube.records._conn.execute("SELECT rowid FROM fts WHERE fts MATCH ?", (term,))}


def test_lexical_index_follows_every_change(cube) -> None:
    a = cube.add("apples and pears")
    b = cube.add("pears and plums")
    ra, rb = cube.records.rowid(a.id), cube.records.rowid(b.id)
    assert _fts_rowids(cube, "pears") == {ra, rb}
    cube.update(a.id, "apples and quinces")
    assert _fts_rowids(cube, "pears") == {rb} and _fts_rowids(cube, "quinces") == {ra}
    cube.delete(b.id)
    assert _fts_rowids(cube, "plums") == set()
    cube.restore(b.id)
    assert _fts_rowids(cube, "plums") == {rb}
    cube.transition(b.id, S.ARCHIVED)  # archived stays indexed (searchable when asked for)
    assert _fts_rowids(cube, "plums") == {rb}
    cube.rollback(a.id, 1)
    assert _fts_rowids(cube, "quinces") == set() and _fts_rowids(cube, "pears") == {ra, rb}
    cube.delete(a.id)
    cube.purge(a.id)
    assert _fts_rowids(cube, "apples") == set()
    conn = cube.records._conn
    assert conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 1


def test_index_text_is_what_gets_indexed(cube) -> None:
    item = cube.add("Ann: yes, Friday at six", index_text="Ann: yes, Friday at six (in reply to: Bob: dinner?)")
    assert cube.search("dinner", mode="lexical")[0].item.id == item.id
    assert cube.get(item.id).content == "Ann: yes, Friday at six"


def test_garbage_file_is_corrupt_data(tmp_path) -> None:
    p = tmp_path / "r.sqlite3"
    p.write_bytes(b"\x00garbage" * 512)
    with pytest.raises(CorruptData):
        SQLiteRecordStore(p)


def test_truncated_database_is_corrupt_data(tmp_path, cube_path, open_cube) -> None:
    cube = open_cube(cube_path)
    cube.add_many([f"memory number {i} " + "padding " * 50 for i in range(200)])
    cube.close()
    db = cube_path / "records.sqlite3"
    conn = sqlite3.connect(str(db))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptData):
        open_cube(cube_path)


def test_lexical_work_budget_keeps_the_rarest_terms(cube) -> None:
    common = cube.add_many([f"a note about the weather today, number {i}" for i in range(100)])
    rare = cube.add_many([f"weather report from Zanzibar, part {i}" for i in range(5)])
    rare_ids = {i.id for i in rare}
    full = cube.search("weather in Zanzibar", mode="lexical", k=20)
    assert len(full) == 20 and {h.item.id for h in full[:5]} == rare_ids  # no budget hit: every match scored
    cube.records.lexical_match_budget = 40  # pretend the cube is large: "weather" (105 rows) is too common
    pruned = cube.search("weather in Zanzibar", mode="lexical", k=20)
    assert {h.item.id for h in pruned} == rare_ids  # only the rare term was scored ...
    assert [h.item.id for h in pruned] == [h.item.id for h in full[:5]]  # ... in the same order
    # a word no memory holds costs nothing and does not stand in for the rarest word that occurs
    assert [h.item.id for h in cube.search("weather in Zanzibar quokka", mode="lexical", k=20)] == \
        [h.item.id for h in full[:5]]
    # a query made of common terms only still keeps its rarest one ("today": 100 rows, "weather": 105); asked
    # for more rows than its 40 newest (see the next test), it ranks every row
    hits = cube.search("weather today", mode="lexical", k=200)
    assert {h.item.id for h in hits} == {i.id for i in common}
    cube.records.lexical_match_budget = 10**9
    assert len(cube.search("weather today", mode="lexical", k=200)) == 105


def test_lexical_over_budget_ranks_only_the_newest_rows_of_the_rarest_term(cube) -> None:
    older = cube.add_many([f"today today, an older note {i}" for i in range(120)])  # twice the word: higher BM25
    newer = cube.add_many([f"today, a newer note {i}" for i in range(120)])
    best = cube.search("today", mode="lexical", k=20)
    assert {h.item.id for h in best} <= {i.id for i in older}  # within the budget: the best rows anywhere
    # "today" alone occurs in 240 rows: over the budget (which must hold the 60 candidates a search asks for)
    cube.records.lexical_match_budget = 80
    capped = cube.search("today", mode="lexical", k=20)
    assert len(capped) == 20 and {h.item.id for h in capped} <= {i.id for i in newer[-80:]}


def test_lexical_over_budget_filter_passing_few_of_the_best_newest_rows_ranks_all_newest(cube) -> None:
    old = cube.add_many([{"content": "diary", "user_id": "x"} for _ in range(80)])  # short: the best BM25
    cube.add_many([{"content": "diary diary", "user_id": "y"} for _ in range(500)])
    wordy = cube.add_many([{"content": "diary of a rather long and wordy week, page " + str(i), "user_id": "x"}
                           for i in range(100)])
    cube.records.lexical_match_budget = 600  # "diary" (680 rows) is over it: the 600 newest are ranked
    # a search asks for 60 candidates; the best 480 of the newest 600 are all "y" (shorter rows), so every one of
    # the 600 is joined: the 100 wordy "x" rows are found, the older and better "x" rows are not ranked
    hits = cube.search("diary", mode="lexical", k=10, user_id="x")
    assert len(hits) == 10 and {h.item.id for h in hits} <= {i.id for i in wordy}
    cube.records.lexical_match_budget = 10**9
    assert {h.item.id for h in cube.search("diary", mode="lexical", k=10, user_id="x")} <= {i.id for i in old}


def test_lexical_over_budget_filter_passing_few_newest_rows_sees_every_row(cube) -> None:
    old = cube.add_many([{"content": f"weather diary of the early days, page {i}", "user_id": "early"}
                         for i in range(3)])
    cube.add_many([{"content": f"weather diary, page {i}", "user_id": "late"} for i in range(200)])
    cube.records.lexical_match_budget = 100  # "weather" (203 rows) and "diary" (203) are both over it
    late = cube.search("weather diary", mode="lexical", k=5, user_id="late")
    assert len(late) == 5 and all(h.item.scope.user_id == "late" for h in late)
    # the 100 newest matches are all "late": the scope "early" passes none of them, so every row is ranked
    early = cube.search("weather diary", mode="lexical", k=5, user_id="early")
    assert {h.item.id for h in early} == {i.id for i in old}


def test_reads_are_memory_mapped_and_the_size_is_configurable(tmp_path, monkeypatch) -> None:
    from memos_core.errors import ValidationError

    store = SQLiteRecordStore(tmp_path / "a.sqlite3")
    assert store._conn.execute("PRAGMA mmap_size").fetchone()[0] == 1 << 30
    store.close()
    monkeypatch.setenv("MEMOS_SQLITE_MMAP", "0")
    off = SQLiteRecordStore(tmp_path / "b.sqlite3")
    assert off._conn.execute("PRAGMA mmap_size").fetchone()[0] == 0
    off.close()
    monkeypatch.setenv("MEMOS_SQLITE_MMAP", "lots")
    with pytest.raises(ValidationError, match="MEMOS_SQLITE_MMAP"):
        SQLiteRecordStore(tmp_path / "c.sqlite3")
    assert not (tmp_path / "c.sqlite3").exists()  # refused before anything was created


def test_a_schema_1_database_is_migrated_on_open(tmp_path) -> None:
    """Records written by the first layout (vec_pending without generations) open, migrate and keep working."""
    path = tmp_path / "old.sqlite3"
    store = SQLiteRecordStore(path)
    item = MemoryItem(content="written before the migration", cube_id="c")
    with store.transaction() as c:
        rowid = store.insert_item(c, item, [0.1] * 8, True, "me", "add")
    store.close()
    conn = sqlite3.connect(path)  # turn it back into a schema-1 database
    conn.executescript("ALTER TABLE vec_pending RENAME TO vp; CREATE TABLE vec_pending(item_rowid INTEGER PRIMARY KEY);"
                       "INSERT INTO vec_pending SELECT item_rowid FROM vp; DROP TABLE vp;"
                       "UPDATE meta SET value='1' WHERE key='records_schema';")
    conn.close()
    store = SQLiteRecordStore(path)
    try:
        assert store.stored_schema_version() == 3
        assert store.pending_vectors() == [rowid]
        store.mark_vectors_applied([rowid])
        store.flush()
        assert store.pending_vectors() == []
        assert store.get(item.id).content == "written before the migration"
    finally:
        store.close()


def test_a_newer_schema_is_refused(tmp_path) -> None:
    from memos_core.errors import SchemaVersionError

    store = SQLiteRecordStore(tmp_path / "r.sqlite3")
    with store.transaction() as c:
        store.set_meta(c, "records_schema", "99")
    store.close()
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        SQLiteRecordStore(tmp_path / "r.sqlite3")
