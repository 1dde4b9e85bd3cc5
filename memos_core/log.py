"""Logging and progress for MemOS.

**Loggers.** Everything logs under the ``memos`` logger, one child per layer: ``memos.cube`` (opened, written,
repaired, rebuilt), ``memos.records``, ``memos.index`` (vector and lexical index), ``memos.reader``,
``memos.governance`` (refusals, erasure), ``memos.bundle`` (export, import), ``memos.scheduler``,
``memos.activation`` (KV caches), ``memos.parametric`` (LoRA), ``memos.embedding``, ``memos.os``, and the adapters'
``memos.langchain`` / ``memos.llamaindex``. The library adds no handler (a ``NullHandler`` on ``memos``), so
nothing is printed unless the application configures logging, e.g.::

    import logging
    logging.basicConfig(level=logging.INFO)            # or only: logging.getLogger("memos").setLevel(...)

What goes where: ``INFO`` says what happened with ids and counts only, never memory content, queries or
metadata values; ``WARNING`` is something a user should act on (an unavailable index, a skipped cube); ``DEBUG``
adds timings.

**Progress.** Long bulk operations (ingest of many memories, reindex, export/import, KV cache builds, LoRA
training) show a tqdm progress bar when they run in a terminal. ``progress=False`` on the call, or
``MEMOS_PROGRESS=0`` in the environment, turns it off; ``progress=True`` or ``MEMOS_PROGRESS=1`` turns it on even
when stderr is not a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Iterable, Iterator, TypeVar

__all__ = ["get_logger", "progress_enabled", "progress", "Progress", "PROGRESS_MIN"]

T = TypeVar("T")

logging.getLogger("memos").addHandler(logging.NullHandler())

#: module prefix -> logger name under ``memos``
_LAYERS = {
    "memos_core.cube": "memos.cube",
    "memos_core.records": "memos.records",
    "memos_core.plaintext": "memos.index",
    "memos_core.reader": "memos.reader",
    "memos_core.governance": "memos.governance",
    "memos_core.bundle": "memos.bundle",
    "memos_core.scheduler": "memos.scheduler",
    "memos_core.activation": "memos.activation",
    "memos_core.parametric": "memos.parametric",
    "memos_core.embedding": "memos.embedding",
    "memos_core.os": "memos.os",
    "memos_core.cli": "memos.cli",
    "memos_core.artifacts": "memos.artifacts",
    "memos_core.bench": "memos.bench",
    "memos_langchain": "memos.langchain",
    "memos_llamaindex": "memos.llamaindex",
}

#: bulk operations over fewer items than this show no progress bar (they take a moment at most)
PROGRESS_MIN = 200


def get_logger(module: str) -> logging.Logger:
    """The ``memos.*`` logger for a module name (``get_logger(__name__)``); a name outside the library, or one
    already under ``memos``, is used as given."""
    for prefix, name in _LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            return logging.getLogger(name)
    return logging.getLogger(module)


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to show a progress bar: the call's ``progress`` argument if given, else ``MEMOS_PROGRESS``
    (``0``/``1``), else only when stderr is a terminal."""
    if progress is not None:
        return bool(progress)
    env = os.environ.get("MEMOS_PROGRESS", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """A progress bar over ``total`` units, or nothing at all (same interface) when progress is off.

    ``with Progress(total, "embedding", unit="memory", progress=None) as bar: bar.update(n)``. tqdm is imported
    only when a bar is shown; without tqdm installed there is no bar.
    """

    def __init__(self, total: int | None, desc: str, *, unit: str = "it", progress: bool | None = None,
                 minimum: int = PROGRESS_MIN) -> None:
        self._bar: Any = None
        if (total is None or total >= minimum) and progress_enabled(progress):
            try:
                from tqdm.auto import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency
                return
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
             progress: bool | None = None, minimum: int = PROGRESS_MIN) -> Iterator[T]:
    """``items``, advancing a progress bar (see :class:`Progress`) as they are consumed."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(total, desc, unit=unit, progress=progress, minimum=minimum) as bar:
        for item in items:
            yield item
            bar.update(1)
