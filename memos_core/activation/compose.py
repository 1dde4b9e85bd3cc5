"""Several memories' caches in one context, position-correct.

Caches built with the same chat template and :class:`MemoryFormat` all start with the same ``shared_len``
tokens (template head + preamble) followed by their memory pieces. Composing ``c1, c2, …, cn`` yields the
cache of ``head + preamble + pieces(c1) + pieces(c2) + … + pieces(cn)``, in that order, two ways:

``mode="recompute"`` — **exact.** ``c1`` is reused as is (it is exactly the prefix) and the pieces of
``c2 … cn`` are recomputed on top of it. The result equals a cache built from all the memories at once
(within float tolerance: the tests check 1e-4 on the first-token logits and identical greedy tokens). It
costs the prefill of the later pieces.

``mode="rerotate"`` — **approximate, no model run.** Each later piece's keys were computed at positions
``shared_len …`` of its own cache; they are moved to their place in the composite by rotating them with the
model's RoPE frequencies (``R(p + d) = R(d) R(p)``). The rotation itself is exact (a per-model self-check runs
the model at two offsets and requires the rotated keys to match, see :func:`rope_for`), so every piece sits at
its true position; what remains approximate is the *content*: tokens of piece ``j`` did not attend to pieces
``< j`` when their keys/values were computed (as in "Prompt Cache", Gim et al. 2024). Use
:func:`composition_error` to measure the effect on your model; the README reports our measurements. Results
carry ``meta.exact == False``.

Plain concatenation without re-rotation (what upstream MemOS does) puts several pieces at the same positions;
it is offered only inside :func:`composition_error` (``"naive"``), to show the error it causes.

Only RoPE models whose frequencies do not depend on sequence length can be re-rotated (default, linear,
llama3, yarn scaling; also per-layer-type frequencies as in Gemma 3, each layer rotated with its own);
``dynamic``/``longrope``/multimodal RoPE and non-RoPE models raise :class:`UnsupportedModel` — use
``"recompute"`` there. ``"recompute"`` on a ``dynamic``/``longrope`` model recomputes the whole composite when
the first cache was computed in another frequency regime than the composite's length needs (see
:mod:`memos_core.activation.rope`), so its result stays exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from ..errors import ValidationError
from .errors import FingerprintMismatch, UnsupportedModel
from .fingerprint import Fingerprinter
from .kvcache import KVCache, Segment, cache_kwarg, cache_tensors, make_cache, model_device, prefix_forward
from .rope import layer_inv_freqs, rope_regime, rotary_modules

__all__ = ["compose", "rope_for", "rerotate_keys", "composition_error", "CompositionError", "RopeInfo"]

Mode = Literal["recompute", "rerotate"]


@dataclass(frozen=True)
class RopeInfo:
    """Rotary frequencies of a model (``inv_freq``, fp32) and how many head dims rotate.

    ``layer_inv_freq`` holds one frequency vector per decoder layer when layers differ (Gemma 3's sliding and
    full attention layers); ``inv_freq`` is then the first layer's."""

    inv_freq: Any
    rotary_dim: int
    rope_type: str
    self_check_error: float
    layer_inv_freq: tuple[Any, ...] | None = None


_ROPE_CACHE: dict[str, RopeInfo] = {}
_UNSHIFTABLE = ("dynamic", "longrope")


def rerotate_keys(keys: Any, delta: int, rope: RopeInfo, layer: int | None = None) -> Any:
    """Keys computed at positions ``p`` -> keys at ``p + delta`` (HF ``rotate_half`` RoPE convention), with
    layer ``layer``'s frequencies when they differ per layer."""
    import torch

    if delta == 0:
        return keys
    inv = rope.inv_freq if rope.layer_inv_freq is None or layer is None else rope.layer_inv_freq[layer]
    d = 2 * inv.numel()
    ang = delta * inv.to(device=keys.device, dtype=torch.float64)
    cos, sin = ang.cos().to(torch.float32), ang.sin().to(torch.float32)
    kf = keys.to(torch.float32)
    x1, x2 = kf[..., : d // 2], kf[..., d // 2 : d]
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, kf[..., d:]], dim=-1)
    return out.to(keys.dtype)


