"""LocalLLM: a local transformers model that puts activation memories (KV caches) in front of every chat.

This is the framework-neutral core behind ``memos_langchain.local_chat_model`` and
``memos_llamaindex.local_llm``: the adapters translate message types and delegate everything here.

Per call, :meth:`LocalLLM.chat` / :meth:`LocalLLM.stream`:

1. picks the memories: the ``memories=`` argument, else the ``memories`` given at construction (a list of
   :class:`MemoryItem`, or a callable ``messages -> items``; :meth:`LocalLLM.from_cube` makes it a search of
   a :class:`~memos_core.cube.MemCube` for the last user message), ordered
   chronologically by default (new memories come last, so older caches stay reusable prefixes);
2. renders the prompt with the memory block in the system message (:mod:`memos_core.activation.layout`);
3. finds a KV cache for the memory prefix — in memory, then in the store — whose token ids match. With
   ``composition="exact"`` (default) a cache matching only the first part of the prefix is *extended* (the
   rest is computed and the longer cache stored); with ``composition="rerotate"`` one cache per memory is
   kept and they are composed by RoPE re-rotation (approximate, see :mod:`memos_core.activation.compose`);
4. generates with the cache injected (:mod:`memos_core.activation.generation`).

What you can rely on:

* Only caches with this model's current fingerprint are ever used: switching a PEFT adapter, merging it,
  changing dtype, weights or tokenizer selects (or builds) other caches.
* With a ``lookup`` (e.g. ``cube.lookup``), caches built from memories since updated, deleted or forgotten
  are never used: they are deleted and rebuilt (``on_bad_cache="rebuild"``, the default, noted in
  ``result.notes`` and as a warning) or raise (``on_bad_cache="raise"``). Corrupt files are handled the same
  way. A cache is never replaced by an empty one.
* In ``"exact"`` mode the output is what the same model would produce from the full prompt (greedy tokens
  identical, logits within float tolerance). Stored caches are never modified by generation.
* Models whose RoPE depends on the sequence length (``dynamic``, ``longrope``, e.g. Phi-3 128k): caches are
  used only by prompts in the frequency regime they were computed in. A ``longrope`` prompt beyond
  ``original_max_position_embeddings`` gets (and stores) a memory cache computed in the long regime; a
  ``dynamic`` prompt beyond ``max_position_embeddings`` is computed in full (its frequencies are unique to
  its length). ``result.cache_origin`` and ``result.notes`` say so.
* The model is used as given (device, dtype, train/eval mode); :meth:`from_pretrained` loads it in eval mode.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence

from ..artifacts import ItemLookup, source_ref, stale_sources
from ..errors import CorruptData, NotFound, ValidationError
from ..items import LifecycleState, MemoryItem
from .compose import compose
from .errors import BudgetExceeded, StaleArtifact, UnsupportedModel
from .fingerprint import Fingerprinter, ModelFingerprint, mark_loaded_from
from .generation import GenerationResult, GenerationStream, SamplingParams
from .kvcache import (
    KVCache,
    Segment,
    build_prefix_cache,
    check_supported,
    common_prefix_len,
)
from .layout import MemoryFormat, PromptLayout, normalise_messages, render_layout
from .rope import length_dependent_rope, regime_is_shared, rope_regime
from .store import KVCacheStore

__all__ = ["LocalLLM", "LocalLLMWrapper", "MemorySource"]

MemorySource = Sequence[MemoryItem] | Callable[[list[dict[str, str]]], Sequence[MemoryItem]]

_GONE = (LifecycleState.DELETED, LifecycleState.PURGED)


class LocalLLM:
    """A local causal LM (transformers ``PreTrainedModel`` or ``peft.PeftModel``) with activation memory.

    Args:
        model, tokenizer: the model and its tokenizer.
        store: a :class:`KVCacheStore` or a folder for one (e.g. ``cube.path / "activation"``); ``None``
            keeps caches in memory only.
        lookup: item id -> current :class:`MemoryItem` or ``None`` (e.g. ``cube.lookup``), to refuse stale caches.
        memories: default memories for every call: a list of items or a callable ``messages -> items``.
        composition: ``"exact"`` (one cache per memory prefix, extended incrementally) or ``"rerotate"``
            (one cache per memory, composed approximately without running the model).
        memory_format, template_kwargs: how the memory block and the chat template are rendered.
        memory_order: ``"chronological"`` (by ``created_at``, then id) or ``"given"``.
        hot_cache_bytes: bytes of caches kept in memory (on the model's device) between calls.
        verify: integrity check when loading from the store (``"full"`` sha256 or ``"size"``).
        on_bad_cache: ``"rebuild"`` or ``"raise"`` when a stored cache is stale or corrupt.
        defaults: default :class:`SamplingParams` (overridable per call).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        store: KVCacheStore | str | Path | None = None,
        lookup: ItemLookup | None = None,
        memories: MemorySource | None = None,
        composition: Literal["exact", "rerotate"] = "exact",
        memory_format: MemoryFormat | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
        memory_order: Literal["chronological", "given"] = "chronological",
        hot_cache_bytes: int = 1 << 30,
        verify: Literal["full", "size"] = "full",
        on_bad_cache: Literal["rebuild", "raise"] = "rebuild",
        defaults: SamplingParams | None = None,
    ) -> None:
        if composition not in ("exact", "rerotate"):
            raise ValidationError("composition must be 'exact' or 'rerotate'")
        if on_bad_cache not in ("rebuild", "raise"):
            raise ValidationError("on_bad_cache must be 'rebuild' or 'raise'")
        if memory_order not in ("chronological", "given"):
            raise ValidationError("memory_order must be 'chronological' or 'given'")
        check_supported(model)
        if composition == "rerotate" and length_dependent_rope(model):
            raise UnsupportedModel(
                f"composition='rerotate' needs RoPE frequencies that do not depend on the sequence length; this model "
                f"uses {length_dependent_rope(model)[0][0]!r} RoPE: use composition='exact'"
            )
        self.model = model
        self.tokenizer = tokenizer
        if isinstance(store, (str, Path)):
            store = KVCacheStore(store, lookup=lookup)
        self.store = store
        self.lookup = lookup if lookup is not None else (store.lookup if store is not None else None)
        self.memories = memories
        self.composition = composition
        self.memory_format = memory_format or MemoryFormat()
        self.template_kwargs = dict(template_kwargs or {})
        self.memory_order = memory_order
        self.hot_cache_bytes = hot_cache_bytes
        self.verify = verify
        self.on_bad_cache = on_bad_cache
        self.defaults = defaults or SamplingParams()
        self.fingerprinter = Fingerprinter(model, tokenizer)
        self._hot: OrderedDict[str, KVCache] = OrderedDict()
        #: hot caches that were never written to the store (larger than its whole budget)
        self._memory_only: set[str] = set()
        self._lock = threading.RLock()
        #: the MemCube whose memories this model uses (set by :meth:`from_cube`), else ``None``
        self.cube: Any = None

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        tokenizer: Any = None,
        adapter: str | Path | None = None,
        dtype: Any = "auto",
        device: Any = None,
        **kwargs: Any,
    ) -> "LocalLLM":
        """Load a causal LM and tokenizer from a local folder (optionally a PEFT adapter on top), in eval mode.

        ``tokenizer`` replaces the folder's tokenizer when given. Remaining keyword arguments go to
        :class:`LocalLLM`.
        """
        from ..extras import require

        require("torch", "LocalLLM.from_pretrained", "kv")  # MissingExtra naming the extra to install
        require("transformers", "LocalLLM.from_pretrained", "kv")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        mark_loaded_from(model, path)  # its weight digest may come from the on-disk cache (see artifacts)
        if device is not None:
            model = model.to(device)
            mark_loaded_from(model, path)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        model.eval()
        return cls(model, tokenizer, **kwargs)

    @classmethod
    def from_cube(
        cls,
        cube: Any,
        model_or_path: Any,
        tokenizer: Any = None,
        *,
        k: int = 5,
        user_id: str | None = None,
        agent_id: str | None = None,
        session_id: str | None = None,
        filter: Any = None,
        actor: str | None = None,
        budget_bytes: int | None = None,
        **kwargs: Any,
    ) -> "LocalLLM":
        """A LocalLLM that uses ``cube``'s memories automatically.

        * memories: for every call, ``cube.search(<last user message>, k=k, user_id=..., agent_id=...,
          session_id=..., filter=..., actor=actor)``; the hits become the memory block (oldest first). A
          conversation without a user message gets no memories. Searches are audited and feed the cube's
          usage listeners (e.g. the MemScheduler) like any other search;
        * KV caches: stored in ``cube.path / "activation"`` (a :class:`KVCacheStore`, byte budget
          ``budget_bytes``), so they survive restarts and travel with the cube's bundles;
        * staleness: ``cube.lookup`` (as ``actor``): a cache built from a memory since updated, deleted or
          forgotten is never used (rebuilt, or :class:`StaleArtifact` with ``on_bad_cache="raise"``).

        ``actor`` (default the cube handle's actor) needs the **read** right on the cube; this is checked
        here (:class:`~memos_core.errors.PermissionDenied`) and again by every search.

        ``model_or_path`` is a local checkpoint folder (loaded with :meth:`from_pretrained`; ``adapter``,
        ``dtype``, ``device`` are accepted in ``kwargs``; ``tokenizer`` replaces the folder's) or a loaded
        model, which then needs ``tokenizer``. Other keyword arguments go to :class:`LocalLLM` (``store``,
        ``lookup`` and ``memories`` are set from the cube and may not be given).
        """
        for name in ("search", "lookup", "path"):
            if not hasattr(cube, name):
                raise ValidationError(f"from_cube needs a MemCube (an object with .{name}), got {type(cube).__name__}")
        if not isinstance(k, int) or isinstance(k, bool) or not (1 <= k <= 1000):
            raise ValidationError("k must be an integer between 1 and 1000")
        taken = sorted({"store", "lookup", "memories"} & set(kwargs))
        if taken:
            raise ValidationError(f"from_cube sets {taken} from the cube; use LocalLLM(...) to choose them yourself")
        governance = getattr(cube, "governance", None)
        if governance is not None:
            from ..governance import Right

            governance.authorize(actor, Right.READ, "activation")

        def lookup(item_id: str) -> MemoryItem | None:
            return cube.lookup(item_id, actor=actor)

        def memories(messages: list[dict[str, str]]) -> list[MemoryItem]:
            query = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
            if not query.strip():
                return []
            hits = cube.search(query, k=k, filter=filter, user_id=user_id, agent_id=agent_id,
                               session_id=session_id, actor=actor)
            return [h.item for h in hits]

        store = KVCacheStore(Path(cube.path) / "activation", budget_bytes=budget_bytes, lookup=lookup)
        if isinstance(model_or_path, (str, Path)):
            llm = cls.from_pretrained(model_or_path, tokenizer=tokenizer, store=store, lookup=lookup,
                                      memories=memories, **kwargs)
        else:
            if tokenizer is None:
                raise ValidationError("from_cube with a loaded model needs its tokenizer (tokenizer=...)")
            loading = sorted({"adapter", "dtype", "device"} & set(kwargs))
            if loading:
                raise ValidationError(f"{loading} only apply when model_or_path is a folder; prepare the model yourself")
            llm = cls(model_or_path, tokenizer, store=store, lookup=lookup, memories=memories, **kwargs)
        llm.cube = cube
        return llm

    # ------------------------------------------------------------------------------------------ identity
    def fingerprint(self) -> ModelFingerprint:
        """The model's current fingerprint (reflects the active adapter(s) at the time of the call)."""
        return self.fingerprinter()

    def refresh_fingerprint(self) -> None:
        """Recompute the weight digest (needed only after editing weights through ``param.data``)."""
        self.fingerprinter.refresh()

    # ------------------------------------------------------------------------------------------ memories
    def _select(self, messages: list[dict[str, str]], memories: MemorySource | None) -> list[MemoryItem]:
        source = memories if memories is not None else self.memories
        if source is None:
            return []
        items = list(source(messages) if callable(source) else source)
        seen: set[str] = set()
        out = []
        for it in items:
            if not isinstance(it, MemoryItem):
                raise ValidationError(f"memories must be MemoryItem objects, got {type(it).__name__}")
            if it.state in _GONE or it.id in seen:
                continue
            seen.add(it.id)
            out.append(it)
        if self.memory_order == "chronological":
            out.sort(key=lambda it: (it.created_at, it.id))
        return out

    def layout(self, messages: Sequence[Mapping[str, Any]], items: Sequence[MemoryItem]) -> PromptLayout:
        """The prompt layout for ``messages`` with ``items`` as memory (what :meth:`chat` would send)."""
        return render_layout(
            self.tokenizer, messages, [it.content for it in items], self.memory_format, template_kwargs=self.template_kwargs
        )

    # ------------------------------------------------------------------------------------------ cache pool
    def _hot_put(self, cache: KVCache) -> None:
        from .kvcache import model_device

        if cache.nbytes > self.hot_cache_bytes:
            return
        self._hot[cache.cache_id] = cache.to(model_device(self.model))
        self._hot.move_to_end(cache.cache_id)
        total = sum(c.nbytes for c in self._hot.values())
        while total > self.hot_cache_bytes and self._hot:
            old_id, old = self._hot.popitem(last=False)
            self._memory_only.discard(old_id)
            total -= old.nbytes

    def _bad(self, cache_id: str, why: str, notes: list[str], exc: Exception | None = None) -> None:
        if self.on_bad_cache == "raise":
            if exc is not None:
                raise exc
            raise StaleArtifact(f"KV cache {cache_id}: {why}")
        msg = f"KV cache {cache_id} {why}; deleted and rebuilt"
        notes.append(msg)
        warnings.warn(msg, stacklevel=4)
        self._hot.pop(cache_id, None)
        if self.store is not None:
            self.store.delete(cache_id)

    def _is_stale(self, cache_id: str, sources: Sequence[Any], notes: list[str]) -> bool:
        if self.lookup is None:
            return False
        reasons = stale_sources(sources, self.lookup)
        if reasons:
            detail = ", ".join(f"{k}: {v}" for k, v in reasons.items())
            self._bad(cache_id, f"is stale ({detail})", notes, StaleArtifact(f"KV cache {cache_id} is stale ({detail})", reasons))
            return True
        return False

    def _best_match(self, fp: ModelFingerprint, target: list[int], notes: list[str],
                    regime: str | None = None) -> tuple[KVCache | None, int, str]:
        """The usable exact cache sharing the longest token prefix with ``target`` (in memory first, then the
        store), computed in RoPE regime ``regime``. Stale or corrupt candidates met on the way are handled per
        ``on_bad_cache``."""
        cands: list[tuple[int, int, str, KVCache | None, Sequence[Any]]] = []
        for cid, cache in list(self._hot.items()):
            if self.store is not None and cid not in self._memory_only and cid not in self.store:
                # its file was deleted behind this model's back (a cube forget, another process's eviction):
                # the deletion is the verdict, so the in-memory copy goes too, quietly
                self._hot.pop(cid, None)
                continue
            if cache.meta.fingerprint.key == fp.key and cache.meta.exact and cache.meta.rope_regime == regime:
                n = common_prefix_len(cache.token_ids, target)
                if n > 0:
                    cands.append((n, 1, cid, cache, cache.meta.sources))
        if self.store is not None:
            for info in self.store.list(fp):
                if info.cache_id not in self._hot and info.meta.exact and info.meta.rope_regime == regime:
                    n = common_prefix_len(info.meta.token_ids, target)
                    if n > 0:
                        cands.append((n, 0, info.cache_id, None, info.meta.sources))
        cands.sort(key=lambda c: (c[0], c[1]), reverse=True)
        for n, _, cid, cache, sources in cands:
            if self._is_stale(cid, sources, notes):
                continue
            if cache is not None:
                self._hot.move_to_end(cid)
                return cache, n, "memory"
            try:
                loaded = self.store.load(cid, fingerprint=fp, lookup=self.lookup, verify=self.verify)  # type: ignore[union-attr]
            except (CorruptData, StaleArtifact) as exc:
                self._bad(cid, f"could not be used ({exc})", notes, exc)
                continue
            except NotFound:
                continue
            self._hot_put(loaded)
            return self._hot.get(cid, loaded), n, "disk"
        return None, 0, "none"

    def _keep(self, cache: KVCache, notes: list[str]) -> None:
        self._hot_put(cache)
        if self.store is not None:
            try:
                self.store.put(cache, make_room=True)
            except BudgetExceeded as exc:  # larger than the whole budget: usable now, not stored
                self._memory_only.add(cache.cache_id)
                notes.append(f"KV cache {cache.cache_id} not stored: {exc}")
                warnings.warn(notes[-1], stacklevel=4)

    def _prefix_cache(self, fp: ModelFingerprint, token_ids: list[int], shared_len: int, items: Sequence[MemoryItem],
                      segments: Sequence[tuple[int, int]], notes: list[str],
                      prompt_len: int | None = None, prompt_ids: Sequence[int] | None = None) -> tuple[KVCache | None, str]:
        length = prompt_len if prompt_len is not None else len(token_ids)
        regime = rope_regime(self.model, length)
        context = None
        if not regime_is_shared(regime):
            notes.append(
                f"no KV cache: the model's RoPE frequencies for {length} tokens ({regime}) are unique to that "
                "length, so no cache could be reused; the whole prompt is computed"
            )
            return None, "none (length-dependent RoPE)"
        if regime != rope_regime(self.model, len(token_ids)):
            if prompt_ids is None:
                return None, "none (length-dependent RoPE)"
            context = prompt_ids  # compute the memory prefix inside the prompt, in the prompt's regime
        found, n, origin = self._best_match(fp, token_ids, notes, regime)
        if found is not None and n == len(token_ids):
            return (found if len(found) == n else found.prefix(n)), origin
        segs = [Segment(item_id=it.id, start=s, end=e) for it, (s, e) in zip(items, segments)]
        cache = build_prefix_cache(
            self.model, fp, token_ids, shared_len=shared_len, segments=segs, sources=[source_ref(it) for it in items],
            memory_format=self.memory_format, reuse=found, context_ids=context,
        )
        self._keep(cache, notes)
        reused = min(n, len(token_ids) - 1) if found is not None else 0
        return cache, (f"extended({reused} reused)" if reused else "built")

    def cache_for(self, messages: Sequence[Mapping[str, Any]], items: Sequence[MemoryItem], notes: list[str] | None = None) -> tuple[KVCache | None, PromptLayout, str]:
        """The cache :meth:`chat` would inject for ``messages`` + ``items`` (building/storing it if needed),
        the prompt layout and where the cache came from (memory / disk / built / extended / composed)."""
        notes = notes if notes is not None else []
        layout = self.layout(messages, items)
        if not items:
            return None, layout, "none"
        with self._lock:
            fp = self.fingerprinter()
            if self.composition == "exact":
                cache, origin = self._prefix_cache(fp, layout.prefix, layout.shared_len, items, layout.segments, notes,
                                                   len(layout.input_ids), layout.input_ids)
                return cache, layout, origin
            head = layout.head + layout.preamble
            parts, origins = [], []
            for item, piece in zip(items, layout.items):
                c, o = self._prefix_cache(fp, head + piece, layout.shared_len, [item], [(len(head), len(head) + len(piece))], notes)
                parts.append(c)
                origins.append(o)
            cache = compose(self.model, parts, mode="rerotate", fingerprinter=self.fingerprinter)
            return cache, layout, "composed[" + ",".join(origins) + "]"

    # ------------------------------------------------------------------------------------------ building
    def build(self, items: Sequence[MemoryItem]) -> KVCache:
        """Make (or find) and keep the cache of ``items``' memory prefix, as :meth:`chat` would use it."""
        items = self._select([], list(items))
        if not items:
            raise ValidationError("build needs at least one live memory item")
        cache, _, origin = self.cache_for([{"role": "user", "content": "?"}], items)
        if cache is None:
            raise UnsupportedModel(
                f"no reusable KV cache for these memories ({origin}): their prefix is longer than the length up to "
                "which this model's RoPE frequencies stay fixed"
            )
        return cache

    def prepare(self, groups: Iterable[Sequence[MemoryItem]], *, progress: bool | None = None) -> list[KVCache]:
        """Build (or find) the caches of many groups of memories ahead of time, with a progress bar (in a
        terminal, unless ``progress=False`` or ``MEMOS_PROGRESS=0``)."""
        from tqdm.auto import tqdm

        from ..log import progress_enabled

        groups = [list(g) for g in groups]
        return [self.build(g) for g in tqdm(groups, desc="preparing KV caches", unit="cache",
                                            disable=not progress_enabled(progress))]

    # ------------------------------------------------------------------------------------------ generation
    def _params(self, overrides: Mapping[str, Any]) -> SamplingParams:
        data = self.defaults.model_dump()
        for k, v in overrides.items():
            if v is not None:
                if k not in data:
                    raise ValidationError(f"unknown generation option {k!r}; use one of {sorted(data)}")
                data[k] = list(v) if k == "stop" else v
        return SamplingParams(**data)

    def stream(self, messages: Sequence[Mapping[str, Any]], *, memories: MemorySource | None = None, **options: Any) -> GenerationStream:
        """Stream the reply to ``messages`` (iterate for text pieces; ``.result`` when done).

        The cache is found or built here, before the first piece; generation runs as you iterate.
        Options: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``, ``ignore_eos``.
        """
        conv = normalise_messages(messages)
        if not conv:
            raise ValidationError("messages is empty")
        params = self._params(options)
        items = self._select(conv, memories)
        notes: list[str] = []
        cache, layout, origin = self.cache_for(conv, items, notes)
        s = GenerationStream(self.model, self.tokenizer, layout.input_ids, cache, params, fingerprinter=self.fingerprinter)
        s.result.cache_origin = origin
        s.result.memory_ids = [it.id for it in items]
        s.result.notes = notes
        return s

    def chat(self, messages: Sequence[Mapping[str, Any]], *, memories: MemorySource | None = None, **options: Any) -> GenerationResult:
        """Reply to ``messages`` (dicts with ``role`` and ``content``) using the activation memories."""
        s = self.stream(messages, memories=memories, **options)
        for _ in s:
            pass
        return s.result

    def complete(self, prompt: str, *, memories: MemorySource | None = None, **options: Any) -> GenerationResult:
        """Reply to a single user message."""
        return self.chat([{"role": "user", "content": prompt}], memories=memories, **options)

    # ------------------------------------------------------------------------------------------ governance
    def forget(self, item_ids: Iterable[str]) -> list[str]:
        """Drop every cache (in memory and in the store) built from any of ``item_ids``; returns their ids."""
        wanted = set(item_ids)
        with self._lock:
            gone = [cid for cid, c in self._hot.items() if wanted & set(c.meta.source_ids)]
            for cid in gone:
                self._hot.pop(cid, None)
            if self.store is not None:
                gone += [cid for cid in self.store.delete_for_items(wanted) if cid not in gone]
        return gone

    def drop_stale(self) -> list[str]:
        """Delete every cache whose sources changed since it was built (needs ``lookup``)."""
        if self.lookup is None:
            raise ValidationError("drop_stale needs a lookup")
        with self._lock:
            gone = [cid for cid, c in self._hot.items() if stale_sources(c.meta.sources, self.lookup)]
            for cid in gone:
                self._hot.pop(cid, None)
            if self.store is not None:
                gone += [cid for cid in self.store.delete_stale(self.lookup) if cid not in gone]
        return gone

    def clear_memory_cache(self) -> None:
        """Drop the in-memory caches (stored ones stay)."""
        with self._lock:
            self._hot.clear()


class LocalLLMWrapper:
    """What the framework wrappers of a :class:`LocalLLM` share: one ``from_cube``.

    Mixed into ``memos_langchain.local_chat_model.MemOSLocalChatModel`` and
    ``memos_llamaindex.local_llm.MemOSLocalLLM`` (pydantic models with an ``llm`` field holding the LocalLLM).
    """

    @classmethod
    def from_cube(cls, cube: Any, model_or_path: Any, tokenizer: Any = None, **kwargs: Any) -> Any:
        """``cls(llm=LocalLLM.from_cube(cube, model_or_path, tokenizer, ...))``: keyword arguments naming the
        wrapper's own fields (``max_new_tokens``, ``temperature``, ``callbacks``, ``callback_manager``...) go to
        the wrapper, the others (``k``, ``user_id``, ``actor``, ``dtype``, ``budget_bytes``...) to
        :meth:`LocalLLM.from_cube`."""
        fields = getattr(cls, "model_fields", {})
        mine = {name: kwargs.pop(name) for name in list(kwargs) if name in fields and name != "llm"}
        return cls(llm=LocalLLM.from_cube(cube, model_or_path, tokenizer, **kwargs), **mine)
