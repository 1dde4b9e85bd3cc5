"""Absolute relevance scores: what ``SearchHit.score`` reports.

Fusion ranks candidates by how far each stands out among *this query's* candidates, which depends on what
else the cube holds: the same exact match would score 0.5 alone and 0.93 among five others. An app that
thresholds scores needs the opposite: a number that depends only on the query and the memory. This module maps
two such numbers into [0, 1]:

* the cosine similarity of the memory's embedding to the query's (what the dense retriever computes), and
* the *coverage*: the share of the query's content words (stopwords dropped, crude stemming) found in the
  memory's text, plus the share of the names the query mentions that the memory contains;
* the memory's own ``metadata["recall_weight"]`` (the offline reader sets it below 1 for questions,
  acknowledgements, "I don't know" replies, echoes and small talk): a question that repeats the query word for
  word is not an answer to it.

Neither depends on the other memories (unlike BM25, whose weights depend on the corpus), so a score means the
same whether a cube holds one memory or a million. The mapping is a logistic regression fitted on the project's
generated dev sets (``python benchmarks/tune_fusion.py --calibrate``): the score estimates the chance that a
memory retrieved for a question is evidence for it. Dense-only searches use the cosine alone, lexical-only
searches (no query embedding) the coverage alone.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Iterable, Mapping

from .lexical import terms

__all__ = ["query_terms", "coverage", "calibrated_score", "recall_weight", "scorer", "CALIBRATION"]

#: logistic-regression coefficients per search mode: (intercept, cosine, coverage, entity share,
#: ln(recall_weight)).
#: Fitted by ``benchmarks/tune_fusion.py --calibrate`` on the generated tuning sets (see README).
CALIBRATION: dict[str, tuple[float, ...]] = {
    "hybrid": (-9.966, 10.575, 5.085, -0.208, 13.749),
    "dense": (-10.053, 14.02, 0.0, 0.0, 12.036),
    "lexical": (-6.663, 0.0, 7.25, 0.36, 11.875),
}

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _stem(word: str) -> str:
    """A deliberately crude English stemmer (plural/past/gerund endings): enough to match "adopted" to
    "adopt" and "kayaks" to "kayak" for coverage; BM25 uses SQLite's Porter stemmer for ranking."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def query_terms(text: str) -> frozenset[str]:
    """The stemmed content terms of a query."""
    return frozenset(_stem(t) for t in terms(text))


def coverage(qterms: frozenset[str], text: str) -> float:
    """Share of ``qterms`` that occur (stemmed) in ``text``; 0 when the query has no content term."""
    if not qterms:
        return 0.0
    have = {_stem(w) for w in _WORD.findall(text.lower())}
    return len(qterms & have) / len(qterms)


def _logistic(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def calibrated_score(mode: str, cosine: float | None, cover: float, entities: float, weight: float = 1.0) -> float:
    """The absolute score in [0, 1] of one memory for one query (see the module docstring). ``cosine`` is
    ``None`` when no query embedding was computed (lexical-only search); ``weight`` is the memory's
    recall weight (1 for a statement)."""
    if cosine is None:
        mode = "lexical"
    b0, b_cos, b_cov, b_ent, b_w = CALIBRATION.get(mode, CALIBRATION["hybrid"])
    x = b0 + b_cos * float(cosine or 0.0) + b_cov * cover + b_ent * entities + b_w * _log_weight(weight)
    return min(1.0, max(0.0, _logistic(x)))


def _log_weight(weight: float) -> float:
    return math.log(min(1.0, max(0.01, float(weight))))


def recall_weight(metadata: Mapping[str, Any] | None) -> float:
    """A memory's ``metadata["recall_weight"]`` as a number in [0.01, 1] (1 when absent or not a number)."""
    w = (metadata or {}).get("recall_weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        return 1.0
    return min(1.0, max(0.01, float(w)))


def scorer(query_text: str, entity_share: Callable[[str], float]) -> Callable[..., float]:
    """A function ``(mode, memory text, cosine, recall weight) -> score`` for one query (terms computed once)."""
    qterms = query_terms(query_text)

    def score(mode: str, text: str, cosine: float | None, weight: float = 1.0) -> float:
        return calibrated_score(mode, cosine, coverage(qterms, text), entity_share(text), weight)

    return score


def fit_logistic(rows: Iterable[tuple[list[float], int]], l2: float = 1e-3, iters: int = 60) -> list[float]:
    """Fit logistic-regression weights (intercept first) by Newton's method; used by the tuning script."""
    import numpy as np

    data = list(rows)
    x = np.array([[1.0, *f] for f, _ in data], dtype=float)
    y = np.array([lab for _, lab in data], dtype=float)
    w = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -30, 30)))
        grad = x.T @ (p - y) + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return [float(v) for v in w]
