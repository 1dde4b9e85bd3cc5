"""Generation with an injected KV cache: the same tokens as from the full prompt, without its prefill.

Contract (what the tests check on Llama- and Qwen2-family models, fp32):

* With ``cache`` covering the first ``len(cache)`` ids of ``input_ids``, generation computes only the
  remaining ids (at positions ``len(cache)…``, attention mask over cache + new tokens) and then decodes.
  Greedy tokens equal those of a full-prompt run and the first-token logits agree within 1e-4.
* The cache is copied into a fresh ``transformers.DynamicCache`` for every call (:meth:`KVCache.dynamic_cache`),
  so the stored tensors are never changed and the tenth call behaves exactly like the first.
* A cache whose token ids are not a prefix of ``input_ids`` raises :class:`ValidationError`; a cache built
  by another model/tokenizer/adapter raises :class:`FingerprintMismatch`. Neither ever falls back silently.
* If the cache covers the whole prompt, its last token is recomputed (logits are needed to pick the first
  new token); the cache is still reused for everything before it.
* Models whose RoPE frequencies depend on the sequence length (``dynamic``, ``longrope``): a cache computed in
  another frequency regime than the prompt's (e.g. a 142-token memory prefix in Phi-3's short regime, a
  186-token prompt in its long regime) is not used; the whole prompt is computed and ``result.notes`` says so.
  See :mod:`memos_core.activation.rope`.
* ``input_ids`` is one prompt: a list of ints, a 1-D tensor or a ``[1, n]`` tensor. A batch of several
  prompts raises :class:`ValidationError` (batch size 1).

Sampling: ``temperature == 0`` is greedy; otherwise temperature, top-k and top-p (nucleus) sampling, seeded
by ``seed`` when given. Generation stops at an end-of-sequence id (the model's generation config and the
tokenizer's), at ``max_new_tokens``, or at the first occurrence of a ``stop`` string (which is not returned).
Batch size is 1.

Constrained decoding: with ``json_schema`` set, each step picks only among the tokens that keep the reply a
prefix of a JSON document valid for that schema, and ends only when the document is complete (see
:mod:`memos_core.activation.constrained`; needs ``lm-format-enforcer``). Without it the loop is unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ValidationError
from .errors import FingerprintMismatch
from .fingerprint import Fingerprinter
from .kvcache import KVCache, model_device, prefix_forward
from .rope import rope_regime

__all__ = ["SamplingParams", "GenerationResult", "GenerationStream", "generate", "stream", "prefill", "eos_token_ids", "as_token_ids"]


class SamplingParams(BaseModel):
    """Decoding settings. Defaults: greedy, up to 256 new tokens."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(default=256, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    ignore_eos: bool = False
    #: a JSON Schema (dict) the reply must follow: constrained decoding, see :mod:`.constrained`
    json_schema: dict[str, Any] | None = None


@dataclass
class GenerationResult:
    """What one generation produced and how. ``cached_tokens`` came from the KV cache, ``prefill_tokens``
    were computed at call time; ``ttft_s`` is the time from the call to the first new token."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_tokens: int = 0
    ttft_s: float | None = None
    total_s: float | None = None
    cache_id: str | None = None
    cache_exact: bool | None = None
    cache_origin: str | None = None
    memory_ids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    first_logits: Any = field(default=None, repr=False)


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids from the model's generation config and the tokenizer."""
    out: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            out.add(value)
        elif isinstance(value, (list, tuple)):
            out.update(int(v) for v in value)
    return out


