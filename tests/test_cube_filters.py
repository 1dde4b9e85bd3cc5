"""Search filters: scopes never cross, every filter field and metadata operator holds, expiry is enforced."""

from __future__ import annotations

import pytest
from conftest import grant

from memos_core.errors import ValidationError
from memos_core.items import LifecycleState as S
from memos_core.items import SearchFilter

# the plaintext suite runs on embedded Chroma and on a real Chroma server (see conftest.py)
pytestmark = pytest.mark.both_backends

MODES = ("hybrid", "dense", "lexical")


def _ids(hits):
    return {h.item.id for h in hits}


@pytest.fixture
def people(cube):
    """Memories of two users, two agents, two sessions, all about the same topic."""
    ids = {}
    for user in ("alice", "bob"):
        for agent in ("planner", "chef"):
            for sess in ("s1", "s2"):
                key = (user, agent, sess)
                ids[key] = cube.add(f"{user} likes spicy ramen noodles ({agent} {sess})", user_id=user,
                                    agent_id=agent, session_id=sess).id
    ids["unscoped"] = cube.add("someone likes spicy ramen noodles").id
    return ids


@pytest.mark.parametrize("mode", MODES)
def test_scopes_never_cross(cube, people, mode) -> None:
    for user in ("alice", "bob"):
        got = _ids(cube.search("spicy ramen noodles", k=50, mode=mode, user_id=user))
        assert got == {v for k, v in people.items() if k != "unscoped" and k[0] == user}
        for agent in ("planner", "chef"):
            got = _ids(cube.search("ramen", k=50, mode=mode, user_id=user, agent_id=agent))
            assert got == {v for k, v in people.items() if k != "unscoped" and k[:2] == (user, agent)}
            got = _ids(cube.search("ramen", k=50, mode=mode,
                                   filter={"user_id": user, "agent_id": agent, "session_id": "s2"}))
            assert got == {people[(user, agent, "s2")]}
    # the query naming the other user does not leak them either
    got = cube.search("bob likes spicy ramen", k=50, mode=mode, user_id="alice")
    assert got and all(h.item.scope.user_id == "alice" for h in got)
    assert cube.search("ramen", mode=mode, user_id="carol") == []
    # with no scope at all, everything is visible
    assert len(cube.search("spicy ramen noodles", k=50, mode=mode)) == len(people)


def test_scope_keyword_wins_over_filter_on_the_same_axis(cube, people) -> None:
    got = _ids(cube.search("ramen", k=50, filter={"user_id": "bob"}, user_id="alice"))
    assert got and all(cube.get(i).scope.user_id == "alice" for i in got)


@pytest.mark.parametrize("mode", MODES)
def test_kinds_tags_and_time(cube, mode) -> None:
    a = cube.add("hiking trip to the alps", kind="episode", tags=["travel", "outdoor"], event_time="2023-06-01")
    b = cube.add("hiking boots size 43", kind="fact", tags=["gear", "outdoor"], event_time="2023-07-15")
    c = cube.add("hiking with Dana on Sunday", kind="episode", tags=["travel"], event_time="2024-02-01T09:30:00Z")
    d = cube.add("hiking is good for the heart", kind="note")  # no event time, no tags

    def q(**f):
        return _ids(cube.search("hiking", k=20, mode=mode, filter=f))

    assert q() == {a.id, b.id, c.id, d.id}
    assert q(kinds=["episode"]) == {a.id, c.id}
    assert q(kinds=["fact", "note"]) == {b.id, d.id}
    assert q(tags_any=["gear", "travel"]) == {a.id, b.id, c.id}
    assert q(tags_all=["travel", "outdoor"]) == {a.id}
    assert q(tags_all=["outdoor"], tags_any=["gear"]) == {b.id}
    assert q(tags_any=["nope"]) == set()
    assert q(event_after="2023-06-01") == {a.id, b.id, c.id}  # inclusive; undated memories are out
    assert q(event_after="2023-06-02", event_before="2023-12-31T23:59:59Z") == {b.id}
    assert q(event_before="2023-06-01T00:00:00+00:00") == {a.id}
    assert q(event_after="2024-02-01T10:30:00+01:00") == {c.id}  # offsets are honoured (09:30 UTC)
    assert q(event_after="2024-02-01T10:31:00+01:00") == set()
    assert q(ids=[a.id, d.id]) == {a.id, d.id}
    assert q(kinds=["episode"], tags_any=["travel"], event_after="2024-01-01") == {c.id}


