"""SQLite's integrity check (``PRAGMA quick_check``, which reads the whole records file) runs at open only when the
last shutdown may have been unclean: no other handle has the file open, and a handle changed the file and the last
one did not close cleanly (killed, crashed, power loss); or the file is shorter than its header says; or
``MEMOS_SQLITE_OPEN_CHECK=always``.
A damaged file found by the check is still :class:`CorruptData` at open.

``SQLiteRecordStore.open_check`` says why the check ran at that open (None: skipped); every check also logs an
INFO record ("integrity check at open").
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memos_core.errors import CorruptData
from memos_core.records.sqlite import SQLiteRecordStore

from conftest import hashed_embed

ROOT = Path(__file__).resolve().parents[1]
UNCLEAN = "the last shutdown was not a clean close"


def _open_state(db: Path) -> str | None:
    conn = sqlite3.connect(str(db))
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='open_state'").fetchone()
    finally:
        conn.close()
    return None if row is None else row[0]


class Holder:
    """A subprocess that opens the records file, optionally adds rows and checkpoints the log, prints 'ready' and
    waits: killed with SIGKILL (an unclean end) or told to close (stdin 'close')."""

    def __init__(self, db: Path, rows: int = 0, checkpoint: bool = False) -> None:
        code = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(ROOT)!r})
            from memos_core.records.sqlite import SQLiteRecordStore
            s = SQLiteRecordStore({str(db)!r})
            if {rows}:
                with s.transaction() as c:  # (a table of its own: an open does not read it, the check does)
                    c.execute("CREATE TABLE IF NOT EXISTS filler(k TEXT, v TEXT)")
                    c.executemany("INSERT INTO filler(k, v) VALUES(?, ?)",
                                  [(f"filler-{{i}}", "zzfiller " + "x" * 200) for i in range({rows})])
            if {checkpoint}:
                s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            print("ready", flush=True)
            if sys.stdin.readline().strip() == "close":
                s.close()
                print("closed", flush=True)
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            self.proc.kill()
            raise AssertionError(f"holder did not start: {line!r} {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL

    def close(self) -> None:
        out, err = self.proc.communicate("close\n", timeout=60)
        assert self.proc.returncode == 0, err
        assert out.strip() == "closed"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "records.sqlite3"


def test_clean_close_then_open_skips_the_check(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    s = SQLiteRecordStore(db)
    assert s.open_check is None  # a new file: nothing to check
    s.close()
    assert _open_state(db) == "closed"
    with caplog.at_level(logging.INFO, logger="memos_core.records.sqlite"):
        s = SQLiteRecordStore(db)
    assert s.open_check is None
    assert not [r for r in caplog.records if "integrity check at open" in r.getMessage()]
    assert _open_state(db) == "closed"  # a handle that has changed nothing has written nothing
    with s.transaction() as c:
        c.execute("INSERT INTO meta(key, value) VALUES('note', 'x')")
    assert _open_state(db) == "open"  # in the commit of its first change: a power loss from here finds it
    s.close()
    assert _open_state(db) == "closed"


def test_cube_clean_close_then_reopen_skips_the_check(tmp_path: Path) -> None:
    from memos_core.cube import MemCube

    path = tmp_path / "cube"
    with MemCube(path, embedder=hashed_embed) as cube:
        cube.add("the check reads the whole file")
    with MemCube(path, embedder=hashed_embed) as cube:
        assert cube.records.open_check is None
        assert cube.search("check")[0].item.content == "the check reads the whole file"


def test_kill9_then_open_runs_the_check(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    SQLiteRecordStore(db).close()
    h = Holder(db, rows=50)
    h.kill9()
    assert Path(str(db) + "-wal").exists()  # the killed process's log was left behind
    with caplog.at_level(logging.INFO, logger="memos_core.records.sqlite"):
        s = SQLiteRecordStore(db)
    assert s.open_check == UNCLEAN
    assert [r for r in caplog.records if "integrity check at open" in r.getMessage()]
    # what the killed process committed is there
    assert s._conn.execute("SELECT COUNT(*) FROM filler").fetchone()[0] == 50
    s.close()
    s = SQLiteRecordStore(db)  # that close was clean
    assert s.open_check is None
    s.close()


def test_file_from_an_older_version_is_checked_once(db: Path) -> None:
    SQLiteRecordStore(db).close()
    conn = sqlite3.connect(str(db))
    conn.execute("DELETE FROM meta WHERE key='open_state'")  # as a version without the mark left it
    conn.commit()
    conn.close()
    s = SQLiteRecordStore(db)
    assert s.open_check is not None and "older version" in s.open_check
    s.close()
    s = SQLiteRecordStore(db)
    assert s.open_check is None
    s.close()


def test_second_handle_in_one_process_does_not_check_and_only_the_last_close_marks(db: Path) -> None:
    SQLiteRecordStore(db).close()
    a = SQLiteRecordStore(db)
    b = SQLiteRecordStore(db)
    assert a.open_check is None and b.open_check is None
    with b.transaction() as c:
        c.execute("INSERT INTO meta(key, value) VALUES('note', 'x')")
    a.close()
    assert _open_state(db) == "open"  # b still has it open
    b.close()
    assert _open_state(db) == "closed"


def test_other_process_running_then_killed(db: Path) -> None:
    """While another process has the file open, an open skips the check and its close does not mark the file
    clean; once that process is killed, the next open (no other handle) runs the check."""
    SQLiteRecordStore(db).close()
    h = Holder(db, rows=1)
    try:
        s = SQLiteRecordStore(db)
        assert s.open_check is None  # the holder's open found the file clean; it is still running
        s.close()
        assert _open_state(db) == "open"  # not the last handle: no clean-close mark
    finally:
        h.kill9()
    s = SQLiteRecordStore(db)
    assert s.open_check == UNCLEAN
    s.close()


def test_other_process_closing_cleanly_last(db: Path) -> None:
    SQLiteRecordStore(db).close()
    h = Holder(db)
    s = SQLiteRecordStore(db)
    s.close()
    h.close()  # the last handle: marks it
    assert _open_state(db) == "closed"
    s = SQLiteRecordStore(db)
    assert s.open_check is None
    s.close()


def _corrupt_a_page(db: Path) -> None:
    """Overwrite the b-tree page that holds the filler rows (never page 1, the header) with garbage."""
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536
    at = data.find(b"zzfiller", page)
    assert at > 0
    start = at // page * page
    data[start:start + page] = bytes((i * 37 + 11) % 256 for i in range(page))
    db.write_bytes(bytes(data))


def test_corrupted_page_after_unclean_shutdown_is_corrupt_data(db: Path) -> None:
    SQLiteRecordStore(db).close()
    h = Holder(db, rows=400, checkpoint=True)  # the rows reach the main file; the process is then killed
    h.kill9()
    _corrupt_a_page(db)
    with pytest.raises(CorruptData, match="integrity check"):
        SQLiteRecordStore(db)
    with pytest.raises(CorruptData, match="integrity check"):  # still refused: the mark is still 'open', the check runs again
        SQLiteRecordStore(db)


def test_always_policy_checks_after_a_clean_close(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same damage after a clean close is not looked for by default (the check would read the whole file at
    every open); MEMOS_SQLITE_OPEN_CHECK=always runs it at every open and refuses the file."""
    SQLiteRecordStore(db).close()
    h = Holder(db, rows=400, checkpoint=True)
    h.close()
    _corrupt_a_page(db)
    s = SQLiteRecordStore(db)
    assert s.open_check is None  # the default: not looked for
    s.close()
    monkeypatch.setenv("MEMOS_SQLITE_OPEN_CHECK", "always")
    with pytest.raises(CorruptData, match="integrity check"):
        SQLiteRecordStore(db)
    monkeypatch.setenv("MEMOS_SQLITE_OPEN_CHECK", "sometimes")
    from memos_core.errors import ValidationError

    with pytest.raises(ValidationError):
        SQLiteRecordStore(db)


