"""MemOS for LangChain and LangGraph: drop-in long-term memory.

=============================  ======================================================================
:class:`MemOSStore`            LangGraph ``BaseStore`` (``create_agent(store=...)``, ``graph.compile(store=...)``,
                               ``runtime.store``, LangMem's memory tools)
:class:`MemOSMiddleware`       ``create_agent`` middleware: memories into the prompt, turns into memory
:func:`create_memory_tools`    search / save / update / forget tools for agents
:class:`MemOSRetriever`        ``BaseRetriever`` over MemOS search
:class:`MemOSChatMessageHistory`  durable ``BaseChatMessageHistory`` (``RunnableWithMessageHistory``)
:class:`MemOSVectorStore`      ``VectorStore`` over a cube
=============================  ======================================================================

The adapters only translate between LangChain/LangGraph types and the core (:mod:`memos_core`): ranking,
deduplication, versions, retention and access control all happen there.

Every class takes the same ``memory`` (a ``MemOS``, a view of one, a ``MemCube`` or a folder path, checked when
built) and fails closed: it reads and writes only for a known user (a user-bound view ``mem.for_user("ann")``,
``user_id=``, the run's context/config or a store namespace label) and raises ``memos_core.UserRequired``
otherwise, unless built with ``single_user=True``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type checkers and IDEs see the names; at run time each loads on first access
    from .history import MemOSChatMessageHistory
    from .middleware import MemOSMiddleware
    from .retriever import MemOSRetriever
    from .store import DEFAULT_SCOPE_TEMPLATES, InvalidNamespace, InvalidStoreValue, MemOSStore
    from .tools import MemoryToolkit, create_memory_tools
    from .vectorstore import MemOSVectorStore

# Public name -> submodule. Loading lazily (PEP 562) keeps ``import memos_langchain`` and the core's lazy
# conversion registry (which imports ``memos_langchain._convert``) from pulling in ``langchain.agents``,
# ``langgraph`` and the rest before they are used.
_LAZY = {
    "MemOSChatMessageHistory": "history",
    "MemOSMiddleware": "middleware",
    "MemOSRetriever": "retriever",
    "DEFAULT_SCOPE_TEMPLATES": "store",
    "InvalidStoreValue": "store",
    "InvalidNamespace": "store",
    "MemOSStore": "store",
    "MemoryToolkit": "tools",
    "create_memory_tools": "tools",
    "MemOSVectorStore": "vectorstore",
}

__all__ = [
    "MemOSStore",
    "InvalidStoreValue",
    "InvalidNamespace",
    "DEFAULT_SCOPE_TEMPLATES",
    "MemOSMiddleware",
    "create_memory_tools",
    "MemoryToolkit",
    "MemOSRetriever",
    "MemOSChatMessageHistory",
    "MemOSVectorStore",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        mod = importlib.import_module(f".{module}", __name__)
    except ModuleNotFoundError as exc:  # the framework itself is missing: say which extra installs it
        from memos_core.extras import missing_extra

        err = missing_extra(exc, f"{__name__}.{name}", "langchain")
        if err is None:
            raise
        raise err from exc
    value = getattr(mod, name)
    globals()[name] = value  # cache: later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
