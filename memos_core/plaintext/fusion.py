"""Rank fusion of several retrievers' result lists."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

__all__ = ["rrf"]


def rrf(ranked: Mapping[str, Sequence[tuple[Hashable, float]]], weights: Mapping[str, float],
        k0: float = 60.0) -> list[tuple[Hashable, float, dict[str, float], dict[str, int]]]:
    """Weighted reciprocal rank fusion.

    ``ranked`` maps retriever name -> [(key, score)] best first. Returns [(key, fused, scores, ranks)] best
    first, where ``scores``/``ranks`` say which retrievers found the key and how they scored it. Ties are
    broken by the best single rank, then by key, so results are deterministic.
    """
    fused: dict[Hashable, float] = {}
    scores: dict[Hashable, dict[str, float]] = {}
    ranks: dict[Hashable, dict[str, int]] = {}
    for name, results in ranked.items():
        w = float(weights.get(name, 1.0))
        for rank, (key, score) in enumerate(results, start=1):
            fused[key] = fused.get(key, 0.0) + w / (k0 + rank)
            scores.setdefault(key, {})[name] = float(score)
            ranks.setdefault(key, {})[name] = rank
    order = sorted(fused, key=lambda key: (-fused[key], min(ranks[key].values()), str(key)))
    return [(key, fused[key], scores[key], ranks[key]) for key in order]
