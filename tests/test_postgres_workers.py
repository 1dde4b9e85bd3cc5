"""Many workers, one cube: 3 worker processes (plus one killed with SIGKILL mid-run) share one cube on a real
PostgreSQL server and a real Chroma server, adding, updating, searching and forgetting at once, while
PostgreSQL crashes mid-run and stays down for 12 s (the workers get typed BackendUnavailable, retry, recover). Afterwards every acknowledged write is there exactly once, the audit chain
verifies, every worker saw the others' writes, and nothing but typed errors was ever raised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import hashed_embed

WORKER = str(Path(__file__).with_name("pg_cube_worker.py"))

pytestmark = pytest.mark.slow


@pytest.fixture
def own_pg() -> Iterator[Any]:
    from pg_server import running_pg

    yield from running_pg("memos-workers")


def _acks(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split(" ", 3) for line in path.read_text().splitlines() if line.strip()]


def test_workers_share_one_cube_through_a_kill_and_a_restart(own_pg: Any, chroma_server: Any, tmp_path: Path) -> None:
    from memos_core.cube import MemCube

    store = own_pg.url() + "?cube=shared"
    with MemCube(store, index=chroma_server.url, workdir=tmp_path / "setup", embedder=hashed_embed) as cube:
        cube.add("seed memory about topic zero", id="seed")

    def spawn(w: str, n: int) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, WORKER, store, chroma_server.url, str(tmp_path / f"w{w}"), w, str(n),
                                 str(tmp_path / f"acks{w}")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    workers = [spawn(w, 120) for w in ("1", "2", "3")]
    victim = spawn("9", 100_000)
    deadline = time.time() + 120
    while len(_acks(tmp_path / "acks9")) < 10 and time.time() < deadline:
        time.sleep(0.05)
    assert victim.poll() is None, victim.communicate()[1][-3000:]
    os.kill(victim.pid, signal.SIGKILL)  # mid-run: possibly inside a transaction
    victim.wait()
    while min(len(_acks(tmp_path / f"acks{w}")) for w in ("1", "2", "3")) < 5 and time.time() < deadline:
        time.sleep(0.05)
    assert all(p.poll() is None for p in workers), "a worker finished before the restart: raise its op count"
    # A crash (immediate stop) while the workers run, and an outage longer than the pool's 10 s wait for a
    # connection (a shorter one is bridged by the pool without any error), then the server comes back.
    own_pg.stop("immediate")
    time.sleep(12)
    own_pg.start()
    summaries = []
    for p in workers:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    assert all(s["untyped"] == [] for s in summaries), json.dumps(summaries)[:3000]
    assert sum(s["unavailable"] for s in summaries) > 0, summaries  # the restart was seen, as a typed error
    for s in summaries:  # each worker's search saw the others' writes
        assert sorted(s["saw_workers"]) == sorted({"1", "2", "3"} - {s["worker"]}), summaries

    with MemCube(store, index=chroma_server.url, workdir=tmp_path / "check", embedder=hashed_embed) as cube:
        expected: dict[str, tuple[int, str]] = {}
        forgotten: set[str] = set()
        for w in ("1", "2", "3", "9"):
            for parts in _acks(tmp_path / f"acks{w}"):
                if parts[0] == "add":
                    expected[parts[1]] = (1, parts[2] + " " + parts[3])
                elif parts[0] == "update":
                    expected[parts[1]] = (int(parts[2]), parts[3])
                else:
                    forgotten.add(parts[1])
        assert len(expected) > 100
        items = {it.id: it for it in cube.records.iter_items()}
        for item_id, (version, content) in expected.items():
            if item_id in forgotten:
                assert item_id not in items, f"forgotten {item_id} is back"
                continue
            got = items.get(item_id)
            assert got is not None, f"acknowledged {item_id} lost"
            assert got.version >= version
            if got.version == version:
                assert got.content == content
            assert [v.version for v in cube.history(item_id)] == list(range(1, got.version + 1))
        assert len(items) == len(set(items))  # ids are unique: nothing duplicated
        report = cube.governance.verify()
        assert report.ok, report.problems[:3]
        # the shared vector index holds exactly the live memories after repair
        cube.repair_index()
        from memos_core.lifecycle import INDEXED

        assert cube.index.ids() == {i for i, it in items.items() if it.state in INDEXED}
