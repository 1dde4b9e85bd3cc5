"""Model fingerprints: which model, tokenizer, dtype and adapters built a KV cache.

A KV cache is only meaningful for the exact network that computed it. :class:`ModelFingerprint` records:

* ``config_sha256``: the architecture config (volatile fields such as the checkpoint path, dtype and the
  transformers version that wrote it are excluded);
* ``weights_sha256``: a digest of every base-model parameter's name, shape, dtype and 256 evenly spaced
  values. Two checkpoints of the same architecture (e.g. a base model and its fine-tune) differ here;
* ``tokenizer_sha256``: the full tokenizer definition, the special tokens and the chat template;
* ``dtype`` and ``transformers_version``;
* ``adapters``: the names of the active (and of any merged) PEFT adapters, and ``adapter_sha256``, a digest
  of their weights and scalings. A cache built under one adapter is refused under another, and under none.

Fingerprints are computed from the live model, so whatever changes the model's outputs through its
parameters changes the fingerprint. :class:`Fingerprinter` caches the (cheap) digest between calls and
recomputes it when a parameter is replaced or modified in place through a tracked operation (optimizer steps,
``load_state_dict``, ``copy_``). Edits made through ``param.data`` bypass PyTorch's version counter: call
:meth:`Fingerprinter.refresh` after them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["ModelFingerprint", "Fingerprinter", "fingerprint"]

_SAMPLES_PER_TENSOR = 256
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "name_or_path",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_commit_hash",
    "use_cache",
    "return_dict",
    "output_attentions",
    "output_hidden_states",
    "architectures",
}


class ModelFingerprint(BaseModel):
    """Identity of the network (and tokenizer) a KV cache belongs to. Equal fingerprints => reusable caches."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_type: str
    config_sha256: str
    weights_sha256: str
    tokenizer_sha256: str
    dtype: str
    transformers_version: str
    adapters: list[str] = []
    adapter_sha256: str | None = None

    @property
    def key(self) -> str:
        """A 32-hex-digit digest of all fields: caches are keyed and looked up by it."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]

    def differences(self, other: "ModelFingerprint") -> dict[str, tuple[Any, Any]]:
        """Field name -> (self's value, other's value) for every field that differs."""
        a, b = self.model_dump(), other.model_dump()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}

    def describe_differences(self, other: "ModelFingerprint") -> str:
        parts = []
        for field, (mine, theirs) in self.differences(other).items():
            short = lambda v: (v[:12] + "…") if isinstance(v, str) and len(v) > 16 else v  # noqa: E731
            parts.append(f"{field}: stored {short(mine)!r}, current {short(theirs)!r}")
        return "; ".join(parts) or "no differences"


def _sha(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _config_digest(config: Any) -> str:
    data = config.to_dict()
    clean = {k: v for k, v in data.items() if k not in _VOLATILE_CONFIG_KEYS and not k.startswith("_")}
    return _sha(clean)


def tokenizer_digest(tokenizer: Any) -> str:
    """Digest of everything that decides which ids a text becomes: model, added/special tokens, chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        core: Any = backend.to_str()
    else:
        core = sorted(tokenizer.get_vocab().items())
    added = {str(i): str(getattr(t, "content", t)) for i, t in sorted(getattr(tokenizer, "added_tokens_decoder", {}).items())}
    parts = {
        "core": core,
        "added": added,
        "special": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
        "chat_template": getattr(tokenizer, "chat_template", None),
        "add_bos": getattr(tokenizer, "add_bos_token", None),
        "add_eos": getattr(tokenizer, "add_eos_token", None),
    }
    return _sha(parts)


def _dtype_name(model: Any) -> str:
    dtype = getattr(model, "dtype", None)
    if dtype is None:
        dtype = next(model.parameters()).dtype
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


def _sample_bytes(t: Any) -> bytes:
    import torch

    if t.device.type == "meta":
        return b"meta"
    flat = t.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return b""
    stride = max(1, n // _SAMPLES_PER_TENSOR)
    sample = flat[::stride][:_SAMPLES_PER_TENSOR]
    if sample.dtype.is_floating_point or sample.dtype.is_complex:
        sample = sample.to(torch.float32)
    return sample.cpu().contiguous().numpy().tobytes()


class Fingerprinter:
    """Computes a model's :class:`ModelFingerprint`, caching the parts that have not changed.

    ``model`` may be a transformers ``PreTrainedModel``, a model with adapters loaded through transformers'
    PEFT integration, or a ``peft.PeftModel``. The tokenizer and config digests are computed once; the
    weight digest is recomputed whenever a parameter's identity, storage or version counter changes; the
    adapter part (names, weights, scalings) is re-read on every call, so switching, disabling or merging an
    adapter is reflected immediately.
    """

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._static: dict[str, str] | None = None
        self._weights_key: tuple | None = None
        self._weights_digest: str | None = None
        self._adapter_key: tuple | None = None
        self._adapter_digest: str | None = None

    def refresh(self) -> None:
        """Forget every cached digest (use after editing weights through ``.data``)."""
        self._static = None
        self._weights_key = self._adapter_key = None

    def _static_parts(self) -> dict[str, str]:
        if self._static is None:
            import transformers

            config = self.model.config
            self._static = {
                "model_type": str(getattr(config, "model_type", type(self.model).__name__)),
                "config_sha256": _config_digest(config),
                "tokenizer_sha256": tokenizer_digest(self.tokenizer),
                "transformers_version": transformers.__version__,
            }
        return self._static

    def __call__(self) -> ModelFingerprint:
        owner, active, merged, layers = _adapter_state(self.model)
        base: list[tuple[str, Any]] = []
        adapter: list[tuple[str, Any]] = []
        for name, p in self.model.named_parameters():
            who = owner.get(id(p))
            if who is None:
                base.append((_normalise_param_name(name), p))
            elif who in active or who in merged:
                adapter.append((name, p))
        wkey = tuple((n, id(p), p.data_ptr(), p._version) for n, p in base)
        if wkey != self._weights_key:
            h = hashlib.sha256()
            for n, p in sorted(base, key=lambda x: x[0]):
                h.update(f"{n}|{tuple(p.shape)}|{p.dtype}|".encode())
                h.update(_sample_bytes(p))
            self._weights_key, self._weights_digest = wkey, h.hexdigest()
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
                for n, p in sorted(adapter, key=lambda x: x[0]):
                    h.update(f"{n}|{tuple(p.shape)}|{p.dtype}|".encode())
                    h.update(_sample_bytes(p))
                self._adapter_key, self._adapter_digest = akey, h.hexdigest()
            adapter_digest = self._adapter_digest
        return ModelFingerprint(
            weights_sha256=self._weights_digest or "",
            dtype=_dtype_name(self.model),
            adapters=adapter_names,
            adapter_sha256=adapter_digest,
            **self._static_parts(),
        )


def fingerprint(model: Any, tokenizer: Any) -> ModelFingerprint:
    """The current fingerprint of ``model`` + ``tokenizer`` (see :class:`Fingerprinter` to cache it)."""
    return Fingerprinter(model, tokenizer)()
