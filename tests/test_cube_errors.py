"""Every bad input raises the documented error and leaves nothing half-written."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

import numpy as np
import pytest
from conftest import FAKE_DIM, hashed_embed, hashed_embed_32

from memos_core.cube import MemCube
from memos_core.errors import (
    CorruptData,
    CubeClosed,
    EmbeddingDimensionError,
    MemOSError,
    NotFound,
    SchemaVersionError,
    ValidationError,
)


def _table_counts(cube) -> dict[str, int]:
    conn = sqlite3.connect(str(cube.path / "records.sqlite3"))
    try:
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("items", "versions", "transitions", "embeddings", "vec_pending")}
        # the audit record of a failed attempt (its own transaction; see test_governance.py) is not a write of
        # the failed operation: count the records of operations that went through
        counts["events"] = conn.execute("SELECT COUNT(*) FROM events WHERE outcome='ok'").fetchone()[0]
        return counts
    finally:
        conn.close()


def _state(cube):
    return _table_counts(cube), cube.index.count(), cube.records.lexical('"anchor"', "1", [], 10)


@pytest.fixture
def seeded(cube):
    cube.add("anchor memory that is always there")
    return cube


class _Odd:
    pass


BAD_ADDS = [
    ("", ValidationError),
    ("   \n\t ", ValidationError),
    ("x" * 32_001, ValidationError),
    (None, ValidationError),
    (42, ValidationError),
    (b"bytes are not text", ValidationError),
    (["a", "list"], ValidationError),
    ("nul \x00 inside", ValidationError),
    ({"content": "ok", "metadata": {"s": {1, 2}}}, ValidationError),
    ({"content": "ok", "metadata": {"o": _Odd()}}, ValidationError),
    ({"content": "ok", "metadata": {"f": float("nan")}}, ValidationError),
    ({"content": "ok", "metadata": {"when": datetime(2024, 1, 1)}}, ValidationError),
    ({"content": "ok", "metadata": ["not", "a", "dict"]}, ValidationError),
    ({"content": "ok", "tags": "single-string"}, ValidationError),
    ({"content": "ok", "tags": ["", "x"]}, ValidationError),
    ({"content": "ok", "kind": "rumour"}, ValidationError),
    ({"content": "ok", "state": "deleted"}, ValidationError),
    ({"content": "ok", "state": "frozen"}, ValidationError),
    ({"content": "ok", "confidence": 1.5}, ValidationError),
    ({"content": "ok", "event_time": "the day after tomorrow"}, ValidationError),
    ({"content": "ok", "user_id": ""}, ValidationError),
    ({"content": "ok", "index_text": "   "}, ValidationError),
    ({"content": "ok", "id": "x" * 129}, ValidationError),
    ({"content": "ok", "unknown_field": 1}, ValidationError),
    ({"content": "ok", "provenance": {"source": "rumour-mill"}}, ValidationError),
]


@pytest.mark.parametrize("spec,exc", BAD_ADDS, ids=[str(i) for i in range(len(BAD_ADDS))])
def test_bad_add_raises_and_writes_nothing(seeded, spec, exc) -> None:
    before = _state(seeded)
    with pytest.raises(exc) as info:
        seeded.add(spec)
    assert isinstance(info.value, MemOSError)
    assert str(info.value)  # a message a user can act on
    assert _state(seeded) == before


def test_oversize_limit_is_configurable(tmp_path) -> None:
    with MemCube(tmp_path / "c", embedder=hashed_embed, max_content_chars=10) as c:
        c.add("0123456789")
        with pytest.raises(ValidationError, match="limit"):
            c.add("0123456789A")
        assert c.count() == 1


def test_add_many_is_all_or_nothing(seeded) -> None:
    before = _state(seeded)
    batch = ["first good memory", {"content": "second good memory", "tags": ["ok"]}, {"content": ""},
             "fourth good memory"]
    with pytest.raises(ValidationError):
        seeded.add_many(batch)
    assert _state(seeded) == before
    batch[2] = {"content": "third", "metadata": {"bad": {1}}}
    with pytest.raises(ValidationError):
        seeded.add_many(batch)
    assert _state(seeded) == before
    with pytest.raises(ValidationError):
        seeded.add_many("not a list")
    with pytest.raises(ValidationError):
        seeded.add_many(["fine"], colour="blue")
    assert _state(seeded) == before
    assert seeded.add_many([]) == []
    assert len(seeded.add_many(batch[:2])) == 2


def test_duplicate_ids(seeded) -> None:
    first = seeded.add("original text", id="fixed-id")
    before = _state(seeded)
    with pytest.raises(ValidationError, match="already exists"):
        seeded.add("another text", id="fixed-id")
    # a batch whose last item collides with a stored one rolls back entirely
    with pytest.raises(ValidationError):
        seeded.add_many([{"content": "new one", "id": "new-1"}, {"content": "clash", "id": "fixed-id"}])
    # and a batch with the same id twice never reaches the database
    with pytest.raises(ValidationError, match="duplicate"):
        seeded.add_many([{"content": "a", "id": "twin"}, {"content": "b", "id": "twin"}])
    assert _state(seeded) == before
    assert seeded.get("fixed-id").content == first.content
    with pytest.raises(NotFound):
        seeded.get("new-1")
    # the id stays taken even after a delete (tombstones keep their id)
    seeded.delete("fixed-id")
    with pytest.raises(ValidationError):
        seeded.add("reuse", id="fixed-id")


def test_unknown_ids_are_not_found(seeded) -> None:
    for call in (lambda: seeded.get("nope"), lambda: seeded.update("nope", "x"), lambda: seeded.delete("nope"),
                 lambda: seeded.restore("nope"), lambda: seeded.purge("nope"), lambda: seeded.rollback("nope", 1),
                 lambda: seeded.history("nope"), lambda: seeded.transition("nope", "archived")):
        with pytest.raises(NotFound) as info:
            call()
        assert isinstance(info.value, KeyError) and "nope" in str(info.value)
    with pytest.raises(ValidationError):
        seeded.get("")
    with pytest.raises(ValidationError):
        seeded.get(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("query,kw", [("", {}), ("   ", {}), (None, {}), ("ok", {"k": 0}), ("ok", {"k": 1001}),
                                      ("ok", {"k": "5"}), ("ok", {"k": True}), ("ok", {"mode": "fuzzy"})])
def test_bad_search_arguments(seeded, query, kw) -> None:
    with pytest.raises(ValidationError):
        seeded.search(query, **kw)


def test_fts_syntax_in_queries_is_harmless(seeded) -> None:
    for q in ('anchor" OR "x', "NEAR(anchor memory)", "anchor AND", "anchor*", "-anchor", "col:anchor", "'; DROP"):
        seeded.search(q, mode="lexical")
        seeded.search(q)
    assert seeded.count() == 1


def test_reopen_with_another_dimension_is_refused(tmp_path) -> None:
    path = tmp_path / "c"
    with MemCube(path, embedder=hashed_embed) as c:
        c.add("built with 64 dimensions")
    with pytest.raises(EmbeddingDimensionError, match="dimension") as info:
        MemCube(path, embedder=hashed_embed_32)
    assert isinstance(info.value, ValidationError)
    manifest = json.loads((path / "cube.json").read_text())
    assert manifest["embedder"]["dim"] == FAKE_DIM
    with MemCube(path, embedder=hashed_embed) as c:  # still fine with the right one
        assert c.count() == 1 and c.search("dimensions", k=1)


class _Flaky:
    """An embedder that misbehaves on demand after the cube was created."""

    def __init__(self) -> None:
        self.mode = "ok"

    def __call__(self, texts):
        if self.mode == "short":
            return hashed_embed(texts)[:-1]
        if self.mode == "dim":
            return hashed_embed(texts, 16)
        if self.mode == "nan":
            out = hashed_embed(texts)
            out[0, 0] = np.nan
            return out
        if self.mode == "junk":
            return [["a", "b"]] * len(texts)
        if self.mode == "raise":
            raise RuntimeError("model server is down")
        if self.mode == "3d":
            return hashed_embed(texts)[:, None, :]
        return hashed_embed(texts)


@pytest.mark.parametrize("mode,exc", [("short", ValidationError), ("dim", EmbeddingDimensionError),
                                      ("nan", ValidationError), ("junk", ValidationError),
                                      ("raise", ValidationError), ("3d", ValidationError)])
def test_embedder_returning_the_wrong_shape(tmp_path, mode, exc) -> None:
    emb = _Flaky()
    with MemCube(tmp_path / "c", embedder=emb) as c:
        item = c.add("anchor memory that is always there")
        before = _state(c)
        emb.mode = mode
        with pytest.raises(exc):
            c.add_many(["one more memory", "and another one"])
        with pytest.raises(exc):
            c.update(item.id, "changed text")
        with pytest.raises(exc):
            c.search("anchor", mode="dense")
        assert _state(c) == before
        assert c.get(item.id).version == 1
        emb.mode = "ok"
        assert c.search("anchor", k=1)[0].item.id == item.id


def test_newer_manifest_schema_is_refused(tmp_path) -> None:
    path = tmp_path / "c"
    MemCube(path, embedder=hashed_embed).close()
    m = json.loads((path / "cube.json").read_text())
    m["schema_version"] = 99
    (path / "cube.json").write_text(json.dumps(m))
    with pytest.raises(SchemaVersionError, match="99"):
        MemCube(path, embedder=hashed_embed)
    m["schema_version"] = "one"
    (path / "cube.json").write_text(json.dumps(m))
    with pytest.raises(SchemaVersionError):
        MemCube(path, embedder=hashed_embed)


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2, 3]", '{"cube_id": "x"}', '{"schema_version": 1}',
                                  "\x00\x01\x02"])
def test_corrupt_manifest(tmp_path, text) -> None:
    path = tmp_path / "c"
    MemCube(path, embedder=hashed_embed).close()
    (path / "cube.json").write_text(text)
    with pytest.raises(CorruptData):
        MemCube(path, embedder=hashed_embed)


def test_corrupt_records_database(tmp_path) -> None:
    path = tmp_path / "c"
    with MemCube(path, embedder=hashed_embed) as c:
        c.add("soon to be garbage")
    (path / "records.sqlite3").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (path / f"records.sqlite3{suffix}").unlink(missing_ok=True)
    with pytest.raises(CorruptData):
        MemCube(path, embedder=hashed_embed)


def test_open_missing_or_foreign_folder(tmp_path) -> None:
    with pytest.raises(NotFound):
        MemCube(tmp_path / "absent", embedder=hashed_embed, create=False)
    assert not (tmp_path / "absent").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValidationError):
        MemCube(foreign, embedder=hashed_embed)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    with MemCube(tmp_path / "c", embedder=hashed_embed, cube_id="abc") as c:
        pass
    with pytest.raises(ValidationError):
        MemCube(tmp_path / "c", embedder=hashed_embed, cube_id="other")


def test_bad_embedder_argument(tmp_path) -> None:
    with pytest.raises(ValidationError):
        MemCube(tmp_path / "c", embedder=12345)
    assert not (tmp_path / "c").exists()


def test_closed_cube_raises_cube_closed_and_data_survives(tmp_path) -> None:
    cube = MemCube(tmp_path / "c", embedder=hashed_embed)
    item = cube.add("the launch code is tulip")
    cube.close()
    cube.close()  # idempotent
    for op in (lambda: cube.get(item.id), lambda: cube.add("more"), lambda: cube.search("launch"),
               lambda: cube.update(item.id, "changed"), lambda: cube.delete(item.id),
               lambda: cube.history(item.id)):
        with pytest.raises(CubeClosed, match="closed"):
            op()
    with MemCube(tmp_path / "c", embedder=hashed_embed) as again:
        assert again.get(item.id).content == "the launch code is tulip"
        assert [v.version for v in again.history(item.id)] == [1]
