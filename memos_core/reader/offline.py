"""Offline MemReader: conversation turns -> episodic memories, no LLM needed.

Every turn becomes one ``episode`` memory whose

* ``content`` is ``"<speaker>: <text>"`` (what a prompt shows),
* ``event_time`` is the turn's time (or its session's date): temporal questions depend on it,
* ``provenance`` points at the turn id, the session and the speaker (``extractor = "reader.offline/1"``),
* ``index_text`` (what retrieval indexes) adds cheap enrichments that measurably help recall:
  the date in words, relative dates resolved against the turn's date ("yesterday" -> the actual day), and the
  previous turn as context, since answers often only make sense next to the question they reply to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping, Sequence

from ..errors import ValidationError
from ..items import MemoryKind, SourceKind, check_text, to_utc
from ..plaintext.lexical import STOPWORDS as _STOP

__all__ = ["Turn", "OfflineReader", "resolve_relative_dates", "coerce_turns", "reply_context", "turn_act",
           "ACT_WEIGHTS", "topic_text", "dense_text", "dense_variant", "split_index_text", "tagged"]

EXTRACTOR = "reader.offline/1"
_CONTEXT_CHARS = 240
_CONTEXT_GAP_S = 6 * 3600  # a previous turn said longer ago than this is not "in reply to" context


@dataclass
class Turn:
    """One conversation turn as the core understands it (adapters translate framework messages to this)."""

    text: str
    speaker: str | None = None
    id: str | None = None
    time: datetime | None = None
    session_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise ValidationError(f"turn text must be a string, got {type(self.text).__name__}")
        _check_turn_text(self)
        if self.time is not None and not isinstance(self.time, datetime):
            self.time = to_utc(self.time, field="turn time")
        elif self.time is not None:
            self.time = to_utc(self.time)


def _check_turn_text(t: Turn) -> None:
    """Text, speaker, id and session of a turn: strings that UTF-8 can store (no lone surrogates), so that
    nothing derived from them later (turn ids are hashes of them) fails with an untyped error."""
    check_text(t.text, "turn text")
    for name in ("speaker", "id", "session_id"):
        val = getattr(t, name)
        if val is not None:
            check_text(val, f"turn {name}")


def coerce_turns(messages: Any, *, session_id: str | None = None, timestamp: Any = None) -> list[Turn]:
    """Accept a string, a dict (``{"role"|"speaker", "content"|"text", "id", "time"|"date"}``), a :class:`Turn`,
    or a list of them. Raises :class:`ValidationError` on anything else or on empty text."""
    if isinstance(messages, (str, Mapping, Turn)):
        messages = [messages]
    if not isinstance(messages, Sequence) or isinstance(messages, (bytes, bytearray)):
        raise ValidationError("messages must be a string, a dict, a Turn, or a list of them")
    default_time = to_utc(timestamp, field="timestamp") if timestamp is not None else None
    out: list[Turn] = []
    for i, m in enumerate(messages):
        if isinstance(m, Turn):
            t = Turn(m.text, m.speaker, m.id, m.time, m.session_id, dict(m.metadata))
        elif isinstance(m, str):
            t = Turn(text=m)
        elif isinstance(m, Mapping):
            text = m.get("content", m.get("text"))
            if not isinstance(text, str):
                raise ValidationError(f"message {i}: 'content' (or 'text') must be a string")
            when = m.get("time", m.get("date", m.get("timestamp")))
            t = Turn(text=text, speaker=m.get("speaker", m.get("role", m.get("name"))),
                     id=None if m.get("id") is None else str(m.get("id")),
                     time=to_utc(when, field=f"message {i} time") if when is not None else None,
                     session_id=m.get("session_id"), metadata=dict(m.get("metadata") or {}))
        else:
            raise ValidationError(f"message {i}: expected a string, dict or Turn, got {type(m).__name__}")
        if not t.text or not t.text.strip():
            raise ValidationError(f"message {i} is empty")
        t.time = t.time or default_time
        t.session_id = t.session_id or session_id
        out.append(t)
    return out


_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_NUM = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
        "ten": 10, "a": 1, "an": 1, "a couple of": 2, "a few": 3, "several": 3}
_REL = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|this morning|last night|"
    r"(?:last|next|this) (?:week|weekend|month|year|monday|tuesday|wednesday|thursday|friday|saturday|sunday)|"
    r"(\d+|one|two|three|four|five|six|seven|eight|nine|ten|a|an|a couple of|a few|several) "
    r"(day|week|month|year)s? (ago|from now))\b",
    re.IGNORECASE,
)


def _fmt_day(d: datetime) -> str:
    return f"{d:%A} {d.day} {d:%B %Y} ({d:%Y-%m-%d})"


def resolve_relative_dates(text: str, when: datetime | None) -> list[str]:
    """Resolve relative date expressions in ``text`` against ``when``; returns e.g.
    ``["yesterday = Sunday 7 May 2023 (2023-05-07)"]``. Empty when ``when`` is unknown."""
    if when is None:
        return []
    out: list[str] = []
    for m in _REL.finditer(text):
        phrase = m.group(0).lower()
        resolved: str | None = None
        if phrase in ("today", "tonight", "this morning"):
            resolved = _fmt_day(when)
        elif phrase in ("yesterday", "last night"):
            resolved = _fmt_day(when - timedelta(days=1))
        elif phrase == "tomorrow":
            resolved = _fmt_day(when + timedelta(days=1))
        elif m.group(2):
            n = int(m.group(2)) if m.group(2).isdigit() else _NUM.get(m.group(2).lower(), 1)
            unit = m.group(3).lower()
            sign = -1 if m.group(4).lower() == "ago" else 1
            days = {"day": 1, "week": 7, "month": 30, "year": 365}[unit] * n * sign
            target = when + timedelta(days=days)
            resolved = f"{target:%B %Y}" if unit in ("month", "year") else _fmt_day(target)
        else:
            rel, unit = phrase.split(" ", 1)
            shift = {"last": -1, "next": 1, "this": 0}[rel]
            if unit in ("week", "weekend"):
                target = when + timedelta(days=7 * shift)
                resolved = f"the week of {_fmt_day(target - timedelta(days=target.weekday()))}"
            elif unit == "month":
                month = (when.month - 1 + shift) % 12 + 1
                year = when.year + (when.month - 1 + shift) // 12
                resolved = f"{datetime(year, month, 1):%B %Y}"
            elif unit == "year":
                resolved = str(when.year + shift)
            else:
                wd = _WEEKDAYS.index(unit)
                delta = (wd - when.weekday()) % 7
                if rel == "last":
                    delta = delta - 7 if delta > 0 else -7
                elif rel == "next":
                    delta = delta if delta > 0 else 7
                resolved = _fmt_day(when + timedelta(days=delta))
        if resolved and f"{phrase} = {resolved}" not in out:
            out.append(f"{phrase} = {resolved}")
    return out


def reply_context(previous: str) -> str:
    """The fragment a turn's index text gets from the turn before it (``previous`` is that turn's memory
    content, ``"<speaker>: <text>"``): ``"(in reply to: <previous, cut to 240 characters>)"``.

    It is derived text: forgetting or purging the previous turn's memory removes this fragment from every
    memory whose index text holds it (:mod:`memos_core.erasure`), which finds it by calling this
    same function on the erased content.
    """
    ctx = previous
    if len(ctx) > _CONTEXT_CHARS:
        ctx = ctx[:_CONTEXT_CHARS].rsplit(" ", 1)[0] + " ..."
    return f"(in reply to: {ctx})"


def topic_text(content: str, speaker: str | None = None) -> str:
    """What a memory is *about*: its content without the ``"<speaker>: "`` tag the reader puts in front (and,
    unlike the index text, without the date or the previous turn). A second vector of this text lets retrieval
    compare a question's topic with the turn's own words: MiniLM's vector of a turn is otherwise dominated by the
    speaker's name and the quoted context, so all of one person's turns look alike to a question naming her
    (measured in the README, "Retrieval quality": the topical leg). Pairs with
    :attr:`memos_core.plaintext.query.QueryPlan.topic`."""
    if speaker:
        tag = f"{speaker}: "
        if content.startswith(tag) and content[len(tag):].strip():
            return content[len(tag):]
    return content


_REPLY_OPEN = " (in reply to: "
_DAY_HEAD = re.compile(r"\[([A-Za-z]+) (\d{1,2}) ([A-Za-z]+) (\d{4}) \((\d{4}-\d{2}-\d{2})\)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_index_text(index_text: str, content: str) -> tuple[str, str, list[str]] | None:
    """The parts of an index text the offline reader built for ``content``: ``(date head, content + resolved
    relative dates, [quoted previous turns])``, e.g. ``("[Monday 8 May 2023 (2023-05-08)]", "Ann: Yes, twice!",
    ["Bob: Have you been to Lisbon?"])``; ``None`` when ``index_text`` is not of that shape (a caller's own
    index text, or one rewritten by redaction), which is then used as it is."""
    head, body = "", index_text
    if body.startswith("["):
        end = body.find("] ")
        if end > 0 and body[end + 2:].startswith(content):
            head, body = body[:end + 1], body[end + 2:]
    if not content or not body.startswith(content):
        return None
    rest = body[len(content):]
    i = rest.find(_REPLY_OPEN)
    if i < 0:
        return head, body, []
    quoted = rest[i + len(_REPLY_OPEN):]
    if not quoted.endswith(")"):
        return None
    return head, content + rest[:i], quoted[:-1].split(")" + _REPLY_OPEN)


def _quote_cut(quoted: str, mode: str) -> str | None:
    """A quoted previous turn cut by ``mode`` (see :func:`dense_variant`); ``None`` drops it."""
    if mode == "full":
        return quoted
    if mode == "none":
        return None
    question = "?" in quoted
    if mode.startswith("q|"):  # a question whole, anything else cut by the rest of the mode
        return quoted if question else _quote_cut(quoted, mode[2:])
    if mode == "asked":  # its last sentence that asks something
        asks = [p for p in _SENTENCE_END.split(quoted.strip()) if p.rstrip().endswith("?")]
        return asks[-1] if asks else None
    if mode.startswith("question"):
        if not question:
            return None
        mode = mode[len("question"):].lstrip(":") or "full"
        if mode == "full":
            return quoted
    if mode == "last_sentence":
        parts = [p for p in _SENTENCE_END.split(quoted.strip()) if p.strip()]
        return parts[-1] if parts else None
    if mode.startswith("words:"):
        words = quoted.split()
        n = int(mode.split(":", 1)[1])
        return " ".join(words[-n:]) if words and n > 0 else None
    raise ValueError(f"unknown quote mode {mode!r}")


def dense_variant(index_text: str, content: str, *, quote: str = "full", date: str = "full") -> str:
    """``index_text`` with its quoted previous turn and its date head cut (an experiment's knob; the cube embeds
    :func:`dense_text`). ``quote``: ``full`` | ``none`` | ``last_sentence`` | ``words:N`` (its last N words) |
    ``question`` (kept only when it asks something: holds a "?") | ``question:last_sentence`` |
    ``question:words:N`` | ``asked`` (its last sentence ending in "?", else dropped) | ``q|MODE`` (a question
    whole, anything else cut by ``MODE``) | ``shortN|MODE`` (whole for a turn of at most N words, else ``MODE``).
    ``date``: ``full`` (``[Monday 8 May 2023 (2023-05-08)]``) | ``dmy`` (``[8 May 2023]``) | ``wdmy``
    (``[Monday 8 May 2023]``) | ``iso`` (``[2023-05-08]``) | ``none``."""
    parts = split_index_text(index_text, content)
    if parts is None:
        return index_text
    head, body, quoted = parts
    if quote.startswith("short") and "|" in quote:  # a short turn keeps its context whole (an answer needs it)
        limit, rest = quote[len("short"):].split("|", 1)
        quote = "full" if len(content.split()) <= int(limit) + (1 if ": " in content else 0) else rest
    m = _DAY_HEAD.fullmatch(head) if head else None
    if m is not None and date != "full":
        wd, d, mon, y, iso = m.groups()
        head = {"dmy": f"[{d} {mon} {y}]", "wdmy": f"[{wd} {d} {mon} {y}]", "iso": f"[{iso}]", "none": ""}[date]
    out = [head] if head else []
    out.append(body)
    for q in quoted:
        cut = _quote_cut(q, quote)
        if cut is not None:
            out.append(f"(in reply to: {cut})")
    return " ".join(out)


#: the cut :func:`dense_text` applies (see :func:`dense_variant`) to a memory whose content carries its speaker's
#: tag (``"<speaker>: <words>"``, a conversation turn); chosen in issue 18 with ``benchmarks/compose_vectors.py``
#: (README "One memory per call"): no cut met the quality bar for such turns
DENSE_QUOTE = "full"
DENSE_DATE = "full"
#: the cut for a memory without a speaker's tag (a bare ``MemOS.add(text)``, a note), measured on the benchmark sets
#: with their speakers removed (``compose_vectors.py --no-speakers``): a quoted previous memory is kept only when it
#: asks something (a "?"), the date head stays
UNTAGGED_QUOTE = "question"
UNTAGGED_DATE = "full"


def tagged(content: str, speaker: str | None) -> bool:
    """Whether ``content`` starts with its speaker's tag (``"<speaker>: "``), as the offline reader writes a turn."""
    return topic_text(content, speaker) != content


