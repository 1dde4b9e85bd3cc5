"""The topical leg wired through the cube (issue 15): topic vectors stored beside the embeddings, kept in step with
every write, carried by bundles and ``memos migrate``, removed by forget, and read by hybrid search.

A memory's *topic vector* is the embedding of its own words (:func:`memos_core.reader.offline.topic_text`: no
speaker tag, date or reply context); ``b""`` stands for "its index text already is its own words" (the topic
vector is then the embedding). The module runs its cube tests on SQLite and on PostgreSQL + a Chroma server.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import capture_fusion, hashed_embed

from memos_core.cube import MemCube, RetrievalConfig
from memos_core.plaintext import analyze_query
from memos_core.plaintext.fusion import TOPICAL_WEIGHT

pytestmark = pytest.mark.records_backends

TURN = {"content": "Maya: I adopted a beagle called Biscuit.", "provenance": {"speaker": "Maya"},
        "index_text": "Maya: I adopted a beagle called Biscuit. (2023-05-01) (in reply to: Leo: got a pet?)"}


def _topic(cube: MemCube, item_id: str) -> bytes | None:
    rowid = cube.records.rowid(item_id)
    assert rowid is not None
    return cube.records.topic_vectors([rowid]).get(rowid)


def _vec(cube: MemCube, text: str) -> bytes:
    return np.asarray(cube._embed([text])[0], dtype=np.float32).tobytes()


def test_writes_keep_a_topic_vector_beside_each_embedding(cube: MemCube) -> None:
    turn, plain = cube.add_many([TURN, {"content": "plain note about tea"}])
    # a turn: the embedding of its own words; a plain memory: its embedding already is (b"")
    assert _topic(cube, turn.id) == _vec(cube, "I adopted a beagle called Biscuit.")
    assert _topic(cube, plain.id) == b""
    one = cube.add(TURN["content"].replace("beagle", "poodle"), provenance={"speaker": "Maya"},
                   index_text="Maya: I adopted a poodle. (2023-05-02)")
    assert _topic(cube, one.id) == _vec(cube, "I adopted a poodle called Biscuit.")
    # update: the new version's own words
    cube.update(turn.id, content="Maya: I adopted a cat called Biscuit.", index_text="Maya: cat (2023-05-03)")
    assert _topic(cube, turn.id) == _vec(cube, "I adopted a cat called Biscuit.")
    # deleted (a tombstone): no embedding, no topic; restored: both back
    cube.delete(turn.id)
    assert _topic(cube, turn.id) is None
    cube.restore(turn.id)
    assert _topic(cube, turn.id) == _vec(cube, "I adopted a cat called Biscuit.")
    # re-embedding rewrites them; delete removes them with the embedding
    cube.reindex(reembed=True)
    assert _topic(cube, turn.id) == _vec(cube, "I adopted a cat called Biscuit.")
    assert _topic(cube, plain.id) == b""
    cube.delete(plain.id)
    rowid = cube.records.rowid(plain.id)
    assert rowid is not None and cube.records.topic_vectors([rowid]) == {}
    assert cube.records.missing_topics() == []


def test_hybrid_search_scores_the_candidates_topic_vectors_for_questions_naming_someone(
        cube: MemCube, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RetrievalConfig().topical_weight == TOPICAL_WEIGHT
    turn, plain = cube.add_many([TURN, {"content": "Maya likes beagle puppies and tea"}])
    cube.retrieval.topical_query = "full"  # the topic vectors against the query vector (the default: next test)
    seen = capture_fusion(monkeypatch)
    cube.search("What pet did Maya adopt?", k=5)
    c = seen[-1]
    rt, rp = cube.records.rowid(turn.id), cube.records.rowid(plain.id)
    q = cube.embedder.embed_query("What pet did Maya adopt?")
    topic = np.frombuffer(_vec(cube, "I adopted a beagle called Biscuit."), dtype=np.float32)
    assert c.topical[rt] == pytest.approx(float(topic @ q), abs=1e-5)
    assert c.topical[rp] == pytest.approx(c.dense[rp], abs=1e-6)  # b"": the embedding itself
    # no leg for a query naming no one, a pasted dialogue, or with the weight at 0
    cube.search("What pet was adopted?", k=5)
    assert seen[-1].topical == {}
    cube.search("<Maya>: I adopted a pet. <Assistant>: Which one, Maya?", k=5)
    assert seen[-1].topical == {}
    cube.retrieval.topical_weight = 0.0
    cube.search("What pet did Maya adopt?", k=5)
    assert seen[-1].topical == {}


def test_the_leg_changes_the_order_it_is_meant_to(cube: MemCube) -> None:
    # the index texts carry the reply context: the name dominates one, chatter dilutes the other; the memories'
    # own words (topic vectors) do not
    off_topic = {"content": "Maya: I said hi to my friend", "provenance": {"speaker": "Maya"},
                 "index_text": "Maya: I said hi to my friend (in reply to: Leo: Maya! Maya, how is Maya?)"}
    on_topic = {"content": "Maya: the new job at the clinic starts Monday", "provenance": {"speaker": "Maya"},
                "index_text": "Maya: the new job at the clinic starts Monday (in reply to: Leo: so tell me what is "
                              "new with you these days, anything fun happening lately?)"}
    cube.add_many([off_topic, on_topic] + [{"content": f"filler {i} about weather"} for i in range(8)])
    q = "job clinic Maya"
    assert analyze_query(q).topic == "job clinic"  # "Maya" (not sentence-initial) is a name
    cube.retrieval.topical_weight = 0.0
    cube.retrieval.lexical_weight = 0.0
    cube.retrieval.entity_weight = 0.0
    without = [h.item.content for h in cube.search(q, k=2)]
    cube.retrieval.topical_weight = 3.0
    with_leg = [h.item.content for h in cube.search(q, k=2)]
    assert with_leg[0] == on_topic["content"]
    assert without[0] == off_topic["content"]  # the name wins without the leg


def test_deferred_embeddings_store_their_topic_vectors_too(tmp_path: Path, store_for: Any,
                                                            chroma_url: str | None) -> None:
    target = store_for(tmp_path / "c")
    kw: dict[str, Any] = {"workdir": tmp_path / "c"} if target != tmp_path / "c" else {}
    with MemCube(target, embedder=hashed_embed, vector_sync="deferred", embed_sync="deferred",
                 chroma_url=chroma_url, **kw) as cube:
        if not cube.records.embeds_later:
            pytest.skip("this backend embeds before the commit")
        cube._embed_in_background = lambda: None  # type: ignore[method-assign]
        cube._ensure_index_checked()
        item = cube.add(TURN["content"], provenance={"speaker": "Maya"}, index_text=TURN["index_text"])
        assert _topic(cube, item.id) is None  # waiting for its embedding
        cube.search("What pet did Maya adopt?", k=3)  # embeds what waits first
        assert _topic(cube, item.id) == _vec(cube, "I adopted a beagle called Biscuit.")


def test_bundles_and_migration_give_the_copy_its_topic_vectors(cube: MemCube, tmp_path: Path) -> None:
    from memos_core.bundle import export_cube, import_bundle
    from memos_core.records.migrate import migrate_store

    turn, plain = cube.add_many([TURN, {"content": "plain note about tea"}])
    want = {turn.id: _topic(cube, turn.id), plain.id: _topic(cube, plain.id)}
    export_cube(cube, tmp_path / "b.zip")
    with import_bundle(tmp_path / "b.zip", tmp_path / "imported", embedder=hashed_embed) as new:
        assert {i: _topic(new, i) for i in want} == want
    cube.records.flush()
    migrate_store(cube.path if cube.store_url is None else cube.store_url, tmp_path / "migrated")
    with MemCube(tmp_path / "migrated", embedder=hashed_embed) as moved:
        assert {i: _topic(moved, i) for i in want} == want


@pytest.mark.sqlite_only
def test_a_schema_2_cube_opens_without_topic_vectors_until_re_embedded(tmp_path: Path) -> None:
    with MemCube(tmp_path / "old", embedder=hashed_embed) as cube:
        turn = cube.add_many([TURN])[0]
    conn = sqlite3.connect(tmp_path / "old" / "records.sqlite3")  # turn it back into a schema-2 database
    conn.executescript("ALTER TABLE embeddings DROP COLUMN topic; UPDATE meta SET value='2' WHERE key='records_schema';")
    conn.close()
    with MemCube(tmp_path / "old", embedder=hashed_embed) as cube:
        assert cube.records.stored_schema_version() == 3
        assert _topic(cube, turn.id) is None
        assert [h.item.id for h in cube.search("What pet did Maya adopt?", k=1)] == [turn.id]  # no leg, no error
        cube.reindex(reembed=True)
        assert _topic(cube, turn.id) == _vec(cube, "I adopted a beagle called Biscuit.")


@pytest.mark.sqlite_only
def test_an_upgraded_cube_scores_older_memories_without_topic_vectors_by_their_embedding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # memories written before schema 3 have no topic vector; newer ones do. On the topical leg an older one must
    # not sit at the floor (every older memory would rank below every newer one): it is scored by its embedding.
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        old, new = cube.add_many([TURN, {**TURN, "content": "Maya: I adopted a kitten called Pip.",
                                         "index_text": "Maya: I adopted a kitten called Pip. (2023-06-01)"}])
    conn = sqlite3.connect(tmp_path / "c" / "records.sqlite3")
    conn.execute("UPDATE embeddings SET topic=NULL WHERE item_rowid=(SELECT rowid FROM items WHERE id=?)", (old.id,))
    conn.commit()
    conn.close()
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        assert _topic(cube, old.id) is None and _topic(cube, new.id)
        cube.retrieval.topical_query = "full"  # compared with the query vector: the older one's value is its dense cosine
        seen = capture_fusion(monkeypatch)
        cube.search("What pet did Maya adopt?", k=5)
        c = seen[-1]
        ro, rn = cube.records.rowid(old.id), cube.records.rowid(new.id)
        assert c.topical[ro] == pytest.approx(c.dense[ro], abs=1e-6)
        q = cube.embedder.embed_query("What pet did Maya adopt?")
        own = np.frombuffer(_vec(cube, "I adopted a kitten called Pip."), dtype=np.float32)
        assert c.topical[rn] == pytest.approx(float(own @ q), abs=1e-5)


@pytest.mark.sqlite_only
def test_forget_leaves_no_byte_of_the_topic_vector(tmp_path: Path) -> None:
    from test_forget_derived import dense_embed, vector_traces

    with MemCube(tmp_path / "c", embedder=dense_embed) as cube:
        cube.add_many([{"content": f"filler {i}"} for i in range(20)])
        turn = cube.add_many([TURN])[0]
        blob = _topic(cube, turn.id)
        assert blob
        topic = np.frombuffer(blob, dtype=np.float32).copy()
        assert vector_traces(tmp_path / "c", {"topic": topic})  # the probe finds it while it is stored
        cube.forget(turn.id)
    assert vector_traces(tmp_path / "c", {"topic": topic}) == []


def test_the_topic_query_option_compares_the_topic_vectors_with_the_name_free_question(
        cube: MemCube, monkeypatch: pytest.MonkeyPatch) -> None:
    from memos_core.errors import ValidationError

    with pytest.raises(ValidationError, match="topical_query"):
        RetrievalConfig(topical_query="both")  # type: ignore[arg-type]
    turn, plain = cube.add_many([TURN, {"content": "Maya likes beagle puppies and tea"}])
    cube.retrieval.topical_query = "topic"
    seen = capture_fusion(monkeypatch)
    cube.search("What pet did Maya adopt?", k=5)
    c = seen[-1]
    tq = cube.embedder.embed_query("What pet did adopt?")  # the question without its names
    topic = np.frombuffer(_vec(cube, "I adopted a beagle called Biscuit."), dtype=np.float32)
    emb = cube.records.embedding(cube.records.rowid(plain.id))  # type: ignore[arg-type]
    assert c.topical[cube.records.rowid(turn.id)] == pytest.approx(float(topic @ tq), abs=1e-5)
    # a plain memory (b"": its own words, names included, are its index text) keeps its cosine to the full question
    assert c.topical[cube.records.rowid(plain.id)] == pytest.approx(c.dense[cube.records.rowid(plain.id)], abs=1e-6)
    assert c.topical[cube.records.rowid(plain.id)] != pytest.approx(float(emb @ tq), abs=1e-4)


@pytest.mark.sqlite_only
def test_a_backend_without_topic_vectors_writes_and_searches_without_the_leg(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a RecordStore that keeps the seam's defaults for topic vectors (a third-party backend): every write path
    # works, and hybrid search runs without the topical leg
    from memos_core.records.base import RecordStore
    from memos_core.records.sqlite import SQLiteRecordStore

    for name in ("put_topics", "topic_vectors", "missing_topics"):
        monkeypatch.setattr(SQLiteRecordStore, name, getattr(RecordStore, name))
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        turn = cube.add_many([TURN])[0]
        one = cube.add(TURN["content"], provenance={"speaker": "Maya"}, index_text=TURN["index_text"])
        cube.update(turn.id, content="Maya: I adopted a cat called Biscuit.", index_text="Maya: cat (2023-05-03)")
        cube.reindex(reembed=True)
        seen = capture_fusion(monkeypatch)
        hits = cube.search("What pet did Maya adopt?", k=2)
        assert {h.item.id for h in hits} == {turn.id, one.id}
        assert seen[-1].topical == {}
        cube.forget(one.id)
