"""The lifecycle state machine: legal moves work and are recorded, illegal ones raise and change nothing."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone

import pytest
from conftest import grant

from memos_core import lifecycle
from memos_core.errors import Conflict, IllegalTransition, NotFound, ValidationError
from memos_core.items import LifecycleState as S


def test_transition_table_matches_the_documented_machine() -> None:
    assert lifecycle.TRANSITIONS[S.PURGED] == frozenset()
    assert lifecycle.TRANSITIONS[S.DELETED] == {S.ACTIVATED, S.PURGED}
    assert lifecycle.TRANSITIONS[S.FROZEN] == {S.ACTIVATED, S.ARCHIVED}
    # any live state may be tombstoned, except a frozen one (legal hold)
    for s in (S.GENERATED, S.ACTIVATED, S.ARCHIVED, S.MERGED):
        assert S.DELETED in lifecycle.TRANSITIONS[s]
        assert S.FROZEN in lifecycle.TRANSITIONS[s]
    # nothing but a tombstone can be purged
    assert [s for s in S if S.PURGED in lifecycle.TRANSITIONS[s]] == [S.DELETED]


@pytest.mark.parametrize("cur,target", list(itertools.product(list(S), list(S))))
def test_check_transition_agrees_with_the_table(cur: S, target: S) -> None:
    if cur != target and target in lifecycle.TRANSITIONS[cur]:
        lifecycle.check_transition(cur, target)
    else:
        with pytest.raises(IllegalTransition):
            lifecycle.check_transition(cur, target)


def _snapshot(cube, item_id):
    item = cube.get(item_id, include_deleted=True)
    return (item.state, item.version, item.content, len(cube.transitions(item_id)), len(cube.history(item_id)),
            sum(e["outcome"] == "ok" for e in cube.events()))  # a failed attempt's audit record is no change


def test_every_transition_is_recorded_with_actor_and_reason(cube, clock) -> None:
    grant(cube, "alice", "scheduler", "legal", "dpo")
    item = cube.add("Ann moved to Lisbon in 2021", actor="alice")
    clock.advance(10)
    cube.transition(item.id, "archived", reason="cold", actor="scheduler")
    clock.advance(10)
    cube.transition(item.id, S.ACTIVATED, reason="used again", actor="scheduler")
    cube.transition(item.id, S.FROZEN, reason="legal hold #12", actor="legal")
    cube.transition(item.id, S.ACTIVATED, reason="hold lifted", actor="legal")
    cube.delete(item.id, reason="user asked", actor="alice")
    cube.restore(item.id, reason="mistake", actor="alice")
    cube.delete(item.id, actor="alice")
    cube.purge(item.id, reason="gdpr", actor="dpo")
    ts = cube.transitions(item.id)
    got = [(t.from_state, t.to_state, t.actor, t.reason) for t in ts]
    assert got == [
        (None, S.ACTIVATED, "alice", "created"),
        (S.ACTIVATED, S.ARCHIVED, "scheduler", "cold"),
        (S.ARCHIVED, S.ACTIVATED, "scheduler", "used again"),
        (S.ACTIVATED, S.FROZEN, "legal", "legal hold #12"),
        (S.FROZEN, S.ACTIVATED, "legal", "hold lifted"),
        (S.ACTIVATED, S.DELETED, "alice", "user asked"),
        (S.DELETED, S.ACTIVATED, "alice", "mistake"),
        (S.ACTIVATED, S.DELETED, "alice", "delete"),
        (S.DELETED, S.PURGED, "dpo", "gdpr"),
    ]
    # times come from the cube's clock and never go backwards
    assert ts[0].at == datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert all(a.at <= b.at for a, b in zip(ts, ts[1:]))
    # the event log saw every one of them too
    ops = [e["op"] for e in cube.events(item.id)]
    assert ops.count("transition") == 7 and ops[0] == "add" and ops[-1] == "purge"


@pytest.mark.parametrize(
    "setup,target",
    [
        ([], S.GENERATED),           # activated -> generated is not a move
        ([], S.PURGED),              # only tombstones can be purged
        ([], S.ACTIVATED),           # already activated
        ([S.DELETED], S.ARCHIVED),   # a tombstone only restores (activated) or purges
        ([S.DELETED], S.FROZEN),
        ([S.FROZEN], S.DELETED),     # legal hold blocks deletion
        ([S.FROZEN], S.MERGED),
        ([S.ARCHIVED], S.GENERATED),
        ([S.DELETED, S.PURGED], S.ACTIVATED),  # purged is terminal
        ([S.DELETED, S.PURGED], S.DELETED),
    ],
)
def test_illegal_transitions_raise_and_change_nothing(cube, setup, target) -> None:
    item = cube.add("Bob's favourite food is ramen")
    for s in setup:
        cube.transition(item.id, s)
    before = _snapshot(cube, item.id)
    index_before = cube.index.count()
    with pytest.raises(IllegalTransition):
        cube.transition(item.id, target, reason="should not happen")
    assert _snapshot(cube, item.id) == before
    assert cube.index.count() == index_before


def test_unknown_state_and_unknown_id(cube) -> None:
    item = cube.add("x marks the spot")
    with pytest.raises(ValidationError):
        cube.transition(item.id, "sleeping")
    with pytest.raises(NotFound):
        cube.transition("no-such-id", S.ARCHIVED)
    assert cube.get(item.id).state == S.ACTIVATED


def test_frozen_blocks_update_delete_and_expiry_until_unfrozen(cube, clock) -> None:
    grant(cube, "legal")
    item = cube.add("Carla's passport number ends in 42", ttl=60)
    cube.transition(item.id, S.FROZEN, reason="legal hold", actor="legal")
    before = _snapshot(cube, item.id)
    with pytest.raises(Conflict, match="frozen"):
        cube.update(item.id, "changed")
    with pytest.raises(Conflict, match="frozen"):
        cube.delete(item.id)
    with pytest.raises(Conflict):
        cube.rollback(item.id, 1)
    with pytest.raises(IllegalTransition):
        cube.purge(item.id)
    clock.advance(3600)
    assert cube.expire() == []
    assert cube.expire(action="delete") == []
    assert _snapshot(cube, item.id) == before
    # lifting the hold makes it writable again
    cube.transition(item.id, S.ACTIVATED, reason="hold lifted", actor="legal")
    assert cube.update(item.id, "Carla's passport number ends in 43").version == 2
    cube.delete(item.id)
    assert cube.get(item.id, include_deleted=True).state == S.DELETED


def test_frozen_memories_stay_searchable(cube) -> None:
    item = cube.add("the vault code is seven seven three")
    cube.transition(item.id, S.FROZEN)
    assert [h.item.id for h in cube.search("vault code", k=3)] == [item.id]


def test_archived_and_merged_are_searchable_only_when_asked(cube) -> None:
    a = cube.add("orchids need indirect sunlight")
    m = cube.add("orchids like humid bathrooms")
    cube.transition(a.id, S.ARCHIVED)
    cube.transition(m.id, S.MERGED)
    for mode in ("hybrid", "dense", "lexical"):
        assert cube.search("orchids", mode=mode) == []
        got = {h.item.id for h in cube.search("orchids", mode=mode, filter={"states": ["archived"]})}
        assert got == {a.id}
        got = {h.item.id for h in cube.search("orchids", mode=mode, filter={"states": ["archived", "merged"]})}
        assert got == {a.id, m.id}
    with pytest.raises(ValidationError):
        cube.search("orchids", filter={"states": ["deleted"]})
    cube.transition(a.id, S.ACTIVATED)
    assert [h.item.id for h in cube.search("orchids")] == [a.id]