def dense_text(index_text: str, content: str, speaker: str | None = None) -> str:
    """The text a memory's dense vector is embedded from: its index text (``index_text``; ``content`` when it has
    none) with a cheap cut applied to what the offline reader added (the quoted previous turn, the date head):
    :data:`DENSE_QUOTE` / :data:`DENSE_DATE` for a turn tagged with its ``speaker``, :data:`UNTAGGED_QUOTE` /
    :data:`UNTAGGED_DATE` for a memory without a tag. BM25 and the entity bonus keep the whole index text; every
    path that embeds a memory (add, the deferred embedder, update, rollback, restore, ``reindex(reembed=True)``,
    forget's re-derived neighbours) calls this one function (:func:`memos_core.cube._dense_texts`), so they agree.
    An index text not built by the offline reader is returned unchanged."""
    if tagged(content, speaker):
        return dense_variant(index_text, content, quote=DENSE_QUOTE, date=DENSE_DATE)
    return dense_variant(index_text, content, quote=UNTAGGED_QUOTE, date=UNTAGGED_DATE)


# ---------------------------------------------------------------------------------------------- turn acts
#: How much a turn of each act counts at retrieval (``metadata["recall_weight"]``; statements: 1, unset).
ACT_WEIGHTS = {"question": 0.35, "echo": 0.5, "ack": 0.3, "unknown": 0.2, "chitchat": 0.35}

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?", re.UNICODE)
_UNKNOWN = re.compile(
    r"\b(i (?:do not|don['’]t|didn['’]t|can['’]t|cannot) (?:know|remember|recall|tell|find|say)|"
    r"i(?:['’]m| am) not sure|i have no (?:idea|record|information)|no idea|not sure (?:yet|what|who|where|when)|"
    r"you (?:haven['’]t|have not|never|didn['’]t|did not) (?:told|mentioned|said|shared)|"
    r"(?:haven['’]t|have not|never|didn['’]t|did not) (?:told|mentioned|shared|said) (?:me|it)|"
    r"i don['’]t think you['’]ve (?:told|mentioned|shared)|i don['’]t have (?:that|any) (?:information|record))\b",
    re.IGNORECASE)