def as_token_ids(input_ids: Any) -> list[int]:
    """One prompt's token ids as a list of ints: accepts a sequence of ints, a 1-D tensor/array or a batch of
    one (``[1, n]``). A batch of several prompts raises :class:`ValidationError`."""
    shape = getattr(input_ids, "shape", None)
    if shape is not None:
        if len(shape) == 2:
            if shape[0] != 1:
                raise ValidationError(
                    f"generation with a KV cache runs batch size 1; got a batch of {shape[0]} prompts ({tuple(shape)}): "
                    "call it once per prompt"
                )
            input_ids = input_ids[0]
        elif len(shape) != 1:
            raise ValidationError(f"input_ids must be one prompt of token ids (batch size 1), got shape {tuple(shape)}")
        return [int(i) for i in input_ids.tolist()]
    ids = list(input_ids)
    if ids and not isinstance(ids[0], (int,)) and hasattr(ids[0], "__len__"):
        if len(ids) != 1:
            raise ValidationError(
                f"generation with a KV cache runs batch size 1; got a batch of {len(ids)} prompts: call it once per prompt"
            )
        ids = list(ids[0])
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            try:
                i = int(i)  # numpy / torch scalars
            except (TypeError, ValueError):
                raise ValidationError(f"input_ids must be token ids (ints), got {type(i).__name__}") from None
        out.append(i)
    return out


def _check_cache(model: Any, tokenizer: Any, input_ids: Sequence[int], cache: KVCache, fingerprinter: Fingerprinter | None) -> None:
    fp = (fingerprinter or Fingerprinter(model, tokenizer))()
    if fp != cache.meta.fingerprint:
        raise FingerprintMismatch(
            f"KV cache {cache.cache_id} was built by another model: {cache.meta.fingerprint.describe_differences(fp)}. "
            "Rebuild it for this model.",
            cache.meta.fingerprint.differences(fp),
        )
    n = len(cache)
    if list(input_ids[:n]) != cache.token_ids:
        raise ValidationError(
            f"the prompt does not start with the {n} tokens of KV cache {cache.cache_id}; build the prompt with "
            "the same memories, memory format and chat template (or use LocalLLM, which matches prefixes for you)"
        )


def prefill(
    model: Any,
    input_ids: Sequence[int],
    cache: KVCache | None = None,
    *,
    tokenizer: Any = None,
    fingerprinter: Fingerprinter | None = None,
    notes: list[str] | None = None,
) -> tuple[Any, Any, int]:
    """Compute the prompt: returns (last-token logits ``[1, vocab]``, the live DynamicCache, tokens reused).

    With ``cache``, its tokens are reused (after the fingerprint and prefix checks) and only the rest runs,
    unless the cache was computed in another RoPE frequency regime than the prompt needs: then the whole
    prompt runs (exact) and a line is appended to ``notes``.
    """
    input_ids = as_token_ids(input_ids)
    if not input_ids:
        raise ValidationError("the prompt is empty")
    if cache is None:
        logits, past = prefix_forward(model, input_ids)
        return logits, past, 0
    if tokenizer is None and fingerprinter is None:
        raise ValidationError("prefill with a cache needs the tokenizer (or a Fingerprinter) to check the fingerprint")
    _check_cache(model, tokenizer, input_ids, cache, fingerprinter)
    reuse = min(len(cache), len(input_ids) - 1)
    wanted = rope_regime(model, len(input_ids))
    if reuse and cache.meta.rope_regime != wanted:
        if notes is not None:
            notes.append(
                f"KV cache {cache.cache_id} not used: its RoPE frequencies ({cache.meta.rope_regime}) differ from "
                f"those of a {len(input_ids)}-token prompt ({wanted}); the whole prompt was computed"
            )
        reuse = 0
    if reuse == 0:
        logits, past = prefix_forward(model, input_ids)
        return logits, past, 0
    past = cache.dynamic_cache(model, reuse)
    logits, past = prefix_forward(model, input_ids[reuse:], past=past, past_len=reuse)
    return logits, past, reuse


