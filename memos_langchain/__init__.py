"""MemOS for LangChain and LangGraph: drop-in long-term memory.

* :class:`MemOSStore`: LangGraph ``BaseStore`` (``create_agent(store=...)``, ``graph.compile(store=...)``,
  ``runtime.store``, LangMem's memory tools).
"""

from .store import DEFAULT_SCOPE_TEMPLATES, InvalidStoreValue, MemOSStore

__all__ = ["MemOSStore", "InvalidStoreValue", "DEFAULT_SCOPE_TEMPLATES"]
