"""Derived artefacts (KV caches, LoRA adapters): one layer for both kinds.

Activation memory (:mod:`memos_core.activation`) and parametric memory (:mod:`memos_core.parametric`) both
keep artefacts *derived* from memories and from a model. Everything they have in common lives here, once:

* **Provenance and staleness.** An artefact records a :class:`SourceRef` (id, version, content hash) for every
  memory it was built from. It is *stale* when any source was updated, deleted, purged or forgotten since:
  :func:`stale_sources` says which and why, computed against the system of record each time it matters, so a
  forget or an update marks every artefact built from that memory stale without touching the artefact.
* **Model identity.** :class:`ModelFingerprint` / :class:`Fingerprinter`: the model type and class, the
  config, a SHA-256 of **every** weight tensor's full contents, the tokenizer, the chat template, dtype and
  transformers version, and the active PEFT adapters. A KV cache is reusable only under an equal fingerprint;
  an adapter loads only onto a base whose weights hash the same (:func:`compatibility_differences`).
* **One error family.** :class:`StaleArtifact` (a source changed; ``reasons``) and :class:`FingerprintMismatch`
  (another model; ``differences``: field -> (stored, current)), both :class:`~memos_core.errors.Conflict`.
  Parametric memory's :class:`StaleAdapter` and :class:`BaseModelMismatch` are subclasses of these.
* **One store protocol.** :class:`ArtifactStore`: the verbs both :class:`~memos_core.activation.KVCacheStore`
  and :class:`~memos_core.parametric.AdapterStore` implement (``artifact_ids``, ``artifact_sources``,
  ``remove``, ``built_from``, ``forget``, ``stale_artifacts``, ``drop_stale``).

Hashing every weight costs one pass over the parameters (about 1 GB/s per core with SHA-256, spread over
threads; ``benchmarks/fingerprint_cost.py`` measures it on the Qwen2-0.5B shape). It is done once per loaded
model: :class:`Fingerprinter` keeps the digest until a parameter is replaced or modified through a tracked
operation (``copy_``, optimizer steps, ``load_state_dict``). Models loaded by MemOS's own loaders
(``LocalLLM.from_pretrained``; :func:`mark_loaded_from` for yours) also reuse a digest cached on disk by the
checkpoint files' identity (path, size, modification time, inode) and the load dtype, as long as no parameter
has been touched since loading. Edits made through ``param.data`` bypass PyTorch's version counters: call
:meth:`Fingerprinter.refresh` after them.

torch is imported inside functions only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import hashlib
import json
import math
import os
import threading
import weakref
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel, ConfigDict, model_validator

from .errors import Conflict
from .items import LifecycleState, MemoryItem

__all__ = [
    "SourceRef",
    "source_ref",
    "stale_sources",
    "content_hash",
    "ItemLookup",
    "StaleArtifact",
    "StaleAdapter",
    "FingerprintMismatch",
    "BaseModelMismatch",
    "ModelFingerprint",
    "Fingerprinter",
    "fingerprint",
    "compatibility_differences",
    "describe_differences",
    "mark_loaded_from",
    "config_digest",
    "tokenizer_digest",
    "ArtifactStore",
    "ArtifactStoreMixin",
]

#: Returns the current item (any state) for an id, or ``None`` when the id is unknown or erased.
ItemLookup = Callable[[str], "MemoryItem | None"]

_GONE = {LifecycleState.DELETED, LifecycleState.PURGED}


# ================================================================================================ provenance


class SourceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str
    version: int
    content_sha256: str


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def source_ref(item: MemoryItem) -> SourceRef:
    return SourceRef(item_id=item.id, version=item.version, content_sha256=content_hash(item.content))


def stale_sources(refs: Iterable[SourceRef], lookup: ItemLookup) -> dict[str, str]:
    """Map item id -> reason for every source that no longer matches the records. Empty means fresh."""
    out: dict[str, str] = {}
    for ref in refs:
        item = lookup(ref.item_id)
        if item is None:
            out[ref.item_id] = "forgotten (no longer in the records)"
        elif item.state in _GONE:
            out[ref.item_id] = f"{item.state.value}"
        elif item.version != ref.version or content_hash(item.content) != ref.content_sha256:
            out[ref.item_id] = f"updated (built from v{ref.version}, now v{item.version})"
    return out


# ================================================================================================ errors


class StaleArtifact(Conflict):
    """A derived artefact (KV cache, LoRA adapter) was built from memory versions that are no longer current.

    ``reasons`` maps each stale source item id to why it is stale (updated, deleted, forgotten).
    """

    def __init__(self, message: str, reasons: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.reasons: dict[str, str] = dict(reasons or {})


class StaleAdapter(StaleArtifact):
    """A LoRA adapter whose source memories were updated, deleted or forgotten (a :class:`StaleArtifact`).

    Retrain it (``AdapterManager.retrain``), delete it, or load it anyway with ``allow_stale=True``.
    """


class FingerprintMismatch(Conflict):
    """An artefact was built by (or for) another model, tokenizer, dtype or adapter than the one at hand.

    ``differences`` maps each differing fingerprint field to ``(stored, current)``.
    """

    def __init__(self, message: str, differences: Mapping[str, tuple[Any, Any]] | None = None) -> None:
        super().__init__(message)
        self.differences: dict[str, tuple[Any, Any]] = dict(differences or {})


class BaseModelMismatch(FingerprintMismatch):
    """A LoRA adapter was trained on another base model (architecture, config, tokenizer or weights)."""


# ================================================================================================ fingerprints

FINGERPRINT_SCHEME = 2

#: Config keys that describe how a model is run, not what it computes.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "_commit_hash",
        "use_cache",
        "return_dict",
        "use_return_dict",
        "output_attentions",
        "output_hidden_states",
        "architectures",
        "attn_implementation",
        "pretraining_tp",  # peft forces it to 1 when it wraps a model
        "tf_legacy_loss",
        "torchscript",
    }
)

#: float dtypes, most precise first (bfloat16 and float16 are not comparable: neither holds the other)
_FLOAT_LADDER = ("float64", "float32", "bfloat16", "float16")
#: a model's weights are also hashed cast to these dtypes (for adapters, so that the same checkpoint loaded in
#: a less precise dtype can be checked exactly)
_CASTS = {"float64": ("float32", "bfloat16", "float16"), "float32": ("bfloat16", "float16")}


class ModelFingerprint(BaseModel):
    """Identity of a model (and tokenizer): what an artefact records about the network it belongs to.

    * ``config_sha256``: the architecture config without run-time-only keys (dtype, attention implementation,
      checkpoint path, transformers version, ...);
    * ``weights_sha256``: SHA-256 over every base-model tensor's name, shape, dtype and full contents (adapter
      weights excluded; PEFT's wrapper names normalised away). ``weights_cast_sha256`` holds the same digest of
      the weights cast to each less precise float dtype (recorded for adapters only);
    * ``tokenizer_sha256``: the tokenizer definition (model, normaliser, pre-tokenizer, added and special
      tokens; runtime padding/truncation settings excluded); ``chat_template_sha256`` its chat template;
    * ``dtype``, ``transformers_version``, ``num_parameters``;
    * ``adapters`` / ``adapter_sha256``: active (and merged) PEFT adapters and a digest of their weights and
      scalings.

    KV caches need every field equal (:attr:`key`). Adapters need the same base (:func:`compatibility_differences`):
    dtype, transformers version and chat template do not matter there.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    scheme: int = FINGERPRINT_SCHEME
    model_type: str
    architecture: str = ""
    config_sha256: str
    weights_sha256: str
    weights_cast_sha256: dict[str, str] = {}
    num_parameters: int = 0
    tokenizer_sha256: str
    chat_template_sha256: str | None = None
    dtype: str
    transformers_version: str
    adapters: list[str] = []
    adapter_sha256: str | None = None
    #: legacy (scheme 1) adapter records only: 64 sampled weights; never computed any more
    weights_probe: list[float] | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        # adapter records written before scheme 2 carried a sampled weights_probe instead of a digest
        if isinstance(data, dict) and "scheme" not in data and "weights_sha256" not in data:
            data = dict(data)
            data["scheme"] = 1
            data["weights_sha256"] = ""
        return data

    @property
    def key(self) -> str:
        """A 32-hex-digit digest of the identity fields: KV caches are keyed and looked up by it."""
        data = self.model_dump(mode="json", exclude={"weights_cast_sha256", "weights_probe"})
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]

    def differences(self, other: "ModelFingerprint") -> dict[str, tuple[Any, Any]]:
        """Field name -> (self's value, other's value) for every identity field that differs."""
        a = self.model_dump(exclude={"weights_cast_sha256", "weights_probe"})
        b = other.model_dump(exclude={"weights_cast_sha256", "weights_probe"})
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

    def describe_differences(self, other: "ModelFingerprint") -> str:
        return describe_differences(self.differences(other))


