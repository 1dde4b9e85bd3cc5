"""Versions, update, history, rollback and tombstones: nothing is destroyed silently."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import grant

from memos_core.errors import Conflict, NotFound, ValidationError
from memos_core.items import LifecycleState as S
from memos_core.items import MemoryKind

# the plaintext suite runs on embedded Chroma and on a real Chroma server (see conftest.py)
pytestmark = pytest.mark.both_backends


def _ids(hits):
    return [h.item.id for h in hits]


def test_update_makes_a_new_version_and_keeps_history(cube, clock) -> None:
    grant(cube, "alice", "bob")
    item = cube.add("Ann lives in Porto", tags=["home"], metadata={"src": "chat"}, kind="fact", actor="alice")
    clock.advance(60)
    v2 = cube.update(item.id, "Ann lives in Lisbon", reason="she moved", actor="bob")
    assert v2.version == 2 and v2.content == "Ann lives in Lisbon"
    assert v2.tags == ["home"] and v2.metadata == {"src": "chat"}  # untouched fields carry over
    assert v2.created_at == item.created_at and v2.updated_at > item.updated_at
    clock.advance(60)
    v3 = cube.update(item.id, tags=["home", "moved"], metadata={"src": "chat", "checked": True})
    assert v3.version == 3 and v3.content == "Ann lives in Lisbon"

    got = cube.get(item.id)
    assert (got.version, got.content, got.tags, got.metadata) == (3, "Ann lives in Lisbon", ["home", "moved"],
                                                                  {"checked": True, "src": "chat"})
    hist = cube.history(item.id)
    assert [(v.version, v.content, v.author, v.reason) for v in hist] == [
        (1, "Ann lives in Porto", "alice", "add"),
        (2, "Ann lives in Lisbon", "bob", "she moved"),
        (3, "Ann lives in Lisbon", "local", "update"),
    ]
    assert hist[0].tags == ["home"] and hist[2].metadata["checked"] is True
    assert hist[0].created_at < hist[1].created_at < hist[2].created_at


def test_update_reindexes_content(cube) -> None:
    item = cube.add("the spare key is under the blue flowerpot")
    cube.add("the car is parked on level three")
    cube.update(item.id, "the spare key is with the neighbour Mrs Okafor")
    assert cube.search("flowerpot", mode="lexical") == []  # old text no longer indexed
    assert all("lexical" not in h.retrievers for h in cube.search("flowerpot", mode="hybrid"))
    for mode in ("lexical", "hybrid"):
        assert _ids(cube.search("Okafor", mode=mode))[:1] == [item.id]
    assert _ids(cube.search("spare key neighbour Okafor", mode="dense", k=1)) == [item.id]
    assert cube.index.count() == 2


def test_update_rejects_bad_fields_and_changes_nothing(cube) -> None:
    item = cube.add("Bob runs on Tuesdays")
    for bad in [dict(content=""), dict(content="   "), dict(content=123), dict(metadata={"x": {1, 2}}),
                dict(tags="running"), dict(confidence=2.0), dict(kind="rumour"), dict(event_time="soon-ish")]:
        with pytest.raises(ValidationError):
            cube.update(item.id, **bad)
    with pytest.raises(ValidationError):
        cube.update(item.id)  # nothing to change
    with pytest.raises(ValidationError):
        cube.update(item.id, state="archived")  # lifecycle goes through transition()
    with pytest.raises(ValidationError):
        cube.update(item.id, version=7)
    with pytest.raises(NotFound):
        cube.update("nope", "text")
    assert cube.get(item.id).version == 1
    assert len(cube.history(item.id)) == 1


def test_expected_version_is_optimistic_concurrency(cube) -> None:
    item = cube.add("meeting moved to Thursday")
    cube.update(item.id, "meeting moved to Friday", expected_version=1)
    with pytest.raises(Conflict):
        cube.update(item.id, "meeting moved to Monday", expected_version=1)
    assert cube.get(item.id).content == "meeting moved to Friday"
    assert len(cube.history(item.id)) == 2


def test_rollback_creates_a_new_version_with_old_content(cube) -> None:
    grant(cube, "carla")
    item = cube.add("Carla has a cat called Pixel", kind=MemoryKind.PREFERENCE, tags=["pets"],
                    metadata={"n": 1}, event_time="2023-05-08T10:00:00Z")
    cube.update(item.id, "Carla has a dog called Rex", tags=["pets", "dog"], metadata={"n": 2},
                kind=MemoryKind.FACT, event_time="2024-01-01T00:00:00Z")
    back = cube.rollback(item.id, 1, reason="wrong person", actor="carla")
    assert back.version == 3
    assert back.content == "Carla has a cat called Pixel"
    assert back.kind == MemoryKind.PREFERENCE and back.tags == ["pets"] and back.metadata == {"n": 1}
    assert back.event_time.year == 2023
    hist = cube.history(item.id)
    assert [v.content for v in hist] == ["Carla has a cat called Pixel", "Carla has a dog called Rex",
                                         "Carla has a cat called Pixel"]
    assert hist[2].reason == "wrong person" and hist[2].author == "carla"
    # the index follows the rolled-back content
    assert _ids(cube.search("Pixel", mode="lexical")) == [item.id]
    assert cube.search("Rex", mode="lexical") == []
    # rolling back to the current content's twin is fine; unknown versions are NotFound and change nothing
    with pytest.raises(NotFound):
        cube.rollback(item.id, 9)
    with pytest.raises(NotFound):
        cube.rollback(item.id, 0)
    assert cube.get(item.id).version == 3


def test_delete_is_a_tombstone(cube) -> None:
    grant(cube, "ann")
    keep = cube.add("the wifi password is on the fridge")
    gone = cube.add("the wifi router is in the hallway closet")
    cube.delete(gone.id, reason="outdated", actor="ann")
    for mode in ("hybrid", "dense", "lexical"):
        assert gone.id not in _ids(cube.search("wifi router hallway", mode=mode, k=10))
    with pytest.raises(NotFound):
        cube.get(gone.id)
    tomb = cube.get(gone.id, include_deleted=True)
    assert tomb.state == S.DELETED and tomb.content == "the wifi router is in the hallway closet"
    assert len(cube.history(gone.id)) == 1  # history intact
    assert cube.count() == 1 and cube.count(include_deleted=True) == 2
    assert gone.id not in {i.id for i in cube.list()}
    assert cube.index.count() == 1  # removed from the vector index too
    with pytest.raises(Conflict):
        cube.delete(gone.id)  # already deleted
    with pytest.raises(Conflict):
        cube.update(gone.id, "resurrect by update")
    # restore brings it back, searchable again
    cube.restore(gone.id, reason="still valid")
    assert cube.get(gone.id).state == S.ACTIVATED
    assert _ids(cube.search("wifi router hallway", mode="dense", k=1)) == [gone.id]
    assert _ids(cube.search("hallway", mode="lexical")) == [gone.id]
    assert cube.index.count() == 2
    assert keep.id in _ids(cube.search("wifi password fridge"))


def test_purge_erases_the_content_of_every_version(cube, cube_path) -> None:
    grant(cube, "dpo")
    item = cube.add("my bank PIN is zq4711 zebracorn", metadata={"secret": "yes"}, tags=["pin"])
    cube.update(item.id, "my bank PIN is zq9182 zebracorn")
    cube.update(item.id, "my bank PIN changed again zebracorn")
    with pytest.raises(Conflict):
        cube.purge(item.id)  # only a tombstone can be purged
    cube.delete(item.id)
    cube.purge(item.id, reason="forget me", actor="dpo")
    purged = cube.get(item.id, include_deleted=True)
    assert purged.state == S.PURGED and purged.content == "" and purged.metadata == {} and purged.tags == []
    hist = cube.history(item.id)
    assert len(hist) == 3 and all(v.content == "" and v.metadata == {} and v.tags == [] for v in hist)
    assert cube.search("zebracorn bank PIN", mode="lexical") == []
    assert cube.search("zebracorn bank PIN", mode="dense") == []
    with pytest.raises(Conflict):
        cube.rollback(item.id, 1)
    with pytest.raises(Conflict):
        cube.restore(item.id)
    assert cube.transitions(item.id)[-1].reason == "forget me"
    backend = cube.records.backend
    cube.close()
    if backend != "sqlite":  # PostgreSQL: live rows checked above; dead tuples / WAL: see the README
        return
    # the erased text is not in the database file any more (secure_delete + FTS optimize)
    conn = sqlite3.connect(str(cube_path / "records.sqlite3"))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    raw = (cube_path / "records.sqlite3").read_bytes()
    assert b"zq4711" not in raw and b"zq9182" not in raw and b"zebracorn" not in raw


def test_history_of_unknown_id(cube) -> None:
    with pytest.raises(NotFound):
        cube.history("missing")
    with pytest.raises(NotFound):
        cube.transitions("missing")
    with pytest.raises(NotFound):
        cube.get("missing", include_deleted=True)


def test_timestamps_are_ordered_for_every_way_of_adding(cube) -> None:
    from datetime import datetime, timedelta, timezone

    from memos_core.items import MemoryItem

    past = datetime(2020, 1, 2, tzinfo=timezone.utc)
    future = datetime.now(timezone.utc) + timedelta(days=3)
    added = [cube.add("plain"), cube.add(MemoryItem(content="prebuilt item")),
             cube.add({"content": "imported", "created_at": past}),
             cube.add({"content": "clock skew", "created_at": future})]
    for item in added:
        for it in (item, cube.get(item.id)):
            assert it.created_at <= it.updated_at, it.content
    assert cube.get(added[2].id).created_at == past  # an imported creation time is kept


def test_update_re_derives_the_index_text(cube) -> None:
    # an index text with context around the content (as the offline reader writes for a reply)
    item = cube.add({"content": "bob: I live in Porto", "index_text": "bob: I live in Porto (in reply to: ann: where?)"})
    v2 = cube.update(item.id, "bob: I live in Lisbon")
    assert v2.index_text == "bob: I live in Lisbon (in reply to: ann: where?)"
    assert [h.item.id for h in cube.search("Lisbon", mode="lexical")] == [item.id]
    assert cube.search("Porto", mode="lexical") == []
    # an index text that does not hold the content once is dropped: the new content is indexed alone
    other = cube.add({"content": "kiwi", "index_text": "a summary about fruit"})
    v2 = cube.update(other.id, "mango smoothie")
    assert v2.index_text is None
    assert [h.item.id for h in cube.search("mango", mode="lexical")] == [other.id]
    assert cube.search("summary fruit", mode="lexical") == []
    # an explicit index text wins
    v3 = cube.update(other.id, "papaya", index_text="tropical fruit: papaya")
    assert v3.index_text == "tropical fruit: papaya"
