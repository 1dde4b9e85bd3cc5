"""Errors of activation memory. All are :class:`memos_core.errors.MemOSError` subclasses.

``Conflict``
    ├── ``StaleArtifact``        a KV cache built from memories that were updated, deleted or forgotten since
    ├── ``FingerprintMismatch``  a KV cache built by another model, tokenizer, dtype, adapter or transformers version
    └── ``BudgetExceeded``       storing a cache would exceed the store's byte budget
``ValidationError``
    └── ``UnsupportedModel``     the model's architecture cannot hold or re-rotate a plain attention KV cache
``CorruptData``                  (re-exported) a cache file is truncated, altered or does not match its metadata

``StaleArtifact`` and ``FingerprintMismatch`` are the shared artefact errors of :mod:`memos_core.artifacts`
(parametric memory's ``StaleAdapter`` and ``BaseModelMismatch`` are their subclasses).
"""

from __future__ import annotations

from ..artifacts import FingerprintMismatch, StaleArtifact
from ..errors import Conflict, CorruptData, ValidationError

__all__ = ["StaleArtifact", "FingerprintMismatch", "BudgetExceeded", "UnsupportedModel", "CorruptData"]


class BudgetExceeded(Conflict):
    """Storing a cache would push the store above its byte budget (and eviction was not requested)."""


class UnsupportedModel(ValidationError):
    """The model cannot be used for this activation-memory operation (e.g. re-rotation on a non-RoPE model)."""
