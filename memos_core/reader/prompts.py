"""Every prompt the LLM MemReader sends, in one place.

Prompts are short on purpose: they are sent once per batch of turns (extraction) and once per batch of
candidate facts that resemble existing memories (decision). They ask for plain JSON, which every chat model can
produce; the reader validates it against the schemas in :mod:`memos_core.reader.llm`, repairs what it can, and
re-asks (with :data:`REPAIR`) a bounded number of times.

User text is never passed through ``str.format``: braces in a conversation cannot break a prompt.
Labels (``T1``, ``F1``, ``M1``) stand for turns, new facts and existing memories, so the model never has to copy
long ids (and cannot invent one the reader would act on).
"""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

__all__ = [
    "EXTRACT_SYSTEM",
    "DECIDE_SYSTEM",
    "REPAIR",
    "PROMPT_VERSION",
    "extract_messages",
    "decide_messages",
    "repair_messages",
]

PROMPT_VERSION = "1"

EXTRACT_SYSTEM = """\
You extract durable memories from a conversation.
Return only JSON: {"facts": [{"text": "...", "kind": "fact", "turns": ["T1"], "event_time": null}]}
- text: one self-contained statement; name the person (use the speaker's name, never "I" or "the user").
- kind: "fact", "preference", "profile" or "procedure".
- turns: labels of the turns that state it.
- event_time: "YYYY-MM-DD" when the fact has its own date (resolve "yesterday" etc. from the turn dates), else null.
Keep only what is stated, about people, their lives, plans, likes and dislikes. Skip greetings, questions and
the assistant's suggestions. If nothing is worth remembering return {"facts": []}."""

DECIDE_SYSTEM = """\
You keep a memory store consistent. For each new fact F choose one operation against the existing memories M:
- ADD: new information. If it makes a memory no longer true (moved, changed job, broke up), ADD with "supersedes": ["M1"].
- UPDATE: same subject as a memory, adds detail or corrects it: "target" and the merged "text".
- DELETE: the fact says a memory was wrong or asks to forget it: "target".
- NOOP: already known: "target".
Return only JSON: {"decisions": [{"fact": "F1", "op": "ADD", "target": null, "text": null, "supersedes": []}]}
with one decision per new fact."""

REPAIR = ("Your reply could not be used: {error}. Reply again with only the JSON object described above, "
          "no prose and no code fences.")

_MAX_ECHO = 2000


def _day(t: datetime | None) -> str:
    return f"[{t:%Y-%m-%d}] " if t is not None else ""


def extract_messages(turns: Sequence[tuple[str, datetime | None, str | None, str]], *,
                     user_name: str | None = None) -> list[dict[str, str]]:
    """Messages for one extraction call. ``turns`` are ``(label, time, speaker, text)``."""
    lines = []
    for label, when, speaker, text in turns:
        who = f"{speaker}: " if speaker else ""
        lines.append(f"{label} {_day(when)}{who}{' '.join(text.split())}")
    head = f"The user is {user_name}.\n" if user_name else ""
    return [
        {"role": "system", "content": EXTRACT_SYSTEM},
        {"role": "user", "content": head + "Turns:\n" + "\n".join(lines) + "\n\nJSON:"},
    ]


def decide_messages(memories: Sequence[tuple[str, datetime | None, str]],
                    facts: Sequence[tuple[str, datetime | None, str]]) -> list[dict[str, str]]:
    """Messages for one decision call. Both sequences hold ``(label, time, text)``."""
    mem = "\n".join(f"{label} {_day(when)}{' '.join(text.split())}" for label, when, text in memories)
    new = "\n".join(f"{label} {_day(when)}{' '.join(text.split())}" for label, when, text in facts)
    return [
        {"role": "system", "content": DECIDE_SYSTEM},
        {"role": "user", "content": f"Existing memories:\n{mem or '(none)'}\n\nNew facts:\n{new}\n\nJSON:"},
    ]


def repair_messages(original: Sequence[dict[str, str]], bad_reply: str, error: str) -> list[dict[str, str]]:
    """The original messages, the unusable reply (clipped) and a request to answer again with valid JSON."""
    echo = bad_reply if len(bad_reply) <= _MAX_ECHO else bad_reply[:_MAX_ECHO] + " ..."
    return [*original,
            {"role": "assistant", "content": echo or "(empty)"},
            {"role": "user", "content": REPAIR.replace("{error}", error)}]
