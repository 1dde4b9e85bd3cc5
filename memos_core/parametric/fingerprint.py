"""Base-model fingerprints: what an adapter records about the model it was trained on, and the check that refuses
to load it into another one.

A fingerprint is a small JSON-able record:

* ``model_type`` and ``architecture`` (e.g. ``llama`` / ``LlamaForCausalLM``);
* ``config_sha256``: SHA-256 of the model config with run-time-only keys removed (dtype, attention
  implementation, ``use_cache``, ``_name_or_path``, transformers version, ...), so the same checkpoint loaded in
  another dtype or by another transformers release hashes the same;
* ``tokenizer_sha256``: SHA-256 of the vocabulary, the special tokens and the token ids of a fixed set of probe
  strings (so a tokenizer with the same vocabulary but different merges or normalisation differs), independent
  of how the tokenizer library serialises itself;
* ``weights_probe``: 64 weight values sampled at fixed positions from 8 parameter tensors, compared with a
  tolerance, so two checkpoints with the same architecture (a base model and its fine-tune) are told apart while
  the same checkpoint in float32 and bfloat16 matches;
* ``num_parameters``, ``dtype`` and ``transformers_version``.

:func:`fingerprint_differences` returns the *blocking* differences: architecture, config, tokenizer, parameter
count, weights. ``dtype`` and ``transformers_version`` are recorded for information only: a LoRA adapter trained
in float32 works on the same base in bfloat16.

This module imports torch only inside functions.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelFingerprint", "model_fingerprint", "fingerprint_differences", "config_hash", "tokenizer_hash"]

#: Config keys that describe how a model is run, not what it is.
_VOLATILE_CONFIG_KEYS = frozenset(
    {
        "transformers_version",
        "_name_or_path",
        "name_or_path",
        "dtype",
        "torch_dtype",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "attn_implementation",
        "pretraining_tp",  # peft forces it to 1 when it wraps a model
        "quantization_config",
        "use_return_dict",
        "tf_legacy_loss",
        "torchscript",
    }
)

#: Strings whose token ids go into the tokenizer hash: letters, digits, whitespace runs, unicode, code.
_TOKENIZER_PROBES = (
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  \n\ttabs and\nnewlines\n\n",
    "Numbers: 0 7 42 1999 2024-05-08 3.14159 -17 1,000,000",
    "Ünïcödé: café naïve 東京 Москва 🙂 ﬁ",
    "def f(x):\n    return {'a': [1, 2]}  # code",
    "ALL CAPS and MiXeD cAsE; punctuation?! (brackets) [x] <tag> \"quotes\" 'single'",
)

_PROBE_TENSORS = 8
_PROBE_VALUES = 8


class ModelFingerprint(BaseModel):
    """Identity of a base model as far as an adapter is concerned. See the module docstring."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_type: str
    architecture: str
    config_sha256: str
    tokenizer_sha256: str
    num_parameters: int
    weights_probe: list[float] | None = Field(default=None, description="None when weights were not readable")
    dtype: str
    transformers_version: str