# words that carry no fact in a short reply: greetings, thanks, agreement, laughter, farewells
_PHATIC = frozenset("""
hi hello hey heya hiya morning evening afternoon night good great thanks thank thx ty you ok okay k kk sure yes yeah
yep yup no nope nah cool nice awesome perfect lovely amazing wow oh ah aw aww haha hahaha lol lmao hehe hmm
hm um uh right alright got it noted will do bye goodbye later soon talk see ya cya take care welcome glad happy
sounds fine fair enough np problem totally absolutely definitely of course me too same agreed true exactly
love that so really very much appreciate appreciated sorry deal done cheers night what how about are is was
doing going things up new whats hows been long time no see ha remember keep keeps mind talk help helped whatever
catch chat touch tell telling sharing letting more later care
""".split())


def turn_act(text: str) -> str:
    """A cheap dialogue-act label for a turn: ``statement`` (may hold a fact), ``question`` (only asks),
    ``unknown`` (says it does not know: "I don't know your cat's name yet"), ``ack`` (thanks, okay, noted...) or
    ``chitchat`` (greetings and small talk with no content word). Only statements are facts; the others are
    kept (nothing is dropped) but count less at retrieval (:data:`ACT_WEIGHTS`)."""
    body = " ".join(text.split())
    if not body:
        return "chitchat"
    words = [w.lower().replace("’", "'").split("'")[0] for w in _WORD.findall(body)]
    if _UNKNOWN.search(body) and len(words) <= 30:
        return "unknown"
    content = [w for w in words if w not in _PHATIC and w not in _STOP and not w.isdigit()]
    if not content and len(words) <= 12:
        return "ack" if any(w in ("thanks", "thank", "ok", "okay", "noted", "got", "sure", "welcome", "bye",
                                  "cool", "perfect", "great", "lol", "haha", "deal", "cheers") for w in words) \
            else "chitchat"
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", body) if x.strip()]
    if sentences and all(x.rstrip().endswith("?") or len(_WORD.findall(x)) <= 2 for x in sentences) \
            and body.rstrip().endswith("?"):
        return "question"
    return "statement"


