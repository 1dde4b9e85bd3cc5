"""Plaintext memory retrieval: dense (Chroma), lexical (SQLite FTS5 / BM25), query analysis, fusion and the
absolute (calibrated) scores of hits."""

from . import calibration
from .fusion import Candidates, fuse, rrf, zscore_fusion
from .lexical import fts_query, terms
from .query import QueryPlan, analyze_query, entity_matcher, entity_matches
from .vector import ChromaVectorIndex

__all__ = ["ChromaVectorIndex", "fts_query", "terms", "rrf", "zscore_fusion", "QueryPlan", "analyze_query",
           "entity_matches", "entity_matcher", "Candidates", "fuse", "calibration"]
