"""The memory lifecycle as a checked state machine (MemOS paper, section on MemCube lifecycle).

::

    generated ──► activated ──► merged ──► archived
        │  ▲          │  ▲         │          │  ▲
        │  └──────────┼──┼─────────┼──────────┘  │     archived ⇄ activated (cold / warm)
        ▼             ▼  │         ▼             │
      frozen ◄────── (any live state)            │     frozen = read-only (legal hold); unfreeze returns
        │                                        │              it to activated or archived
        ▼
      any live state ──► deleted (tombstone) ──► purged (content erased; terminal)
                            └──► activated (restore)

Rules a user can rely on:

* Only the transitions in :data:`TRANSITIONS` are legal; anything else raises :class:`IllegalTransition`.
* ``frozen`` items cannot be updated, deleted, expired or merged until unfrozen.
* ``deleted`` is a tombstone: the item and all its versions remain until ``purged``.
* ``purged`` is terminal: the content of every version is erased.
"""

from __future__ import annotations

from .errors import IllegalTransition
from .items import LifecycleState as S

__all__ = ["TRANSITIONS", "SEARCHABLE_DEFAULT", "WRITABLE", "check_transition", "can_transition"]

TRANSITIONS: dict[S, frozenset[S]] = {
    S.GENERATED: frozenset({S.ACTIVATED, S.MERGED, S.ARCHIVED, S.FROZEN, S.DELETED}),
    S.ACTIVATED: frozenset({S.MERGED, S.ARCHIVED, S.FROZEN, S.DELETED}),
    S.ARCHIVED: frozenset({S.ACTIVATED, S.MERGED, S.FROZEN, S.DELETED}),
    S.MERGED: frozenset({S.ARCHIVED, S.ACTIVATED, S.FROZEN, S.DELETED}),
    S.FROZEN: frozenset({S.ACTIVATED, S.ARCHIVED}),
    S.DELETED: frozenset({S.ACTIVATED, S.PURGED}),
    S.PURGED: frozenset(),
}

#: States returned by search unless the filter asks for others.
SEARCHABLE_DEFAULT: frozenset[S] = frozenset({S.GENERATED, S.ACTIVATED, S.FROZEN})
#: States whose content may be updated.
WRITABLE: frozenset[S] = frozenset({S.GENERATED, S.ACTIVATED, S.ARCHIVED, S.MERGED})
#: States that are kept in the retrieval indexes (searchable with the right filter).
INDEXED: frozenset[S] = frozenset({S.GENERATED, S.ACTIVATED, S.FROZEN, S.ARCHIVED, S.MERGED})


def can_transition(current: S, target: S) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: S, target: S) -> None:
    """Raise :class:`IllegalTransition` unless ``current -> target`` is legal."""
    if current == target:
        raise IllegalTransition(f"memory is already {current.value}")
    if not can_transition(current, target):
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[current])) or "none (terminal state)"
        raise IllegalTransition(
            f"cannot move a memory from {current.value} to {target.value}; from {current.value} it may go to: {allowed}"
        )