def _content_terms(text: str) -> set[str]:
    out = set()
    for w in _WORD.findall(text):
        w = w.lower().replace("’", "'").split("'")[0]
        if w in _PHATIC or w in _STOP or len(w) < 2:
            continue
        out.add(w[:-1] if len(w) > 3 and w.endswith("s") else w)
    return out


def _echoes(text: str, previous: str) -> bool:
    """Whether ``text`` mostly repeats ``previous`` (another speaker's statement) back: "A pottery class with
    Eli? So sweet!" after "I took Eli to a pottery class". Such a reaction holds no new fact."""
    mine = _content_terms(text)
    if not mine:
        return False
    new = mine - _content_terms(previous)
    return len(new) < len(mine) and len(new) <= 2 and len(new) <= 0.4 * len(mine)


def _same_exchange(prev: Turn, turn: Turn) -> bool:
    """Whether ``prev`` is part of the exchange ``turn`` belongs to (so it is useful context for it).

    A turn from another session, or said hours apart, is not what a turn replies to: notes kept one per event
    (a diary, a list of memories) would otherwise index each entry with an unrelated neighbour, which costs both
    dense and lexical precision. Unknown sessions or times do not exclude a turn.
    """
    if prev.session_id and turn.session_id and prev.session_id != turn.session_id:
        return False
    if prev.time is not None and turn.time is not None and abs((turn.time - prev.time).total_seconds()) > _CONTEXT_GAP_S:
        return False
    return True


