"""MemOS for LangChain and LangGraph: drop-in long-term memory.

* :class:`MemOSStore`: LangGraph ``BaseStore`` (``create_agent(store=...)``, ``graph.compile(store=...)``,
  ``runtime.store``, LangMem's memory tools).
* :class:`MemOSVectorStore`: LangChain ``VectorStore`` over a cube.
"""

from .store import DEFAULT_SCOPE_TEMPLATES, InvalidStoreValue, MemOSStore
from .vectorstore import MemOSVectorStore

__all__ = ["MemOSStore", "InvalidStoreValue", "DEFAULT_SCOPE_TEMPLATES", "MemOSVectorStore"]
