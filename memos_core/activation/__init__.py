"""Activation memory: KV caches of memory prefixes for local transformers models.

Build a cache of some memories once (:func:`build_cache`), store it (:class:`KVCacheStore`: safetensors +
JSON, memory-mapped, checked on load), and generate with it injected (:func:`generate`, :func:`stream`)
— the same greedy tokens as the full prompt, without its prefill. Compose several caches exactly
(``mode="recompute"``) or approximately by RoPE re-rotation (``mode="rerotate"``) with :func:`compose`.
:class:`LocalLLM` does all of it per chat call; the LangChain and LlamaIndex adapters wrap it.

Importing this package does not import torch or transformers; they are imported when first needed
(install the ``kv`` extra: ``pip install memos-langchain-llamaindex[kv]``).

What KV caches share with LoRA adapters (fingerprints, staleness, errors, the store protocol) lives in
:mod:`memos_core.artifacts`.
"""

from .compose import CompositionError, RopeInfo, compose, composition_error, rerotate_keys, rope_for
from .errors import BudgetExceeded, CorruptData, FingerprintMismatch, StaleArtifact, UnsupportedModel
from .fingerprint import Fingerprinter, ModelFingerprint, fingerprint, mark_loaded_from
from .generation import GenerationResult, GenerationStream, SamplingParams, generate, prefill, stream
from .kvcache import KVCache, KVCacheMeta, Segment, build_cache, build_caches, build_prefix_cache
from .layout import MemoryFormat, PromptLayout, render_layout
from .local_llm import LocalLLM, LocalLLMWrapper
from .store import CacheInfo, KVCacheStore

__all__ = [
    "BudgetExceeded",
    "CacheInfo",
    "CompositionError",
    "CorruptData",
    "FingerprintMismatch",
    "Fingerprinter",
    "GenerationResult",
    "GenerationStream",
    "KVCache",
    "KVCacheMeta",
    "KVCacheStore",
    "LocalLLM",
    "LocalLLMWrapper",
    "MemoryFormat",
    "ModelFingerprint",
    "PromptLayout",
    "RopeInfo",
    "SamplingParams",
    "Segment",
    "StaleArtifact",
    "UnsupportedModel",
    "build_cache",
    "build_caches",
    "build_prefix_cache",
    "compose",
    "composition_error",
    "fingerprint",
    "generate",
    "mark_loaded_from",
    "prefill",
    "render_layout",
    "rerotate_keys",
    "rope_for",
    "stream",
]