def _short(v: Any) -> Any:
    return (v[:12] + "…") if isinstance(v, str) and len(v) > 16 else v


def describe_differences(differences: Mapping[str, tuple[Any, Any]]) -> str:
    """``field: stored …, current …; …`` for a differences mapping."""
    parts = [f"{field}: stored {_short(a)!r}, current {_short(b)!r}" for field, (a, b) in differences.items()]
    return "; ".join(parts) or "no differences"


def compatibility_differences(saved: ModelFingerprint, current: ModelFingerprint) -> dict[str, tuple[Any, Any]]:
    """The *blocking* differences between the base an adapter was trained on and the current model.

    Architecture, config, tokenizer, parameter count and weights must agree; dtype, transformers version and
    chat template do not matter. Weights are compared exactly in a dtype both fingerprints have a digest for
    (the model's own or a cast one), so a base fingerprinted in float32 matches the same checkpoint loaded in
    bfloat16 or float16, and any changed weight anywhere is a difference. Empty: compatible.
    """
    diffs: dict[str, tuple[Any, Any]] = {}
    if saved.model_type != current.model_type or saved.architecture != current.architecture:
        diffs["architecture"] = (f"{saved.architecture} ({saved.model_type})", f"{current.architecture} ({current.model_type})")
    for field in ("config_sha256", "tokenizer_sha256", "num_parameters"):
        a, b = getattr(saved, field), getattr(current, field)
        if a != b:
            diffs[field] = (a, b)
    if saved.scheme < 2:  # compared by the caller with the legacy algorithm (see memos_core.parametric)
        return diffs
    mine = {saved.dtype: saved.weights_sha256, **saved.weights_cast_sha256}
    theirs = {current.dtype: current.weights_sha256, **current.weights_cast_sha256}
    common = [d for d in _FLOAT_LADDER if d in mine and d in theirs] or sorted(set(mine) & set(theirs))
    if not common:
        diffs["weights_sha256"] = (
            f"{saved.weights_sha256} ({saved.dtype})",
            f"not comparable: the model is {current.dtype}; load the base model in {saved.dtype} or a more precise dtype",
        )
    elif mine[common[0]] != theirs[common[0]]:
        diffs["weights_sha256"] = (mine[common[0]], theirs[common[0]])
    return diffs