@pytest.fixture(scope="module")
def meta_cube(tmp_path_factory):
    from conftest import hashed_embed

    from memos_core.cube import MemCube

    cube = MemCube(tmp_path_factory.mktemp("meta") / "cube", embedder=hashed_embed)
    docs = {
        "a": {"lang": "en", "priority": 3, "score": 0.5, "flag": True, "owner": {"team": "red", "level": 2}},
        "b": {"lang": "de", "priority": 1, "score": 2.5, "flag": False, "owner": {"team": "blue", "level": 5}},
        "c": {"lang": "en", "priority": "high", "owner": {"team": "red"}},
        "d": {},
    }
    ids = {k: cube.add(f"quarterly report draft {k}", metadata=m).id for k, m in docs.items()}
    yield cube, ids
    cube.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "flt,expected",
    [
        ({"lang": "en"}, "ac"),
        ({"lang": {"$eq": "de"}}, "b"),
        ({"lang": {"$ne": "en"}}, "bd"),          # a memory without the key matches $ne ...
        ({"lang": {"$nin": ["en"]}}, "bd"),       # ... and $nin alike
        ({"lang": {"$in": ["en", "fr"]}}, "ac"),
        ({"lang": {"$in": []}}, ""),
        ({"priority": {"$gt": 1}}, "a"),          # numbers compare with numbers only: "high" is not > 1
        ({"priority": {"$gte": 1}}, "ab"),
        ({"priority": {"$lt": 3}}, "b"),
        ({"priority": {"$lte": 3, "$gt": 1}}, "a"),
        ({"priority": {"$gt": "a"}}, "c"),        # strings compare with strings only
        ({"score": {"$gt": 1}}, "b"),             # floats and ints compare
        ({"score": {"$lt": 1}}, "a"),
        ({"flag": True}, "a"),
        ({"flag": False}, "b"),
        ({"priority": {"$exists": True}}, "abc"),
        ({"priority": {"$exists": False}}, "d"),
        ({"owner.team": "red"}, "ac"),            # nested keys
        ({"owner.level": {"$gte": 2}}, "ab"),
        ({"owner.level": {"$exists": False}}, "cd"),
        ({"owner.team": {"$in": ["blue"]}, "lang": "de"}, "b"),
        ({"lang": "en", "priority": 3}, "a"),
    ],
)
def test_metadata_operators(meta_cube, mode, flt, expected) -> None:
    cube, ids = meta_cube
    got = _ids(cube.search("quarterly report draft", k=10, mode=mode, filter={"metadata": flt}))
    assert got == {ids[k] for k in expected}, flt
    listed = {i.id for i in cube.list({"metadata": flt})}
    assert listed == {ids[k] for k in expected}


@pytest.mark.parametrize(
    "flt",
    [
        {"metadata": {"lang": {"$regex": "e.*"}}},
        {"metadata": {"lang": {}}},
        {"metadata": {"lang": {"$in": "en"}}},
        {"metadata": {"x": {"$exists": "yes"}}},
        {"metadata": {"x": {"$gt": [1]}}},
        {"metadata": {"x": {"$gt": True}}},
        {"metadata": {"bad key": 1}},
        {"metadata": {"x') OR 1=1 --": 1}},
        {"metadata": {"x": [1, 2]}},
        {"metadata": "lang=en"},
        {"kinds": ["rumour"]},
        {"states": ["sleeping"]},
        {"states": ["deleted"]},
        {"states": ["purged"]},
        {"tags_any": "travel"},
        {"event_after": "next tuesday-ish"},
        {"user": "alice"},  # unknown key
        ["user_id", "alice"],
    ],
)
def test_bad_filters_raise_validation_error(meta_cube, flt) -> None:
    cube, _ = meta_cube
    with pytest.raises(ValidationError):
        cube.search("report", filter=flt)
    with pytest.raises(ValidationError):
        cube.list(flt)


def test_filter_object_and_dict_are_equivalent(meta_cube) -> None:
    cube, ids = meta_cube
    f = SearchFilter(metadata={"lang": "en"}, kinds=["fact"])
    assert _ids(cube.search("report", filter=f)) == _ids(cube.search("report", filter=f.model_dump()))


@pytest.mark.parametrize("mode", MODES)
def test_expired_memories_never_come_back(cube, clock, mode) -> None:
    short = cube.add("parking ticket valid until noon", ttl=60)
    dated = cube.add("parking permit for the summer", expires_at=clock.now.replace(month=2))
    forever = cube.add("parking spot number 17")
    assert _ids(cube.search("parking", mode=mode)) == {short.id, dated.id, forever.id}
    clock.advance(61)
    assert _ids(cube.search("parking", mode=mode)) == {dated.id, forever.id}
    assert _ids(cube.search("parking", mode=mode, filter={"states": ["activated", "archived"]})) == {dated.id,
                                                                                                    forever.id}
    assert short.id not in {i.id for i in cube.list()}
    clock.advance(days=40)
    assert _ids(cube.search("parking", mode=mode)) == {forever.id}
    # still retrievable by id (expired is not deleted) until the sweep runs
    assert cube.get(short.id).state == S.ACTIVATED


def test_expire_sweep_archives_or_deletes_and_skips_frozen(cube, clock) -> None:
    grant(cube, "janitor")
    a = cube.add("coupon code SPRING10", ttl=60)
    b = cube.add("coupon code SUMMER20", ttl=60)
    frozen = cube.add("coupon code held for audit", ttl=60)
    later = cube.add("coupon code AUTUMN30", ttl=3600)
    keep = cube.add("coupon codes are case sensitive")
    cube.transition(frozen.id, S.FROZEN, reason="audit")
    assert cube.expire() == []  # nothing due yet
    clock.advance(120)
    assert sorted(cube.expire()) == sorted([a.id, b.id])
    for i in (a.id, b.id):
        it = cube.get(i)
        assert it.state == S.ARCHIVED
        t = cube.transitions(i)[-1]
        assert t.to_state == S.ARCHIVED and t.reason.startswith("expired")
    assert cube.get(frozen.id).state == S.FROZEN
    # archived + expired stays out of search even when archived memories are asked for
    assert cube.search("coupon code", filter={"states": ["archived"]}) == []
    assert cube.expire() == []  # idempotent
    clock.advance(7200)
    assert sorted(cube.expire(action="delete", actor="janitor")) == sorted([a.id, b.id, later.id])
    for i in (a.id, b.id, later.id):
        assert cube.get(i, include_deleted=True).state == S.DELETED
        assert cube.transitions(i)[-1].actor == "janitor"
    assert cube.get(frozen.id).state == S.FROZEN
    assert cube.get(keep.id).state == S.ACTIVATED
    assert _ids(cube.search("coupon code")) == {keep.id}


def test_ttl_validation(cube) -> None:
    for bad in (0, -5):
        with pytest.raises(ValidationError):
            cube.add("never valid", ttl=bad)
    assert cube.count() == 0
