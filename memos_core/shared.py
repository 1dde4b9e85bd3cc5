"""One :class:`~memos_core.os.MemOS` per data folder, cube folder or store URL in a process.

Every adapter class accepts a folder path or a ``postgresql://`` store URL instead of an open MemOS
(:func:`memos_core.os.resolve_memory`). Opening a MemOS per adapter gave an application with a retriever, a
chat history and a store on one folder three handles on the same cube: three SQLite connections, three
embedded Chroma clients, three PostgreSQL pools, three background embedders racing for the same rows. Here a
process-wide registry hands every adapter given the same place the same MemOS:

* the key is the resolved folder (symlinks, ``..`` and relative spellings agree) or the store URL with its
  vector index;
* the registry holds the MemOS **weakly**: while some adapter (or the application) uses it, later adapters
  get it; when nothing uses it any more it is closed (its cubes flushed and closed) and the next adapter
  opens a fresh one;
* thread-safe: adapters built at once on several threads get one MemOS;
* a different ``principal`` gets a view of the shared MemOS acting as that principal
  (:meth:`MemOS.as_principal`); a different embedder (by name) or LLM for a place already open raises
  :class:`~memos_core.errors.ValidationError` (build one MemOS and pass it to every adapter);
* a child process made by ``fork()`` starts with an empty registry (see :mod:`memos_core.forksafe`).

A MemOS the application opens itself (``MemOS(path)``, ``MemOS(url, index=...)``, ``MemOS.over_cube(folder)``)
is registered too, weakly, when no MemOS is open at that place yet (:func:`register_direct`): adapters given the
same path then share the application's object (and its options: clock, sync modes, reader) instead of opening
a second one beside it. The registry never closes it: it is the application's, closed by ``close()`` (or, if
the application drops it unclosed, as any unreferenced MemOS). Opened the other way round -- an adapter first,
then ``MemOS(path)`` -- the application's object gets its own handles (a constructor cannot hand back another
object) and a WARNING says so: open the MemOS first, or pass it to the adapters.
"""

from __future__ import annotations

import os
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable

from .errors import ValidationError
from .log import get_logger
from .records.migrate import is_store_url

if TYPE_CHECKING:  # pragma: no cover
    from .os import MemOS

__all__ = ["shared_memos", "shared_count", "register_direct"]

log = get_logger("memos_core.os")  # the facade's logger, memos.os (this module has no layer of its own)

_LOCK = threading.Lock()
_OPEN: dict[Hashable, "weakref.ref[MemOS]"] = {}
_FINALIZERS: dict[Hashable, weakref.finalize] = {}  # the closer of each key's current MemOS
_OPENING = threading.local()  # set while shared_memos() opens a MemOS on this thread (it registers that one itself)


def _key(where: Any, index: str | None) -> tuple[str, str, str | None]:
    if is_store_url(where):
        return ("store", str(where), index)
    return ("folder", str(Path(where).expanduser().resolve()), None)


def shared_memos(where: str | os.PathLike[str], *, embedder: Any = None, llm: Any = None,
                 principal: str = "local", index: str | None = None) -> "MemOS":
    """The MemOS of this process at ``where`` (a folder, a cube folder or a store URL), opened now if none is.

    ``where`` opens as :func:`memos_core.os.resolve_memory` says: a store URL with its vector ``index``, a
    folder holding a cube as that cube (:meth:`MemOS.over_cube`), any other folder as a MemOS data folder.
    ``embedder`` / ``llm`` are used when it is opened here; for one already open they must be left out or
    agree with it (the same embedder name, the same LLM object), else :class:`ValidationError`."""
    from .os import MANIFEST, MemOS

    key = _key(where, index)
    with _LOCK:
        ref = _OPEN.get(key)
        mem = ref() if ref is not None else None
        if mem is None or not _usable(mem):
            _OPENING.active = True
            try:
                if key[0] == "store":
                    mem = MemOS(where, embedder=embedder, llm=llm, principal=principal, index=index)
                elif (Path(key[1]) / MANIFEST).is_file():
                    mem = MemOS.over_cube(key[1], embedder=embedder, llm=llm, principal=principal)
                else:
                    mem = MemOS(key[1], embedder=embedder, llm=llm, principal=principal)
            finally:
                _OPENING.active = False
            mem._opened_for_adapters = True  # type: ignore[attr-defined]  # (the warning in register_direct)
            _OPEN[key] = weakref.ref(mem)
            # Closed when nothing uses it any more. The finalizer holds the MemOS's cube table, not the MemOS:
            # cubes it opened are closed (flushed), a cube the caller handed in is left alone, as close() does.
            fin = weakref.finalize(mem, _close_unused, key, mem._cubes, mem._owned)
            fin.atexit = False  # at exit the process is going: the records are durable, the next open repairs
            _FINALIZERS[key] = fin
            log.debug("opened shared MemOS at %s", key[1])
            return mem
        _check_agrees(mem, where, embedder, llm)
    return mem if principal == mem.principal else mem.as_principal(principal)