def _clean_config(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _clean_config(v) for k, v in value.items() if k not in _VOLATILE_CONFIG_KEYS and not str(k).startswith("_")
        }
    if isinstance(value, (list, tuple)):
        return [_clean_config(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _sha_json(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def config_digest(config: Any) -> str:
    """SHA-256 of a transformers config (``PretrainedConfig`` or dict) without its run-time-only keys."""
    data = config if isinstance(config, dict) else config.to_dict()
    return _sha_json(_clean_config(data))


def tokenizer_digest(tokenizer: Any) -> str:
    """Digest of everything that decides which ids a text becomes (not the chat template)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    core: Any
    if backend is not None and hasattr(backend, "to_str"):
        core = json.loads(backend.to_str())
        if isinstance(core, dict):  # run-time settings a call with padding=/truncation= changes
            core.pop("padding", None)
            core.pop("truncation", None)
    else:
        core = sorted(tokenizer.get_vocab().items())
    added = {str(i): str(getattr(t, "content", t)) for i, t in sorted(getattr(tokenizer, "added_tokens_decoder", {}).items())}
    parts = {
        "core": core,
        "added": added,
        "special": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
        "add_bos": getattr(tokenizer, "add_bos_token", None),
        "add_eos": getattr(tokenizer, "add_eos_token", None),
    }
    return _sha_json(parts)


def _chat_template_digest(tokenizer: Any) -> str | None:
    tpl = getattr(tokenizer, "chat_template", None)
    return None if tpl is None else _sha_json(tpl)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _normalise_param_name(name: str) -> str:
    # A PeftModel wraps the base model as base_model.model.* and its adapted layers as *.base_layer.*; strip
    # both so the same base weights give the same digest with or without an adapter wrapper.
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def _adapter_state(model: Any) -> tuple[dict[int, str], list[str], list[str], list[Any]]:
    """(param id -> adapter name, active adapter names, merged adapter names, tuner layers)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except Exception:  # peft not installed: no adapters possible through it
        return {}, [], [], []
    owner: dict[int, str] = {}
    active: set[str] = set()
    merged: set[str] = set()
    layers: list[Any] = []
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            layers.append(module)
            for attr in getattr(module, "adapter_layer_names", ()):
                container = getattr(module, attr, None)
                if container is None or not hasattr(container, "items"):
                    continue
                for adapter_name, sub in container.items():
                    params = [sub] if not hasattr(sub, "parameters") else list(sub.parameters())
                    for p in params:
                        owner[id(p)] = adapter_name
            if not module.disable_adapters:
                active.update(module.active_adapters)
            merged.update(getattr(module, "merged_adapters", []) or [])
        elif hasattr(module, "modules_to_save") and hasattr(module, "original_module"):
            container = module.modules_to_save
            for adapter_name, sub in container.items():
                for p in sub.parameters():
                    owner[id(p)] = adapter_name
            if not getattr(module, "disable_adapters", False):
                name = getattr(module, "active_adapter", None)
                if isinstance(name, str) and name in container:
                    active.add(name)
    return owner, sorted(active), sorted(merged), layers


def _tensor_digest(name: str, t: Any, cast: Any = None) -> bytes:
    """SHA-256 of one tensor: name, shape, dtype and every byte (after casting floats to ``cast``)."""
    import torch

    x = t.detach()
    if x.device.type == "meta":
        return hashlib.sha256(f"{name}|{tuple(x.shape)}|{x.dtype}|meta".encode()).digest()
    if cast is not None and x.is_floating_point():
        x = x.to(cast)
    x = x.contiguous().cpu()
    h = hashlib.sha256(f"{name}|{tuple(x.shape)}|{x.dtype}|".encode())
    if x.numel():
        h.update(memoryview(x.reshape(-1).view(torch.uint8).numpy()))
    return h.digest()


def _hash_threads() -> int:
    try:
        return max(1, min(8, int(os.environ.get("MEMOS_HASH_THREADS", "0")) or (os.cpu_count() or 1)))
    except ValueError:
        return max(1, min(8, os.cpu_count() or 1))


def weights_digest(named: Sequence[tuple[str, Any]], cast: Any = None) -> str:
    """SHA-256 over every tensor of ``named`` ((name, tensor) pairs), in name order, hashed on threads."""
    from concurrent.futures import ThreadPoolExecutor

    items = sorted(named, key=lambda x: x[0])
    threads = _hash_threads()
    if threads > 1 and len(items) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(pool.map(lambda nt: _tensor_digest(nt[0], nt[1], cast), items))
    else:
        parts = [_tensor_digest(n, t, cast) for n, t in items]
    h = hashlib.sha256(b"memos-weights/2|")
    for (n, _), d in zip(items, parts):
        h.update(n.encode("utf-8") + b"\x00" + d)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- checkpoint identity

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_DISK_LOCK = threading.Lock()


def _cache_dir() -> Path:
    base = os.environ.get("MEMOS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "memos")
    return Path(base) / "fingerprints"


def _files_identity(path: str | os.PathLike[str]) -> list[list[Any]] | None:
    p = Path(path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES)) if p.is_dir() else []
    if not files:
        return None
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev])
    return out


def _param_signature(named: Sequence[tuple[str, Any]]) -> str:
    return _sha_json([(n, list(t.shape), str(t.dtype), int(t._version)) for n, t in sorted(named, key=lambda x: x[0])])


def mark_loaded_from(model: Any, path: str | os.PathLike[str]) -> None:
    """Record that ``model``'s weights were loaded, untouched, from the checkpoint at ``path`` (a folder or
    file). Call it right after loading: the weight digest is then cached on disk by the files' identity
    (path, size, mtime, inode) and the parameters' dtypes, and reused by later processes that load the same
    files the same way, as long as no parameter has been modified since (PyTorch version counters).
    ``LocalLLM.from_pretrained`` does this for you. Silently does nothing when ``path`` holds no weight file."""
    try:
        ident = _files_identity(path)
    except OSError:
        return
    if ident is None:
        return
    import transformers

    named = _base_named_params(model, {})
    key = _sha_json({"files": ident, "params": _param_signature(named), "transformers": transformers.__version__})
    try:
        object.__setattr__(model, "_memos_checkpoint", (key[:40], _param_signature(named)))
    except Exception:  # pragma: no cover - exotic modules refusing attributes
        return


def _disk_get(key: str) -> dict[str, str] | None:
    try:
        data = json.loads((_cache_dir() / f"{key}.json").read_text("utf-8"))
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _disk_put(key: str, digests: Mapping[str, str]) -> None:
    folder = _cache_dir()
    try:
        with _DISK_LOCK:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(dict(digests), sort_keys=True), "utf-8")
            os.replace(tmp, folder / f"{key}.json")
    except OSError:  # a read-only home: the cache is an optimisation only
        pass


