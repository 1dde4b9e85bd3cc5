"""A KV cache of a memory prefix: the tensors, the exact token ids, and where they came from.

What you can rely on:

* ``cache.token_ids`` are the exact ids whose keys/values the tensors hold, position ``i`` at row ``i``.
  Position ``0`` is the first token of the prompt; a cache is only ever used as the *prefix* of a prompt
  whose first ``len(cache)`` ids equal ``cache.token_ids`` (see :mod:`memos_core.activation.generation`).
* ``cache.meta.fingerprint`` identifies the model, tokenizer, dtype and adapters that computed it.
* ``cache.meta.sources`` names the memory items (id, version, content hash) it was built from, and
  ``cache.meta.segments`` where each one's tokens are.
* A ``KVCache`` is never modified by use: :meth:`KVCache.dynamic_cache` hands generation a fresh
  ``transformers.DynamicCache`` holding *copies* of the tensors, so generation appends to the copy.
* ``cache.meta.exact`` is ``False`` only for caches composed by re-rotation (see
  :mod:`memos_core.activation.compose`); ``meta.approximation`` then says how.
* ``cache.meta.rope_regime`` names the RoPE frequency regime the tensors were computed in, for models whose
  RoPE depends on the sequence length (``dynamic``, ``longrope``; see :mod:`memos_core.activation.rope`).
  Generation reuses a cache only for a prompt in the same regime; otherwise it recomputes the prompt.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..artifacts import ItemLookup, SourceRef, source_ref, stale_sources
from ..errors import ValidationError
from ..items import LifecycleState, MemoryItem, utcnow
from .errors import StaleArtifact, UnsupportedModel
from .fingerprint import Fingerprinter, ModelFingerprint
from .layout import MemoryFormat, PromptLayout, render_layout
from .rope import settle_dynamic_rope

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "Segment",
    "KVCacheMeta",
    "KVCache",
    "build_cache",
    "build_caches",
    "build_prefix_cache",
    "prefix_forward",
    "common_prefix_len",
    "FORMAT_VERSION",
]

FORMAT_VERSION = 2
_PLACEHOLDER_CONVERSATION = [{"role": "user", "content": "?"}]


class Segment(BaseModel):
    """Token span ``[start, end)`` of one memory item inside a cache."""

    model_config = ConfigDict(extra="forbid")

    item_id: str
    start: int
    end: int


class KVCacheMeta(BaseModel):
    """Everything about a cache except its tensors. Stored as the cache's JSON file."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = FORMAT_VERSION
    cache_id: str
    fingerprint: ModelFingerprint
    token_ids: list[int]
    shared_len: int = Field(description="tokens of template head + memory preamble, shared by caches of one layout")
    segments: list[Segment] = Field(default_factory=list)
    sources: list[SourceRef] = Field(default_factory=list)
    memory_format: MemoryFormat = Field(default_factory=MemoryFormat)
    built_at: datetime = Field(default_factory=utcnow)
    build_seconds: float | None = None
    exact: bool = True
    approximation: str | None = None
    composed_from: list[str] = Field(default_factory=list)
    rope_regime: str | None = Field(default=None, description="RoPE regime of length-dependent RoPE (else None)")
    num_layers: int
    dtype: str
    nbytes: int = Field(description="bytes of the key/value tensors")

    @property
    def source_ids(self) -> list[str]:
        return [s.item_id for s in self.sources]


