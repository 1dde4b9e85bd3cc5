"""Errors specific to parametric memory. Both are :class:`~memos_core.errors.Conflict` subclasses, so code that
already catches ``Conflict`` keeps working."""

from __future__ import annotations

from ..errors import Conflict

__all__ = ["StaleAdapter", "BaseModelMismatch"]


class StaleAdapter(Conflict):
    """An adapter was trained from memories that have since been updated, deleted or forgotten.

    ``reasons`` maps each affected memory id to what happened to it. Retrain the adapter
    (:meth:`AdapterManager.retrain`), delete it, or load it anyway with ``allow_stale=True``.
    """

    def __init__(self, message: str, reasons: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reasons: dict[str, str] = dict(reasons or {})


class BaseModelMismatch(Conflict):
    """An adapter was trained on a different base model (architecture, config, tokenizer or weights) than the one
    it is being loaded into. ``differences`` lists what differs, one human-readable line each."""

    def __init__(self, message: str, differences: list[str] | None = None) -> None:
        super().__init__(message)
        self.differences: list[str] = list(differences or [])
