"""Model fingerprints of KV caches: the shared :mod:`memos_core.artifacts` fingerprint.

A KV cache is only meaningful for the exact network that computed it, so a cache is usable only under an
*equal* :class:`ModelFingerprint` (every weight tensor hashed in full, config, tokenizer, chat template, dtype,
transformers version, active adapters). See :mod:`memos_core.artifacts` for what is hashed and how the digest
is cached.
"""

from __future__ import annotations

from ..artifacts import Fingerprinter, ModelFingerprint, fingerprint, mark_loaded_from, tokenizer_digest

__all__ = ["ModelFingerprint", "Fingerprinter", "fingerprint", "mark_loaded_from", "tokenizer_digest"]
