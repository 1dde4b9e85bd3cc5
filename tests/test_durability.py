"""Durability: an acknowledged add survives kill -9, and the derived vector index is repaired on open.

A writer subprocess adds memories one per transaction and prints each id once ``add`` returned (flushed). The
test SIGKILLs it at a random moment, reopens the cube and checks that every acknowledged memory is there,
that SQLite's integrity check passes and that the vector index agrees with the records.

Each child's output is read through one path only: a reader thread takes every line of its stdout into a queue
(:class:`_Writer`), and the test waits on that queue. Mixing ``proc.stdout.readline()`` with
``proc.communicate()`` loses lines: ``readline`` fills the file object's buffer with whatever the pipe holds,
and ``communicate`` then reads the file descriptor directly, past that buffer (an acknowledged id went missing
this way on a loaded machine). stderr goes to a file, so a chatty child can never block on a full pipe.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import TESTS_DIR, hashed_embed

from memos_core.cube import MemCube
from memos_core.errors import BackendUnavailable

WORDS = ("river mountain lantern copper violet harbor meadow falcon quartz saffron ember glacier orchard "
         "thunder willow canyon pepper marble velvet comet").split()

WRITER = textwrap.dedent(
    f"""
    import os, signal, sys
    sys.path.insert(0, {str(TESTS_DIR)!r})
    from conftest import hashed_embed
    from test_durability import content
    from memos_core.cube import MemCube

    path, tag, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    cube = MemCube(path, embedder=hashed_embed)
    if mode == "die-before-index":
        # the records commit, then the process dies before the vector index hears of it
        def die(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        cube.index.upsert = die
    print("READY", flush=True)
    limit = int(mode.split(":")[1]) if mode.startswith("add:") else None
    i = 0
    while limit is None or i < limit:
        item = cube.add(content(tag, i), id=f"{{tag}}-{{i}}", metadata={{"i": i}}, tags=[tag])
        print(item.id, flush=True)
        i += 1
    cube.close()
    """
)


def content(tag: str, i: int) -> str:
    """The deterministic text of the writer's i-th memory in round ``tag`` (the writer imports this)."""
    rng = random.Random(f"{tag}/{i}")
    return f"memory {tag} {i} " + " ".join(rng.choice(WORDS) for _ in range(8)) + f" z{tag}x{i}"



class _Writer:
    """A writer subprocess whose stdout is read by one thread, line by line, into a queue (see the module
    docstring); stderr goes to a file."""

    def __init__(self, proc: subprocess.Popen, stderr_path: Path) -> None:
        self.proc = proc
        self.stderr_path = stderr_path
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, name=f"writer-{proc.pid}-stdout", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:  # yields a final line without "\n" too, at EOF
                self._lines.put(line)
        finally:
            self._lines.put(None)  # EOF

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def readline(self, timeout: float = 240.0) -> str:
        """The next line without its newline; "" at EOF. Raises AssertionError after ``timeout`` seconds."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError(f"writer printed nothing for {timeout} s: {self.stderr()}") from None
        if line is None:
            self._lines.put(None)  # stay at EOF for later calls
            return ""
        return line.rstrip("\n")

    def collect(self, timeout: float = 60.0) -> list[str]:
        """Wait for the process to end and return every line it printed that was not read yet. A final line
        without "\n" (the kill came between the id and its newline) is complete: the id was written in one
        call, after ``add`` returned."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        assert not self._reader.is_alive(), "stdout reader still running after the writer ended"
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        out: list[str] = []
        while True:
            line = self._lines.get_nowait()
            if line is None:
                self._lines.put(None)
                return out
            if line.strip():
                out.append(line.rstrip("\n"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=60)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


def _spawn(tmp: Path, cube_path: Path, tag: str, mode: str = "normal") -> _Writer:
    script = tmp / "writer.py"
    if not script.exists():
        script.write_text(WRITER)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    err_path = tmp / f"writer-{tag}.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(cube_path), tag, mode], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
    return _Writer(proc, err_path)


def _wait_ready(w: _Writer) -> None:
    line = w.readline()
    if line.strip() != "READY":
        w.kill()
        raise AssertionError(f"writer did not start: {line!r} {w.stderr()}")


def _collect(w: _Writer) -> list[str]:
    return w.collect(timeout=60)


def _check_consistent(cube_path: Path, acked: list[str], tag: str) -> int:
    conn = sqlite3.connect(str(cube_path / "records.sqlite3"))
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    with MemCube(cube_path, embedder=hashed_embed) as cube:
        for item_id in acked:
            item = cube.get(item_id)
            n = int(item_id.rsplit("-", 1)[1])
            assert item.content == content(tag, n) and item.metadata == {"i": n}
            assert [v.version for v in cube.history(item_id)] == [1]
        # the round's items are exactly the acknowledged ones, plus at most the one in flight at the kill
        mine = sorted(int(i.id.rsplit("-", 1)[1]) for i in cube.list({"tags_all": [tag]}, limit=100_000))
        assert mine[:len(acked)] == list(range(len(acked)))
        assert len(mine) - len(acked) in (0, 1)
        # the vector index agrees with the records
        total = cube.count()
        conn = cube.records._conn
        n_emb = conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        assert n_emb == total
        assert cube.index.count() == n_emb
        all_ids = {r[0] for r in conn.execute("SELECT id FROM items")}
        assert cube.index.ids() == all_ids
        # and search finds what was acknowledged (dense through the ANN index, lexical, hybrid)
        sample = acked[-3:] + random.Random(tag).sample(acked, min(5, len(acked)))
        for item_id in sample:
            n = int(item_id.rsplit("-", 1)[1])
            dense = [h.item.id for h in cube.search(content(tag, n), k=5, mode="dense", record_usage=False)]
            assert item_id in dense
            assert cube.search(f"z{tag}x{n}", k=1, mode="lexical")[0].item.id == item_id
            assert item_id in [h.item.id for h in cube.search(content(tag, n), k=5, record_usage=False)]
        assert not cube.index_degraded  # the ANN index answered; no fallback to an exact scan
        return total


@pytest.mark.slow
@pytest.mark.integration
def test_acknowledged_adds_survive_repeated_kill_9(tmp_path) -> None:
    cube_path = tmp_path / "cube"
    MemCube(cube_path, embedder=hashed_embed).close()
    rng = random.Random(20240501)
    total_acked = 0
    previous_total = 0
    for rnd in range(6):
        tag = f"r{rnd}"
        proc = _spawn(tmp_path, cube_path, tag)
        _wait_ready(proc)
        first = proc.readline().strip()  # at least one acknowledged add per round, however slow the box
        time.sleep(rng.uniform(0.0, 0.7))
        proc.kill()
        acked = [first] + _collect(proc)
        assert proc.returncode == -signal.SIGKILL
        assert first == f"{tag}-0"
        total_acked += len(acked)
        total = _check_consistent(cube_path, acked, tag)
        assert total >= previous_total + len(acked)  # earlier rounds' memories are all still there
        previous_total = total
    assert total_acked >= 6


@pytest.mark.slow
@pytest.mark.integration
def test_crash_between_records_commit_and_index_write_is_repaired(tmp_path) -> None:
    cube_path = tmp_path / "cube"
    with MemCube(cube_path, embedder=hashed_embed) as cube:
        cube.add("an older memory that was fully indexed")
    proc = _spawn(tmp_path, cube_path, "dx", mode="die-before-index")
    _wait_ready(proc)
    acked = _collect(proc)
    assert proc.returncode == -signal.SIGKILL
    assert acked == []  # it died inside the first add, before returning
    # the records committed the row and marked it pending for the index ...
    conn = sqlite3.connect(str(cube_path / "records.sqlite3"))
    try:
        pending = conn.execute("SELECT COUNT(*) FROM vec_pending").fetchone()[0]
        assert conn.execute("SELECT COUNT(*) FROM items WHERE id='dx-0'").fetchone()[0] == 1
    finally:
        conn.close()
    assert pending >= 1
    # ... and opening the cube repairs the index from the records
    with MemCube(cube_path, embedder=hashed_embed) as cube:
        assert cube.records.pending_vectors() == []  # applied and cleared on open
        assert cube.index.count() == 2
        assert "dx-0" in cube.index.ids()
        hits = cube.search(content("dx", 0), k=1, mode="dense")
        assert hits[0].item.id == "dx-0"


def test_index_failure_after_commit_is_durable_and_repaired(cube_path, monkeypatch) -> None:
    cube = MemCube(cube_path, embedder=hashed_embed)
    cube.add("first memory, indexed normally")

    def down(*a, **kw):
        raise BackendUnavailable("simulated: chroma write failed after the records commit")

    monkeypatch.setattr(cube.index, "upsert", down)
    item = cube.add("second memory about the lighthouse keeper")  # returns: the records are the truth
    assert cube.index_degraded
    assert cube.get(item.id).content == "second memory about the lighthouse keeper"
    assert cube.index.count() == 1 and item.id not in cube.index.ids()
    # search still finds it (lexical, and dense by exact scan while the index is degraded)
    assert cube.search("lighthouse keeper", k=1, mode="lexical")[0].item.id == item.id
    assert cube.search("second memory about the lighthouse keeper", k=1, mode="dense")[0].item.id == item.id
    monkeypatch.undo()
    cube.close()
    with MemCube(cube_path, embedder=hashed_embed) as cube:
        assert not cube.index_degraded
        assert cube.index.count() == 2 and item.id in cube.index.ids()
        assert cube.records.pending_vectors() == []
        assert cube.search("second memory about the lighthouse keeper", k=1, mode="dense")[0].item.id == item.id


def test_index_outage_is_healed_by_the_next_write(cube_path, monkeypatch) -> None:
    with MemCube(cube_path, embedder=hashed_embed) as cube:
        real = cube.index.upsert

        def down(*a, **kw):
            raise BackendUnavailable("simulated outage")

        monkeypatch.setattr(cube.index, "upsert", down)
        a = cube.add("written during the outage")
        monkeypatch.setattr(cube.index, "upsert", real)
        b = cube.add("written after the outage")
        assert not cube.index_degraded
        assert cube.index.ids() == {a.id, b.id}


def test_records_are_fsynced_wal(cube) -> None:
    conn = cube.records._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: every commit is fsync'd


@pytest.mark.integration
def test_reopen_in_the_same_process_sees_another_process_writes(tmp_path) -> None:
    """A long-lived process closes its cube, a CLI/other process adds to it, the first process reopens it."""
    cube_path = tmp_path / "cube"
    with MemCube(cube_path, embedder=hashed_embed) as cube:
        cube.add_many([f"local memory {i} about gardening" for i in range(5)])
        cube.search("gardening", k=3)
    proc = _spawn(tmp_path, cube_path, "ext", mode="add:30")
    _wait_ready(proc)
    acked = _collect(proc)
    assert proc.returncode == 0 and len(acked) == 30
    with MemCube(cube_path, embedder=hashed_embed) as cube:
        assert cube.index.count() == 35
        for n in (0, 17, 29):
            hits = cube.search(content("ext", n), k=3, mode="dense")
            assert hits[0].item.id == f"ext-{n}"
        assert not cube.index_degraded  # the ANN index itself was current, no fallback scan


def test_the_writer_harness_never_loses_a_line(tmp_path) -> None:
    """The flake this harness fixes: a child prints READY and two ids at once; ``proc.stdout.readline()`` took
    READY and buffered the ids, and ``proc.communicate()`` then read past that buffer, so the ids were lost
    (``acked`` lacked ``r1-1``). Reading through :class:`_Writer` alone sees every line, the last one even
    without its newline."""
    script = ("import sys, time\n"
              "sys.stdout.write('READY\\nx-0\\nx-1\\n'); sys.stdout.flush()\n"
              "time.sleep(0.3)\n"
              "sys.stdout.write('x-2'); sys.stdout.flush()\n")
    err = tmp_path / "child.stderr"
    with open(err, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=fh, text=True)
    w = _Writer(proc, err)
    time.sleep(0.1)  # let every line of the first write reach the pipe before the first read
    _wait_ready(w)
    assert w.collect() == ["x-0", "x-1", "x-2"]
    assert w.returncode == 0
    assert w.readline() == ""  # EOF stays EOF
