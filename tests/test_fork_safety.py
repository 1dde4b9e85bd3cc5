"""MemOS across fork() (gunicorn --preload, multiprocessing's "fork" start method), with real forks.

In the child, a MemOS/MemCube opened by the parent refuses every operation with a typed ForkedProcessError
(its connections, pools and threads are the parent's), and closing it there touches nothing of the parent's;
a MemOS opened in the child works (the process-wide pools and locks, Chroma's client cache and the shared
MemOS registry start fresh there), and so does the parent after the child is gone."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import TESTS_DIR, hashed_embed

from memos_core import ForkedProcessError, MemOS
from memos_core.os import resolve_memory
from memos_core.shared import shared_count

_CTX = mp.get_context("fork")


def _in_child(fn: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Run ``fn`` in a forked child and return what it returned (a hang fails the test, it does not hang it)."""
    q = _CTX.Queue()

    def target() -> None:
        import faulthandler, sys
        faulthandler.dump_traceback_later(timeout - 10, exit=True, file=sys.stderr)
        try:
            q.put(("ok", fn()))
        except BaseException:  # noqa: BLE001 - sent back to the parent
            q.put(("error", traceback.format_exc()))

    p = _CTX.Process(target=target)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("the forked child hung")
    assert not q.empty(), f"the child died (exit code {p.exitcode})"
    status, value = q.get(timeout=10)
    assert status == "ok", value
    return value


def _refusals(mem: MemOS) -> dict[str, str]:
    """What each use of the parent's MemOS does in the child (the error's type name, or 'ran')."""
    cube = mem.cubes[mem.default_cube]
    out: dict[str, str] = {}
    for name, call in {
        "memos.search": lambda: mem.search("tram", user_id="ann"),
        "memos.add": lambda: mem.add("the ferry leaves at noon", user_id="ann", infer=False),
        "cube.search": lambda: cube.search("tram", user_id="ann"),
        "cube.get": lambda: cube.get("nope"),
        "cube.add": lambda: cube.add("a memory from the child", user_id="ann"),
        "records": lambda: cube.records.count(),
    }.items():
        try:
            call()
            out[name] = "ran"
        except ForkedProcessError as exc:
            assert "open MemOS/MemCube" in str(exc) and "after the fork" in str(exc)
            out[name] = "ForkedProcessError"
        except Exception as exc:  # noqa: BLE001 - reported
            out[name] = type(exc).__name__
    return out


def test_a_child_refuses_the_parents_memos_and_leaves_it_to_the_parent(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    mem = resolve_memory(str(folder), embedder=hashed_embed)  # as an adapter given a path opens it (shared)
    mem.add("the tram runs every ten minutes", user_id="ann", infer=False)
    assert [h.item.content for h in mem.search("tram", user_id="ann")] == ["the tram runs every ten minutes"]
    assert shared_count() >= 1

    def child() -> dict[str, Any]:
        refused = _refusals(mem)
        mem.close()  # touches nothing of the parent's, and does not wait for the parent's threads
        return {"refused": refused, "shared": shared_count()}

    got = _in_child(child)
    assert set(got["refused"].values()) == {"ForkedProcessError"}, got["refused"]
    assert got["shared"] == 0  # the child's registry starts empty: an adapter there opens its own MemOS
    # the parent's handles were not touched by the child: it goes on as before
    mem.add("the library lends umbrellas", user_id="ann", infer=False)
    found = {h.item.content for h in mem.search("library tram", k=5, user_id="ann")}
    assert found == {"the tram runs every ten minutes", "the library lends umbrellas"}
    mem.close()


@pytest.mark.integration
def test_a_child_opens_its_own_memos_after_the_parent_used_one(tmp_path: Path, chroma_server: Any) -> None:
    """A worker forked from a parent that used MemOS opens its own and uses it (records in SQLite, vectors on a
    Chroma server, as several processes share one cube): the pools, locks and registries start fresh there."""
    mem = MemOS(tmp_path / "parent", embedder=hashed_embed)
    mem.add("the tram runs every ten minutes", user_id="ann", infer=False)
    assert mem.search("tram", user_id="ann")

    def child() -> list[str]:
        own = MemOS(tmp_path / "child", embedder=hashed_embed, index=chroma_server.url)
        own.add("bob keeps bees", user_id="bob", infer=False)
        found = [h.item.content for h in own.search("bees", user_id="bob")]
        own.close()
        return found

    assert _in_child(child) == ["bob keeps bees"]
    assert mem.search("tram", user_id="ann")[0].item.content == "the tram runs every ten minutes"
    mem.close()


_PRELOAD_FORK = textwrap.dedent("""
    import multiprocessing as mp, sys
    sys.path.insert(0, {tests!r})
    from conftest import TESTS_DIR, hashed_embed
    from memos_core import MemOS

    def child(q):
        import chromadb  # the parent's preload thread may have been importing it when the fork happened
        from chromadb.api.shared_system_client import SharedSystemClient  # noqa: F401
        q.put("imported")

    mem = MemOS({path!r}, embedder=hashed_embed)  # starts the background preloads; fork at once
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        print("HUNG")
        sys.exit(1)
    print(q.get(timeout=5))
    mem.close()
""")


def test_a_fork_right_after_opening_does_not_hang_the_child_on_a_background_import(tmp_path: Path) -> None:
    """Opening a cube starts background preloads (the Chroma import, the embedding model); a child forked
    while one held Python's import lock hung on its first import of that module. The fork now waits for them.
    In a fresh interpreter (here the import has not happened yet)."""
    script = _PRELOAD_FORK.format(tests=str(TESTS_DIR), path=str(tmp_path / "a"))
    env = {**os.environ, "MEMOS_PRELOAD": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("imported"), (out.stdout, out.stderr[-2000:])


@pytest.mark.integration
def test_on_postgresql_a_child_leaves_the_parents_pool_alone(tmp_path: Path, pg_server: Any,
                                                             chroma_server: Any) -> None:
    from pg_server import fresh_schema_name

    url = pg_server.url() + "?cube=" + fresh_schema_name("fork")
    mem = MemOS(url, embedder=hashed_embed, index=chroma_server.url, workdir=tmp_path / "parent")
    mem.add("the tram runs every ten minutes", user_id="ann", infer=False)
    assert mem.search("tram", user_id="ann")

    def child() -> dict[str, Any]:
        refused = _refusals(mem)
        mem.close()
        own = MemOS(url, embedder=hashed_embed, index=chroma_server.url, workdir=tmp_path / "child")
        own.add("the museum opens at nine", user_id="ann", infer=False)
        own.close()
        return refused

    refused = _in_child(child)
    assert set(refused.values()) == {"ForkedProcessError"}, refused
    # the parent's pooled connections still work (the child neither used nor closed them)
    for _ in range(3):
        mem.add("the library lends umbrellas", user_id="ann", infer=False)
        assert mem.cubes[mem.default_cube].records.count() >= 2
    mem.close()
