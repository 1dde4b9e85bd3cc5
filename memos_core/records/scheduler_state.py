"""The MemScheduler's own state: usage scores, jobs, activation caches, the LoRA queue, decisions, counters.

Kept apart from the cube's records on purpose: it is soft, per-deployment state about artefacts on local disk
(KV caches, adapters), written on every search hit. One SQLite file (``scheduler.sqlite3`` in the cube folder,
or any path) in WAL mode with ``synchronous=NORMAL``: it survives a process crash (kill -9); only an OS crash or
power loss can lose the last few usage updates. Jobs a dead worker had taken are taken again on open.

The scheduler (``memos_core/scheduler``) holds no SQL: it calls the typed methods below.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["SchedulerState", "JobRow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage(item_id TEXT PRIMARY KEY, score REAL NOT NULL, at REAL NOT NULL,
  hits INTEGER NOT NULL, injected INTEGER NOT NULL DEFAULT 0, last_hit REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload TEXT NOT NULL,
  state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, error TEXT, created REAL NOT NULL, updated REAL NOT NULL,
  result TEXT);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, id);
CREATE TABLE IF NOT EXISTS activation(item_id TEXT PRIMARY KEY, version INTEGER NOT NULL, artifact_id TEXT NOT NULL,
  bytes INTEGER NOT NULL, tokens INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS lora(item_id TEXT NOT NULL, version INTEGER NOT NULL, state TEXT NOT NULL,
  adapter_id TEXT, updated REAL NOT NULL, PRIMARY KEY(item_id, version));
CREATE TABLE IF NOT EXISTS decisions(seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, policy TEXT NOT NULL,
  action TEXT NOT NULL, item_ids TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value REAL NOT NULL);
"""

#: (id, kind, payload JSON, state, attempts, error, result JSON or None)
JobRow = tuple[int, str, str, str, int, "str | None", "str | None"]


def _in(n: int) -> str:
    return ",".join("?" * n)