def register_direct(mem: "MemOS", where: Any, index: str | None = None) -> None:
    """Register a MemOS the application opened itself (``MemOS.__init__`` calls this once it is open) as the one
    of ``where`` (its folder, cube folder or store URL with ``index``), weakly, unless one is open there already.
    Nothing is registered for a MemOS that :func:`shared_memos` is opening (it registers it itself)."""
    if getattr(_OPENING, "active", False):
        return
    key = _key(where, index)
    with _LOCK:
        ref = _OPEN.get(key)
        cur = ref() if ref is not None else None
        if cur is None or cur is mem or not _usable(cur):
            # no finalizer: the registry only points at it (a finalizer of an earlier shared MemOS of this key
            # stays: it closes that one's cubes when it goes, and leaves this entry alone)
            _OPEN[key] = weakref.ref(mem)
            log.debug("registered the MemOS opened at %s", key[1])
            return
    if getattr(cur, "_opened_for_adapters", False):
        log.warning("%s is already open in this process (an adapter opened it); this MemOS opens its own handles "
                    "on the same cubes beside it. Open the MemOS before the adapters (they then share it), or pass "
                    "this object to them.", key[1])
    else:
        log.info("%s is already open in this process by another MemOS; this one opens its own handles", key[1])


def _usable(mem: "MemOS") -> bool:
    """Open, and none of its cubes closed behind its back (``adapter.cube.close()``): else a fresh one is opened."""
    if mem._closed:
        return False
    return not any(getattr(getattr(c, "records", None), "closed", False) for c in list(mem._cubes.values()))


def _check_agrees(mem: "MemOS", where: Any, embedder: Any, llm: Any) -> None:
    if embedder is not None:
        from .embedding import resolve_embedder

        given = resolve_embedder(embedder)
        if given is not mem.embedder and given.name != mem.embedder.name:
            raise ValidationError(
                f"{where} is already open in this process with embedder {mem.embedder.name!r}, not "
                f"{given.name!r}: open one MemOS (MemOS(path, embedder=...)) and pass it to every adapter")
    if llm is not None:
        reader = mem.llm_reader
        if reader is None or (reader is not llm and getattr(reader, "llm", None) is not llm):
            raise ValidationError(
                f"{where} is already open in this process with {'no' if reader is None else 'another'} LLM: open "
                "one MemOS (MemOS(path, llm=...)) and pass it to every adapter")


def _close_unused(key: Hashable, cubes: dict[str, Any], owned: set[str]) -> None:
    """Close the cubes a shared MemOS opened, once nothing references the MemOS (see :meth:`MemOS.close`)."""
    with _LOCK:
        ref = _OPEN.get(key)
        if ref is not None and ref() is None:
            del _OPEN[key]
            _FINALIZERS.pop(key, None)
    for name in list(cubes):
        if name in owned:
            cube = cubes.pop(name)
            try:
                cube.close()
            except Exception:  # noqa: BLE001 - closing the others matters more
                log.exception("closing cube %s of an unused shared MemOS failed", name)
    owned.clear()


def shared_count() -> int:
    """How many shared MemOS instances are open in this process now."""
    with _LOCK:
        return sum(1 for ref in _OPEN.values() if (m := ref()) is not None and _usable(m))


def _forget_all_in_child() -> None:
    """After fork: the parent's MemOS instances are not this process's (their connections, pools and threads
    belong to the parent); adapters in the child open their own."""
    global _LOCK
    _LOCK = threading.Lock()  # the parent may have held it while forking
    _OPEN.clear()
    for fin in _FINALIZERS.values():  # dropping an inherited MemOS here must not close the parent's handles
        fin.detach()
    _FINALIZERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all_in_child)
