"""What happens to MemOS across ``os.fork()`` (gunicorn ``--preload``, ``multiprocessing`` with ``fork``).

A cube holds things that belong to the process that opened it: a SQLite connection (and its locks), a
PostgreSQL pool (sockets shared with the parent after a fork: a child using or closing them corrupts or ends
the parent's sessions), an embedded Chroma client, background threads (deferred embeddings, vector-index
batches, search legs) that do not exist in the child, and locks those threads may have held when the fork
happened. What this module guarantees:

* **A cube opened before the fork is refused in the child**: every operation raises
  :class:`~memos_core.errors.ForkedProcessError` (a ``CubeClosed``) telling the user to open MemOS inside each
  worker, and closing it in the child touches nothing of the parent's (no flush, no wait for the parent's
  threads, no connection closed; the handles are kept, unused, for the child's life, so that no finalizer
  closes the parent's connections from the child either).
* **A cube opened in the child works**, even when the parent had used cubes: the process-wide thread pools,
  the module locks a parent thread may have held at the fork, Chroma's per-folder client cache and the shared
  MemOS registry (:mod:`memos_core.shared`) start fresh in the child.
* **No fork lands in the middle of a background import, model load or cube job**: the preload threads a cube
  starts (Chroma import, embedding model) and the cubes' background jobs in flight (deferred embeddings, a
  vector-index batch) are waited for before the fork (a child forked while one held Python's import lock hung
  on its first import of that module).

Not covered: embedded Chroma's own native threads. A child that opens an *embedded* Chroma folder after the
parent used embedded Chroma works when the parent was idle at the fork, but Chroma's bindings give no
guarantee; with forking servers, open MemOS after the fork (or use a Chroma server, as a multi-process
deployment does anyway).
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import Any

from .errors import ForkedProcessError

__all__ = ["register", "check", "inherited"]

#: handles opened in this process that hold process-bound resources (cubes)
_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()
#: in a forked child: the parent's handles, kept alive (never used, never finalized) for the child's life
_INHERITED: list[Any] = []

#: background threads that must not be running when the process forks (they hold import or model locks)
_PRELOAD_THREADS = ("memos-chroma-preload", "memos-embedder-preload", "memos-index-warm", "memos-bf16-load")


def register(obj: Any) -> int:
    """Remember ``obj`` (a cube) as holding this process's resources; returns this process's id, which
    :func:`check` compares with later."""
    with _LIVE_LOCK:
        _LIVE.add(obj)
    return os.getpid()


def inherited(pid: int) -> bool:
    """Whether a handle opened by process ``pid`` is being used in another process (a forked child)."""
    return pid != os.getpid()


def check(pid: int, what: str) -> None:
    """Raise :class:`ForkedProcessError` when a handle opened by process ``pid`` is used in another one."""
    if pid != os.getpid():
        raise ForkedProcessError(
            f"{what} was opened in process {pid}, which then forked; this is process {os.getpid()}. Its "
            "connections, pools and background threads belong to the parent: open MemOS/MemCube (and build the "
            "adapters) inside each worker, after the fork (e.g. in the app's startup hook, not with gunicorn "
            "--preload)")


def _before_fork() -> None:
    current = threading.current_thread()
    for t in threading.enumerate():
        if t.name in _PRELOAD_THREADS and t is not current and t.is_alive():
            t.join(60)  # an import or a model load: seconds at most
    # the cubes' background work in flight (embedding waiting rows, a vector-index batch) ends before the fork:
    # forked in the middle, the child would inherit the locks it held (the records', the index's own)
    for obj in list(_LIVE):
        for name in ("_embed_job", "_flush_job"):
            job = getattr(obj, name, None)
            if job is not None and not job.done():
                try:
                    job.result(timeout=60)
                except Exception:  # noqa: BLE001 - logged by the job; only its end matters here
                    pass


def _after_in_child() -> None:
    global _LIVE_LOCK
    _LIVE_LOCK = threading.Lock()
    _INHERITED.extend(list(_LIVE))
    _LIVE.clear()
    # process-wide pools: their worker threads did not survive the fork (a job submitted to them would never run)
    mods = sys.modules
    cube = mods.get("memos_core.cube")
    if cube is not None:
        cube._POOLS = {}
        cube._POOL_LOCK = threading.Lock()
        cube._PRELOAD_LOCK = threading.Lock()
    retrieval = mods.get("memos_core.plaintext.retrieval")
    if retrieval is not None:
        retrieval._POOL = None
        retrieval._POOL_LOCK = threading.Lock()
        retrieval._DOWN_LOCK = threading.Lock()  # the embedder-outage tracker's
    vector = mods.get("memos_core.plaintext.vector")
    if vector is not None:  # a parent thread may have held these, or a folder guard, at the fork
        vector._EMBEDDED_CLIENTS = threading.RLock()
        _INHERITED.append(dict(vector._GUARDS))
        vector._GUARDS.clear()
        vector._GUARDS_LOCK = threading.Lock()
    scope_cache = mods.get("memos_core.plaintext.scope_cache")
    if scope_cache is not None:
        scope_cache._CACHES_LOCK = threading.Lock()
    embedding = mods.get("memos_core.embedding")
    if embedding is not None:
        embedding._QCACHE_LOCK = threading.Lock()
        embedding._MODEL_LOCK = threading.Lock()
    bf16 = mods.get("memos_core.embedding_bf16")
    if bf16 is not None:
        bf16._after_fork_in_child()
    shared = mods.get("chromadb.api.shared_system_client")
    if shared is not None:  # the parent's Chroma systems (bindings, runtime threads) are not this process's
        systems = getattr(shared.SharedSystemClient, "_identifier_to_system", None)
        if isinstance(systems, dict):
            _INHERITED.append(dict(systems))
            systems.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_in_child)