def test_cut_file_is_checked_even_after_a_clean_close(db: Path) -> None:
    h = Holder(db, rows=400)
    h.close()
    assert not Path(str(db) + "-wal").exists()
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptData):
        SQLiteRecordStore(db)


def test_failed_open_leaves_no_lock(db: Path) -> None:
    """A refused open releases the handle lock: a later open of the repaired file finds no other handle."""
    SQLiteRecordStore(db).close()
    h = Holder(db, rows=400, checkpoint=True)
    h.kill9()
    good = db.read_bytes()
    _corrupt_a_page(db)
    with pytest.raises(CorruptData):
        SQLiteRecordStore(db)
    db.write_bytes(good)  # restored from a copy
    s = SQLiteRecordStore(db)
    assert s.open_check == UNCLEAN  # it found no other handle (the failed one let go) and checked
    s.close()
    assert _open_state(db) == "closed"


def test_an_open_waits_while_another_handle_checks(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handle that is opening (checking) or closing holds the lock exclusively: another open waits for it, then
    opens without a check of its own; past the wait limit it is BackendUnavailable, never an untyped error."""
    import fcntl
    import threading

    import memos_core.records.sqlite as sq
    from memos_core.errors import BackendUnavailable

    SQLiteRecordStore(db).close()
    fd = os.open(str(db) + "-handles", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as an open mid-check holds it
    opened: list[SQLiteRecordStore] = []
    t = threading.Thread(target=lambda: opened.append(SQLiteRecordStore(db)))
    t.start()
    t.join(0.5)
    assert t.is_alive() and not opened  # waiting for the verdict
    fcntl.flock(fd, fcntl.LOCK_SH)  # the check is over; that handle stays open
    t.join(30)
    assert opened and opened[0].open_check is None
    with opened[0].transaction() as c:
        c.execute("INSERT INTO meta(key, value) VALUES('note', 'x')")
    opened[0].close()
    assert _open_state(db) == "open"  # another handle (ours) is still open: no clean-close mark
    fcntl.flock(fd, fcntl.LOCK_EX)
    monkeypatch.setattr(sq, "_OPEN_LOCK_WAIT_S", 0.2)
    with pytest.raises(BackendUnavailable, match="another handle"):
        SQLiteRecordStore(db)
    os.close(fd)


def test_no_flock_means_a_check_at_every_open(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses flock (some network file systems): the handles cannot be counted, so every open
    checks and no close marks the file clean."""
    import errno
    import fcntl

    SQLiteRecordStore(db).close()

    def refuse(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", refuse)
    for i in range(2):
        s = SQLiteRecordStore(db)
        assert s.open_check is not None and "no handle lock" in s.open_check
        with s.transaction() as c:
            c.execute("INSERT INTO meta(key, value) VALUES(?, 'x')", (f"note-{i}",))
        s.close()
        assert _open_state(db) == "open"


def test_a_process_killed_before_changing_anything_leaves_no_check(db: Path) -> None:
    """Only a handle that changed the file marks it: a process that opened it, only read, and was killed left
    nothing that could be damaged, so the next open skips the check (and an open/close that only reads writes
    nothing at all: no fsync)."""
    SQLiteRecordStore(db).close()
    h = Holder(db)
    h.kill9()
    s = SQLiteRecordStore(db)
    assert s.open_check is None
    s.close()


def test_a_refused_call_alone_marks_the_file(db: Path) -> None:
    """The audit record of a refused call is written outside transaction() (append_event_alone): it marks too."""
    SQLiteRecordStore(db).close()
    s = SQLiteRecordStore(db)
    s.append_event_alone(1.0, "mallory", "get", None, "denied", {"why": "test"})
    assert _open_state(db) == "open"
    s.close()
    assert _open_state(db) == "closed"
