"""The arguments every adapter class shares, checked the same way in both frameworks when the adapter is built.

``user_id`` / ``agent_id`` / ``session_id`` (``None`` or a non-empty printable ``str`` of at most 256 characters,
as the core's scope ids) and ``k`` (an ``int`` from 1 to 1000, as ``MemOS.search``). A wrong value is a
:class:`~memos_core.errors.ValidationError` naming the adapter and the argument, raised before pydantic sees it
(pydantic would raise its own ``ValidationError``, which is not a ``MemOSError``) and before the first call (the
LangChain middleware and the LlamaIndex retriever used to accept ``k=0`` and fail on their first call).
"""

from __future__ import annotations

from typing import Any

from .errors import ValidationError

__all__ = ["check_adapter_args"]

_SCOPE_KEYS = ("user_id", "agent_id", "session_id")
MAX_K = 1000


def check_adapter_args(adapter: str, **values: Any) -> None:
    """Refuse a bad ``user_id`` / ``agent_id`` / ``session_id`` / ``k`` given to ``adapter`` (``None``: not given)."""
    for key in _SCOPE_KEYS:
        val = values.get(key)
        if val is None:
            continue
        if not isinstance(val, str) or not val.strip() or len(val) > 256 or not val.isprintable():
            raise ValidationError(f"{adapter}: {key} must be a non-empty printable string of at most 256 characters, "
                                  f"got {str(val)[:60]!r} ({type(val).__name__})")
    k = values.get("k")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K):
        raise ValidationError(f"{adapter}: k must be an integer between 1 and {MAX_K}, got {k!r}")
