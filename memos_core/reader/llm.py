"""LLM MemReader: conversation turns -> candidate facts -> ADD / UPDATE / DELETE / NOOP against the store.

Pipeline for one ``add``:

1. **Extract.** Turns are sent in batches (``batch_turns`` / ``batch_chars``) with the prompt in
   :mod:`.prompts`; the reply must be JSON matching :class:`Extraction`. Each fact cites the turns that state
   it; provenance links the memory to those turn ids.
2. **Dedup.** Candidates that duplicate each other merge; a candidate that duplicates (exactly or nearly, see
   :mod:`.dedup`) an existing memory becomes a NOOP without asking the model: the memory keeps its content and
   gains the new source turns in its provenance.
3. **Decide.** For the rest, similar existing memories (same user/agent scope, not episodes) are retrieved and
   the model chooses per fact: ``ADD`` (optionally ``supersedes`` memories it makes untrue), ``UPDATE``
   (a new version; history kept), ``DELETE`` (a tombstone) or ``NOOP``. Facts with no similar memory are added
   without a call.
4. **Apply.** A contradicted memory is never erased: its ``valid_until`` is set to the new fact's time and it
   records ``superseded_by``. Every change goes through the cube, so it is versioned and audited.

Robustness, which the tests pin down:

* A reply is parsed leniently: code fences, ``<think>`` blocks, prose around the JSON, trailing commas and
  truncated output (cut at the last complete element) are repaired.
* An unusable reply (malformed, wrong schema, empty, or the model raising) is retried with the error shown to
  the model, at most ``max_retries`` times per request, and never more than ``max_llm_calls`` calls per add.
* If extraction still fails, the batch's raw turns are stored as episodes (like the offline reader) and the
  failure is listed in :attr:`AddResult.errors`; if a decision fails, its facts are added as new memories and
  that is reported too. An add never reports success with nothing stored.

The pipeline is written once, as a generator that yields :class:`LLMRequest` objects and receives replies, so
the sync driver (:meth:`LLMReader.read`) and the native async one (:meth:`LLMReader.aread`, which awaits the
model and runs store work in a thread) share every rule.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generator, Literal, Protocol, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..log import Progress, get_logger
from ..errors import MemOSError, ValidationError
from ..items import MemoryItem, MemoryKind, Provenance, SourceKind, new_id, to_utc
from . import prompts
from .dedup import DEFAULT_NEAR_THRESHOLD, is_duplicate, merge_provenance
from .offline import OfflineReader, Turn

__all__ = [
    "AddResult",
    "LLMReader",
    "LLMRequest",
    "ChatModel",
    "MemoryStore",
    "Extraction",
    "ExtractedFact",
    "Decision",
    "Decisions",
    "ParseError",
    "parse_json",
]

log = get_logger(__name__)

EXTRACTOR = "reader.llm/1"
_FACT_KINDS = {k.value for k in MemoryKind} - {MemoryKind.EPISODE.value, MemoryKind.DOCUMENT.value}


# ---------------------------------------------------------------------------------------------- results
class AddResult(BaseModel):
    """What an add did. ``ok`` is true only when nothing went wrong.

    * ``added``: new memories (facts, or episodes in offline mode / after a failed extraction);
    * ``updated``: new versions written: UPDATEs, and memories whose validity a contradiction ended
      (those ids are also in ``superseded``);
    * ``deleted``: ids tombstoned (recoverable with ``restore`` until purged);
    * ``unchanged``: existing memories the input repeated (NOOP / duplicates). Their content is unchanged; when
      the input came from turns they did not cite yet, their provenance gains those turn ids (a new version);
    * ``errors``: every failure, in words (extraction fell back to episodes, a decision fell back to ADD, an
      operation the store refused ...);
    * ``llm_calls``: model calls made (retries included).
    """

    model_config = ConfigDict(extra="forbid")

    added: list[MemoryItem] = Field(default_factory=list)
    updated: list[MemoryItem] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    unchanged: list[str] = Field(default_factory=list)
    superseded: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    llm_calls: int = 0
    mode: Literal["offline", "llm"] = "offline"
    cube: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.deleted)


# ---------------------------------------------------------------------------------------------- schemas
class ExtractedFact(BaseModel):
    """One fact as the extraction prompt asks for it."""

    text: str
    kind: Literal["fact", "preference", "profile", "procedure"] = "fact"
    turns: list[str] = Field(default_factory=list)
    event_time: str | None = None


class Extraction(BaseModel):
    facts: list[ExtractedFact] = Field(default_factory=list)


class Decision(BaseModel):
    fact: str
    op: Literal["ADD", "UPDATE", "DELETE", "NOOP"]
    target: str | None = None
    text: str | None = None
    supersedes: list[str] = Field(default_factory=list)


class Decisions(BaseModel):
    decisions: list[Decision] = Field(default_factory=list)


class ParseError(ValueError):
    """A model reply that cannot be used; the message is shown to the model when it is asked again."""


# ---------------------------------------------------------------------------------------------- JSON repair
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S | re.I)
_FENCE = re.compile(r"```[a-zA-Z]*\s*\n?(.*?)```", re.S)
_CLOSE = {"{": "}", "[": "]"}


def _strip_trailing_commas(s: str) -> str:
    out: list[str] = []
    in_str = esc = False
    for ch in s:
        if in_str:
            out.append(ch)
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "}]":
            j = len(out) - 1
            while j >= 0 and out[j].isspace():
                j -= 1
            if j >= 0 and out[j] == ",":
                del out[j]
        out.append(ch)
    return "".join(out)


def _loads(s: str) -> Any:
    return json.loads(_strip_trailing_commas(s))


def parse_json(reply: Any) -> Any:
    """Parse a model reply into JSON, repairing what is safe to repair.

    Accepts an already-parsed dict/list (structured output). Strips ``<think>`` blocks, code fences and prose
    around the JSON; drops trailing commas; closes output truncated mid-way at the last complete element.
    Raises :class:`ParseError` when nothing usable is left.
    """
    if isinstance(reply, (dict, list)):
        return reply
    if isinstance(reply, BaseModel):
        return reply.model_dump()
    if reply is None:
        raise ParseError("the answer was empty")
    if not isinstance(reply, str):
        raise ParseError(f"expected text, got {type(reply).__name__}")
    text = _THINK.sub("", reply).strip()
    if not text:
        raise ParseError("the answer was empty")
    m = _FENCE.search(text)
    if m:
        text = m.group(1).strip()
    elif text.startswith("```"):  # an opening fence whose closing one was cut off
        text = text.split("\n", 1)[1] if "\n" in text else ""
    try:
        return _loads(text)
    except ValueError:
        pass
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise ParseError("the answer contains no JSON object")
    s = text[min(starts):]
    stack: list[str] = []
    cuts: list[tuple[int, str]] = []  # (cut position, closers needed there)
    in_str = esc = False
    for i, ch in enumerate(s):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]":
            if not stack or _CLOSE[stack[-1]] != ch:
                raise ParseError(f"unbalanced {ch!r} at character {i}")
            stack.pop()
            if not stack:
                try:
                    return _loads(s[:i + 1])
                except ValueError as exc:
                    raise ParseError(f"invalid JSON: {exc}") from None
            cuts.append((i + 1, "".join(_CLOSE[c] for c in reversed(stack))))
        elif ch == ",":
            cuts.append((i, "".join(_CLOSE[c] for c in reversed(stack))))
    # truncated: close at the latest cut that yields valid JSON (drops only the unfinished element)
    for pos, closers in reversed(cuts):
        try:
            return _loads(s[:pos] + closers)
        except ValueError:
            continue
    raise ParseError("the JSON is truncated before its first complete element")


# ---------------------------------------------------------------------------------------------- models
@dataclass
class LLMRequest:
    """One model call the pipeline wants made."""

    purpose: Literal["extract", "decide"]
    messages: list[dict[str, str]]
    schema: type[BaseModel]
    attempt: int = 0


def _reply_text(resp: Any) -> Any:
    """Text (or parsed JSON) out of whatever a model returned."""
    if resp is None or isinstance(resp, (str, dict, list)):
        return resp
    content = getattr(resp, "content", None)  # LangChain AIMessage
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content blocks
        parts = [b if isinstance(b, str) else b.get("text", "") for b in content
                 if isinstance(b, str) or (isinstance(b, dict) and b.get("type", "text") == "text")]
        return "".join(parts)
    text = getattr(resp, "text", None)  # LlamaIndex CompletionResponse
    if callable(text):
        text = text()
    if isinstance(text, str):
        return text
    message = getattr(resp, "message", None)  # LlamaIndex ChatResponse
    if message is not None:
        return _reply_text(message)
    if isinstance(resp, BaseModel):  # a structured answer
        return resp
    raise ParseError(f"cannot read text from a {type(resp).__name__} reply")


def _run_coro(coro: Any) -> Any:
    """Run a coroutine from sync code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["v"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["e"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("v")


class _CallableChat:
    """The core's own convention: ``fn(messages) -> str | dict`` (``messages`` as ``[{"role", "content"}]``),
    sync or ``async``."""

    kind = "callable"

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.name = str(getattr(fn, "model_name", None) or getattr(fn, "model", None) or type(fn).__name__)

    def call(self, messages: Sequence[dict[str, str]], schema: type | None) -> Any:
        out = self.fn([dict(m) for m in messages])
        if inspect.isawaitable(out):
            out = _run_coro(out)
        return out

    async def acall(self, messages: Sequence[dict[str, str]], schema: type | None) -> Any:
        fn = self.fn
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
            return await fn([dict(m) for m in messages])
        out = await asyncio.to_thread(fn, [dict(m) for m in messages])
        if inspect.isawaitable(out):
            out = await out
        return out


class ChatModel:
    """One calling convention over whatever chat model the user has.

    The core itself knows one convention: a callable ``fn(messages) -> str | dict`` where ``messages`` is
    ``[{"role", "content"}, ...]``; it may be ``async``, and returning a dict/list skips JSON parsing. Framework
    models are converted by the adapter packages, which register their conversions in :mod:`memos_core._adapters`
    (loaded on first use): a LangChain chat model (any ``Runnable``) is called with ``[(role, text), ...]`` and,
    with ``structured="auto"``, its first attempt of each request uses ``with_structured_output(schema)`` when the
    model supports it (retries and unsupported models use plain JSON text); a LlamaIndex LLM is called with one
    prompt string (system, then user text).
    """

    def __init__(self, llm: Any, *, structured: Literal["auto", "off"] = "auto") -> None:
        from .._adapters import find_chat_model_adapter

        if isinstance(llm, ChatModel):
            llm = llm.llm
        self.llm = llm
        self.structured = structured
        convert = find_chat_model_adapter(llm)
        if convert is not None:
            self.backend = convert(llm)
        elif callable(llm):
            self.backend = _CallableChat(llm)
        else:
            raise ValidationError(
                f"llm: expected a LangChain chat model, a LlamaIndex LLM or a callable(messages) -> str; "
                f"got {type(llm).__name__}")
        self.kind: str = self.backend.kind
        self.name: str = self.backend.name

    def _schema(self, req: LLMRequest) -> type | None:
        """The schema to ask for structured output with: first attempts only, unless switched off."""
        return None if self.structured == "off" or req.attempt > 0 else req.schema

    # -- calls
    def call(self, req: LLMRequest) -> Any:
        return _reply_text(self.backend.call(req.messages, self._schema(req)))

    async def acall(self, req: LLMRequest) -> Any:
        return _reply_text(await self.backend.acall(req.messages, self._schema(req)))


# ---------------------------------------------------------------------------------------------- store
class MemoryStore(Protocol):
    """What the reader needs from where memories live (the facade binds a cube, a scope and an actor)."""

    def similar(self, text: str, k: int) -> list[MemoryItem]:
        """Live non-episode memories of exactly this scope that resemble ``text``, best first."""

    def get(self, item_id: str) -> MemoryItem: ...

    def add_many(self, specs: list[dict[str, Any]]) -> list[MemoryItem]: ...

    def update(self, item_id: str, *, reason: str, **fields: Any) -> MemoryItem: ...

    def delete(self, item_id: str, *, reason: str) -> MemoryItem: ...

    def now(self) -> datetime: ...


# ---------------------------------------------------------------------------------------------- reader
@dataclass
class _Candidate:
    text: str
    kind: str
    turns: list[Turn]
    event_time: datetime | None
    similar: list[MemoryItem] = field(default_factory=list)
    op: str | None = None
    target: MemoryItem | None = None
    new_text: str | None = None
    supersedes: list[MemoryItem] = field(default_factory=list)
    new_id: str | None = None


@dataclass
class _State:
    calls: int = 0


_OP_ALIASES = {"ADD": "ADD", "INSERT": "ADD", "CREATE": "ADD", "NEW": "ADD",
               "UPDATE": "UPDATE", "MODIFY": "UPDATE", "MERGE": "UPDATE",
               "DELETE": "DELETE", "REMOVE": "DELETE", "FORGET": "DELETE",
               "NOOP": "NOOP", "NONE": "NOOP", "NO_OP": "NOOP", "NO-OP": "NOOP", "SKIP": "NOOP", "KEEP": "NOOP",
               "SUPERSEDE": "SUPERSEDE", "CONTRADICT": "SUPERSEDE", "REPLACE": "SUPERSEDE"}


def _label(value: Any, prefix: str, table: dict[str, Any]) -> str | None:
    """Map ``"F2"``, ``"f2"``, ``2`` or ``"2"`` to a label of ``table`` (None when absent)."""
    if value is None or isinstance(value, bool):
        return None
    s = str(value).strip().strip("[]()")
    if s in table:
        return s
    if s.upper() in table:
        return s.upper()
    if s.isdigit() and f"{prefix}{int(s)}" in table:
        return f"{prefix}{int(s)}"
    return None


class LLMReader:
    """Turns conversations into memory operations with a chat model (see the module docstring).

    Parameters
    ----------
    llm:
        A LangChain ``BaseChatModel``, a LlamaIndex ``LLM``, or a callable ``fn(messages) -> str``.
    max_retries:
        Extra attempts per request after an unusable reply (so ``max_retries + 1`` calls at most).
    max_llm_calls:
        Hard bound on model calls per add, retries included. Work left when it is reached falls back
        (episodes for extraction, ADD for decisions) and is reported.
    batch_turns, batch_chars:
        How many turns (and characters) go into one extraction call.
    similar_k:
        Existing memories retrieved per candidate fact for the decision.
    decide_batch:
        Candidate facts per decision call.
    near_duplicate:
        Similarity at or above which a fact duplicates a memory (see :mod:`.dedup`).
    keep_episodes:
        Also store every turn as an episode (as the offline reader does), not only the extracted facts.
    structured:
        ``"auto"`` uses LangChain's ``with_structured_output`` on first attempts when the model supports it.
    progress:
        A progress bar over the turns read (tqdm, on stderr) when an add needs more than one extraction call:
        ``None`` (default) shows it in a terminal unless ``MEMOS_PROGRESS=0`` (see :mod:`memos_core.log`).
    """

    name = EXTRACTOR

    def __init__(self, llm: Any, *, max_retries: int = 2, max_llm_calls: int = 12, batch_turns: int = 20,
                 batch_chars: int = 12_000, similar_k: int = 4, decide_batch: int = 10,
                 near_duplicate: float = DEFAULT_NEAR_THRESHOLD, keep_episodes: bool = False,
                 structured: Literal["auto", "off"] = "auto", progress: bool | None = None) -> None:
        for nm, v, lo in (("max_retries", max_retries, 0), ("max_llm_calls", max_llm_calls, 1),
                          ("batch_turns", batch_turns, 1), ("batch_chars", batch_chars, 1),
                          ("similar_k", similar_k, 1), ("decide_batch", decide_batch, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValidationError(f"{nm} must be an integer >= {lo}")
        if not 0.0 < near_duplicate <= 1.0:
            raise ValidationError("near_duplicate must be within (0, 1]")
        self.model = ChatModel(llm, structured=structured)
        self.max_retries = max_retries
        self.max_llm_calls = max_llm_calls
        self.batch_turns = batch_turns
        self.batch_chars = batch_chars
        self.similar_k = similar_k
        self.decide_batch = decide_batch
        self.near_duplicate = near_duplicate
        self.keep_episodes = keep_episodes
        self.progress = progress
        self._offline = OfflineReader(context_turns=1)

    # ------------------------------------------------------------------ drivers
    def read(self, turns: Sequence[Turn], store: MemoryStore, *, user_name: str | None = None) -> AddResult:
        """Run the pipeline, calling the model synchronously."""
        gen = self.run(turns, store, user_name=user_name)
        reply: Any = None
        try:
            req = next(gen)
            while True:
                try:
                    reply = self.model.call(req)
                except Exception as exc:  # noqa: BLE001 - a failing model is retried, then reported
                    reply = exc
                req = gen.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def aread(self, turns: Sequence[Turn], store: MemoryStore, *, user_name: str | None = None) -> AddResult:
        """Run the pipeline natively async: the model is awaited, store work runs in a worker thread."""
        gen = self.run(turns, store, user_name=user_name)

        def step(value: Any, first: bool) -> tuple[bool, Any]:
            try:
                return False, (next(gen) if first else gen.send(value))
            except StopIteration as stop:
                return True, stop.value

        done, out = await asyncio.to_thread(step, None, True)
        while not done:
            try:
                reply = await self.model.acall(out)
            except Exception as exc:  # noqa: BLE001
                reply = exc
            done, out = await asyncio.to_thread(step, reply, False)
        return out  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ the pipeline
    def run(self, turns: Sequence[Turn], store: MemoryStore, *, user_name: str | None = None
            ) -> Generator[LLMRequest, Any, AddResult]:
        """The pipeline as a generator: yields requests, receives replies (text, parsed JSON or an exception)."""
        result = AddResult(mode="llm")
        st = _State()
        turns = list(turns)
        candidates: list[_Candidate] = []
        failed: list[list[Turn]] = []
        chunks = self._chunks(turns)
        with Progress(len(turns), "reading turns (LLM)", unit="turn", progress=self.progress,
                      minimum=len(turns) if len(chunks) > 1 else len(turns) + 1) as bar:
            for chunk in chunks:
                failed_chunk = yield from self._extract(chunk, user_name, st, candidates, result)
                if failed_chunk:
                    failed.append(chunk)
                bar.update(len(chunk))
        # raw turns: after a failed extraction always, otherwise when asked to keep episodes
        episode_turns = turns if self.keep_episodes else [t for c in failed for t in c]
        if episode_turns:
            self._store_episodes(episode_turns, store, result)
        candidates = self._merge_candidates(candidates)
        for c in candidates:
            c.similar = store.similar(c.text, self.similar_k)
            dup = next((m for m in c.similar if is_duplicate(m.content, c.text, self.near_duplicate)), None)
            if dup is not None:
                c.op, c.target = "NOOP", dup
        pending = [c for c in candidates if c.op is None and c.similar]
        for s in range(0, len(pending), self.decide_batch):
            batch = pending[s:s + self.decide_batch]
            mems: dict[str, MemoryItem] = {}
            for c in batch:
                for m in c.similar:
                    if m.id not in {x.id for x in mems.values()}:
                        mems[f"M{len(mems) + 1}"] = m
            facts_l = {f"F{i}": c for i, c in enumerate(batch, start=1)}
            msgs = prompts.decide_messages(
                [(lb, m.event_time, _show(m)) for lb, m in mems.items()],
                [(lb, c.event_time, c.text) for lb, c in facts_l.items()])
            decided, err = yield from self._ask(
                "decide", msgs, Decisions,
                lambda obj, f=facts_l, m=mems: self._parse_decisions(obj, f, m), st)
            if err is not None:
                result.errors.append(f"could not decide how {len(batch)} fact(s) relate to existing memories: "
                                     f"{err}; added them as new memories")
        for c in candidates:
            if c.op is None:
                c.op = "ADD"
        result.llm_calls = st.calls
        self._apply(candidates, store, result)
        return result

    # ------------------------------------------------------------------ steps
    def _extract(self, chunk: list[Turn], user_name: str | None, st: _State, candidates: list[_Candidate],
                 result: AddResult) -> Generator[LLMRequest, Any, bool]:
        """Extract one batch of turns into ``candidates``; True when it failed (its turns become episodes)."""
        labels = {f"T{i}": t for i, t in enumerate(chunk, start=1)}
        msgs = prompts.extract_messages([(lb, t.time, t.speaker, t.text) for lb, t in labels.items()],
                                        user_name=user_name)
        facts, err = yield from self._ask("extract", msgs, Extraction,
                                          lambda obj, labels=labels: self._parse_extraction(obj, labels), st)
        if err is not None:
            ids = [t.id for t in chunk if t.id]
            result.errors.append(
                f"extraction failed for {len(chunk)} turn(s) ({_ids(ids)}): {err}; "
                f"stored them as episodes instead")
            return True
        candidates.extend(facts)
        return False

    def _chunks(self, turns: Sequence[Turn]) -> list[list[Turn]]:
        out: list[list[Turn]] = []
        cur: list[Turn] = []
        size = 0
        for t in turns:
            if cur and (len(cur) >= self.batch_turns or size + len(t.text) > self.batch_chars):
                out.append(cur)
                cur, size = [], 0
            cur.append(t)
            size += len(t.text)
        if cur:
            out.append(cur)
        return out

    def _ask(self, purpose: Literal["extract", "decide"], messages: list[dict[str, str]], schema: type[BaseModel],
             parse: Any, st: _State) -> Generator[LLMRequest, Any, tuple[Any, str | None]]:
        """Ask until a reply parses: at most ``max_retries + 1`` attempts and within the per-add call budget."""
        msgs = messages
        last: str | None = None
        for attempt in range(self.max_retries + 1):
            if st.calls >= self.max_llm_calls:
                budget = f"the limit of {self.max_llm_calls} LLM calls per add was reached"
                return None, budget + (f" (last error: {last})" if last else "")
            st.calls += 1
            reply = yield LLMRequest(purpose, msgs, schema, attempt)
            if isinstance(reply, BaseException):
                last = f"the model raised {type(reply).__name__}: {reply}"
                log.warning("MemReader %s call failed: %s", purpose, last)
                continue  # same messages again
            try:
                return parse(parse_json(reply)), None
            except ParseError as exc:
                last = str(exc)
                log.warning("MemReader %s reply unusable (attempt %d): %s", purpose, attempt + 1, last)
                raw = reply if isinstance(reply, str) else json.dumps(reply, default=str)[:2000]
                msgs = prompts.repair_messages(messages, raw, last)
        return None, f"no usable answer after {self.max_retries + 1} attempt(s) (last error: {last})"

    def _parse_extraction(self, obj: Any, labels: dict[str, Turn]) -> list[_Candidate]:
        if isinstance(obj, list):
            facts = obj
        elif isinstance(obj, dict):
            key = next((k for k in ("facts", "memories", "items") if k in obj), None)
            if key is not None:
                facts = obj[key]
            elif isinstance(obj.get("text"), str):
                facts = [obj]
            else:
                raise ParseError(f'expected {{"facts": [...]}}, got an object with keys {sorted(obj)[:6]}')
        else:
            raise ParseError(f'expected {{"facts": [...]}}, got {type(obj).__name__}')
        if facts is None:
            facts = []
        if not isinstance(facts, list):
            raise ParseError(f'"facts" must be a list, got {type(facts).__name__}')
        by_id = {t.id: t for t in labels.values() if t.id}
        out: list[_Candidate] = []
        problems: list[str] = []
        for i, f in enumerate(facts):
            if isinstance(f, str):
                f = {"text": f}
            if not isinstance(f, dict):
                problems.append(f"fact {i} is a {type(f).__name__}, not an object")
                continue
            text = next((f[k] for k in ("text", "fact", "content", "memory") if isinstance(f.get(k), str)), None)
            if text is None or not re.search(r"\w", text):  # also rejects the prompt's "..." placeholder
                problems.append(f'fact {i} has no usable "text"')
                continue
            kind = str(f.get("kind") or f.get("type") or "fact").strip().lower()
            kind = kind if kind in _FACT_KINDS else "fact"
            refs = f.get("turns", f.get("source_turns", f.get("sources", [])))
            refs = refs if isinstance(refs, list) else [refs]
            cited: list[Turn] = []
            for r in refs:
                lb = _label(r, "T", labels)
                t = labels[lb] if lb else by_id.get(str(r))
                if t is not None and t not in cited:
                    cited.append(t)
            cited = cited or list(labels.values())  # unknown support: link the whole batch, never nothing
            when = None
            raw_time = f.get("event_time") or f.get("date")
            if isinstance(raw_time, str) and raw_time.strip() and raw_time.strip().lower() not in ("null", "none"):
                try:
                    when = to_utc(raw_time.strip())
                except ValidationError:
                    when = None
            if when is None:
                times = [t.time for t in cited if t.time is not None]
                when = max(times) if times else None
            out.append(_Candidate(text=" ".join(text.split()), kind=kind, turns=cited, event_time=when))
        if problems and not out:
            raise ParseError("; ".join(problems[:3]))
        return out

    def _parse_decisions(self, obj: Any, facts: dict[str, _Candidate], mems: dict[str, MemoryItem]) -> None:
        if isinstance(obj, dict):
            key = next((k for k in ("decisions", "operations", "actions", "memory") if k in obj), None)
            if key is None and "op" in obj:
                items: Any = [obj]
            elif key is None:
                raise ParseError(f'expected {{"decisions": [...]}}, got an object with keys {sorted(obj)[:6]}')
            else:
                items = obj[key]
        elif isinstance(obj, list):
            items = obj
        else:
            raise ParseError(f'expected {{"decisions": [...]}}, got {type(obj).__name__}')
        if not isinstance(items, list):
            raise ParseError('"decisions" must be a list')
        plan: list[tuple[_Candidate, str, MemoryItem | None, str | None, list[MemoryItem]]] = []
        for i, d in enumerate(items):
            if not isinstance(d, dict):
                raise ParseError(f"decision {i} is not an object")
            fl = _label(d.get("fact", d.get("fact_id")), "F", facts)
            if fl is None and len(facts) == 1 and d.get("fact") is None:
                fl = "F1"
            if fl is None:
                raise ParseError(f"decision {i}: \"fact\" must be one of {', '.join(facts)}")
            op = _OP_ALIASES.get(str(d.get("op", d.get("event", d.get("operation", "")))).strip().upper())
            if op is None:
                raise ParseError(f"decision {i}: \"op\" must be ADD, UPDATE, DELETE or NOOP")
            raw_target = d.get("target", d.get("memory_id"))
            tl = _label(raw_target, "M", mems)
            if raw_target not in (None, "", "null") and tl is None:
                raise ParseError(f"decision {i}: target {raw_target!r} is not one of {', '.join(mems) or '(none)'}")
            if op in ("UPDATE", "DELETE", "SUPERSEDE") and tl is None:
                raise ParseError(f"decision {i}: {op} needs a \"target\" (one of {', '.join(mems)})")
            sup_raw = d.get("supersedes") or []
            sup_raw = sup_raw if isinstance(sup_raw, list) else [sup_raw]
            sup: list[MemoryItem] = []
            for s in sup_raw:
                sl = _label(s, "M", mems)
                if sl is None:
                    raise ParseError(f"decision {i}: supersedes {s!r} is not one of {', '.join(mems) or '(none)'}")
                sup.append(mems[sl])
            if op == "SUPERSEDE":
                op, sup = "ADD", [mems[tl]] + [m for m in sup if m.id != mems[tl].id]  # type: ignore[index]
                tl = None
            text = d.get("text")
            text = " ".join(text.split()) if isinstance(text, str) and text.strip() else None
            plan.append((facts[fl], op, mems[tl] if tl else None, text, sup))
        for cand, op, target, text, sup in plan:  # validated as a whole: apply only now
            if cand.op is not None:
                continue  # a second decision for the same fact: the first one wins
            cand.op, cand.target, cand.new_text, cand.supersedes = op, target, text, sup

    def _merge_candidates(self, cands: list[_Candidate]) -> list[_Candidate]:
        out: list[_Candidate] = []
        for c in cands:
            same = next((o for o in out if is_duplicate(o.text, c.text, self.near_duplicate)), None)
            if same is None:
                out.append(c)
            else:
                same.turns.extend(t for t in c.turns if t not in same.turns)
        return out

    def _provenance(self, turns: Sequence[Turn]) -> Provenance:
        speakers = {t.speaker for t in turns if t.speaker}
        sessions = [t.session_id for t in turns if t.session_id]
        return Provenance(source=SourceKind.CONVERSATION, source_ids=[t.id for t in turns if t.id],
                          session_id=sessions[0] if sessions else None,
                          speaker=speakers.pop() if len(speakers) == 1 else None, extractor=EXTRACTOR)

    def _store_episodes(self, turns: list[Turn], store: MemoryStore, result: AddResult) -> None:
        specs = self._offline.read(turns)
        try:
            result.added.extend(store.add_many(specs))
        except MemOSError as exc:
            result.errors.append(f"could not store {len(specs)} turn(s) as episodes: {exc}")

    def _apply(self, cands: list[_Candidate], store: MemoryStore, result: AddResult) -> None:
        adds = [c for c in cands if c.op == "ADD"]
        specs = []
        for c in adds:
            c.new_id = new_id()
            meta: dict[str, Any] = {}
            if c.supersedes:
                meta["supersedes"] = [m.id for m in c.supersedes]
            specs.append({"id": c.new_id, "content": c.text, "kind": c.kind, "event_time": c.event_time,
                          "provenance": self._provenance(c.turns), "metadata": meta})
        if specs:
            try:
                result.added.extend(store.add_many(specs))
            except MemOSError as exc:
                result.errors.append(f"could not store {len(specs)} new fact(s): {exc}")
                for c in adds:
                    c.op = "FAILED"
        # versions before tombstones, so an update and a delete of one memory end deleted
        for c in sorted(cands, key=lambda c: c.op == "DELETE"):
            try:
                self._apply_one(c, store, result)
            except MemOSError as exc:
                tid = c.target.id if c.target else "?"
                result.errors.append(f"{c.op} of memory {tid} (from {c.text!r}) failed: {exc}")

    def _apply_one(self, c: _Candidate, store: MemoryStore, result: AddResult) -> None:
        ids = [t.id for t in c.turns if t.id]
        if c.op == "ADD":
            for old in c.supersedes:
                cur = store.get(old.id)
                if cur.valid_until is not None:
                    continue
                until = c.event_time or store.now()
                new = store.update(cur.id, valid_until=until,
                                   metadata={**cur.metadata, "superseded_by": c.new_id},
                                   reason=f"superseded by {c.new_id} (turns {_ids(ids)})")
                result.updated.append(new)
                result.superseded.append(cur.id)
            return
        if c.target is None or c.op == "FAILED":
            return
        cur = store.get(c.target.id)
        if c.op == "UPDATE":
            prov = merge_provenance(cur.provenance, self._provenance(c.turns),
                                    parent_versions=[f"{cur.id}@{cur.version}"])
            prov = prov.model_copy(update={"extractor": EXTRACTOR})
            new = store.update(cur.id, content=c.new_text or c.text, provenance=prov,
                               reason=f"reader update from turns {_ids(ids)}")
            result.updated.append(new)
        elif c.op == "NOOP":
            if any(i not in cur.provenance.source_ids for i in ids):
                store.update(cur.id, provenance=merge_provenance(cur.provenance, self._provenance(c.turns)),
                             reason=f"dedup: also stated in turns {_ids(ids)}")
            if cur.id not in result.unchanged:
                result.unchanged.append(cur.id)
        elif c.op == "DELETE":
            store.delete(cur.id, reason=f"reader: retracted in turns {_ids(ids)} ({c.text!r})")
            result.deleted.append(cur.id)


def _ids(ids: Sequence[str | None]) -> str:
    real = [i for i in ids if i]
    if not real:
        return "no ids"
    return ", ".join(real[:5]) + (f" and {len(real) - 5} more" if len(real) > 5 else "")


def _show(m: MemoryItem) -> str:
    if m.valid_until is not None:
        return f"{m.content} (no longer true since {m.valid_until:%Y-%m-%d})"
    return m.content