def rope_for(model: Any, fingerprint_key: str | None = None, *, tolerance: float | None = None) -> RopeInfo:
    """The model's RoPE, after a self-check that re-rotation reproduces the model's own shifted keys.

    The check runs 8 tokens at positions 0… and at 131…, rotates the first run's keys by 131 and compares
    every layer (relative max error below 1e-4 in fp32, 2e-2 in 16-bit types). Cached per fingerprint key.
    Raises :class:`UnsupportedModel` when the model has no usable rotary embedding or fails the check.
    """
    import torch
    from transformers import DynamicCache

    if fingerprint_key is not None and fingerprint_key in _ROPE_CACHE:
        return _ROPE_CACHE[fingerprint_key]
    name = type(model).__name__
    num_layers = int(getattr(model.config.get_text_config(), "num_hidden_layers", 0) or 0)
    found = layer_inv_freqs(model, num_layers) if num_layers else None
    if found is None:
        if rotary_modules(model):
            raise UnsupportedModel(
                f"{name}'s rotary embedding keeps its frequencies in a layout MemOS does not know (no inv_freq buffer "
                "and no per-layer-type <type>_inv_freq buffers matching config.layer_types); compose with mode='recompute'"
            )
        raise UnsupportedModel(f"{name} has no rotary position embedding; compose with mode='recompute'")
    freqs, kinds = found
    params = getattr(model.config, "rope_parameters", None) or {}
    bad = sorted({k for k in kinds if any(u in k for u in _UNSHIFTABLE)})
    if bad or (isinstance(params, dict) and "mrope_section" in params):
        raise UnsupportedModel(
            f"{name} uses RoPE type {(bad or ['mrope'])[0]!r}, whose frequencies depend on the sequence length (or on "
            "several position axes); compose with mode='recompute'"
        )
    rope_type = kinds[0] if len(set(kinds)) == 1 else "per-layer(" + ",".join(sorted(set(kinds))) + ")"
    per_layer = [f.detach().to(torch.float32) for f in freqs]
    distinct = any(f.shape != per_layer[0].shape or not torch.equal(f, per_layer[0]) for f in per_layer[1:])
    inv = per_layer[0]
    layer_freq = tuple(per_layer) if distinct else None
    info = RopeInfo(inv_freq=inv, rotary_dim=2 * inv.numel(), rope_type=rope_type, self_check_error=float("nan"),
                    layer_inv_freq=layer_freq)
    device = model_device(model)
    vocab = int(model.config.get_text_config().vocab_size)
    ids = torch.tensor([[(7 * i + 3) % vocab for i in range(8)]], device=device)
    shift = 131
    runs = []
    with torch.no_grad():
        for start in (0, shift):
            dyn = DynamicCache()
            model(
                input_ids=ids,
                position_ids=torch.arange(start, start + 8, device=device).unsqueeze(0),
                attention_mask=torch.ones_like(ids),
                use_cache=True,
                **{cache_kwarg(model): dyn},
            )
            runs.append(cache_tensors(dyn))
    worst = 0.0
    for li, ((k0, v0), (k1, v1)) in enumerate(zip(*runs)):
        moved = rerotate_keys(k0.float(), shift, info, li)
        scale = max(float(k1.float().abs().max()), 1e-6)
        worst = max(worst, float((moved - k1.float()).abs().max()) / scale)
        vscale = max(float(v1.float().abs().max()), 1e-6)
        worst = max(worst, float((v0.float() - v1.float()).abs().max()) / vscale)
    dtype = runs[0][0][0].dtype
    tol = tolerance if tolerance is not None else (1e-4 if dtype in (torch.float32, torch.float64) else 2e-2)
    if not worst <= tol:
        raise UnsupportedModel(
            f"re-rotating {name}'s cached keys does not reproduce its own shifted keys (relative error {worst:.2e} > {tol:.0e}); "
            "its position encoding is not plain RoPE; compose with mode='recompute'"
        )
    info = RopeInfo(inv_freq=inv, rotary_dim=info.rotary_dim, rope_type=rope_type, self_check_error=worst,
                    layer_inv_freq=layer_freq)
    if fingerprint_key is not None:
        _ROPE_CACHE[fingerprint_key] = info
    return info


