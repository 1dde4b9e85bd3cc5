"""``AdapterManager``: one base model, many LoRA adapters, switched at run time.

The manager owns a Hugging Face causal LM and wraps it in a peft ``PeftModel`` as soon as the first adapter is
loaded or trained. It is the seam other code (e.g. ``memos_core.activation.LocalLLM``) uses to run the model:

* :attr:`AdapterManager.model` -- the module to call (``forward`` / ``generate``): the ``PeftModel`` while at
  least one adapter is loaded, the bare base model otherwise. Read it at call time; do not cache it across
  :meth:`load` / :meth:`unload`.
* :attr:`AdapterManager.active_adapters` -- names of the adapters currently applied, ``[]`` for the base model.
* :attr:`AdapterManager.state_key` -- a string that changes whenever what the model computes changes (which
  adapters, with which weights). Anything cached from model outputs -- KV caches above all -- must be keyed on it.

Guarantees:

* With no adapter active (after :meth:`deactivate`, inside :meth:`disabled`, or after unloading all of them)
  the model computes exactly what the base model computes: LoRA layers call the base layer and add nothing, and
  unloading the last adapter removes the LoRA layers altogether.
* An adapter trained on another base model (architecture, config, tokenizer or weights) is refused with
  :class:`~memos_core.parametric.errors.BaseModelMismatch`.
* An adapter whose source memories were updated, deleted or forgotten is refused with
  :class:`~memos_core.parametric.errors.StaleAdapter` when the manager has a ``lookup`` (``cube.lookup``), unless
  ``allow_stale=True``. :meth:`retrain` rebuilds it from the current memories.
* Training and probing never disturb the caller's random number generators (they run in a forked RNG).

The manager is not thread-safe for concurrent generation and switching; mutating calls are serialised by a
lock, but a forward pass running while another thread switches adapters sees an undefined mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

from ..artifacts import ItemLookup, SourceRef, source_ref, stale_sources
from ..errors import Conflict, CorruptData, NotFound, ValidationError
from ..items import LifecycleState, MemoryItem
from .dataset import check_items, count_forms, training_examples
from .errors import BaseModelMismatch, StaleAdapter
from ..artifacts import compatibility_differences
from .fingerprint import ModelFingerprint, _lines, legacy_differences, model_fingerprint
from .probe import complete_report, recall_probe
from .schema import AdapterRecord, Combination, RecallReport, TrainingConfig, TrainingSummary, validate_adapter_name
from .store import AdapterStore
from .training import resolve_target_modules, train_loop

__all__ = ["AdapterManager", "train_adapter"]

_PEFT_NOISE = (
    r"Adapter .* was active which is now deleted.*",
    r".*should not be contained in the prefix.*",
    r".*is_gradient_checkpointing.*",
    r"Already found a `peft_config` attribute in the model.*",
)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _PEFT_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        yield


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"peft": peft.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def _config_dict(config: Any) -> dict[str, Any]:
    out = {}
    for key, value in config.to_dict().items():
        if isinstance(value, set):
            value = sorted(value)
        out[key] = value
    out["inference_mode"] = True
    return out


def _peft_name(name: str) -> str:
    """Validate ``name`` as an adapter name usable inside peft (also not an ``nn.Module`` attribute)."""
    import torch

    validate_adapter_name(name)
    if hasattr(torch.nn.ModuleDict, name) or hasattr(torch.nn.ParameterDict, name):
        raise ValidationError(f"adapter name {name!r} clashes with a torch.nn.Module attribute; choose another name")
    return name


class AdapterManager:
    """Load, unload, switch, combine, train and evaluate LoRA adapters on one base model.

    ``model`` is a transformers causal LM (not a ``PeftModel``); ``tokenizer`` its tokenizer. ``store`` is the
    default :class:`AdapterStore` (or a folder: in a cube, ``cube.path / "parametric"``); ``lookup`` (``item id ->
    MemoryItem | None``, e.g. ``cube.lookup``) enables the staleness check on load and :meth:`retrain`.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        store: AdapterStore | str | Path | None = None,
        lookup: ItemLookup | None = None,
    ) -> None:
        from ..extras import require

        require("peft", "AdapterManager", "lora")  # MissingExtra naming the extra, not a ModuleNotFoundError later
        if hasattr(model, "peft_config") or hasattr(model, "get_base_model"):
            raise ValidationError(
                "AdapterManager needs the bare base model, not a peft model: pass peft_model.unload() "
                "(or the model before get_peft_model)"
            )
        if not hasattr(model, "config") or not callable(model):
            raise ValidationError(f"expected a transformers causal LM, got {type(model).__name__}")
        self._base = model
        self._peft: Any = None
        self.tokenizer = tokenizer
        self.store = store if isinstance(store, AdapterStore) or store is None else AdapterStore(store)
        self.lookup = lookup
        self._records: dict[str, AdapterRecord] = {}
        self._active: list[str] = []
        self._fingerprint: ModelFingerprint | None = None
        self._requires_grad: dict[str, bool] | None = None
        self._lock = threading.RLock()
        self._revision = 0
        self._digests: dict[str, str] = {}  # weight digests of adapters not saved yet (combined ones)

    # -- what other code reads ---------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        """The module to run: the ``PeftModel`` while adapters are loaded, else the base model."""
        return self._peft if self._peft is not None else self._base

    @property
    def base_model(self) -> Any:
        """The underlying transformers model (with LoRA layers injected while adapters are loaded)."""
        return self._base

    @property
    def active_adapters(self) -> list[str]:
        """Adapters currently applied, in activation order. ``[]`` means the model computes the base model."""
        return list(self._active)

    @property
    def loaded_adapters(self) -> list[str]:
        """Adapters in memory (active or not), sorted."""
        return sorted(self._records)

    @property
    def revision(self) -> int:
        """Increases by one on every change of loaded or active adapters."""
        return self._revision

    @property
    def state_key(self) -> str:
        """``""`` for the base model; otherwise a digest of the active adapters' names and weight hashes."""
        if not self._active:
            return ""
        parts = []
        for n in self._active:
            rec = self._records.get(n)
            parts.append(f"{n}:{(rec.adapter_sha256 if rec else None) or self._digests.get(n, 'training')}")
        parts.sort()
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]

    @property
    def fingerprint(self) -> ModelFingerprint:
        """The base model's fingerprint as adapter records store it (every weight hashed, also cast to each less
        precise float dtype; computed once)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self._base, self.tokenizer)
        return self._fingerprint

    def _fingerprint_for(self, saved: ModelFingerprint) -> ModelFingerprint:
        """The current fingerprint with just the digests needed to compare with ``saved`` (a cast digest only
        when ``saved`` was taken in a less precise dtype): loading does not pay for every cast."""
        if self._fingerprint is not None:
            return self._fingerprint
        return model_fingerprint(self._base, self.tokenizer, casts=(saved.dtype,))

    def record(self, name: str) -> AdapterRecord:
        """The record of a loaded adapter. Raises NotFound."""
        try:
            return self._records[name]
        except KeyError:
            raise NotFound(f"adapter {name!r} is not loaded; loaded: {self.loaded_adapters}") from None

    def __repr__(self) -> str:
        return (
            f"AdapterManager(model={type(self._base).__name__}, loaded={self.loaded_adapters}, "
            f"active={self._active})"
        )

    # -- activation --------------------------------------------------------------------------------------
    def activate(self, names: str | Sequence[str]) -> None:
        """Apply exactly ``names`` (one or several loaded adapters). Several active adapters add their weight
        updates, each at its own scale -- the same model as :meth:`combine` with ``method="cat"`` and weights 1."""
        wanted = [names] if isinstance(names, str) else list(names)
        if not wanted:
            self.deactivate()
            return
        with self._lock:
            for n in wanted:
                self.record(n)
            if len(set(wanted)) != len(wanted):
                raise ValidationError(f"adapter listed twice in {wanted}")
            self._active = wanted
            self._sync()

    def switch(self, name: str) -> None:
        """Make ``name`` the only active adapter."""
        self.activate([name])

    def deactivate(self) -> None:
        """Keep adapters loaded but apply none: the model computes exactly the base model."""
        with self._lock:
            self._active = []
            self._sync()

    @contextlib.contextmanager
    def disabled(self) -> Iterator[Any]:
        """Context in which no adapter is applied; yields the model. The previous active set is restored."""
        with self._lock:
            saved = list(self._active)
            self.deactivate()
            try:
                yield self.model
            finally:
                self._active = [n for n in saved if n in self._records]
                self._sync()

    @contextlib.contextmanager
    def using(self, names: str | Sequence[str]) -> Iterator[Any]:
        """Context in which exactly ``names`` are active; yields the model. The previous active set is restored."""
        with self._lock:
            saved = list(self._active)
            self.activate(names)
            try:
                yield self.model
            finally:
                self._active = [n for n in saved if n in self._records]
                self._sync()

    def _sync(self) -> None:
        """Make peft's state match ``self._active``."""
        self._revision += 1
        if self._peft is None:
            return
        lora = self._peft.base_model
        names = self._active or [next(iter(self._peft.peft_config))]
        with _quiet():
            # PeftModel keeps one "active_adapter" of its own (its forward looks up that adapter's config); the
            # LoRA layers hold the real active set.
            self._peft.active_adapter = names[0]
            lora.set_adapter(names if len(names) > 1 else names[0], inference_mode=True)
            if self._active:
                lora.enable_adapter_layers()
            else:
                lora.disable_adapter_layers()
        for pname, param in self._peft.named_parameters():
            if "lora_" in pname:
                param.requires_grad_(False)

    # -- loading -----------------------------------------------------------------------------------------
    def _store(self, store: AdapterStore | str | Path | None) -> AdapterStore:
        if store is None:
            if self.store is None:
                raise ValidationError("no adapter store: pass store=... here or to AdapterManager(...)")
            return self.store
        return store if isinstance(store, AdapterStore) else AdapterStore(store)

    def _inject(self, name: str, lora_config: Any, *, empty: bool = False) -> None:
        """Add adapter ``name`` (creating the PeftModel on first use). With ``empty`` its weights are left
        uninitialised on the meta device, to be assigned from a state dict (skips a useless random init)."""
        import peft

        with _quiet():
            if self._peft is None:
                self._requires_grad = {n: p.requires_grad for n, p in self._base.named_parameters()}
                self._peft = peft.get_peft_model(self._base, lora_config, adapter_name=name, low_cpu_mem_usage=empty)
            else:
                self._peft.add_adapter(name, lora_config, low_cpu_mem_usage=empty)

    def _remove(self, name: str) -> None:
        """Delete adapter ``name`` from peft; unload the LoRA layers when it was the last one."""
        if self._peft is None:
            return
        with _quiet():
            if set(self._peft.peft_config) <= {name}:
                self._base = self._peft.unload()
                self._peft = None
                if self._requires_grad is not None:
                    for n, p in self._base.named_parameters():
                        if n in self._requires_grad:
                            p.requires_grad_(self._requires_grad[n])
                self._requires_grad = None
            else:
                self._peft.delete_adapter(name)

    def check(self, record: AdapterRecord, *, lookup: ItemLookup | None = None, allow_stale: bool = False) -> dict[str, str]:
        """Raise if ``record`` cannot be applied to this model; return stale reasons (empty when fresh/unknown).

        Raises :class:`BaseModelMismatch`, or :class:`StaleAdapter` unless ``allow_stale``.
        """
        if record.base_model.scheme < 2:  # written by an older release: its sampled check
            diffs = legacy_differences(record.base_model, self._base, self.tokenizer)
        else:
            diffs = compatibility_differences(record.base_model, self._fingerprint_for(record.base_model))
        if diffs:
            raise BaseModelMismatch(
                f"adapter {record.name!r} was trained on another base model: " + "; ".join(_lines(diffs)), diffs
            )
        lookup = lookup or self.lookup
        reasons = stale_sources(record.sources, lookup) if lookup is not None else {}
        if reasons and not allow_stale:
            raise StaleAdapter(
                f"adapter {record.name!r} is stale: "
                + "; ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
                + ". Retrain it (AdapterManager.retrain), delete it, or load with allow_stale=True.",
                reasons,
            )
        return reasons

    def load(
        self,
        name: str,
        *,
        store: AdapterStore | str | Path | None = None,
        activate: bool = True,
        allow_stale: bool = False,
        lookup: ItemLookup | None = None,
    ) -> AdapterRecord:
        """Load adapter ``name`` from the store and (by default) make it the only active one.

        Loading an adapter that is already loaded with the same weights is a no-op (apart from ``activate``).
        Raises NotFound, CorruptData, BaseModelMismatch, StaleAdapter, or Conflict when another adapter of that
        name is loaded.
        """
        from peft import LoraConfig, PeftConfig, set_peft_model_state_dict

        _peft_name(name)
        st = self._store(store)
        with self._lock:
            rec = st.record(name)
            if name in self._records:
                if self._records[name].adapter_sha256 != rec.adapter_sha256:
                    raise Conflict(f"another adapter named {name!r} is loaded; unload it first")
                if activate:
                    self.switch(name)
                return self._records[name]
            self.check(rec, lookup=lookup, allow_stale=allow_stale)
            rec, config_dict, tensors = st.load_weights(name)
            try:
                config = PeftConfig.from_peft_type(**config_dict)
            except (TypeError, ValueError, KeyError) as exc:
                raise CorruptData(f"adapter {name!r}: bad adapter_config.json ({exc})") from None
            if not isinstance(config, LoraConfig):
                raise CorruptData(f"adapter {name!r} is a {type(config).__name__}, not a LoRA adapter")
            config.inference_mode = True
            try:
                self._inject(name, config, empty=True)
            except ValueError as exc:  # target modules not found in this model
                raise BaseModelMismatch(f"adapter {name!r} does not fit this model: {exc}",
                                        {"target_modules": (config.target_modules, str(exc))}) from None
            try:
                result = set_peft_model_state_dict(self._peft, tensors, adapter_name=name, low_cpu_mem_usage=True)
                unexpected = [k for k in result.unexpected_keys if "lora_" in k]
                missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
                if unexpected or missing:
                    raise CorruptData(
                        f"adapter {name!r}: weights do not match its config "
                        f"(unexpected {unexpected[:3]}, missing {missing[:3]})"
                    )
            except BaseException:
                self._remove(name)
                self._sync()
                raise
            self._records[name] = rec
            if activate:
                self._active = [name]
            self._sync()
            return rec

    def unload(self, name: str | None = None) -> None:
        """Unload adapter ``name`` (or every adapter when ``None``). Unloading the last one restores the base
        model's modules exactly. Raises NotFound for an adapter that is not loaded."""
        with self._lock:
            names = list(self._records) if name is None else [name]
            for n in names:
                self.record(n)
            for n in names:
                self._active = [a for a in self._active if a != n]
                del self._records[n]
                self._digests.pop(n, None)
                self._remove(n)
            self._sync()

    # -- saving and combining ----------------------------------------------------------------------------
    def save(
        self, name: str, *, store: AdapterStore | str | Path | None = None, overwrite: bool = False
    ) -> AdapterRecord:
        """Write loaded adapter ``name`` (e.g. one made by :meth:`combine`) to the store; returns its record."""
        from peft import get_peft_model_state_dict

        st = self._store(store)
        with self._lock:
            rec = self.record(name)
            tensors = get_peft_model_state_dict(self._peft, adapter_name=name, save_embedding_layers=False)
            config = _config_dict(self._peft.peft_config[name])
            rec = st.save(rec, tensors, config, overwrite=overwrite)
            self._records[name] = rec
            self._revision += 1
            return rec

    def combine(
        self,
        names: Sequence[str],
        weights: Sequence[float],
        new_name: str,
        *,
        method: Literal["cat", "linear", "svd"] = "cat",
        svd_rank: int | None = None,
        activate: bool = True,
    ) -> AdapterRecord:
        """Build a new adapter from loaded ones with peft's ``add_weighted_adapter``.

        What each ``method`` computes, for adapters with updates ``ΔW_i = s_i·B_i·A_i`` (``s_i = alpha_i/r_i``):

        * ``"cat"`` (default): exactly ``Σ w_i·ΔW_i``; the rank is the sum of the ranks. With weights 1 this equals
          activating all of them at once (:meth:`activate` with several names).
        * ``"svd"``: the same sum, truncated by SVD to ``svd_rank`` (default: the largest input rank); an
          approximation that loses what does not fit the rank.
        * ``"linear"``: ``(Σ √(w_i s_i)·B_i)(Σ √(w_i s_i)·A_i)``; needs equal ranks. Its cross terms ``B_i·A_j``
          are noise for independently trained adapters. Use it only for adapters fine-tuned from one shared start.

        What it does to recall (measured by ``benchmarks/lora_memory.py``): adapters trained independently on
        different facts *interfere*. Summing two of them ("cat" 1/1) kept most of one set's held-out recall and
        lost most of the other's; weights 0.5/0.5 recalled the two sets about as well and harmed the base
        model's prior knowledge much less; "svd" matched "cat"; "linear" 1/1 destroyed recall altogether. One adapter trained on the union of the
        memories kept the recall of both sets. When every fact must stay recallable, train on the union
        (:meth:`train` with all memories) instead of combining; combine to mix behaviours, or for a quick,
        weighted blend whose recall you check with :meth:`evaluate`.

        The new adapter's sources are the union of the inputs' sources, so it goes stale when any of them does.
        It is in memory only until :meth:`save`. Raises ValidationError for bad arguments.
        """
        _peft_name(new_name)
        names = list(names)
        weights = [float(w) for w in weights]
        if not names or len(names) != len(weights):
            raise ValidationError("combine needs one weight per adapter and at least one adapter")
        if not all(math.isfinite(w) for w in weights):
            raise ValidationError("combine weights must be finite numbers")
        if method not in ("cat", "linear", "svd"):
            raise ValidationError(f"unknown combination method {method!r}; use 'cat', 'linear' or 'svd'")
        with self._lock:
            records = [self.record(n) for n in names]
            if new_name in self._records:
                raise Conflict(f"an adapter named {new_name!r} is already loaded")
            if method == "linear" and len({self._peft.peft_config[n].r for n in names}) > 1:
                raise ValidationError("method='linear' needs adapters of equal rank; use 'cat' or 'svd'")
            try:
                with _quiet():
                    self._peft.base_model.add_weighted_adapter(
                        names, weights, new_name, combination_type=method, svd_rank=svd_rank
                    )
            except ValueError as exc:
                if new_name in self._peft.peft_config:
                    self._remove(new_name)
                raise ValidationError(f"cannot combine {names}: {exc}") from None
            seen: dict[tuple[str, int, str], SourceRef] = {}
            for r in records:
                for s in r.sources:
                    seen.setdefault((s.item_id, s.version, s.content_sha256), s)
            cfg = self._peft.peft_config[new_name]
            target = cfg.target_modules
            rec = AdapterRecord(
                name=new_name,
                base_model=self.fingerprint,
                base_model_name_or_path=getattr(self._base, "name_or_path", None) or None,
                sources=list(seen.values()),
                lora={"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(target) if isinstance(target, (set, list)) else target},
                combination=Combination(
                    method=method,
                    adapters=names,
                    weights=weights,
                    adapter_sha256=[r.adapter_sha256 for r in records],
                    svd_rank=svd_rank,
                ),
                versions=_versions(),
            )
            self._records[new_name] = rec
            self._digests[new_name] = self._weights_digest(new_name)
            if activate:
                self._active = [new_name]
            self._sync()
            return rec

    def _weights_digest(self, name: str) -> str:
        import torch
        from peft import get_peft_model_state_dict

        h = hashlib.sha256()
        tensors = get_peft_model_state_dict(self._peft, adapter_name=name, save_embedding_layers=False)
        for key in sorted(tensors):
            t = tensors[key].detach().to("cpu").contiguous()
            h.update(f"{key}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        return "w" + h.hexdigest()

    # -- evaluation --------------------------------------------------------------------------------------
    def evaluate(
        self, name: str, items: Sequence[MemoryItem] | None = None, *, per_memory: int = 3, max_length: int = 256
    ) -> RecallReport:
        """Recall probe for loaded adapter ``name``: base model (no adapter) vs. ``name`` alone.

        ``items`` defaults to the adapter's source memories fetched with ``lookup`` (forgotten ones skipped). The
        report replaces the in-memory record's ``evaluation``; call :meth:`save` to persist it.
        """
        with self._lock:
            rec = self.record(name)
            if items is None:
                if self.lookup is None:
                    raise ValidationError("pass the memories to probe, or give the manager a lookup")
                gone = (LifecycleState.DELETED, LifecycleState.PURGED)
                items = [
                    it for it in (self.lookup(s.item_id) for s in rec.sources) if it is not None and it.state not in gone
                ]
            items = check_items(list(items))
            with self.disabled() as model:
                report = recall_probe(model, self.tokenizer, items, per_memory=per_memory, max_length=max_length)
            with self.using([name]) as model:
                report = complete_report(report, model, self.tokenizer, items, max_length=max_length)
            self._records[name] = rec.model_copy(update={"evaluation": report})
            return report

    def stale(self, name: str, lookup: ItemLookup | None = None) -> dict[str, str]:
        """Stale reasons for loaded adapter ``name`` (empty: fresh). Needs a lookup."""
        lookup = lookup or self.lookup
        if lookup is None:
            raise ValidationError("staleness needs a lookup (item id -> MemoryItem | None), e.g. cube.lookup")
        return stale_sources(self.record(name).sources, lookup)

    # -- training ----------------------------------------------------------------------------------------
    def train(
        self,
        items: Sequence[MemoryItem],
        name: str,
        *,
        config: TrainingConfig | None = None,
        store: AdapterStore | str | Path | None = None,
        save: bool = True,
        overwrite: bool = False,
        activate: bool = True,
        generator: Callable[[str], str] | None = None,
        description: str | None = None,
    ) -> AdapterRecord:
        """Train a new LoRA adapter ``name`` from ``items`` and (by default) save it to the store.

        The training set is built by :func:`memos_core.parametric.dataset.training_examples` (statements, framed,
        question/answer and completion forms; plus ``generator`` variants when a callable ``prompt -> str`` is
        given). With ``config.evaluate`` the recall probe runs before (base model) and after (this adapter alone)
        and is stored in the record. Other loaded adapters stay loaded and are unaffected. On any error the
        half-trained adapter is removed and nothing is written.
        """
        import torch

        cfg = config or TrainingConfig()
        _peft_name(name)
        items = check_items(list(items))
        st = self._store(store) if save else None
        with self._lock:
            if name in self._records:
                if not overwrite:
                    raise Conflict(f"an adapter named {name!r} is loaded; unload it or pass overwrite=True")
                self.unload(name)
            if st is not None and st.exists(name) and not overwrite:
                raise ValidationError(f"adapter {name!r} already exists in {st.root}; pass overwrite=True")
            examples = training_examples(
                items,
                paraphrases=cfg.paraphrases,
                generator=generator,
                generated_per_memory=cfg.generated_per_memory,
            )
            report = None
            if cfg.evaluate:
                with self.disabled() as model:
                    report = recall_probe(
                        model, self.tokenizer, items, per_memory=cfg.probes_per_memory, max_length=cfg.max_length
                    )
            targets = resolve_target_modules(self._base, cfg)
            from peft import LoraConfig

            lora_config = LoraConfig(
                r=cfg.rank,
                lora_alpha=cfg.alpha,
                lora_dropout=cfg.dropout,
                target_modules=targets,
                bias="none",
                task_type="CAUSAL_LM",
            )
            saved_active = list(self._active)
            with torch.random.fork_rng(devices=self._fork_devices()):
                torch.manual_seed(cfg.seed)
                self._inject(name, lora_config)
                try:
                    self._active = [name]
                    self._sync()
                    trainable = 0
                    for pname, param in self._peft.named_parameters():
                        mine = f".{name}." in pname and "lora_" in pname
                        param.requires_grad_(mine)
                        trainable += param.numel() if mine else 0
                    stats = train_loop(self._peft, self.tokenizer, examples, cfg, desc=f"LoRA {name}")
                    for param in self._peft.parameters():
                        param.requires_grad_(False)
                    if report is not None:
                        report = complete_report(report, self._peft, self.tokenizer, items, max_length=cfg.max_length)
                    actual = self._peft.peft_config[name].target_modules
                    rec = AdapterRecord(
                        name=name,
                        description=description,
                        base_model=self.fingerprint,
                        base_model_name_or_path=getattr(self._base, "name_or_path", None) or None,
                        sources=[source_ref(it) for it in items],
                        hyperparameters=cfg,
                        lora={
                            "r": cfg.rank,
                            "lora_alpha": cfg.alpha,
                            "target_modules": sorted(actual) if isinstance(actual, (set, list)) else actual,
                        },
                        training=TrainingSummary(
                            steps=stats["steps"],
                            stopped_by=stats["stopped_by"],
                            seconds=round(stats["seconds"], 4),
                            examples=len(examples),
                            examples_by_form=count_forms(examples),
                            tokens_trained=stats["tokens_trained"],
                            loss_curve=stats["loss_curve"],
                            final_loss=stats["loss_curve"][-1],
                            target_modules=targets if isinstance(targets, str) else sorted(targets),
                            trainable_parameters=trainable,
                            generator_used=generator is not None,
                            generated_examples=sum(1 for e in examples if e.form == "generated"),
                        ),
                        evaluation=report,
                        versions=_versions(),
                    )
                    self._records[name] = rec
                    if st is not None:
                        self.save(name, store=st, overwrite=overwrite)
                except BaseException:
                    self._records.pop(name, None)
                    self._active = [a for a in saved_active if a in self._records]
                    self._remove(name)
                    self._sync()
                    raise
            self._active = [name] if activate else [a for a in saved_active if a in self._records]
            self._sync()
            return self._records[name]

    def retrain(
        self,
        name: str,
        *,
        store: AdapterStore | str | Path | None = None,
        lookup: ItemLookup | None = None,
        config: TrainingConfig | None = None,
        generator: Callable[[str], str] | None = None,
    ) -> AdapterRecord:
        """Rebuild stored adapter ``name`` from the current versions of its source memories.

        Sources that were deleted, purged or forgotten are left out. Uses ``config`` or the adapter's own
        hyperparameters (defaults for combined adapters). Overwrites the stored adapter; if it was loaded, the new
        weights replace the old ones (and it stays active if it was). Raises Conflict when no source is left.
        """
        st = self._store(store)
        lookup = lookup or self.lookup
        if lookup is None:
            raise ValidationError("retrain needs a lookup (item id -> MemoryItem | None), e.g. cube.lookup")
        with self._lock:
            rec = st.record(name)
            items = []
            for ref in rec.sources:
                item = lookup(ref.item_id)
                if item is not None and item.state not in (LifecycleState.DELETED, LifecycleState.PURGED):
                    items.append(item)
            if not items:
                raise Conflict(
                    f"every source memory of adapter {name!r} is gone; delete the adapter instead (store.delete)"
                )
            was_active = name in self._active
            if name in self._records:
                self.unload(name)
            cfg = config or rec.hyperparameters or TrainingConfig()
            return self.train(
                items,
                name,
                config=cfg,
                store=st,
                overwrite=True,
                activate=was_active,
                generator=generator,
                description=rec.description,
            )

    def _fork_devices(self) -> list[Any]:
        import torch

        try:
            dev = next(self._base.parameters()).device
        except StopIteration:  # pragma: no cover
            return []
        if dev.type == "cuda":
            return [dev.index if dev.index is not None else torch.cuda.current_device()]
        return []


def train_adapter(
    model: Any,
    tokenizer: Any,
    items: Sequence[MemoryItem],
    name: str,
    store: AdapterStore | str | Path,
    *,
    config: TrainingConfig | None = None,
    generator: Callable[[str], str] | None = None,
    overwrite: bool = False,
) -> AdapterRecord:
    """Train and save adapter ``name`` from ``items``, leaving ``model`` exactly as it was (no LoRA layers).

    A one-call convenience over :class:`AdapterManager`; use the manager to keep adapters loaded.
    """
    manager = AdapterManager(model, tokenizer, store=store)
    try:
        return manager.train(items, name, config=config, generator=generator, overwrite=overwrite, activate=False)
    finally:
        if manager.loaded_adapters:
            manager.unload()