def _clean_config(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _clean_config(v)
            for k, v in value.items()
            if k not in _VOLATILE_CONFIG_KEYS and not str(k).startswith("_")
        }
    if isinstance(value, (list, tuple)):
        return [_clean_config(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def config_hash(config: Any) -> str:
    """SHA-256 of a transformers config (``PretrainedConfig`` or dict) without its run-time-only keys."""
    data = config if isinstance(config, dict) else config.to_dict()
    text = json.dumps(_clean_config(data), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's behaviour: vocabulary, special tokens and the ids of fixed probe strings."""
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    for token, idx in sorted(vocab.items(), key=lambda kv: (kv[1], kv[0])):
        h.update(f"{idx}\x1f{token}\x1e".encode("utf-8", "surrogatepass"))
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token"):
        tok = getattr(tokenizer, attr, None)
        h.update(f"{attr}={tok!s}\x1e".encode("utf-8"))
    for text in _TOKENIZER_PROBES:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        h.update(("probe:" + ",".join(str(int(i)) for i in ids) + "\x1e").encode("ascii"))
    return h.hexdigest()


def _normalised_params(model: Any) -> list[tuple[str, Any]]:
    """Base-model parameters by stable name, skipping adapter weights and peft's wrapper names."""
    out: dict[str, Any] = {}
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        if clean.startswith("base_model.model."):
            clean = clean[len("base_model.model.") :]
        out.setdefault(clean, param)
    return sorted(out.items())


def _weights_probe(params: list[tuple[str, Any]]) -> list[float] | None:
    import torch

    if not params:
        return None
    n = len(params)
    picks = sorted({round(i * (n - 1) / max(_PROBE_TENSORS - 1, 1)) for i in range(_PROBE_TENSORS)})
    values: list[float] = []
    try:
        with torch.no_grad():
            for i in picks:
                flat = params[i][1].detach().reshape(-1)
                numel = flat.numel()
                if numel == 0 or flat.device.type == "meta":
                    return None
                idx = torch.tensor(
                    [(k * 2654435761 + 97) % numel for k in range(_PROBE_VALUES)], device=flat.device
                )
                values.extend(float(v) for v in flat[idx].float().cpu().tolist())
    except (RuntimeError, NotImplementedError):
        return None
    return values


def _base_config(model: Any) -> Any:
    config = getattr(model, "config", None)
    if config is None and hasattr(model, "get_base_model"):
        config = model.get_base_model().config
    return config


def model_fingerprint(model: Any, tokenizer: Any) -> ModelFingerprint:
    """Fingerprint a transformers causal LM (or a peft model wrapping one) together with its tokenizer."""
    import transformers

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = _base_config(base)
    params = _normalised_params(base)
    dtype = str(getattr(base, "dtype", params[0][1].dtype if params else "unknown")).replace("torch.", "")
    return ModelFingerprint(
        model_type=str(getattr(config, "model_type", "") or ""),
        architecture=type(base).__name__,
        config_sha256=config_hash(config),
        tokenizer_sha256=tokenizer_hash(tokenizer),
        num_parameters=int(sum(p.numel() for _, p in params)),
        weights_probe=_weights_probe(params),
        dtype=dtype,
        transformers_version=transformers.__version__,
    )


def fingerprint_differences(saved: ModelFingerprint, current: ModelFingerprint) -> list[str]:
    """Blocking differences between the fingerprint an adapter was trained with and the current model's.

    Empty list: the adapter may be loaded. ``dtype`` and ``transformers_version`` never block.
    """
    diffs: list[str] = []
    if saved.model_type != current.model_type or saved.architecture != current.architecture:
        diffs.append(
            f"architecture: adapter trained on {saved.architecture} ({saved.model_type}), "
            f"model is {current.architecture} ({current.model_type})"
        )
    if saved.config_sha256 != current.config_sha256:
        diffs.append(
            f"config: sha256 {saved.config_sha256[:12]}... differs from the model's {current.config_sha256[:12]}..."
        )
    if saved.tokenizer_sha256 != current.tokenizer_sha256:
        diffs.append(
            f"tokenizer: sha256 {saved.tokenizer_sha256[:12]}... differs from {current.tokenizer_sha256[:12]}..."
        )
    if saved.num_parameters != current.num_parameters:
        diffs.append(f"parameter count: {saved.num_parameters} vs {current.num_parameters}")
    a, b = saved.weights_probe, current.weights_probe
    if a is not None and b is not None:
        if len(a) != len(b):
            diffs.append("weights: probe lengths differ")
        else:
            # bfloat16 keeps ~3 significant digits; different checkpoints differ far more than that.
            bad = sum(1 for x, y in zip(a, b) if abs(x - y) > 1e-6 + 1.6e-2 * max(abs(x), abs(y)))
            if bad:
                diffs.append(f"weights: {bad} of {len(a)} sampled weights differ (another checkpoint of this architecture?)")
    return diffs