def cache_id_for(fp: ModelFingerprint, token_ids: Sequence[int], sources: Sequence[SourceRef], exact: bool = True) -> str:
    """Deterministic id: the same model, tokens, sources and exactness always give the same id."""
    blob = json.dumps(
        [fp.key, list(token_ids), [s.model_dump(mode="json") for s in sources], exact], separators=(",", ":")
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


class KVCache:
    """Keys and values of a token prefix for every attention layer, plus :class:`KVCacheMeta`.

    ``layers[i]`` is ``(keys, values)`` of layer ``i``, each ``[1, num_kv_heads, len(self), head_dim]``.
    """

    def __init__(self, meta: KVCacheMeta, layers: list[tuple["torch.Tensor", "torch.Tensor"]]) -> None:
        if len(layers) != meta.num_layers:
            raise ValidationError(f"cache has {len(layers)} layers, metadata says {meta.num_layers}")
        n = len(meta.token_ids)
        for i, (k, v) in enumerate(layers):
            if k.dim() != 4 or v.dim() != 4 or k.shape[0] != 1 or k.shape[-2] != n or v.shape[-2] != n:
                raise ValidationError(
                    f"layer {i}: keys {tuple(k.shape)} / values {tuple(v.shape)} do not hold {n} tokens as [1, heads, tokens, dim]"
                )
        self.meta = meta
        self.layers = layers

    def __len__(self) -> int:
        return len(self.meta.token_ids)

    def __repr__(self) -> str:
        return f"KVCache(id={self.meta.cache_id!r}, tokens={len(self)}, layers={self.meta.num_layers}, exact={self.meta.exact})"

    @property
    def cache_id(self) -> str:
        return self.meta.cache_id

    @property
    def token_ids(self) -> list[int]:
        return self.meta.token_ids

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)

    def stale_sources(self, lookup: ItemLookup) -> dict[str, str]:
        """Source item id -> reason, for sources updated/deleted/forgotten since the build. Empty: fresh."""
        return stale_sources(self.meta.sources, lookup)

    def check_fresh(self, lookup: ItemLookup) -> None:
        """Raise :class:`StaleArtifact` when any source memory changed since this cache was built."""
        reasons = self.stale_sources(lookup)
        if reasons:
            detail = ", ".join(f"{k}: {v}" for k, v in reasons.items())
            raise StaleArtifact(
                f"KV cache {self.cache_id} is stale ({detail}); rebuild it from the current memories and delete this one",
                reasons,
            )

    def prefix(self, n: int) -> "KVCache":
        """The cache of the first ``n`` tokens (views, no copy). Exact caches stay exact: position i depends
        only on tokens <= i (and on the RoPE regime, which a prefix keeps). A segment cut by ``n`` is clipped and
        keeps its source (part of that memory's tokens are still in the cache); segments after ``n`` are dropped
        with their sources."""
        if not 0 < n <= len(self):
            raise ValidationError(f"prefix length {n} outside 1..{len(self)}")
        if n == len(self):
            return self
        segments = [s if s.end <= n else Segment(item_id=s.item_id, start=s.start, end=n)
                    for s in self.meta.segments if s.start < n]
        keep = {s.item_id for s in segments}
        sources = [s for s in self.meta.sources if s.item_id in keep]
        layers = [(k[:, :, :n], v[:, :, :n]) for k, v in self.layers]
        meta = self.meta.model_copy(
            update={
                "cache_id": cache_id_for(self.meta.fingerprint, self.meta.token_ids[:n], sources, self.meta.exact),
                "token_ids": self.meta.token_ids[:n],
                "shared_len": min(self.meta.shared_len, n),
                "segments": segments,
                "sources": sources,
                "nbytes": sum(k.numel() * k.element_size() * 2 for k, _ in layers),
            }
        )
        return KVCache(meta, layers)

    def to(self, device: Any) -> "KVCache":
        """A cache whose tensors live on ``device`` (self when they already do)."""
        import torch

        device = torch.device(device)
        if all(k.device == device for k, _ in self.layers):
            return self
        return KVCache(self.meta, [(k.to(device), v.to(device)) for k, v in self.layers])

    def dynamic_cache(self, model: Any, n: int | None = None) -> Any:
        """A fresh ``transformers.DynamicCache`` for ``model`` holding a copy of the first ``n`` tokens.

        The copy is what makes reuse safe: generation appends to (and may slide or crop) the returned object,
        never to this cache's tensors. Sliding-window layers keep their window as transformers does.
        """
        from transformers import DynamicCache

        n = len(self) if n is None else n
        device = model_device(model)
        data = []
        for k, v in self.layers:
            k, v = k[:, :, :n], v[:, :, :n]
            data.append((k.to(device), v.to(device)))
        # DynamicCache(ddp_cache_data=...) calls layer.update(k, v), which concatenates onto an empty tensor:
        # the cache gets new storage and our tensors are only read.
        return DynamicCache(data, config=model.config)

    def same_tensors(self, other: "KVCache") -> bool:
        """True when every key/value tensor is bitwise identical (dtype, shape and bytes)."""
        import torch

        if len(self.layers) != len(other.layers):
            return False
        for pair_a, pair_b in zip(self.layers, other.layers):
            for a, b in zip(pair_a, pair_b):
                if a.dtype != b.dtype or a.shape != b.shape:
                    return False
                ba = a.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                bb = b.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                if not torch.equal(ba, bb):
                    return False
        return True


