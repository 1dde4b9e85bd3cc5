"""From plaintext memories to training examples and held-out recall probes. Pure Python, no torch.

Each example is a ``(prompt, target)`` pair: the model is trained (and probed) on the log-likelihood of
``target`` given ``prompt``. Training examples for a memory ``s``:

* the statement itself (``prompt == ""``);
* framed restatements (``"Fact: " + s``, ``"Remember this: " + s``, ...);
* when the statement splits into a subject and a predicate (``"Ann's dog" | "is called Rex."``), question/answer
  forms (``"Question: What do you know about Ann's dog? Answer:" -> " Ann's dog is called Rex."``) and the
  completion form (``"Ann's dog" -> " is called Rex."``);
* optionally, variants written by an LLM: pass any callable ``prompt -> str`` as ``generator``.

Recall probes use a *disjoint* set of phrasings (:data:`PROBE_TEMPLATE_SET`), never seen in training. When the
statement splits, the probe target is the predicate -- the part that carries the fact -- conditioned on a
held-out framing that names the subject; otherwise it is the whole statement.

The subject/predicate split is a heuristic for English: the subject is everything before the first common verb
(``is``, ``has``, ``lives``, ``likes``, ...) when that leaves 1-8 words. Statements it cannot split still get the
statement and framed forms; so do texts of several sentences.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ..errors import ValidationError
from ..items import LifecycleState, MemoryItem

__all__ = [
    "Example",
    "PROBE_TEMPLATE_SET",
    "CONTROL_SENTENCES",
    "split_statement",
    "training_examples",
    "probe_examples",
    "generator_prompt",
    "parse_generated",
    "check_items",
]

PROBE_TEMPLATE_SET = "memos.heldout/1"

#: Generic sentences whose likelihood the recall probe tracks to show collateral drift.
CONTROL_SENTENCES: tuple[str, ...] = (
    "The sun rises in the east and sets in the west.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the window because the room was too warm.",
    "A week has seven days and a year has twelve months.",
    "Please remember to bring an umbrella if it rains tomorrow.",
    "The library closes at eight in the evening on weekdays.",
)

_VERBS = (
    "is are was were has have had will would can could should must does did do "
    "lives live lived works work worked likes like liked loves love loved prefers prefer preferred "
    "owns own owned uses use used plays play played speaks speak spoke studies study studied "
    "moved moves went goes got gets visited visits wants want wanted needs need needed hates hate hated "
    "enjoys enjoy enjoyed keeps keep kept drives drive drove teaches teach taught bought buys buy "
    "eats eat ate drinks drink drank runs run ran met meets started starts finished joined left leaves "
    "called named born belongs belong lost won wins writes wrote reads read knows knew "
    "takes took makes made became becomes stays stayed"
).split()
_VERB_RE = re.compile(r"\b(" + "|".join(_VERBS) + r")\b", re.IGNORECASE)
_INNER_BOUNDARY_RE = re.compile(r"[.!?;]\s+\S")

# Training framings: (prompt, uses the whole statement as target).
_TRAIN_FRAMES = ("Fact: ", "Remember this: ", "Here is what I know. ", "Note to self: ")
# Question/answer and completion forms need a subject.
_TRAIN_QA = (
    "Question: What do you know about {subj}? Answer:",
    "Q: Tell me about {subj}.\nA:",
)
# Held-out probe framings; none of these strings occurs in the training framings above.
_PROBE_SPLIT = (
    "As far as I remember, about {subj}: {subj}",
    "Someone asked me what is true of {subj}. I said that {subj}",
    "Here is one detail I can recall.\n{subj}",
    "Let me check my memory of {subj}... Yes: {subj}",
)
_PROBE_WHOLE = (
    "As far as I remember: ",
    "Someone asked me what I recall. I said: ",
    "Here is one detail I can recall.\n",
    "Let me check my memory... Yes: ",
)


@dataclass(frozen=True)
class Example:
    """One ``(prompt, target)`` pair. ``form`` is statement / framed / qa / completion / generated / probe."""

    item_id: str
    prompt: str
    target: str
    form: str


def _normalise(text: str) -> str:
    return " ".join(text.split())


def split_statement(text: str) -> tuple[str, str] | None:
    """Split ``"Ann's dog is called Rex."`` into ``("Ann's dog", "is called Rex.")``; ``None`` if no clean split."""
    text = _normalise(text)
    if _INNER_BOUNDARY_RE.search(text):
        return None  # several sentences: no single subject
    m = _VERB_RE.search(text)
    if not m or m.start() == 0:
        return None
    subj = text[: m.start()].strip().rstrip(",;:")
    pred = text[m.start() :].strip()
    words = subj.split()
    if not (1 <= len(words) <= 8) or not pred or len(pred.split()) < 2:
        return None
    if any(ch in subj for ch in ".?!\n"):
        return None
    return subj, pred


def check_items(items: Sequence[MemoryItem]) -> list[MemoryItem]:
    """Validate the memories an adapter is trained from: non-empty, unique ids, not deleted or purged."""
    if not items:
        raise ValidationError("no memories to train on: pass at least one MemoryItem")
    seen: set[str] = set()
    out: list[MemoryItem] = []
    for item in items:
        if not isinstance(item, MemoryItem):
            raise ValidationError(f"expected MemoryItem objects, got {type(item).__name__}")
        if item.id in seen:
            raise ValidationError(f"memory {item.id} is listed twice")
        if item.state in (LifecycleState.DELETED, LifecycleState.PURGED):
            raise ValidationError(f"memory {item.id} is {item.state.value}; it cannot be trained into an adapter")
        if not _normalise(item.content):
            raise ValidationError(f"memory {item.id} has empty content")
        seen.add(item.id)
        out.append(item)
    return out


def training_examples(
    items: Sequence[MemoryItem],
    *,
    paraphrases: bool = True,
    generator: Callable[[str], str] | None = None,
    generated_per_memory: int = 4,
) -> list[Example]:
    """Training examples for ``items`` (see the module docstring). Order is deterministic."""
    out: list[Example] = []
    for item in items:
        s = _normalise(item.content)
        out.append(Example(item.id, "", s, "statement"))
        if paraphrases:
            out.extend(Example(item.id, frame, s, "framed") for frame in _TRAIN_FRAMES)
            split = split_statement(s)
            if split:
                subj, pred = split
                out.extend(Example(item.id, t.format(subj=subj), " " + s, "qa") for t in _TRAIN_QA)
                out.append(Example(item.id, subj, " " + pred, "completion"))
        if generator is not None and generated_per_memory > 0:
            reply = generator(generator_prompt(s, generated_per_memory))
            if not isinstance(reply, str):
                raise ValidationError(f"the generator must return a str, got {type(reply).__name__}")
            out.extend(parse_generated(item.id, s, reply, generated_per_memory))
    return out


def probe_examples(items: Sequence[MemoryItem], per_memory: int = 3) -> list[Example]:
    """Held-out probes: ``per_memory`` phrasings per memory, none of them used in training."""
    out: list[Example] = []
    for item in items:
        s = _normalise(item.content)
        split = split_statement(s)
        if split:
            subj, pred = split
            out.extend(
                Example(item.id, t.format(subj=subj), " " + pred, "probe") for t in _PROBE_SPLIT[:per_memory]
            )
        else:
            out.extend(Example(item.id, t, s, "probe") for t in _PROBE_WHOLE[:per_memory])
    return out


def control_examples() -> list[Example]:
    return [Example("", "", s, "control") for s in CONTROL_SENTENCES]


def generator_prompt(statement: str, n: int) -> str:
    """The prompt sent to a generator callable for one memory."""
    return (
        "You help train a language model to remember a fact.\n"
        f'Fact: "{statement}"\n'
        f"Write {n} lines. Each line is either a paraphrase of the fact, or a question and its answer written as "
        '"Q: <question> A: <answer>". Keep every name, number and date exactly as in the fact. '
        "Write only the lines: no numbering, no commentary."
    )


_BULLET_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")
_QA_RE = re.compile(r"^\s*Q\s*[:.]\s*(?P<q>.+?)\s+A\s*[:.]\s*(?P<a>.+)$", re.IGNORECASE)


def parse_generated(item_id: str, statement: str, reply: str, limit: int) -> list[Example]:
    """Turn a generator's reply into examples. Blank, duplicate, over-long and unparseable lines are dropped."""
    out: list[Example] = []
    seen = {statement.lower()}
    max_len = max(200, 4 * len(statement))
    for raw in reply.splitlines():
        line = _normalise(_BULLET_RE.sub("", raw)).strip("\"' ")
        if not line or len(line) > max_len or line.lower() in seen:
            continue
        seen.add(line.lower())
        m = _QA_RE.match(line)
        if m:
            q, a = m.group("q").strip(), m.group("a").strip()
            if not q or not a:
                continue
            out.append(Example(item_id, f"Question: {q} Answer:", " " + a, "generated"))
        elif not line.lower().startswith(("q:", "a:")):
            out.append(Example(item_id, "", line, "generated"))
        if len(out) >= limit:
            break
    return out


def count_forms(examples: Iterable[Example]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ex in examples:
        counts[ex.form] = counts.get(ex.form, 0) + 1
    return dict(sorted(counts.items()))