class SchedulerState:
    """The scheduler's tables in one SQLite file. Thread-safe (one lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # usage is soft state written on every hit: NORMAL survives a process crash (kill -9) in WAL mode and
        # avoids an fsync per search; only an OS crash/power loss can lose the last few updates.
        self._db.execute("PRAGMA synchronous=NORMAL")
        for stmt in _SCHEMA.strip().split(";"):
            if stmt.strip():
                self._db.execute(stmt)
        if "result" not in {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}:
            self._db.execute("ALTER TABLE jobs ADD COLUMN result TEXT")  # databases from before job results
        # jobs a dead worker had taken are taken again (no lost jobs on restart)
        self._db.execute("UPDATE jobs SET state='pending' WHERE state='running'")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One ``BEGIN IMMEDIATE ... COMMIT``; the methods called inside join it."""
        with self.lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self.lock:
            self._db.close()

    # ------------------------------------------------------------------ usage and counters
    def usage_of(self, item_id: str) -> tuple[float, float] | None:
        """(score, at) of one memory."""
        with self.lock:
            row = self._db.execute("SELECT score, at FROM usage WHERE item_id=?", (item_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def put_usage(self, item_id: str, score: float, at: float, injected: bool) -> None:
        with self.lock:
            self._db.execute(
                "INSERT INTO usage(item_id, score, at, hits, injected, last_hit) VALUES(?,?,?,1,?,?) "
                "ON CONFLICT(item_id) DO UPDATE SET score=excluded.score, at=excluded.at, hits=hits+1, "
                "injected=injected+excluded.injected, last_hit=excluded.last_hit",
                (item_id, score, at, int(injected), at))

    def usage(self) -> list[tuple[str, float, float, int, float]]:
        """(item id, score, at, hits, last hit) of every tracked memory."""
        with self.lock:
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                "SELECT item_id, score, at, hits, last_hit FROM usage").fetchall()]

    def bump(self, name: str, by: float) -> None:
        with self.lock:
            self._db.execute("INSERT INTO counters(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET "
                             "value=value+excluded.value", (name, by))

    def counters(self) -> dict[str, float]:
        with self.lock:
            return dict(self._db.execute("SELECT name, value FROM counters").fetchall())

    # ------------------------------------------------------------------ activation caches and the LoRA queue
    def activation(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            rows = self._db.execute("SELECT item_id, version, artifact_id, bytes, tokens, created FROM activation")
            return {r[0]: {"version": r[1], "artifact_id": r[2], "bytes": r[3], "tokens": r[4], "created": r[5]}
                    for r in rows}

    def put_activation(self, item_id: str, version: int, artifact_id: str, nbytes: int, tokens: int,
                       at: float) -> None:
        with self.lock:
            self._db.execute("INSERT OR REPLACE INTO activation(item_id, version, artifact_id, bytes, tokens, created) "
                             "VALUES(?,?,?,?,?,?)", (item_id, version, artifact_id, nbytes, tokens, at))

    def delete_activation(self, item_id: str) -> None:
        with self.lock:
            self._db.execute("DELETE FROM activation WHERE item_id=?", (item_id,))

    def lora(self) -> list[tuple[str, int, str, str | None]]:
        """(item id, version, state, adapter id), by item and version."""
        with self.lock:
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                "SELECT item_id, version, state, adapter_id FROM lora ORDER BY item_id, version")]

    def put_lora(self, item_id: str, version: int, state: str, adapter_id: str | None, at: float) -> None:
        with self.lock:
            self._db.execute("INSERT OR REPLACE INTO lora(item_id, version, state, adapter_id, updated) "
                             "VALUES(?,?,?,?,?)", (item_id, version, state, adapter_id, at))

    def fail_queued_lora(self, item_ids: Sequence[str], at: float) -> None:
        with self.lock:
            self._db.execute(f"UPDATE lora SET state='failed', updated=? WHERE state='queued' AND item_id IN "
                             f"({_in(len(item_ids))})", (at, *item_ids))

    def release_queued_lora(self, item_ids: Sequence[str]) -> None:
        with self.lock:
            self._db.execute(f"DELETE FROM lora WHERE state='queued' AND item_id IN ({_in(len(item_ids))})",
                             tuple(item_ids))

    # ------------------------------------------------------------------ decisions and jobs
    def add_decision(self, at: float, policy: str, action: str, item_ids: Sequence[str], reason: str) -> None:
        with self.lock:
            self._db.execute("INSERT INTO decisions(at, policy, action, item_ids, reason) VALUES(?,?,?,?,?)",
                             (at, policy, action, json.dumps(list(item_ids)), reason))

    def decisions(self, limit: int) -> list[tuple[int, float, str, str, list[str], str]]:
        """The newest ``limit`` decisions, oldest first: (seq, at, policy, action, item ids, reason)."""
        with self.lock:
            rows = self._db.execute("SELECT seq, at, policy, action, item_ids, reason FROM decisions ORDER BY seq DESC "
                                    "LIMIT ?", (limit,)).fetchall()
        return [(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in reversed(rows)]

    def open_jobs(self) -> set[tuple[str, str]]:
        """(kind, payload JSON) of pending and running jobs."""
        with self.lock:
            return {(r[0], r[1]) for r in self._db.execute(
                "SELECT kind, payload FROM jobs WHERE state IN ('pending','running')")}

    def add_job(self, kind: str, payload: str, at: float) -> None:
        with self.lock:
            self._db.execute("INSERT INTO jobs(kind, payload, state, created, updated) VALUES(?,?,'pending',?,?)",
                             (kind, payload, at, at))

    def job_payloads(self, kind: str, states: Sequence[str]) -> list[str]:
        with self.lock:
            return [r[0] for r in self._db.execute(
                f"SELECT payload FROM jobs WHERE kind=? AND state IN ({_in(len(states))})", (kind, *states))]

    def jobs(self, state: str | None = None) -> list[JobRow]:
        q = "SELECT id, kind, payload, state, attempts, error, result FROM jobs"
        args: tuple[Any, ...] = ()
        if state is not None:
            q += " WHERE state=?"
            args = (state,)
        with self.lock:
            return [tuple(r) for r in self._db.execute(q + " ORDER BY id", args).fetchall()]  # type: ignore[misc]

    def pending_jobs(self, kinds: Sequence[str], limit: int) -> list[tuple[int, str, str, int]]:
        """(id, kind, payload, attempts) of the oldest pending jobs of these kinds."""
        with self.lock:
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                f"SELECT id, kind, payload, attempts FROM jobs WHERE state='pending' AND kind IN ({_in(len(kinds))}) "
                "ORDER BY id LIMIT ?", (*kinds, limit)).fetchall()]

    def start_job(self, job_id: int, at: float) -> None:
        with self.lock:
            self._db.execute("UPDATE jobs SET state='running', attempts=attempts+1, updated=? WHERE id=?", (at, job_id))

    def finish_job(self, job_id: int, state: str, error: str | None, result: str | None, at: float) -> None:
        with self.lock:
            self._db.execute("UPDATE jobs SET state=?, error=?, result=?, updated=? WHERE id=?",
                             (state, error, result, at, job_id))

    def set_job_state(self, job_id: int | None, state: str) -> None:
        """Force a job's state (every job when ``job_id`` is None): recovery tools and tests."""
        with self.lock:
            if job_id is None:
                self._db.execute("UPDATE jobs SET state=?", (state,))
            else:
                self._db.execute("UPDATE jobs SET state=? WHERE id=?", (state, job_id))

    def counts(self) -> tuple[dict[str, int], dict[str, int], int]:
        """(jobs by state, LoRA entries by state, tracked memories)."""
        with self.lock:
            jobs = dict(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            lora = dict(self._db.execute("SELECT state, COUNT(*) FROM lora GROUP BY state").fetchall())
            tracked = self._db.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
        return jobs, lora, tracked