# ---------------------------------------------------------------------------------------------------------------
# model helpers


def model_device(model: Any) -> Any:
    dev = getattr(model, "device", None)
    if dev is not None:
        return dev
    return next(model.parameters()).device


def _base_model(model: Any) -> Any:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


_LOGITS_TO_KEEP: dict[type, bool] = {}


def forward_kwargs(model: Any) -> dict[str, Any]:
    """Extra forward kwargs: ``logits_to_keep=1`` where supported, so prefill computes one row of logits."""
    cls = type(_base_model(model))
    if cls not in _LOGITS_TO_KEEP:
        try:
            _LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(_base_model(model).forward).parameters
        except (TypeError, ValueError):
            _LOGITS_TO_KEEP[cls] = False
    return {"logits_to_keep": 1} if _LOGITS_TO_KEEP[cls] else {}


def cache_kwarg(model: Any) -> str:
    """The name the model's forward takes its KV cache by: ``cache`` (transformers 5.2x renamed it; passing
    ``past_key_values`` there logs a deprecation on every call) or ``past_key_values`` (earlier 5.x)."""
    cls = type(_base_model(model))
    if cls not in _CACHE_KWARG:
        try:
            params = inspect.signature(_base_model(model).forward).parameters
        except (TypeError, ValueError):
            params = {}
        _CACHE_KWARG[cls] = "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"
    return _CACHE_KWARG[cls]


def output_cache(out: Any) -> Any:
    """The KV cache a forward returned, read under the name this transformers version gives it (without
    touching the deprecated alias)."""
    if "cache" in out.keys():
        return out["cache"]
    return out["past_key_values"] if "past_key_values" in out.keys() else None


_CACHE_KWARG: dict[type, str] = {}


def check_supported(model: Any) -> None:
    """Raise :class:`UnsupportedModel` unless every layer's cache is plain (or sliding-window) attention K/V."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    if getattr(model.config, "is_encoder_decoder", False):
        raise UnsupportedModel("encoder-decoder models are not supported by activation memory; use a decoder-only causal LM")
    probe = DynamicCache(config=model.config)
    kinds = {type(layer) for layer in probe.layers}
    bad = kinds - {DynamicLayer, DynamicSlidingWindowLayer}
    if bad:
        raise UnsupportedModel(
            f"{type(_base_model(model)).__name__} uses cache layers {sorted(c.__name__ for c in bad)}; activation memory "
            "supports attention layers whose cache is plain keys/values (Llama, Qwen2/3, Mistral, Gemma, Phi, …)"
        )


def prefix_forward(model: Any, token_ids: Sequence[int], past: Any | None = None, past_len: int = 0) -> tuple[Any, Any]:
    """Run ``token_ids`` through ``model`` after ``past_len`` cached tokens. Returns (last-token logits, cache).

    Positions are explicit (``past_len … past_len+len-1``) and the attention mask covers cache + new tokens.
    """
    import torch
    from transformers import DynamicCache

    device = model_device(model)
    if past is None:
        past = DynamicCache(config=model.config) if past_len == 0 else None
        if past is None:
            raise ValidationError("past_len > 0 needs a past cache")
    n = len(token_ids)
    settle_dynamic_rope(model, past_len + n)
    ids = torch.tensor([list(token_ids)], dtype=torch.long, device=device)
    position_ids = torch.arange(past_len, past_len + n, device=device).unsqueeze(0)
    attention_mask = torch.ones(1, past_len + n, dtype=torch.long, device=device)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{cache_kwarg(model): past},
            **forward_kwargs(model),
        )
    return out.logits[:, -1, :], output_cache(out)


def cache_tensors(dyn: Any, start: int = 0) -> list[tuple["torch.Tensor", "torch.Tensor"]]:
    """Own copies of a full-attention ``DynamicCache``'s keys/values from token ``start`` on."""
    out = []
    for layer in dyn.layers:
        if layer.keys is None:
            raise UnsupportedModel("a layer of this model keeps no keys/values (shared-KV architecture)")
        out.append((layer.keys[:, :, start:].contiguous().clone(), layer.values[:, :, start:].contiguous().clone()))
    return out


