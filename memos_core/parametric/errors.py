"""Errors of parametric memory: the shared artefact errors of :mod:`memos_core.artifacts`.

``StaleAdapter`` is a :class:`~memos_core.artifacts.StaleArtifact` and ``BaseModelMismatch`` a
:class:`~memos_core.artifacts.FingerprintMismatch` (both :class:`~memos_core.errors.Conflict`), so code that
catches the artefact errors, or ``Conflict``, handles KV caches and adapters alike. ``differences`` maps each
blocking fingerprint field to ``(stored, current)``.
"""

from __future__ import annotations

from ..artifacts import BaseModelMismatch, StaleAdapter

__all__ = ["StaleAdapter", "BaseModelMismatch"]