def _base_named_params(model: Any, owner: Mapping[int, str]) -> list[tuple[str, Any]]:
    out: dict[str, Any] = {}
    for name, p in model.named_parameters():
        if id(p) in owner:
            continue
        out.setdefault(_normalise_param_name(name), p)
    return sorted(out.items())


def _base_model(model: Any) -> Any:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


#: per loaded model (weakly held): the last weight digests and the parameter key they belong to, so that every
#: Fingerprinter of one model object (e.g. generate() calls without a fingerprinter) shares one hash
_SHARED: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()
#: per tokenizer object (weakly held): (vocabulary size, chat template, digest)
_TOKENIZERS: "weakref.WeakKeyDictionary[Any, tuple[int, Any, str]]" = weakref.WeakKeyDictionary()


def _tokenizer_digest_cached(tokenizer: Any) -> str:
    try:
        size = len(tokenizer)
    except TypeError:
        size = -1
    try:
        hit = _TOKENIZERS.get(tokenizer)
    except TypeError:
        hit = None
    if hit is not None and hit[0] == size and hit[1] == getattr(tokenizer, "chat_template", None):
        return hit[2]
    digest = tokenizer_digest(tokenizer)
    try:
        _TOKENIZERS[tokenizer] = (size, getattr(tokenizer, "chat_template", None), digest)
    except TypeError:
        pass
    return digest


