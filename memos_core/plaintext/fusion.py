"""Rank fusion of several retrievers' result lists."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

__all__ = ["rrf", "zscore_fusion"]


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


def zscore_fusion(scores: Mapping[str, Mapping[Hashable, float]], weights: Mapping[str, float],
                  floors: Mapping[str, float] | None = None,
                  bonus: Mapping[Hashable, float] | None = None
                  ) -> list[tuple[Hashable, float, dict[str, float], dict[str, int]]]:
    """Score-based fusion: standardise each retriever's scores over the candidate set, then add them weighted.

    ``scores`` maps retriever name -> {key: score} (higher is better). The candidate set is the union of the
    keys; a candidate that a retriever did not score gets ``floors[name]`` (default: that retriever's lowest
    score), which is exact for BM25 (no matching term scores 0) and a safe bound otherwise. Unlike RRF this
    keeps *how much* better one candidate is than the next: a memory that matches a rare name exactly gets a
    large BM25 margin that survives fusion. ``bonus`` adds an unscaled amount per key (in standard deviations).
    Output is the same shape as :func:`rrf` (``ranks`` are each retriever's 1-based ranks).
    """
    # a fixed candidate order makes the floating-point sums (and so the scores) reproducible to the last bit
    keys = sorted({key for res in scores.values() for key in res}, key=lambda k: (str(type(k)), str(k)))
    fused = {key: 0.0 for key in keys}
    ranks: dict[Hashable, dict[str, int]] = {key: {} for key in keys}
    found: dict[Hashable, dict[str, float]] = {key: {} for key in keys}
    for name, res in scores.items():
        if not res:
            continue
        for rank, key in enumerate(sorted(res, key=lambda k: -res[k]), start=1):
            ranks[key][name] = rank
            found[key][name] = float(res[key])
        floor = (floors or {}).get(name, min(res.values()))
        vals = [res.get(key, floor) for key in keys]
        mean = sum(vals) / len(vals)
        sd = (sum((v - mean) ** 2 for v in vals) / len(vals)) ** 0.5
        if sd <= 1e-12:
            continue
        w = float(weights.get(name, 1.0))
        for key, v in zip(keys, vals):
            fused[key] += w * (v - mean) / sd
    for key, b in (bonus or {}).items():
        if key in fused:
            fused[key] += b
    order = sorted(fused, key=lambda key: (-fused[key], min(ranks[key].values(), default=10**9), str(key)))
    return [(key, fused[key], found[key], ranks[key]) for key in order]
