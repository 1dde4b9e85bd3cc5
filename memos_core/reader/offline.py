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
from ..items import MemoryKind, SourceKind, to_utc

__all__ = ["Turn", "OfflineReader", "resolve_relative_dates", "coerce_turns", "reply_context"]

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
        if self.time is not None and not isinstance(self.time, datetime):
            self.time = to_utc(self.time, field="turn time")
        elif self.time is not None:
            self.time = to_utc(self.time)


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
    memory whose index text holds it (:mod:`memos_core.governance.erasure`), which finds it by calling this
    same function on the erased content.
    """
    ctx = previous
    if len(ctx) > _CONTEXT_CHARS:
        ctx = ctx[:_CONTEXT_CHARS].rsplit(" ", 1)[0] + " ..."
    return f"(in reply to: {ctx})"


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
            for p in prev[-self.context_turns:] if self.context_turns else []:
                if not _same_exchange(p, t):
                    continue
                parts.append(reply_context(f"{p.speaker}: {p.text}" if p.speaker else p.text))
            metadata = dict(t.metadata)
            if t.speaker:
                metadata.setdefault("speaker", t.speaker)
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