class Fingerprinter:
    """Computes a model's :class:`ModelFingerprint`, caching what has not changed.

    ``model`` may be a transformers ``PreTrainedModel``, a model with adapters loaded through transformers'
    PEFT integration, or a ``peft.PeftModel``. Config, tokenizer and chat-template digests are computed once;
    the weight digest (every tensor, in full) whenever a parameter's identity, storage or version counter
    changes; the adapter part (names, weights, scalings) is re-read on every call, so switching, disabling
    or merging an adapter is reflected immediately. ``casts=True`` also records the weights cast to each less
    precise float dtype (what adapters store; KV caches do not need it); a list of dtype names records only
    those.
    """

    def __init__(self, model: Any, tokenizer: Any, *, casts: bool | Sequence[str] = False) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.casts = casts
        self._static: dict[str, Any] | None = None
        self._weights_key: tuple | None = None
        self._weights: dict[str, str] = {}
        self._adapter_key: tuple | None = None
        self._adapter_digest: str | None = None
        self._bypass_disk = False

    def refresh(self) -> None:
        """Forget every cached digest, in memory and for this model on disk (use after editing weights
        through ``param.data``)."""
        self._static = None
        self._weights_key = self._adapter_key = None
        self._weights = {}
        self._bypass_disk = True
        try:
            _SHARED.pop(_base_model(self.model), None)
        except TypeError:
            pass

    def _static_parts(self) -> dict[str, Any]:
        if self._static is None:
            import transformers

            base = _base_model(self.model)
            config = base.config
            self._static = {
                "model_type": str(getattr(config, "model_type", "") or type(base).__name__),
                "architecture": type(base).__name__,
                "config_sha256": config_digest(config),
                "tokenizer_sha256": _tokenizer_digest_cached(self.tokenizer),
                "chat_template_sha256": _chat_template_digest(self.tokenizer),
                "transformers_version": transformers.__version__,
            }
        return self._static

    def _weight_digests(self, base: list[tuple[str, Any]], dtype: str) -> dict[str, str]:
        import torch

        wkey = tuple((n, id(p), p.data_ptr(), p._version) for n, p in base)
        wanted = [dtype]
        if self.casts:
            allowed = _CASTS.get(dtype, ())
            wanted += [d for d in allowed if self.casts is True or d in self.casts]
        if wkey == self._weights_key and all(d in self._weights for d in wanted):
            return self._weights
        owner_model = _base_model(self.model)
        try:
            shared = _SHARED.get(owner_model)
        except TypeError:
            shared = None
        digests: dict[str, str] = {}
        if shared is not None and shared["key"] == wkey and not self._bypass_disk:
            digests = {k: v for k, v in shared["digests"].items() if k in wanted}
            if len(digests) == len(wanted):
                self._weights_key, self._weights = wkey, digests
                return digests
        mark = getattr(_base_model(self.model), "_memos_checkpoint", None)
        disk_key = None
        if mark is not None and not self._bypass_disk and mark[1] == _param_signature(base):
            disk_key = mark[0]
            digests = {k: v for k, v in (_disk_get(disk_key) or {}).items() if k in wanted}
        for d in wanted:
            if d not in digests:
                digests[d] = weights_digest(base, None if d == dtype else getattr(torch, d))
        if disk_key is not None:
            _disk_put(disk_key, {**(_disk_get(disk_key) or {}), **digests})
        self._weights_key, self._weights = wkey, digests
        self._bypass_disk = False
        try:
            prev = _SHARED.get(owner_model)
            merged = {**prev["digests"], **digests} if prev is not None and prev["key"] == wkey else dict(digests)
            _SHARED[owner_model] = {"key": wkey, "digests": merged}
        except TypeError:
            pass
        return digests

    def __call__(self) -> ModelFingerprint:
        owner, active, merged, layers = _adapter_state(self.model)
        base = _base_named_params(self.model, owner)
        adapter = [(n, p) for n, p in self.model.named_parameters() if owner.get(id(p)) in set(active) | set(merged)]
        float_dtypes = [p.dtype for _, p in base if p.is_floating_point()]
        dtype = _dtype_name(getattr(_base_model(self.model), "dtype", None) or (float_dtypes[0] if float_dtypes else "float32"))
        digests = self._weight_digests(base, dtype)
        adapter_names = active + [f"merged:{m}" for m in merged]
        adapter_digest = None
        if adapter_names:
            scalings = []
            for layer in layers:
                scaling = getattr(layer, "scaling", None)
                if isinstance(scaling, dict):
                    scalings.append(sorted((k, float(v)) for k, v in scaling.items() if k in active or k in merged))
            akey = (tuple(adapter_names), tuple((n, id(p), p.data_ptr(), p._version) for n, p in adapter), repr(scalings))
            if akey != self._adapter_key:
                h = hashlib.sha256(json.dumps([adapter_names, scalings]).encode())
                h.update(weights_digest(adapter).encode())
                self._adapter_key, self._adapter_digest = akey, h.hexdigest()
            adapter_digest = self._adapter_digest
        return ModelFingerprint(
            weights_sha256=digests[dtype],
            weights_cast_sha256={k: v for k, v in digests.items() if k != dtype},
            num_parameters=int(sum(p.numel() for _, p in base)),
            dtype=dtype,
            adapters=adapter_names,
            adapter_sha256=adapter_digest,
            **self._static_parts(),
        )


