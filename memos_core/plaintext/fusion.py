"""Rank fusion of several retrievers' result lists."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

__all__ = ["rrf", "zscore_fusion", "Candidates", "fuse", "TOPICAL_WEIGHT", "TOPICAL_SHIFT", "NAME_FREE_DENSE_SCALE",
           "NAME_FREE_LEXICAL_WEIGHT"]

#: Weight of the topical leg (:attr:`Candidates.topical`) for a question or keywords, unless the settings carry
#: ``topical_weight``. Chosen on the generated tuning sets (synthetic, people-QA); see the README.
TOPICAL_WEIGHT = 1.0

#: With ``topical_query="topic"`` (the topic vectors compared with the name-free question's own vector), the share of
#: the dense leg's weight that moves to the topical leg when that leg applies: the full question's vector is
#: dominated by the names in it (every turn of the person asked about looks alike to it), the name-free one is not,
#: and the names still count through BM25 and the entity bonus. The dense and topical weights still add up to the
#: same total, so BM25's share is unchanged. 0.5 (dense 0.5, topical 1.5 at the default weights) was chosen on the
#: tuning sets (synthetic, people-QA) and checked on fresh generator seeds (README, "Retrieval quality"); with the
#: full query vector (``"full"``) moving weight cost people-QA, so nothing moves there.
TOPICAL_SHIFT = 0.5

#: For a question or keywords naming no one ("What's my parrot called?", "coffee preferences"), the dense leg's
#: weight is scaled by this (unless the settings carry ``name_free_dense_scale``), and the lexical leg's base weight
#: is :data:`NAME_FREE_LEXICAL_WEIGHT` instead of ``question_lexical_weight`` (unless the settings carry
#: ``name_free_lexical_weight``; a fixed ``lexical_weight`` stays fixed). Such a query has no topical leg; the
#: embedder's vector of a short question without a name is close to every turn on the subject, the user's own
#: earlier questions and the assistant's replies included, so the act malus (questions, acknowledgements, "I don't
#: know") and the exact words get relatively more say. Chosen on the assistant-style tuning instances
#: (``benchmarks/tune_fusion.py --tune-fresh``: generator seeds 251, 252, the only tuning data with such questions)
#: as the best any@5 + any@10 with neither instance losing at either; checked on the held-out assistant set and
#: fresh seeds (README, "Retrieval quality"). Questions naming someone and dialogues keep their weights.
NAME_FREE_DENSE_SCALE = 0.5
NAME_FREE_LEXICAL_WEIGHT = 0.4


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


@dataclass
class Candidates:
    """What hybrid fusion knows about one query's candidates (the union of the retrievers' results).

    ``dense`` holds every candidate's cosine similarity (exact, from its stored embedding); ``lexical`` the BM25
    score (higher is better) of those the lexical leg returned, ``lexical_complete`` whether that leg returned
    every memory matching a query term (then a missing candidate's BM25 is exactly 0); ``texts`` the content;
    ``*_ranks`` each retriever's own 1-based ranks.

    ``topical`` (optional, empty: no such leg) holds, for the candidates whose *topic vector* is known, the cosine
    of that vector (the memory's own words: :func:`memos_core.reader.offline.topic_text`) to the vector of the
    query's topic (the question without its names: :attr:`memos_core.plaintext.query.QueryPlan.topic`). It
    re-scores the candidates the other legs found; fusion adds it for questions and keywords only.
    """

    keys: list[Hashable]
    dense: dict[Hashable, float]
    lexical: dict[Hashable, float]
    lexical_complete: bool
    texts: dict[Hashable, str]
    dense_ranks: dict[Hashable, int]
    lexical_ranks: dict[Hashable, int]
    weights: dict[Hashable, float] = field(default_factory=dict)
    topical: dict[Hashable, float] = field(default_factory=dict)


def _peak(values: Sequence[float], top: int = 10) -> float:
    """How far a retriever's best score stands above its next ones: (best - mean of ranks 2..top) / standard
    deviation over all candidates. Large when one memory matches clearly (a rare name for BM25), small when the
    retriever cannot tell its candidates apart."""
    if len(values) < 2:
        return 0.0
    s = sorted(values, reverse=True)
    mean = sum(s) / len(s)
    sd = (sum((v - mean) ** 2 for v in s) / len(s)) ** 0.5
    if sd <= 1e-12:
        return 0.0
    nxt = s[1:top]
    return (s[0] - sum(nxt) / len(nxt)) / sd


def lexical_weight(c: Candidates, plan: Any, cfg: Any) -> float:
    """The lexical leg's weight for this query.

    Fixed when ``cfg.lexical_weight`` is set. Otherwise a base weight by query type (``question_lexical_weight``
    for a short question or keywords, :data:`NAME_FREE_LEXICAL_WEIGHT` when they name no one,
    ``dialogue_lexical_weight`` for a pasted dialogue), scaled by the two
    retrievers' confidence on *this* query: ``1 + confidence_weight * (peak(BM25) - peak(dense)) / 2``, kept
    within [0.5, 2] (see :func:`_peak`). BM25 that singles out one memory while the embedder sees a flat field
    gets more say, and the other way round.
    """
    if cfg.lexical_weight is not None:
        return float(cfg.lexical_weight)
    if plan.is_dialogue:
        base = float(cfg.dialogue_lexical_weight)
    elif not plan.entities:
        base = float(getattr(cfg, "name_free_lexical_weight", NAME_FREE_LEXICAL_WEIGHT))
    else:
        base = float(cfg.question_lexical_weight)
    gain = float(getattr(cfg, "confidence_weight", 0.0) or 0.0)
    if not gain or not c.lexical:
        return base
    floor = 0.0 if c.lexical_complete else min(c.lexical.values())
    lex = [c.lexical.get(key, floor) for key in c.keys]
    dense = [c.dense[key] for key in c.keys if key in c.dense]
    scale = 1.0 + gain * (_peak(lex) - _peak(dense)) / 2.0
    return base * min(2.0, max(0.5, scale))


def fuse(c: Candidates, plan: Any, cfg: Any) -> list[tuple[Hashable, float, dict[str, float], dict[str, int]]]:
    """Fuse one query's candidates. Returns [(key, fused, scores, ranks)] best first (``fused`` is in standard
    deviations above the candidates' mean; ``scores``/``ranks`` are those of the retrievers that found the key).

    Z-score fusion of the dense and BM25 scores with a lexical weight chosen for this query
    (:func:`lexical_weight`), a bonus for memories naming the query's entities, and a malus of
    ``cfg.act_weight * ln(recall_weight)`` for memories the reader marked as questions, acknowledgements,
    "I don't know" replies, echoes or small talk. When ``c.topical`` is given and the query is not a pasted
    dialogue, it is fused as a third leg with weight ``cfg.topical_weight`` (default :data:`TOPICAL_WEIGHT`); when
    it holds cosines to the name-free question (``cfg.topical_query == "topic"``), :data:`TOPICAL_SHIFT` of the dense
    leg's weight moves to it. For a question or keywords naming no one, the dense weight is scaled by
    :data:`NAME_FREE_DENSE_SCALE` (and :func:`lexical_weight` starts from :data:`NAME_FREE_LEXICAL_WEIGHT`).
    """
    from .query import entity_matcher

    floors = {"lexical": 0.0 if c.lexical_complete else min(c.lexical.values(), default=0.0)}
    share = entity_matcher(plan.entities) if plan.entities and cfg.entity_weight else None
    act = float(getattr(cfg, "act_weight", 0.0) or 0.0)
    bonus: dict[Hashable, float] = {}
    for key in c.keys:
        b = cfg.entity_weight * share(c.texts.get(key, "")) if share is not None else 0.0
        w = c.weights.get(key, 1.0)
        if act and w < 1.0:
            b += act * math.log(max(w, 0.01))
        if b:
            bonus[key] = b
    legs: dict[str, Mapping[Hashable, float]] = {"dense": c.dense, "lexical": c.lexical}
    weights = {"dense": cfg.dense_weight, "lexical": lexical_weight(c, plan, cfg)}
    if not plan.is_dialogue and not plan.entities:
        weights["dense"] *= float(getattr(cfg, "name_free_dense_scale", NAME_FREE_DENSE_SCALE))
    topical_w = float(getattr(cfg, "topical_weight", TOPICAL_WEIGHT) or 0.0)
    if c.topical and topical_w and not plan.is_dialogue:
        # a candidate without a topic vector gets the leg's lowest score (zscore_fusion's default floor)
        legs["topical"] = c.topical
        weights["topical"] = topical_w
        if getattr(cfg, "topical_query", "full") == "topic":
            moved = weights["dense"] * float(getattr(cfg, "topical_shift", TOPICAL_SHIFT))
            weights["dense"] -= moved
            weights["topical"] += moved
    fused = zscore_fusion(legs, weights, floors, bonus)
    out = []
    for key, z, sc, _ in fused:
        rk = {name: r for name, r in (("dense", c.dense_ranks.get(key)), ("lexical", c.lexical_ranks.get(key)))
              if r is not None}
        out.append((key, z, {name: sc[name] for name in rk}, rk))
    return out