class OfflineReader:
    """Turns conversation turns into episodic memories (dicts ready for ``MemCube.add_many``).

    Parameters
    ----------
    context_turns:
        How many previous turns to add to each memory's index text (0 disables).
    """

    name = EXTRACTOR

    def __init__(self, context_turns: int = 1) -> None:
        if context_turns < 0:
            raise ValidationError("context_turns must be >= 0")
        self.context_turns = context_turns

    def read(self, turns: Iterable[Turn], *, history: Sequence[Turn] = ()) -> list[dict[str, Any]]:
        """One memory spec per turn. ``history`` gives earlier turns of the same conversation for context."""
        turns = list(turns)
        prev: list[Turn] = list(history)[-self.context_turns:] if self.context_turns else []
        out: list[dict[str, Any]] = []
        for t in turns:
            content = f"{t.speaker}: {t.text}" if t.speaker else t.text
            parts = []
            if t.time is not None:
                parts.append(f"[{_fmt_day(t.time)}]")
            parts.append(content)
            rel = resolve_relative_dates(t.text, t.time)
            if rel:
                parts.append("(" + "; ".join(rel) + ")")
            act = turn_act(t.text)
            for p in prev[-self.context_turns:] if self.context_turns else []:
                if not _same_exchange(p, t):
                    continue
                # an answer carries its question ("Yes, twice!" needs "Have you been to Lisbon?")
                parts.append(reply_context(f"{p.speaker}: {p.text}" if p.speaker else p.text))
                if act == "statement" and "?" not in p.text and p.speaker != t.speaker and _echoes(t.text, p.text):
                    act = "echo"  # a reaction repeating the other's statement must not compete with it
            metadata = dict(t.metadata)
            if t.speaker:
                metadata.setdefault("speaker", t.speaker)
            if act != "statement":
                # kept and searchable, but a question, a thanks or an "I don't know" must not crowd out the fact
                metadata.setdefault("turn_act", act)
                metadata.setdefault("recall_weight", ACT_WEIGHTS[act])
            out.append({
                "content": content,
                "index_text": " ".join(parts),
                "kind": MemoryKind.EPISODE,
                "event_time": t.time,
                "session_id": t.session_id,
                "metadata": metadata,
                "provenance": {
                    "source": SourceKind.CONVERSATION,
                    "source_ids": [t.id] if t.id else [],
                    "session_id": t.session_id,
                    "speaker": t.speaker,
                    "extractor": EXTRACTOR,
                },
            })
            if self.context_turns:
                prev.append(t)
        return out
