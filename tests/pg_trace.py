"""libpq's own protocol trace (``PQtrace``) of every psycopg connection opened while a :class:`PQTrace` is installed,
one file per connection: what tests and ``benchmarks/pg_round_trips.py`` count round trips and statements from.

A statement is one ``Query`` or ``Bind`` message (psycopg prepares a statement after a few executions; later ones
send only ``Bind`` with the prepared name, resolved here from its ``Parse``); the client waits for the server after
each ``Sync`` (extended protocol; a pipeline sends one per sync point, not per statement) and each simple ``Query``.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

_PARSE = re.compile(r'^F\s+\d+\s+Parse\s+"([^"]+)"\s+(.*)$', re.M)
_MESSAGE = re.compile(r"F\s+\d+\s+(Query|Parse|Bind)\s+(.*)")
_WAIT = re.compile(r"F\s+\d+\s+(Sync|Query)\b")
_BIND = re.compile(r'"[^"]*"\s+"([^"]*)"')


class PQTrace:
    """Trace every psycopg connection opened from now on. With ``monkeypatch`` (pytest) the patch is undone with the
    test; without it, :meth:`close` undoes it."""

    def __init__(self, folder: Path, monkeypatch: Any = None) -> None:
        import psycopg

        self.folder = folder
        self.files: list[tuple[Path, Any]] = []
        self.marks: dict[Path, int] = {}
        self._lock = threading.Lock()
        self._orig = psycopg.Connection.__dict__["connect"]
        orig = psycopg.Connection.connect.__func__  # type: ignore[attr-defined]
        trace = self

        def connect(cls: Any, *args: Any, **kw: Any) -> Any:
            from psycopg import pq

            conn = orig(cls, *args, **kw)
            with trace._lock:
                path = trace.folder / f"conn{len(trace.files)}.trace"
                f = open(path, "wb", buffering=0)
                trace.files.append((path, f))
            conn.pgconn.trace(f.fileno())
            conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            return conn

        self._patched_here = monkeypatch is None
        if monkeypatch is not None:
            monkeypatch.setattr(psycopg.Connection, "connect", classmethod(connect))
        else:
            psycopg.Connection.connect = classmethod(connect)  # type: ignore[method-assign]

    def mark(self) -> None:
        """From now on: what :meth:`since_mark` and :meth:`statements` count."""
        with self._lock:
            self.marks = {p: p.stat().st_size for p, _ in self.files}

    def since_mark(self) -> dict[str, Any]:
        """Round trips, statements (their texts) and governance statements on every traced connection since
        :meth:`mark`."""
        trips = 0
        texts: list[str] = []
        with self._lock:
            files = list(self.files)
        for path, _ in files:
            data = path.read_bytes().decode("utf-8", "replace")
            named = {m.group(1): m.group(2) for m in _PARSE.finditer(data)}
            unnamed = ""
            for line in data[self.marks.get(path, 0):].splitlines():
                if not line.startswith("F"):
                    continue
                if _WAIT.match(line):
                    trips += 1
                m = _MESSAGE.match(line)
                if not m:
                    continue
                kind, rest = m.groups()
                if kind == "Parse":
                    if rest.startswith('""'):
                        unnamed = rest[3:]
                    continue  # counted at its Bind
                if kind == "Query":
                    texts.append(rest)
                else:
                    b = _BIND.match(rest)
                    texts.append(named.get(b.group(1), "?") if b and b.group(1) else unnamed)
        gov = sum(1 for t in texts if "gov_acl" in t or "gov_settings" in t)
        return {"round_trips": trips, "statements": len(texts), "governance": gov, "texts": texts}

    def statements(self) -> list[str]:
        """The statements sent on every traced connection since :meth:`mark`."""
        return list(self.since_mark()["texts"])

    def close(self) -> None:
        for _, f in self.files:
            f.close()
        if self._patched_here:
            import psycopg

            psycopg.Connection.connect = self._orig  # type: ignore[method-assign]
            self._patched_here = False
