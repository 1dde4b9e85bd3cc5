"""MemReader: conversations in, memory operations out."""

from .offline import OfflineReader, Turn, coerce_turns, resolve_relative_dates

__all__ = ["OfflineReader", "Turn", "coerce_turns", "resolve_relative_dates"]