def fingerprint(model: Any, tokenizer: Any, *, casts: bool | Sequence[str] = False) -> ModelFingerprint:
    """The current fingerprint of ``model`` + ``tokenizer`` (see :class:`Fingerprinter` to cache it)."""
    return Fingerprinter(model, tokenizer, casts=casts)()


# ================================================================================================ stores


@runtime_checkable
class ArtifactStore(Protocol):
    """What every store of derived artefacts offers (KV caches, LoRA adapters): one set of verbs.

    Artefacts are named by an id (a cache id, an adapter name). ``lookup`` arguments default to the store's
    own ``lookup`` where it has one.
    """

    kind: str

    def artifact_ids(self) -> list[str]:
        """Ids of the stored artefacts (unreadable ones included)."""

    def artifact_sources(self, artifact_id: str) -> list[SourceRef]:
        """The memories artefact ``artifact_id`` was built from (NotFound, CorruptData)."""

    def remove(self, artifact_id: str) -> bool:
        """Delete one artefact; True when something was removed."""

    def built_from(self, item_ids: Iterable[str]) -> list[str]:
        """Ids of the artefacts built from any of ``item_ids``."""

    def forget(self, item_ids: Iterable[str]) -> list[str]:
        """Delete every artefact built from any of ``item_ids`` (what forgetting a memory must do); their ids."""

    def stale_artifacts(self, lookup: ItemLookup | None = None) -> dict[str, dict[str, str]]:
        """artefact id -> {source item id: reason} for every stale artefact."""

    def drop_stale(self, lookup: ItemLookup | None = None) -> list[str]:
        """Delete every stale artefact; their ids."""


