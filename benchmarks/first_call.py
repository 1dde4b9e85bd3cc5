"""How soon after opening can an application use its memory, and does the first call block an event loop?

    python benchmarks/first_call.py [--memories 200] [--json]

Each scenario runs in a fresh Python process (nothing loaded, as when an application starts):

* ``search_first``: ``MemOS(path)`` on an existing folder, then one ``search`` at once. Reports ``open_s``,
  ``first_search_s`` and ``open_to_search_s`` (from the start of ``MemOS(...)`` to the first result: the target is
  under 3 s on a 2-core machine);
* ``add_first``: open, then one ``add``, then one ``search`` (``open_to_add_s``, ``add_then_search_s``);
* ``async_first``: inside a running event loop with a heartbeat task (a 5 ms sleep in a loop), open (in a
  worker thread, as an async application should), then ``await mem.aadd(...)``, ``await mem.asearch(...)`` and a
  LangChain ``MemOSRetriever.ainvoke``; reports the event loop's longest stall (``loop_max_stall_ms``: the largest
  heartbeat lateness) and the time to the first async result;
* each again with an empty model cache (``cold_*``: ``MEMOS_CACHE_DIR`` pointing at a new folder), as on a machine
  that never ran MemOS: the query encoder is then exported once in the background and PyTorch serves meanwhile.

``import_s`` (``import memos_core``) is reported apart: it is paid once per process whatever happens next.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

PRELUDE = """
import json, os, sys, time
t0 = time.perf_counter()
import memos_core
from memos_core import MemOS
t_import = time.perf_counter() - t0
path = sys.argv[1]
out = {"import_s": round(t_import, 3)}
"""

SEARCH_FIRST = PRELUDE + """
t = time.perf_counter()
mem = MemOS(path)
out["open_s"] = round(time.perf_counter() - t, 3)
t1 = time.perf_counter()
hits = mem.search("Where did Ann travel last summer?", user_id="user-1", k=5)
out["first_search_s"] = round(time.perf_counter() - t1, 3)
out["open_to_search_s"] = round(time.perf_counter() - t, 3)
out["hits"] = len(hits)
t1 = time.perf_counter()
mem.search("What does Bob cook on Sundays?", user_id="user-2", k=5)
out["second_search_ms"] = round((time.perf_counter() - t1) * 1000, 1)
out["torch_loaded"] = "torch" in sys.modules
mem.close()
print(json.dumps(out))
"""

ADD_FIRST = PRELUDE + """
t = time.perf_counter()
mem = MemOS(path)
mem.add(f"Ann booked a ferry to the Azores for the first week of June (run {os.getpid()})", user_id="user-1")
out["open_to_add_s"] = round(time.perf_counter() - t, 3)
t1 = time.perf_counter()
hits = mem.search("When is Ann's ferry?", user_id="user-1", k=5)
out["add_then_search_s"] = round(time.perf_counter() - t1, 3)
out["found_the_new_memory"] = any("ferry" in h.item.content for h in hits)
out["torch_loaded"] = "torch" in sys.modules
mem.close()
print(json.dumps(out))
"""

ASYNC_FIRST = PRELUDE + """
import asyncio

async def main():
    stalls = []
    stop = asyncio.Event()

    async def heartbeat():
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            stalls.append(time.perf_counter() - t - 0.005)

    try:  # an application imports its frameworks at start-up, before serving
        from memos_langchain import MemOSRetriever
    except ImportError:
        MemOSRetriever = None
    hb = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.05)
    phases = {}

    def mark(name):
        phases[name] = (max(stalls) * 1000 if stalls else 0.0)
        stalls.clear()

    t = time.perf_counter()
    mark("before")
    mem = await asyncio.to_thread(MemOS, path)
    mark("open")
    await mem.aadd(f"Ann booked a ferry to the Azores for the first week of June (run {os.getpid()})",
                   user_id="user-1")
    out["open_to_aadd_s"] = round(time.perf_counter() - t, 3)
    mark("aadd")
    await mem.asearch("When is Ann's ferry?", user_id="user-1", k=5)
    out["open_to_asearch_s"] = round(time.perf_counter() - t, 3)
    mark("asearch")
    if MemOSRetriever is not None:
        docs = await MemOSRetriever(memory=mem, user_id="user-1").ainvoke("Where is Ann going in June?")
        out["retriever_docs"] = len(docs)
        mark("retriever_ainvoke")
    out["open_to_all_s"] = round(time.perf_counter() - t, 3)
    stop.set()
    await hb
    mark("end")
    out["loop_max_stall_ms"] = round(max(v for k, v in phases.items() if k != "before"), 1)
    out["loop_stall_ms_by_phase"] = {k: round(v, 1) for k, v in phases.items() if k not in ("before", "end")}
    await asyncio.to_thread(mem.close)

asyncio.run(main())
print(json.dumps(out))
"""


def _prepare(folder: Path, memories: int) -> None:
    """A MemOS folder holding ``memories`` memories (synthetic, 50 users), built in this process."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from search_scale import make_memories

    from memos_core import MemOS

    with MemOS(folder) as mem:
        specs = make_memories(memories)
        mem.cubes["default"].add_many(specs, progress=False)


def _run(script: str, folder: Path, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(folder)], capture_output=True,
                          text=True, env=env, timeout=600, cwd=str(ROOT))
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(memories: int = 200, cold: bool = True) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="memos-first-call-"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", MEMOS_PROGRESS="0")
    _prepare(work / "mem", memories)  # also records the query encoder in the user cache when it is not there yet
    out: dict[str, Any] = {"memories": memories}
    scenarios = {"search_first": SEARCH_FIRST, "add_first": ADD_FIRST, "async_first": ASYNC_FIRST}
    for name, script in scenarios.items():
        out[name] = _run(script, work / "mem", env)
    if cold:
        for name, script in scenarios.items():
            cold_env = dict(env, MEMOS_CACHE_DIR=str(work / f"cache-{name}"))
            out[f"cold_{name}"] = _run(script, work / "mem", cold_env)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--memories", type=int, default=200)
    ap.add_argument("--no-cold", action="store_true", help="skip the empty-model-cache runs")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rep = run(a.memories, cold=not a.no_cold)
    if a.json:
        print(json.dumps(rep))
    else:
        for k, v in rep.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
