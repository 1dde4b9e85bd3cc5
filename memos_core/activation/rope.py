"""Rotary position embeddings as far as KV caches are concerned: which frequencies a layer uses, and when they
depend on the length of the sequence.

Two RoPE variants in transformers choose their frequencies from the length of the *current forward pass*
(``max(position_ids) + 1``), see ``transformers.modeling_rope_utils.dynamic_rope_update``:

* ``dynamic`` (dynamic NTK, e.g. Llama ``rope_type="dynamic"``): the base frequencies up to
  ``max_position_embeddings`` tokens; beyond it, frequencies recomputed for *every* length;
* ``longrope`` (Phi-3 128k and others): the "short" factors up to ``original_max_position_embeddings`` tokens,
  the "long" factors beyond it.

A KV cache computed in one frequency *regime* is wrong in another: the keys are rotated differently and every
later layer's keys and values change with them. :func:`rope_regime` names the regime of a forward pass over
``n`` tokens; caches record the regime they were computed in (``KVCacheMeta.rope_regime``) and are reused
only by a prompt in the same regime (otherwise the prompt is recomputed in full, never silently mixed).
Regimes of ``dynamic`` RoPE beyond the threshold are unique to one length, so no cache can be shared there;
the ``longrope`` long regime is shared by every length beyond the threshold.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["length_dependent_rope", "rope_regime", "regime_is_shared", "rotary_modules", "layer_inv_freqs", "settle_dynamic_rope"]


def _base(model: Any) -> Any:
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _text_config(model: Any) -> Any:
    config = _base(model).config
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


_ROTARIES: "weakref.WeakKeyDictionary[Any, list[Any]]" = weakref.WeakKeyDictionary()


def rotary_modules(model: Any) -> list[Any]:
    """Rotary-embedding modules: one ``inv_freq`` buffer, or one per layer type (``<type>_inv_freq``, Gemma 3)."""
    try:
        return _ROTARIES[model]
    except (KeyError, TypeError):
        pass
    out = []
    for module in model.modules():
        if "rotary" not in type(module).__name__.lower():
            continue
        types = getattr(module, "rope_type", None)
        if hasattr(module, "inv_freq") or (isinstance(types, dict) and any(hasattr(module, f"{t}_inv_freq") for t in types)):
            out.append(module)
    try:
        _ROTARIES[model] = out
    except TypeError:  # pragma: no cover - not weak-referenceable
        pass
    return out


def _rope_params(config: Any, layer_type: str | None) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if layer_type is not None and isinstance(params, dict) and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    return params if isinstance(params, dict) else {}


def length_dependent_rope(model: Any) -> list[tuple[str, int]]:
    """``[(kind, threshold), ...]`` for every RoPE whose frequencies depend on the sequence length: ``kind`` is
    ``"dynamic"`` or ``"longrope"``, ``threshold`` the longest length that still uses the base frequencies.
    Empty for every other model (plain, linear, llama3, yarn RoPE; no RoPE)."""
    config = _text_config(model)
    out: list[tuple[str, int]] = []
    for rot in rotary_modules(model):
        types = rot.rope_type if isinstance(getattr(rot, "rope_type", None), dict) else {None: getattr(rot, "rope_type", "default")}
        for layer_type, rope_type in types.items():
            rope_type = str(rope_type)
            if "dynamic" in rope_type:
                limit = getattr(rot, "original_max_seq_len", None) or getattr(config, "max_position_embeddings", None)
                out.append(("dynamic", int(limit)))
            elif rope_type == "longrope":
                params = _rope_params(config, layer_type)
                limit = (params.get("original_max_position_embeddings")
                         or getattr(config, "original_max_position_embeddings", None)
                         or getattr(config, "max_position_embeddings", None))
                out.append(("longrope", int(limit)))
    return sorted(set(out))


def rope_regime(model: Any, seq_len: int) -> str | None:
    """The frequency regime of a forward pass over ``seq_len`` tokens, or ``None`` when the model's RoPE (if
    any) does not depend on the length. Two passes compute identical rotations iff their regimes are equal."""
    specs = length_dependent_rope(model)
    if not specs:
        return None
    parts = []
    for kind, limit in specs:
        if seq_len <= limit:
            parts.append(f"{kind}<={limit}")
        elif kind == "longrope":
            parts.append(f"{kind}>{limit}")
        else:
            parts.append(f"{kind}@{seq_len}")
    return ",".join(parts)


def regime_is_shared(regime: str | None) -> bool:
    """True when prompts of several lengths share ``regime`` (so a cache built in it can be reused)."""
    return regime is None or "@" not in regime


def settle_dynamic_rope(model: Any, seq_len: int) -> None:
    """Before a forward pass over ``seq_len`` tokens: give dynamic-NTK rotary modules the frequencies a *fresh*
    model would use for that length.

    transformers' dynamic RoPE is stateful: it grows its frequencies when a pass is longer than any before,
    and resets them only for passes *shorter* than ``max_position_embeddings``. A prompt of 64..N tokens run
    after a longer generation would therefore reuse the longer pass's frequencies, and the same prompt would
    give different outputs depending on what ran before. Settling makes every prefill a function of its own
    length (decoding steps, which only grow, are left to transformers)."""
    for rot in rotary_modules(model):
        rope_type = getattr(rot, "rope_type", None)
        if not isinstance(rope_type, str) or "dynamic" not in rope_type:
            continue
        limit = getattr(rot, "original_max_seq_len", None)
        cached = getattr(rot, "max_seq_len_cached", None)
        original = getattr(rot, "original_inv_freq", None)
        if limit is None or cached is None or original is None or cached <= max(seq_len, limit):
            continue
        if seq_len <= limit:
            rot.register_buffer("inv_freq", original.to(rot.inv_freq.device), persistent=False)
            rot.max_seq_len_cached = limit
        else:
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](rot.config, rot.inv_freq.device, seq_len=seq_len)
            rot.register_buffer("inv_freq", inv_freq, persistent=False)
            rot.attention_scaling = scaling
            rot.max_seq_len_cached = seq_len


def layer_inv_freqs(model: Any, num_layers: int) -> tuple[list[Any], list[str]] | None:
    """(per decoder layer: the rotary ``inv_freq`` it uses, per layer: its rope type), or None without RoPE.

    Models with one rotary module use its ``inv_freq`` everywhere; models with per-layer-type buffers (Gemma 3:
    ``sliding_attention_inv_freq`` / ``full_attention_inv_freq``) map each layer through ``config.layer_types``.
    """
    rots = rotary_modules(model)
    if not rots:
        return None
    rot = rots[0]
    types = getattr(rot, "rope_type", None)
    if isinstance(types, dict):
        layer_types = list(getattr(_text_config(model), "layer_types", None) or [])
        if len(layer_types) < num_layers:
            return None
        freqs, kinds = [], []
        for lt in layer_types[:num_layers]:
            buf = getattr(rot, f"{lt}_inv_freq", None)
            if buf is None:
                return None
            freqs.append(buf)
            kinds.append(str(types.get(lt, "default")))
        return freqs, kinds
    return [rot.inv_freq] * num_layers, [str(types or "default")] * num_layers
