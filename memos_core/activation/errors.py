"""Errors specific to activation memory. All are :class:`memos_core.errors.MemOSError` subclasses.

``Conflict``
    ├── ``StaleArtifact``        a KV cache built from memories that were updated, deleted or forgotten since
    ├── ``FingerprintMismatch``  a KV cache built by another model, tokenizer, dtype, adapter or transformers version
    └── ``BudgetExceeded``       storing a cache would exceed the store's byte budget
``ValidationError``
    └── ``UnsupportedModel``     the model's architecture cannot hold or re-rotate a plain attention KV cache
``CorruptData``                  (re-exported) a cache file is truncated, altered or does not match its metadata
"""

from __future__ import annotations

from ..errors import Conflict, CorruptData, ValidationError

__all__ = ["StaleArtifact", "FingerprintMismatch", "BudgetExceeded", "UnsupportedModel", "CorruptData"]


class StaleArtifact(Conflict):
    """A derived artefact (here: a KV cache) was built from memory versions that are no longer current.

    ``reasons`` maps each stale source item id to why it is stale (updated, deleted, forgotten).
    """

    def __init__(self, message: str, reasons: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reasons: dict[str, str] = dict(reasons or {})


class FingerprintMismatch(Conflict):
    """A KV cache was built by another model/tokenizer/dtype/adapter than the one it is offered to.

    ``differences`` maps each differing fingerprint field to ``(stored, current)``.
    """

    def __init__(self, message: str, differences: dict[str, tuple[object, object]] | None = None) -> None:
        super().__init__(message)
        self.differences: dict[str, tuple[object, object]] = dict(differences or {})


class BudgetExceeded(Conflict):
    """Storing a cache would push the store above its byte budget (and eviction was not requested)."""


class UnsupportedModel(ValidationError):
    """The model cannot be used for this activation-memory operation (e.g. re-rotation on a non-RoPE model)."""
