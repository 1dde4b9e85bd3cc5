"""Query analysis for conversational recall (no LLM).

Memory queries are often not questions but *conversations*: a chat engine asks its memory for whatever is
relevant to the dialogue so far ("<Ann>: I ran my first 10k today! <Assistant>: ..."). Such a query is long, full
of speaker markup, quotes and the assistant's own chatter. :func:`analyze_query` turns any query into a
:class:`QueryPlan`:

* ``text``: the query with speaker markup normalised to ``"Name: text"`` and quote marks dropped (what the
  embedder and BM25 see; the markup measurably hurts dense retrieval);
* ``focus``: for a user <-> assistant dialogue, the last turn of the user (what the reply must address);
* ``entities``: lowercase names the answer is likely to mention: the (non-assistant) speakers of a dialogue and
  capitalised words that do not start a sentence ("Maya's", "Lisbon"). Retrieval boosts memories that contain
  them, so "What is Maya's dog called?" prefers Maya's turns over Leo's about his dog;
* ``topic``: for a question or keywords that name someone, the text with those names taken out ("What is dog
  called?"): what the query is *about*. MiniLM's vector of a short question is dominated by the name it contains, so every turn of
  Maya's (or naming her) looks alike to it; compared with the memories' own words (no speaker tag, date or
  context: :func:`memos_core.reader.offline.topic_text`), the name-free question finds the turn on the topic,
  and the names are matched by BM25 and the entity bonus instead (see :class:`memos_core.plaintext.fusion.Candidates`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from .lexical import STOPWORDS

__all__ = ["QueryPlan", "analyze_query", "ASSISTANT_NAMES", "entity_matches", "entity_matcher"]

#: Speaker names treated as the assistant side of a dialogue (their lines are context, not the user's words).
ASSISTANT_NAMES = frozenset({"assistant", "ai", "bot", "system", "agent", "chatbot", "model", "gpt"})

# "<Name>: " anywhere, or "Name: " / "Name Surname: " at the start or after whitespace / a quote.
_TAG = re.compile(r"<([^<>\n]{1,40})>\s*:\s*|(?:^|(?<=[\s\"']))([A-Z][\w'-]{0,30}(?: [A-Z][\w'-]{0,30})?):\s+")
_CAP = re.compile(r"\b[A-Z][a-z][\w'’-]*")
_SENT = re.compile(r"(?<=[.!?])\s+|\n+")
_QUOTES = str.maketrans({'"': " ", "“": " ", "”": " "})


@dataclass(frozen=True)
class QueryPlan:
    text: str
    focus: str | None
    entities: tuple[str, ...]
    turns: tuple[tuple[str | None, str], ...]
    #: the query without the names in ``entities`` (``None`` for a pasted dialogue or a query naming no one: the
    #: topical leg then stays out, measured as the better choice on the assistant-style sets)
    topic: str | None = None
    #: what the embedder sees when it is not ``text``: a pasted transcript between two or more people, none of them
    #: the assistant, without its speaker tags (``None`` otherwise; see :func:`analyze_query`)
    embed_text: str | None = None

    @property
    def is_dialogue(self) -> bool:
        return len(self.turns) >= 2

    @property
    def dense_text(self) -> str:
        """The text the query vector is computed from."""
        return self.embed_text or self.text


def _parse_dialogue(q: str) -> list[tuple[str | None, str]]:
    """Split ``q`` into (speaker, text) turns when it carries at least two speaker tags, else []."""
    tags = list(_TAG.finditer(q))
    if len(tags) < 2:
        return []
    turns: list[tuple[str | None, str]] = []
    head = q[:tags[0].start()].strip()
    if head:
        turns.append((None, head))
    for i, m in enumerate(tags):
        end = tags[i + 1].start() if i + 1 < len(tags) else len(q)
        speaker = (m.group(1) or m.group(2) or "").strip()
        text = " ".join(q[m.end():end].translate(_QUOTES).split())
        if text:
            turns.append((speaker or None, text))
    return turns


def _is_user(speaker: str | None) -> bool:
    return bool(speaker) and speaker.lower() not in ASSISTANT_NAMES  # type: ignore[union-attr]


def analyze_query(query: str) -> QueryPlan:
    """Normalise a query (plain question or pasted dialogue) for retrieval. Never raises on odd input."""
    turns = _parse_dialogue(query)
    if turns:
        text = " ".join(f"{s}: {t}" if s else t for s, t in turns)
        user_turns = [t for s, t in turns if _is_user(s)]
        with_assistant = any(s and s.lower() in ASSISTANT_NAMES for s, _ in turns)
        # In a user <-> assistant chat the last user turn is what the next reply must address; in a transcript
        # between people there is no such turn, so no focus.
        focus: str | None = user_turns[-1] if user_turns and with_assistant else None
        bodies = [t for _, t in turns]
    else:
        text = " ".join(query.split())
        focus = None
        with_assistant = False
        bodies = [text]
    ents: dict[str, None] = {}
    for s, _ in turns:
        if _is_user(s):
            ents.setdefault(s.lower(), None)  # type: ignore[union-attr]
    for sent in (x for body in bodies for x in _SENT.split(body)):
        sent = sent.lstrip(" \"'“(")
        for m in _CAP.finditer(sent):
            if m.start() == 0:
                continue  # sentence-initial capitals are not evidence of a name
            word = re.sub(r"['’]s$", "", m.group(0)).lower()
            if len(word) > 1 and word not in STOPWORDS and word not in ASSISTANT_NAMES:
                ents.setdefault(word, None)
    entities = tuple(ents)[:16]
    # A transcript between people (two or more speakers, none of them the assistant): MiniLM's vector of "Leo: ...
    # Maya: ... Leo: ..." is dominated by the speakers' names, so every turn of Leo's or Maya's looks alike to it;
    # the turns' own words find the turn the talk is about (the names still count through BM25 and the entity
    # bonus). A user <-> assistant chat, or one person's messages, keeps its tags: there the user's name is what
    # keeps another person's memories away (measured: README, "Tried in issue 15, session 8").
    between_people = not with_assistant and len({s.lower() for s, _ in turns if s}) >= 2
    embed_text = " ".join(t for _, t in turns) if between_people else None
    return QueryPlan(text=text or query, focus=focus, entities=entities, turns=tuple(turns),
                     topic=None if turns else topic_of(text, entities), embed_text=embed_text or None)


def topic_of(text: str, entities: tuple[str, ...]) -> str | None:
    """``text`` without the whole-word mentions of ``entities`` (and their possessive ``'s``), whitespace
    normalised; ``None`` when nothing was removed or nothing but stopwords and punctuation would be left."""
    if not entities:
        return None
    out = text
    for e in entities:
        out = re.sub(r"(?i)(?<!\w)" + re.escape(e) + r"(?:['’]s)?(?!\w)", " ", out)
    out = " ".join(out.split())
    if out == " ".join(text.split()):
        return None
    words = [w for w in re.findall(r"[^\W_]+", out.lower()) if w not in STOPWORDS]
    return out if words else None


def entity_matcher(entities: tuple[str, ...]) -> "Callable[[str], float]":
    """A function giving the share of ``entities`` that occur in a text as whole words (case-insensitive); the
    patterns are compiled once (a search scores every candidate with it)."""
    if not entities:
        return lambda text: 0.0
    pats = [re.compile(r"(?<!\w)" + re.escape(e) + r"(?!\w)") for e in entities]
    n = len(pats)

    def share(text: str) -> float:
        low = text.lower()
        return sum(1 for p in pats if p.search(low)) / n

    return share


def entity_matches(entities: tuple[str, ...], text: str) -> float:
    """Share of ``entities`` that occur in ``text`` as whole words (case-insensitive); 0 when there are none."""
    return entity_matcher(entities)(text)
