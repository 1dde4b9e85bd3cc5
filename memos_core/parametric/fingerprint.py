"""Base-model fingerprints for adapters: the shared :mod:`memos_core.artifacts` fingerprint, plus the check that
refuses to load an adapter into another base model.

An adapter records the :class:`~memos_core.artifacts.ModelFingerprint` of the base it was trained on, with
``weights_sha256`` (every weight tensor hashed in full) and ``weights_cast_sha256`` (the same weights cast to
each less precise float dtype). :func:`fingerprint_differences` compares a stored fingerprint with the current
model's: architecture, config, tokenizer, parameter count and weights must agree (weights exactly, in a dtype
both sides have a digest for, so the same checkpoint in float32, bfloat16 or float16 matches and any other
checkpoint of the architecture does not). ``dtype``, ``transformers_version`` and the chat template never
block.

Adapter records written by older releases (fingerprint scheme 1) carry 64 sampled weights instead of a digest;
they are checked with that older algorithm (:func:`legacy_differences`) so they still load. Retrain them to
get the full check.

This module imports torch only inside functions.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..artifacts import (
    Fingerprinter,
    ModelFingerprint,
    compatibility_differences,
    config_digest,
    describe_differences,
    tokenizer_digest,
)

__all__ = [
    "ModelFingerprint",
    "model_fingerprint",
    "fingerprint_differences",
    "legacy_differences",
    "config_hash",
    "tokenizer_hash",
]

config_hash = config_digest
tokenizer_hash = tokenizer_digest


def model_fingerprint(model: Any, tokenizer: Any, *, casts: bool | tuple[str, ...] = True) -> ModelFingerprint:
    """Fingerprint the base model of ``model`` (a transformers causal LM, or a peft model wrapping one) with its
    tokenizer, including the weights cast to every less precise float dtype (``casts``: all, or only those
    named). Adapter weights are excluded."""
    fp = Fingerprinter(model, tokenizer, casts=casts)()
    return fp.model_copy(update={"adapters": [], "adapter_sha256": None})


def _lines(diffs: dict[str, tuple[Any, Any]]) -> list[str]:
    out = []
    for field, (a, b) in diffs.items():
        if field == "architecture":
            out.append(f"architecture: adapter trained on {a}, model is {b}")
        elif field == "weights_sha256":
            out.append(f"weights: {describe_differences({field: (a, b)})} (another checkpoint of this architecture?)")
        else:
            out.append(describe_differences({field: (a, b)}))
    return out


def fingerprint_differences(saved: ModelFingerprint, current: ModelFingerprint) -> list[str]:
    """Blocking differences as human-readable lines (see :func:`memos_core.artifacts.compatibility_differences`
    for the ``field -> (stored, current)`` form). Empty list: the adapter may be loaded."""
    return _lines(compatibility_differences(saved, current))


# ----------------------------------------------------------------------------------------------- scheme 1

_LEGACY_VOLATILE = frozenset({
    "transformers_version", "_name_or_path", "name_or_path", "dtype", "torch_dtype", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict", "attn_implementation", "pretraining_tp",
    "quantization_config", "use_return_dict", "tf_legacy_loss", "torchscript",
})
_LEGACY_PROBES = (
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  \n\ttabs and\nnewlines\n\n",
    "Numbers: 0 7 42 1999 2024-05-08 3.14159 -17 1,000,000",
    "Ünïcödé: café naïve 東京 Москва 🙂 ﬁ",
    "def f(x):\n    return {'a': [1, 2]}  # code",
    "ALL CAPS and MiXeD cAsE; punctuation?! (brackets) [x] <tag> \"quotes\" 'single'",
)


def _legacy_clean(value: Any) -> Any:
    import math

    if isinstance(value, dict):
        return {k: _legacy_clean(v) for k, v in value.items() if k not in _LEGACY_VOLATILE and not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [_legacy_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _legacy_tokenizer_hash(tokenizer: Any) -> str:
    h = hashlib.sha256()
    for token, idx in sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0])):
        h.update(f"{idx}\x1f{token}\x1e".encode("utf-8", "surrogatepass"))
    for attr in ("bos_token", "eos_token", "unk_token", "pad_token"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)!s}\x1e".encode("utf-8"))
    for text in _LEGACY_PROBES:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        h.update(("probe:" + ",".join(str(int(i)) for i in ids) + "\x1e").encode("ascii"))
    return h.hexdigest()


def _legacy_probe(params: list[tuple[str, Any]]) -> list[float] | None:
    import torch

    if not params:
        return None
    n = len(params)
    picks = sorted({round(i * (n - 1) / 7) for i in range(8)})
    values: list[float] = []
    with torch.no_grad():
        for i in picks:
            flat = params[i][1].detach().reshape(-1)
            if flat.numel() == 0 or flat.device.type == "meta":
                return None
            idx = torch.tensor([(k * 2654435761 + 97) % flat.numel() for k in range(8)], device=flat.device)
            values.extend(float(v) for v in flat[idx].float().cpu().tolist())
    return values


def legacy_differences(saved: ModelFingerprint, model: Any, tokenizer: Any) -> dict[str, tuple[Any, Any]]:
    """Blocking differences for a scheme-1 fingerprint (adapters saved by older releases), computed the way
    those releases did: config and tokenizer hashes of that algorithm, parameter count, 64 sampled weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    params: dict[str, Any] = {}
    for name, p in base.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        params.setdefault(clean[len("base_model.model."):] if clean.startswith("base_model.model.") else clean, p)
    ordered = sorted(params.items())
    diffs: dict[str, tuple[Any, Any]] = {}
    arch = f"{type(base).__name__} ({getattr(config, 'model_type', '')})"
    if arch != f"{saved.architecture} ({saved.model_type})":
        diffs["architecture"] = (f"{saved.architecture} ({saved.model_type})", arch)
    cfg = hashlib.sha256(json.dumps(_legacy_clean(config.to_dict()), sort_keys=True, default=str,
                                    separators=(",", ":")).encode()).hexdigest()
    if cfg != saved.config_sha256:
        diffs["config_sha256"] = (saved.config_sha256, cfg)
    tok = _legacy_tokenizer_hash(tokenizer)
    if tok != saved.tokenizer_sha256:
        diffs["tokenizer_sha256"] = (saved.tokenizer_sha256, tok)
    count = int(sum(p.numel() for _, p in ordered))
    if count != saved.num_parameters:
        diffs["num_parameters"] = (saved.num_parameters, count)
    a, b = saved.weights_probe, _legacy_probe(ordered)
    if a is not None and b is not None:
        bad = len(a) != len(b) or any(abs(x - y) > 1e-6 + 1.6e-2 * max(abs(x), abs(y)) for x, y in zip(a, b))
        if bad:
            diffs["weights_sha256"] = ("sampled weights of the adapter's base", "differ in this model")
    return diffs
