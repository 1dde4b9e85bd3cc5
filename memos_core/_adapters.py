"""Conversions from framework objects (chat models, embedders) to the core's own conventions.

The core knows no framework. It accepts its own conventions directly: an :class:`~memos_core.embedding.Embedder`
(``embed_documents`` / ``embed_query``), a callable ``list[str] -> vectors``, a chat callable
``fn(messages) -> str | dict``. Everything else is converted by an adapter that an adapter package registers
here, by type:

* :func:`register_embedder_adapter` ``(cls, convert)``: ``convert(obj) -> Embedder`` for instances of ``cls``;
* :func:`register_chat_model_adapter` ``(cls, convert)``: ``convert(obj) -> ChatBackend`` for instances of
  ``cls``.

Lookup walks the object's class MRO, so subclasses are covered. Adapter packages are loaded lazily: when the core
meets an object it does not know, it imports the conversion module of the package that owns the object's
framework (``memos_langchain._convert`` for classes from ``langchain*`` modules, ``memos_llamaindex._convert``
for ``llama_index*``); that import registers the package's conversions. An object from neither, which matches no
core convention, is refused with a :class:`~memos_core.errors.ValidationError` by the caller.

Third-party packages register their own conversions the same way (e.g. in their ``__init__``), or name their
module in :data:`ADAPTER_MODULES` under their framework's top-level module prefix.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any, Awaitable, Callable, Protocol, Sequence, runtime_checkable

__all__ = [
    "ChatBackend",
    "ADAPTER_MODULES",
    "register_chat_model_adapter",
    "register_embedder_adapter",
    "find_chat_model_adapter",
    "find_embedder_adapter",
]

log = logging.getLogger("memos.adapters")


@runtime_checkable
class ChatBackend(Protocol):
    """What the LLM reader needs from a chat model, whatever its framework.

    ``messages`` is ``[{"role": "system" | "user" | "assistant", "content": str}, ...]``. ``schema`` is a pydantic
    model class the answer should follow when the backend can ask the model for structured output (``None``:
    plain text). The reply may be text, parsed JSON (dict/list), a pydantic model, or a framework reply object
    with a ``content`` / ``text`` / ``message`` attribute. A backend that tried structured output and failed must
    raise; the caller retries with ``schema=None``.
    """

    kind: str
    name: str

    def call(self, messages: Sequence[dict[str, str]], schema: type | None) -> Any: ...

    def acall(self, messages: Sequence[dict[str, str]], schema: type | None) -> Awaitable[Any]: ...


#: top-level module prefix of a framework -> the module that registers its conversions (imported on demand)
ADAPTER_MODULES: dict[str, str] = {
    "langchain": "memos_langchain._convert",
    "langgraph": "memos_langchain._convert",
    "llama_index": "memos_llamaindex._convert",
}

_CHAT: dict[type, Callable[[Any], ChatBackend]] = {}
_EMBED: dict[type, Callable[[Any], Any]] = {}
_LOCK = threading.Lock()
_TRIED: set[str] = set()


def register_chat_model_adapter(cls: type, convert: Callable[[Any], ChatBackend]) -> None:
    """Convert instances of ``cls`` (and subclasses) to a :class:`ChatBackend` with ``convert``."""
    if not isinstance(cls, type) or not callable(convert):
        raise TypeError("register_chat_model_adapter(cls, convert): a class and a callable")
    with _LOCK:
        _CHAT[cls] = convert


def register_embedder_adapter(cls: type, convert: Callable[[Any], Any]) -> None:
    """Convert instances of ``cls`` (and subclasses) to an :class:`~memos_core.embedding.Embedder` with
    ``convert``."""
    if not isinstance(cls, type) or not callable(convert):
        raise TypeError("register_embedder_adapter(cls, convert): a class and a callable")
    with _LOCK:
        _EMBED[cls] = convert


def _lookup(table: dict[type, Callable[[Any], Any]], obj: Any) -> Callable[[Any], Any] | None:
    with _LOCK:
        for klass in type(obj).__mro__:
            fn = table.get(klass)
            if fn is not None:
                return fn
    return None


def _load_for(obj: Any) -> bool:
    """Import the conversion modules for the frameworks ``obj``'s classes come from; True if one was new."""
    loaded = False
    for klass in type(obj).__mro__:
        top = (getattr(klass, "__module__", None) or "").split(".", 1)[0]
        for prefix, module in ADAPTER_MODULES.items():
            if (top == prefix or top.startswith(prefix + "_")) and module not in _TRIED:
                _TRIED.add(module)
                try:
                    importlib.import_module(module)
                    loaded = True
                    log.debug("loaded conversions from %s", module)
                except ImportError as exc:
                    log.debug("no conversions from %s: %s", module, exc)
    return loaded


def _find(table: dict[type, Callable[[Any], Any]], obj: Any) -> Callable[[Any], Any] | None:
    fn = _lookup(table, obj)
    if fn is None and _load_for(obj):
        fn = _lookup(table, obj)
    return fn


def find_chat_model_adapter(obj: Any) -> Callable[[Any], ChatBackend] | None:
    """The registered conversion for ``obj`` (loading its framework's adapter package if needed), or None."""
    return _find(_CHAT, obj)


def find_embedder_adapter(obj: Any) -> Callable[[Any], Any] | None:
    """The registered conversion for ``obj`` (loading its framework's adapter package if needed), or None."""
    return _find(_EMBED, obj)
