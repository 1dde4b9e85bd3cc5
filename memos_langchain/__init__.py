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

from .history import MemOSChatMessageHistory
from .middleware import MemOSMiddleware
from .retriever import MemOSRetriever
from .store import DEFAULT_SCOPE_TEMPLATES, InvalidStoreValue, MemOSStore
from .tools import MemoryToolkit, create_memory_tools
from .vectorstore import MemOSVectorStore

__all__ = [
    "MemOSStore",
    "InvalidStoreValue",
    "DEFAULT_SCOPE_TEMPLATES",
    "MemOSMiddleware",
    "create_memory_tools",
    "MemoryToolkit",
    "MemOSRetriever",
    "MemOSChatMessageHistory",
    "MemOSVectorStore",
]