def _check_composable(caches: Sequence[KVCache]) -> int:
    if len(caches) < 1:
        raise ValidationError("compose needs at least one cache")
    first = caches[0]
    s = first.meta.shared_len
    for c in caches[1:]:
        if c.meta.fingerprint != first.meta.fingerprint:
            raise FingerprintMismatch(
                f"caches {first.cache_id} and {c.cache_id} were built by different models: "
                f"{first.meta.fingerprint.describe_differences(c.meta.fingerprint)}",
                first.meta.fingerprint.differences(c.meta.fingerprint),
            )
        if c.meta.shared_len != s or c.token_ids[:s] != first.token_ids[:s]:
            raise ValidationError(
                f"caches {first.cache_id} and {c.cache_id} do not share a template head and preamble; build them with "
                "the same chat template, template_kwargs and MemoryFormat"
            )
    seen: set[str] = set()
    for c in caches:
        ids = set(c.meta.source_ids)
        if seen & ids:
            raise ValidationError(f"memories {sorted(seen & ids)} appear in more than one cache")
        seen |= ids
    return s


def _layout(caches: Sequence[KVCache], s: int) -> tuple[list[int], list[Segment], list[int]]:
    tokens = list(caches[0].token_ids)
    segments = list(caches[0].meta.segments)
    starts = [0]
    for c in caches[1:]:
        start = len(tokens)
        starts.append(start)
        shift = start - s
        segments += [Segment(item_id=g.item_id, start=g.start + shift, end=g.end + shift) for g in c.meta.segments]
        tokens += c.token_ids[s:]
    return tokens, segments, starts


def _concat_layers(caches: Sequence[KVCache], s: int, starts: list[int], rope: RopeInfo | None) -> list:
    import torch

    device = caches[0].layers[0][0].device
    out = []
    for li in range(caches[0].meta.num_layers):
        ks = [caches[0].layers[li][0].to(device)]
        vs = [caches[0].layers[li][1].to(device)]
        for c, start in zip(caches[1:], starts[1:]):
            k, v = c.layers[li]
            k, v = k[:, :, s:].to(device), v[:, :, s:].to(device)
            if rope is not None:
                k = rerotate_keys(k, start - s, rope, li)
            ks.append(k)
            vs.append(v)
        out.append((torch.cat(ks, dim=-2).contiguous(), torch.cat(vs, dim=-2).contiguous()))
    return out


def compose(
    model: Any,
    caches: Sequence[KVCache],
    *,
    mode: Mode = "recompute",
    tokenizer: Any = None,
    fingerprinter: Fingerprinter | None = None,
) -> KVCache:
    """One cache holding ``caches`` in order (see module docs for exactness). The inputs are not modified.

    The caches must come from the current model (checked against ``fingerprinter`` or ``tokenizer``:
    :class:`FingerprintMismatch`), share their head/preamble and not repeat a memory (:class:`ValidationError`).
    """
    import torch
    from transformers import DynamicCache

    s = _check_composable(caches)
    if fingerprinter is None:
        if tokenizer is None:
            raise ValidationError("compose needs the tokenizer (or a Fingerprinter) to check the caches' fingerprint")
        fingerprinter = Fingerprinter(model, tokenizer)
    fp = fingerprinter()
    if caches[0].meta.fingerprint != fp:
        raise FingerprintMismatch(
            f"cache {caches[0].cache_id} was built by another model: {caches[0].meta.fingerprint.describe_differences(fp)}",
            caches[0].meta.fingerprint.differences(fp),
        )
    if len(caches) == 1:
        return caches[0]
    tokens, segments, starts = _layout(caches, s)
    sources = [src for c in caches for src in c.meta.sources]
    common = dict(shared_len=s, segments=segments, sources=sources, memory_format=caches[0].meta.memory_format,
                  composed_from=[c.cache_id for c in caches])
    t0 = time.perf_counter()
    if mode == "recompute":
        base = caches[0]
        device = model_device(model)
        regime = rope_regime(model, len(tokens))
        with torch.no_grad():
            if base.meta.rope_regime == regime:
                past = DynamicCache([(k.to(device), v.to(device)) for k, v in base.layers])
                _, dyn = prefix_forward(model, tokens[len(base):], past=past, past_len=len(base))
            else:  # the first cache's RoPE frequencies are not the composite's: recompute everything
                _, dyn = prefix_forward(model, tokens, past=DynamicCache(), past_len=0)
        layers = cache_tensors(dyn)
        return make_cache(fp, tokens, layers, exact=all(c.meta.exact for c in caches), rope_regime=regime,
                          approximation=None if all(c.meta.exact for c in caches) else "composed from approximate caches",
                          build_seconds=time.perf_counter() - t0, **common)
    if mode == "rerotate":
        rope = rope_for(model, fp.key)
        layers = _concat_layers(caches, s, starts, rope)
        return make_cache(
            fp, tokens, layers, exact=False,
            approximation=f"rerotate: pieces of caches 2..{len(caches)} moved to their positions by RoPE rotation; "
                          "they did not attend to earlier caches' pieces",
            build_seconds=time.perf_counter() - t0, **common,
        )
    raise ValidationError(f"mode must be 'recompute' or 'rerotate', not {mode!r}")


