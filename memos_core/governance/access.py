"""Reading across several cubes on behalf of one principal."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ..errors import ValidationError
from ..items import SearchHit
from .core import PRINCIPAL_KEYS
from .roles import Right, check_principal_id

__all__ = ["readable_cubes", "search_cubes"]


def readable_cubes(cubes: Iterable[Any], actor: str) -> list[Any]:
    """The cubes ``actor`` may read (no audit record: this only looks at the caller's own grants)."""
    return [c for c in cubes if c.governance.allows(actor, Right.READ)]


def search_cubes(cubes: Iterable[Any], query: str, *, actor: str, k: int = 10,
                 filter: Mapping[str, Any] | Any = None, **kwargs: Any) -> list[SearchHit]:
    """Search several cubes as ``actor`` and merge the hits (best first, at most ``k``).

    Cubes the actor may not read are skipped (each records a ``denied`` audit record); they are never
    searched, so nothing about their contents (hits, counts, scores, errors) can reach the result. Scores
    are those of each cube's own search and do not depend on any other cube. ``actor`` is required: a
    multi-cube read never runs as a default principal.
    """
    check_principal_id(actor, "actor")
    cubes = list(cubes)
    if isinstance(filter, Mapping):
        forged = sorted(k_ for k_ in filter if k_ in PRINCIPAL_KEYS | {"cube_id", "cube_ids"})
        if forged:
            for c in cubes:
                c.governance.note_denied(actor, "search")
            raise ValidationError(f"filter keys {forged} are not allowed: the principal comes from actor= and "
                                  "the cubes from the cubes argument, never from a filter")
    hits: list[tuple[float, int, int, SearchHit]] = []
    for ci, cube in enumerate(cubes):
        if not cube.governance.allows(actor, Right.READ):
            cube.governance.note_denied(actor, "search")
            continue
        floor = float("inf")
        for ri, h in enumerate(cube.search(query, k=k, filter=filter, actor=actor, **kwargs)):
            floor = min(floor, h.score)  # absolute scores interleave cubes; each cube keeps its fusion's order
            hits.append((-floor, ci, ri, h))
    hits.sort(key=lambda t: t[:3])
    return [t[3] for t in hits[:k]]