def full_dynamic_cache() -> Any:
    """A DynamicCache whose layers keep every token (no sliding window), for building storable caches."""
    from transformers import DynamicCache

    return DynamicCache()


def _dtype_of(layers: list) -> str:
    return str(layers[0][0].dtype).replace("torch.", "") if layers else "float32"


def make_cache(
    fp: ModelFingerprint,
    token_ids: Sequence[int],
    layers: list,
    *,
    shared_len: int,
    segments: Sequence[Segment] = (),
    sources: Sequence[SourceRef] = (),
    memory_format: MemoryFormat | None = None,
    exact: bool = True,
    approximation: str | None = None,
    composed_from: Sequence[str] = (),
    build_seconds: float | None = None,
    rope_regime: str | None = None,
) -> KVCache:
    meta = KVCacheMeta(
        rope_regime=rope_regime,
        cache_id=cache_id_for(fp, token_ids, sources, exact),
        fingerprint=fp,
        token_ids=list(token_ids),
        shared_len=shared_len,
        segments=list(segments),
        sources=list(sources),
        memory_format=memory_format or MemoryFormat(),
        exact=exact,
        approximation=approximation,
        composed_from=list(composed_from),
        num_layers=len(layers),
        dtype=_dtype_of(layers),
        nbytes=sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers),
        build_seconds=build_seconds,
    )
    return KVCache(meta, layers)


# ---------------------------------------------------------------------------------------------------------------
# building


def _check_items(items: Sequence[MemoryItem]) -> list[MemoryItem]:
    items = list(items)
    if not items:
        raise ValidationError("a KV cache needs at least one memory item")
    seen = set()
    for it in items:
        if not isinstance(it, MemoryItem):
            raise ValidationError(f"expected MemoryItem objects, got {type(it).__name__}")
        if it.state in (LifecycleState.DELETED, LifecycleState.PURGED):
            raise ValidationError(f"memory {it.id} is {it.state.value}; deleted memories are not put into KV caches")
        if it.id in seen:
            raise ValidationError(f"memory {it.id} is listed twice")
        seen.add(it.id)
    return items