@dataclass
class CompositionError:
    """How far generation from a composed cache is from a full recompute of the same tokens."""

    mode: str
    exact: bool
    max_abs_logit_diff: float
    rel_logit_diff: float
    kl_divergence: float
    top1_match: bool
    tokens_identical: bool
    matching_prefix_tokens: int
    new_tokens: int


def composition_error(
    model: Any,
    tokenizer: Any,
    caches: Sequence[KVCache],
    suffix_ids: Sequence[int],
    *,
    modes: Sequence[str] = ("recompute", "rerotate", "naive"),
    max_new_tokens: int = 16,
) -> list[CompositionError]:
    """Compare each composition mode against a full prefill of ``composite tokens + suffix_ids``.

    Reports the first-token logits' max absolute and relative difference, the KL divergence of the
    first-token distributions (reference || composed), and whether greedy tokens agree. ``"naive"`` is plain
    concatenation without re-rotation (upstream MemOS's behaviour), included for comparison only.
    """
    import torch

    from .generation import SamplingParams, generate

    s = _check_composable(caches)
    fper = Fingerprinter(model, tokenizer)
    tokens, segments, starts = _layout(caches, s)
    prompt = tokens + list(suffix_ids)
    params = SamplingParams(max_new_tokens=max_new_tokens, ignore_eos=True)
    ref = generate(model, tokenizer, prompt, None, params, keep_first_logits=True)
    out = []
    for mode in modes:
        if mode == "naive":
            fp = fper()
            layers = _concat_layers(caches, s, starts, None)
            composed = make_cache(fp, tokens, layers, shared_len=s, segments=segments, exact=False, approximation="naive concatenation")
        else:
            composed = compose(model, caches, mode=mode, fingerprinter=fper)  # type: ignore[arg-type]
        res = generate(model, tokenizer, prompt, composed, params, fingerprinter=fper, keep_first_logits=True)
        a, b = ref.first_logits[0].double(), res.first_logits[0].double()
        kl = float(torch.sum(torch.softmax(a, -1) * (torch.log_softmax(a, -1) - torch.log_softmax(b, -1))))
        match = 0
        for x, y in zip(ref.token_ids, res.token_ids):
            if x != y:
                break
            match += 1
        out.append(
            CompositionError(
                mode=mode,
                exact=composed.meta.exact,
                max_abs_logit_diff=float((a - b).abs().max()),
                rel_logit_diff=float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)),
                kl_divergence=max(kl, 0.0),
                top1_match=int(a.argmax()) == int(b.argmax()),
                tokens_identical=ref.token_ids == res.token_ids,
                matching_prefix_tokens=match,
                new_tokens=len(ref.token_ids),
            )
        )
    return out
