"""MemReader: conversations in, memory operations out.

* :class:`OfflineReader` (default, no LLM): every turn becomes an episode with speaker, event time and the turn id.
* :class:`LLMReader`: facts extracted by a chat model, reconciled with existing memories by ADD / UPDATE /
  DELETE / NOOP, with bounded retries and an episode fallback (see :mod:`memos_core.reader.llm`).
* :mod:`memos_core.reader.dedup`: exact and near-duplicate detection and merging.
"""

from .dedup import is_duplicate, normalize, similarity
from .llm import AddResult, ChatModel, LLMReader, ParseError, parse_json
from .offline import OfflineReader, Turn, coerce_turns, resolve_relative_dates

__all__ = [
    "OfflineReader",
    "LLMReader",
    "AddResult",
    "ChatModel",
    "ParseError",
    "parse_json",
    "Turn",
    "coerce_turns",
    "resolve_relative_dates",
    "normalize",
    "similarity",
    "is_duplicate",
]