def layout_for_items(
    tokenizer: Any,
    items: Sequence[MemoryItem],
    memory_format: MemoryFormat | None = None,
    messages: Sequence[Any] | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> PromptLayout:
    """The prompt layout of ``items`` (before ``messages``, or a placeholder user turn)."""
    return render_layout(
        tokenizer,
        list(messages) if messages else _PLACEHOLDER_CONVERSATION,
        [it.content for it in items],
        memory_format,
        template_kwargs=template_kwargs,
    )


def build_prefix_cache(
    model: Any,
    fp: ModelFingerprint,
    token_ids: Sequence[int],
    *,
    shared_len: int,
    segments: Sequence[Segment] = (),
    sources: Sequence[SourceRef] = (),
    memory_format: MemoryFormat | None = None,
    reuse: KVCache | None = None,
    context_ids: Sequence[int] | None = None,
) -> KVCache:
    """Compute the cache of ``token_ids`` from position 0, reusing the longest common prefix with ``reuse``.

    Reuse keeps the result exact: the keys/values of position ``i`` depend only on tokens ``<= i`` (and on the
    RoPE regime), so an exact cache agreeing on the first ``n`` ids, computed in the same regime, holds exactly
    what a fresh run would compute for them. ``reuse`` must come from the same model (fingerprint), be exact
    and share the regime, or it is ignored.

    ``context_ids`` (a longer prompt starting with ``token_ids``) runs the whole prompt in one pass and keeps
    the first ``len(token_ids)`` positions: the cache is then in the prompt's RoPE regime (used for
    ``longrope`` prompts beyond the threshold, whose memory prefix alone would be in the short regime).
    """
    import time

    import torch
    from transformers import DynamicCache

    from .rope import rope_regime

    token_ids = list(token_ids)
    if not token_ids:
        raise ValidationError("cannot build a KV cache of zero tokens")
    run = list(context_ids) if context_ids is not None else token_ids
    if run[: len(token_ids)] != token_ids:
        raise ValidationError("context_ids must start with token_ids")
    regime = rope_regime(model, len(run))
    start = 0
    if reuse is not None and reuse.meta.exact and reuse.meta.fingerprint == fp and reuse.meta.rope_regime == regime:
        start = min(common_prefix_len(reuse.token_ids, token_ids), len(token_ids) - 1)
    t0 = time.perf_counter()
    device = model_device(model)
    with torch.no_grad():
        if start > 0:
            past = DynamicCache([(k[:, :, :start].to(device), v[:, :, :start].to(device)) for k, v in reuse.layers])  # type: ignore[union-attr]
        else:
            past = full_dynamic_cache()
        _, dyn = prefix_forward(model, run[start:], past=past, past_len=start)
    layers = cache_tensors(dyn)
    if len(run) > len(token_ids):
        layers = [(k[:, :, : len(token_ids)].contiguous(), v[:, :, : len(token_ids)].contiguous()) for k, v in layers]
    return make_cache(
        fp,
        token_ids,
        layers,
        shared_len=shared_len,
        segments=segments,
        sources=sources,
        memory_format=memory_format,
        build_seconds=time.perf_counter() - t0,
        rope_regime=regime,
    )


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def build_cache(
    model: Any,
    tokenizer: Any,
    items: Sequence[MemoryItem],
    *,
    memory_format: MemoryFormat | None = None,
    template_kwargs: dict[str, Any] | None = None,
    fingerprinter: Fingerprinter | None = None,
    reuse: KVCache | None = None,
) -> KVCache:
    """Compute the KV cache of the memory prefix of ``items`` (see :mod:`memos_core.activation.layout`).

    The prefix is ``template head + preamble + one piece per item`` in the given order; it is run through
    the model from position 0, and the keys/values of every layer are kept (the full sequence, also for
    sliding-window layers). Sources record each item's id, version and content hash; segments where each
    item's tokens are. ``reuse``: an exact cache of the same model sharing a prefix (only the rest is run).
    """
    items = _check_items(items)
    check_supported(model)
    fmt = memory_format or MemoryFormat()
    fp = (fingerprinter or Fingerprinter(model, tokenizer))()
    layout = layout_for_items(tokenizer, items, fmt, template_kwargs=template_kwargs)
    segments = [Segment(item_id=it.id, start=s, end=e) for it, (s, e) in zip(items, layout.segments)]
    return build_prefix_cache(
        model,
        fp,
        layout.prefix,
        shared_len=layout.shared_len,
        segments=segments,
        sources=[source_ref(it) for it in items],
        memory_format=fmt,
        reuse=reuse,
    )


def build_caches(
    model: Any,
    tokenizer: Any,
    groups: Iterable[Sequence[MemoryItem]],
    *,
    memory_format: MemoryFormat | None = None,
    template_kwargs: dict[str, Any] | None = None,
    progress: bool | None = None,
    on_built: Callable[[KVCache], Any] | None = None,
) -> list[KVCache]:
    """Build one cache per group of items, with a tqdm progress bar (``progress``: None shows it in a terminal
    unless ``MEMOS_PROGRESS=0``; see :mod:`memos_core.log`). ``on_built`` (e.g. a store's ``put``)
    is called as each cache is ready, so a long run keeps what it finished if interrupted."""
    from tqdm.auto import tqdm

    from ..log import progress_enabled

    groups = [list(g) for g in groups]
    fper = Fingerprinter(model, tokenizer)
    out = []
    for group in tqdm(groups, desc="building KV caches", unit="cache", disable=not progress_enabled(progress)):
        cache = build_cache(model, tokenizer, group, memory_format=memory_format, template_kwargs=template_kwargs, fingerprinter=fper)
        if on_built is not None:
            on_built(cache)
        out.append(cache)
    return out