def _vocab_size(model: Any) -> int:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(out, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(model.config.get_text_config().vocab_size if hasattr(model.config, "get_text_config")
               else model.config.vocab_size)


def _pick(logits: Any, params: SamplingParams, generator: Any) -> int:
    import torch

    row = logits[0]
    if params.temperature <= 0.0:
        return int(torch.argmax(row))
    scores = row.float() / params.temperature
    if params.top_k and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        drop = probs.cumsum(-1) - probs > params.top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def _stop_hold(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might begin a stop string and must be held back while streaming."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold


class GenerationStream:
    """An iterator of text pieces; :attr:`result` is complete once iteration ends.

    Text is released as soon as it can no longer become part of a stop string or of an incomplete UTF-8
    character. Breaking out of the loop early is safe (call :meth:`close` to finish the result's timing).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        input_ids: Sequence[int],
        cache: KVCache | None = None,
        params: SamplingParams | None = None,
        *,
        fingerprinter: Fingerprinter | None = None,
        keep_first_logits: bool = False,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.input_ids = as_token_ids(input_ids)
        self.cache = cache
        self.params = params or SamplingParams()
        self.fingerprinter = fingerprinter
        self.keep_first_logits = keep_first_logits
        self.result = GenerationResult(prompt_tokens=len(self.input_ids))
        #: ``time.perf_counter()`` when generation began (first iteration); ``result.ttft_s`` counts from here
        self.started_at: float | None = None
        if cache is not None:
            self.result.cache_id, self.result.cache_exact = cache.cache_id, cache.meta.exact
        self._iter = self._run()

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()

    def tokens(self) -> Iterator[int]:
        """Iterate over token ids instead of text (the result is filled in the same way)."""
        for _ in self:
            pass
        yield from self.result.token_ids

    def _run(self) -> Iterator[str]:
        import torch

        p, res = self.params, self.result
        eos = set() if p.ignore_eos else eos_token_ids(self.model, self.tokenizer)
        constraint = None
        if p.json_schema is not None:  # built before the clock starts: the vocabulary table is a one-off cost
            from .constrained import JSONSchemaConstraint

            if p.ignore_eos:
                raise ValidationError("json_schema and ignore_eos cannot be combined: the reply ends when the JSON does")
            constraint = JSONSchemaConstraint(self.tokenizer, p.json_schema, vocab_size=_vocab_size(self.model),
                                              eos_ids=sorted(eos))
        t0 = self.started_at = time.perf_counter()
        generator = None
        if p.temperature > 0 and p.seed is not None:
            generator = torch.Generator(device=model_device(self.model))
            generator.manual_seed(p.seed)
        emitted = 0
        text = ""
        try:
            logits, past, reused = prefill(
                self.model, self.input_ids, self.cache, tokenizer=self.tokenizer, fingerprinter=self.fingerprinter,
                notes=res.notes,
            )
            res.cached_tokens, res.prefill_tokens = reused, len(self.input_ids) - reused
            if self.keep_first_logits:
                res.first_logits = logits.detach().float().cpu()
            pos = len(self.input_ids)
            res.finish_reason = "length"
            for step in range(p.max_new_tokens):
                if constraint is not None:
                    logits = constraint.mask(logits, res.token_ids)
                tok = _pick(logits, p, generator)
                if step == 0:
                    res.ttft_s = time.perf_counter() - t0
                if tok in eos:
                    res.finish_reason = "eos"
                    break
                res.token_ids.append(tok)
                text = self.tokenizer.decode(res.token_ids, skip_special_tokens=True)
                cut = min((text.find(s) for s in p.stop if s and s in text), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    res.finish_reason = "stop"
                    break
                safe = len(text) - _stop_hold(text, p.stop)
                while safe > emitted and text[safe - 1] == "\ufffd":
                    safe -= 1
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
                if step == p.max_new_tokens - 1:
                    break
                logits, past = prefix_forward(self.model, [tok], past=past, past_len=pos)
                pos += 1
            res.text = text
            if len(text) > emitted:
                yield text[emitted:]
        finally:
            res.text = text
            res.total_s = time.perf_counter() - t0


def stream(
    model: Any,
    tokenizer: Any,
    input_ids: Sequence[int],
    cache: KVCache | None = None,
    params: SamplingParams | None = None,
    **kwargs: Any,
) -> GenerationStream:
    """Stream text pieces; see :class:`GenerationStream`. Nothing runs until you iterate."""
    return GenerationStream(model, tokenizer, input_ids, cache, params, **kwargs)


def generate(
    model: Any,
    tokenizer: Any,
    input_ids: Sequence[int],
    cache: KVCache | None = None,
    params: SamplingParams | None = None,
    **kwargs: Any,
) -> GenerationResult:
    """Generate to completion and return the :class:`GenerationResult`."""
    s = GenerationStream(model, tokenizer, input_ids, cache, params, **kwargs)
    for _ in s:
        pass
    return s.result
