"""The offline default embedder: the single-query fast path equals the batch path."""

from __future__ import annotations

import numpy as np

from memos_core.embedding import _mean_pooled_bert

TEXTS = ["Where does Ann live?", "x", "Lisbon in the summer " * 120, "   ", "émigré 日本語 café", "I'm fine."]


def test_query_path_matches_document_path(minilm) -> None:
    assert _mean_pooled_bert(minilm._model()) is not None  # the fast path is the one exercised
    docs = minilm.embed_documents(TEXTS)
    for text, doc in zip(TEXTS, docs):
        q = minilm.embed_query(text)
        assert q.dtype == np.float32 and q.shape == (384,)
        assert np.abs(q - doc).max() < 1e-5, text
        assert abs(float(np.linalg.norm(q)) - 1.0) < 1e-5


def test_other_model_shapes_use_the_generic_path() -> None:
    class Odd:
        def __iter__(self):
            return iter([object()])

    assert _mean_pooled_bert(Odd()) is None
    assert _mean_pooled_bert(42) is None
