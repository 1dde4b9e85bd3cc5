"""Plaintext memory retrieval: dense (Chroma), lexical (SQLite FTS5 / BM25) and their fusion."""

from .fusion import rrf
from .lexical import fts_query, terms
from .vector import ChromaVectorIndex

__all__ = ["ChromaVectorIndex", "fts_query", "terms", "rrf"]