class ArtifactStoreMixin(ABC):
    """The derived verbs of :class:`ArtifactStore`, from ``artifact_ids``, ``artifact_sources`` and ``remove``
    (which each store implements)."""

    kind: str = "artifact"
    lookup: ItemLookup | None = None

    @abstractmethod
    def artifact_ids(self) -> list[str]:
        """Every stored artefact's id."""

    @abstractmethod
    def artifact_sources(self, artifact_id: str) -> list[SourceRef]:
        """The memory versions the artefact was built from."""

    @abstractmethod
    def remove(self, artifact_id: str) -> bool:
        """Delete one artefact; whether it existed."""

    def _readable(self) -> list[tuple[str, list[SourceRef]]]:
        from .errors import CorruptData, NotFound

        out = []
        for aid in self.artifact_ids():
            try:
                out.append((aid, self.artifact_sources(aid)))
            except (NotFound, CorruptData):
                continue
        return out

    def built_from(self, item_ids: Iterable[str]) -> list[str]:
        wanted = set(item_ids)
        return [aid for aid, refs in self._readable() if wanted & {r.item_id for r in refs}]

    def forget(self, item_ids: Iterable[str]) -> list[str]:
        ids = self.built_from(item_ids)
        return [aid for aid in ids if self.remove(aid)]

    def stale_artifacts(self, lookup: ItemLookup | None = None) -> dict[str, dict[str, str]]:
        from .errors import ValidationError

        look = lookup or self.lookup
        if look is None:
            raise ValidationError("staleness needs a lookup (item id -> MemoryItem | None), e.g. cube.lookup")
        out = {}
        for aid, refs in self._readable():
            reasons = stale_sources(refs, look)
            if reasons:
                out[aid] = reasons
        return out

    def drop_stale(self, lookup: ItemLookup | None = None) -> list[str]:
        ids = list(self.stale_artifacts(lookup))
        return [aid for aid in ids if self.remove(aid)]
