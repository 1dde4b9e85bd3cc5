"""MemOS for LlamaIndex: long-term memory for chat engines, agents, ``Memory`` blocks and query engines.

A thin adapter: it translates LlamaIndex types (``ChatMessage``, ``NodeWithScore``, tools) to and from
:mod:`memos_core` and delegates everything else (reading conversations into memories, search, ranking,
deduplication, context rendering, governance) to :class:`memos_core.MemOS`.

* :class:`MemOSMemory` - a ``BaseMemory`` (chat history + MemOS memory) for ``SimpleChatEngine``,
  ``ContextChatEngine``, ``CondensePlusContextChatEngine``, ``FunctionAgent`` / ``ReActAgent`` /
  ``AgentWorkflow`` (``.run(memory=...)``).
* :class:`MemOSMemoryBlock` - a block for ``Memory.from_defaults(memory_blocks=[...])``.
* :class:`MemOSRetriever` - a ``BaseRetriever`` (e.g. inside a ``RetrieverQueryEngine``).
* :class:`MemOSToolSpec` - search / save / update / forget tools for agents.

Every class takes the same ``memos`` as the LangChain adapters (a ``MemOS``, a view of one, a ``MemCube`` or a
folder path, checked when built) and fails closed: it needs a user (``user_id=`` or a user-bound view
``mem.for_user("ann")``) and raises ``memos_core.UserRequired`` otherwise, unless built with ``single_user=True``.

Quick start::

    from llama_index.core.chat_engine import SimpleChatEngine
    from memos_llamaindex import MemOSMemory

    memory = MemOSMemory.from_defaults("./memos_data", user_id="ann", session_id="monday")
    engine = SimpleChatEngine.from_defaults(llm=llm, memory=memory)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # type checkers and IDEs see the names; at run time each loads on first access
    from ._common import register_memos
    from .block import MemOSMemoryBlock
    from .memory import MemOSMemory
    from .retriever import MemOSRetriever, hit_to_node
    from .tools import MemOSToolSpec

# Public name -> submodule. Loading lazily (PEP 562) keeps ``import memos_llamaindex`` and the core's lazy
# conversion registry (which imports ``memos_llamaindex._convert``) from pulling in agents, tools and chat
# engines before they are used.
_LAZY = {
    "register_memos": "_common",
    "MemOSMemoryBlock": "block",
    "MemOSMemory": "memory",
    "MemOSRetriever": "retriever",
    "hit_to_node": "retriever",
    "MemOSToolSpec": "tools",
}

__all__ = [
    "MemOSMemory",
    "MemOSMemoryBlock",
    "MemOSRetriever",
    "MemOSToolSpec",
    "hit_to_node",
    "register_memos",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        mod = importlib.import_module(f".{module}", __name__)
    except ModuleNotFoundError as exc:  # the framework itself is missing: say which extra installs it
        from memos_core.extras import missing_extra

        err = missing_extra(exc, f"{__name__}.{name}", "llamaindex")
        if err is None:
            raise
        raise err from exc
    value = getattr(mod, name)
    globals()[name] = value  # cache: later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
