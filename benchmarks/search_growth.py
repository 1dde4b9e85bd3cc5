"""How the library's own search cost grows with the cube: 10k, 100k and 1,000,000 memories.

    python benchmarks/search_growth.py [--sizes 10000,100000,1000000] [--queries 200] [--users 50] [--json]
    python benchmarks/search_growth.py --store 'postgresql://user@host/db?cube=growth' --index http://host:8000

Grows ONE cube in steps (10k, then to 100k, then to 1M) and times search at each size. The memories and queries
are those of ``benchmarks/search_scale.py`` (its template corpus, spread over ``--users`` user scopes, 50 by
default: with 5, a 100k cube has 20,000 memories per user); the vectors come from its
``HashedEmbedder`` (a hashed bag of words, 384 dimensions) so that a million memories ingest in tens of minutes
on two cores. **The query vector is precomputed**: every query is embedded once before the timed passes and the
embedder then answers from that table (a dict lookup), so the figures are the library's own search overhead
(normalising the query, BM25, the ANN query, the SQL filter on candidates, exact re-scoring, fusion, loading
the items, usage and audit writes) with no embedding in them. Add the embedder's cost per query for a real
model (all-MiniLM-L6-v2 on CPU: ~8-10 ms here).

Search cost depends on the vector distribution (HNSW's graph walk, how many candidates pass the filter): the
hashed vectors are sparse-ish bag-of-words vectors of a template corpus, not MiniLM's. Say which when quoting.

Ingest uses a public bulk path of the library: ``MemCube(vector_sync="deferred")`` and ``add_many`` in large
batches (the records commit each batch; the Chroma upsert runs on a background thread), then
``cube.repair_index()`` before each measurement, so that no row is still pending (search scores pending rows
exactly, which would be a different workload) and ``cube.index.count() == N``.

At each size it times, over the same Q queries (after one warm-up pass), wall time and the process's CPU time
of: ``search(q, k=10)`` (hybrid, unscoped), ``mode="dense"``, ``mode="lexical"`` (BM25) and a search scoped to
one of the users (``user_id=``). It reports p50/p95 of each and the growth ratios between consecutive sizes
(p95 at N2 / p95 at N1). Then an **interleaved** pass: unscoped hybrid, scoped hybrid and scoped hybrid with the
scope cache off (``Retriever.use_scope_cache = False``: the store is read every time, the path before the
cache), query by query in rotating order, so that a shared machine's load weighs on the three alike; it reports
their p50/p95 and the ratios scoped / unscoped (``interleaved``). A resumed run needs the same ``--users`` as
the run that built the cube. With ``--json`` the last stdout line is one JSON object.

Backends: by default SQLite + embedded Chroma in ``--workdir`` (a temp folder if not given). With ``--store
URL --index URL`` the cube lives in PostgreSQL (a fresh ``?cube=`` name) with a Chroma server. With
``--workdir`` (SQLite) or a ``--store`` cube that already holds memories from an earlier run of this script
(same seed), the run resumes: it adds only what is missing for each size (the hashed vectors are reproducible
because the script runs itself with ``PYTHONHASHSEED=0``).

The PostgreSQL 1M run of the README (2026-12-02) used a cluster and a server of its own::

    initdb -D /tmp/a14/pg -A trust -U postgres -E UTF8 --no-sync      # (as the postgres user when root)
    pg_ctl -D /tmp/a14/pg -o "-k /tmp/a14 -h 127.0.0.1 -p 55432 -c fsync=on -c max_connections=200 \
        -c shared_buffers=256MB" -l /tmp/a14/pg.log -w start && createdb -h 127.0.0.1 -p 55432 -U postgres growth
    chroma run --path /tmp/a14/chroma --host 127.0.0.1 --port 58000 &
    MEMOS_SCOPE_CACHE_MB=2048 python benchmarks/search_growth.py --store \
        'postgresql://postgres@127.0.0.1:55432/growth?cube=growth1m' --index http://127.0.0.1:58000 \
        --sizes 10000,100000,1000000 --server-pids POSTMASTER_PID,CHROMA_PID --json

What bounds a 1M ingest there is the Chroma server's HNSW insert (150-590 vectors/s on two shared cores). Where the
kernel's scheduler autogroups are on (``/proc/sys/kernel/sched_autogroup_enabled``), ``nice`` only ranks processes
within one session: each session (job) gets an equal share, so other jobs' ``nice 10`` does not give this run
priority; ``echo -10 > /proc/PID/autogroup`` (root) on the server's, the benchmark's and PostgreSQL's processes does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

if os.environ.get("PYTHONHASHSEED") != "0" and __name__ == "__main__":
    # HashedEmbedder uses hash(word): fix str hashing so vectors are the same in every run (resume, PG vs SQLite)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_scale import HashedEmbedder, make_memories, make_queries, pct  # noqa: E402

DEFAULT_SIZES = (10_000, 100_000, 1_000_000)


class PrecomputedQueries(HashedEmbedder):
    """The hashed embedder, with query vectors looked up in a table filled before the timed passes.

    ``embed_query`` of a text in the table is a dict lookup; a text not in it is embedded and counted in
    ``misses`` (the benchmark checks that no timed query missed)."""

    def __init__(self) -> None:
        self.table: dict[str, np.ndarray] = {}
        self.misses = 0
        self.recording = True

    def embed_query(self, text: str) -> np.ndarray:
        v = self.table.get(text)
        if v is None:
            v = super().embed_query(text)
            if self.recording:
                self.table[text] = v
            else:
                self.misses += 1
        return v


#: major page faults (pages read from disk: a cold page cache) of the timed calls, per label of _time_calls
FAULTS: dict[str, list[int]] = {}


def _majflt() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_majflt


#: bytes this process read from storage (not the page cache) during the timed calls, per label of _time_calls
READS: dict[str, int] = {}


def _read_bytes() -> int:
    """Bytes this process has caused to be fetched from storage (Linux ``/proc/self/io``: page-cache misses of
    ``read()`` and of memory-mapped pages alike); 0 where not available."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _time_calls(calls: list[Callable[[], Any]], label: str | None = None) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    faults = FAULTS.setdefault(label, []) if label else None
    r0 = _read_bytes()
    for fn in calls:
        f0 = _majflt()
        c0 = time.process_time()
        t0 = time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
        if faults is not None:
            faults.append(_majflt() - f0)
    if label:
        READS[label] = READS.get(label, 0) + _read_bytes() - r0
    return wall, cpu


def _stats(v: list[float]) -> dict[str, float]:
    return {"p50_ms": round(pct(v, 0.5), 2), "p95_ms": round(pct(v, 0.95), 2)}


def _fault_stats(label: str) -> dict[str, Any]:
    """Major page faults of one mode's timed calls: in all, and the share of calls that had any."""
    f = FAULTS.pop(label, [])
    return {"major_faults": sum(f), "calls_with_faults": round(sum(1 for x in f if x) / max(len(f), 1), 3),
            "disk_read_mb": round(READS.pop(label, 0) / 2**20, 2)}


#: processes whose CPU time counts as the servers' work per search (``--server-pids``; a process's live children
#: are counted too: PostgreSQL's backends are children of the postmaster). Empty: not measured.
SERVER_PIDS: list[int] = []


def _proc_cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu_s() -> float:
    """CPU seconds used so far by the ``SERVER_PIDS`` processes and their live children (Linux /proc)."""
    if not SERVER_PIDS:
        return 0.0
    roots = set(SERVER_PIDS)
    total = sum(_proc_cpu_s(p) for p in roots)
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid in roots:
                total += _proc_cpu_s(int(d))
    return total


def measure(cube: Any, emb: PrecomputedQueries, qs: list[str], users: int) -> dict[str, Any]:
    """Search timings at the cube's current size (query vectors precomputed)."""
    emb.recording = True
    r0, f0, t0 = _read_bytes(), _majflt(), time.perf_counter()
    for i, q in enumerate(qs):  # warm-up pass: fills the query table, loads the HNSW index, warms page caches
        cube.search(q, k=10)
        cube.search(q, k=10, user_id=f"user-{i % users}")
    warmup = {"s": round(time.perf_counter() - t0, 2), "disk_read_mb": round((_read_bytes() - r0) / 2**20, 1),
              "major_faults": _majflt() - f0}
    emb.recording = False
    emb.misses = 0
    legs = {
        "hybrid": [lambda q=q: cube.search(q, k=10) for q in qs],
        "dense_only": [lambda q=q: cube.search(q, k=10, mode="dense") for q in qs],
        "lexical_only": [lambda q=q: cube.search(q, k=10, mode="lexical") for q in qs],
        "hybrid_scoped_user": [lambda q=q, i=i: cube.search(q, k=10, user_id=f"user-{i % users}")
                               for i, q in enumerate(qs)],
    }
    out: dict[str, Any] = {"warmup": warmup}
    for name, calls in legs.items():
        s0 = server_cpu_s()
        wall, cpu = _time_calls(calls, name)
        out[name] = {**_stats(wall), "cpu": _stats(cpu), **_fault_stats(name)}
        if SERVER_PIDS:  # the servers' CPU per search, a mean (clock ticks are too coarse for one call)
            out[name]["server_cpu_mean_ms"] = round((server_cpu_s() - s0) * 1000.0 / len(calls), 2)
            out[name]["cpu_mean_ms"] = round(sum(cpu) / len(cpu), 2)
    out["interleaved"] = interleaved(cube, qs, users)
    if emb.misses:
        raise RuntimeError(f"{emb.misses} timed queries were embedded: the precomputed table missed them")
    hits = [len(cube.search(q, k=10)) for q in qs[:20]]
    if min(hits) != 10:
        raise RuntimeError(f"a query returned fewer than 10 hits: {hits}")
    return out


def interleaved(cube: Any, qs: list[str], users: int) -> dict[str, Any]:
    """Unscoped hybrid, scoped hybrid (scope cache) and scoped hybrid reading the store (cache off: the path
    before the cache), query by query in rotating order, so that a shared machine's load weighs on all three
    alike; p50/p95 of each (wall and CPU) and the ratios scoped / unscoped."""
    retriever = cube.retriever

    def scoped(q: str, i: int, cached: bool) -> None:
        retriever.use_scope_cache = cached
        try:
            cube.search(q, k=10, user_id=f"user-{i % users}")
        finally:
            retriever.use_scope_cache = True

    runs: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in ("hybrid", "scoped", "scoped_store")}
    for i, q in enumerate(qs):
        calls = [("hybrid", lambda q=q: cube.search(q, k=10)), ("scoped", lambda q=q, i=i: scoped(q, i, True)),
                 ("scoped_store", lambda q=q, i=i: scoped(q, i, False))]
        for name, fn in calls[i % 3:] + calls[:i % 3]:
            wall, cpu = _time_calls([fn])
            runs[name][0].extend(wall)
            runs[name][1].extend(cpu)
    out: dict[str, Any] = {k: {**_stats(w), "cpu": _stats(c)} for k, (w, c) in runs.items()}
    for k in ("scoped", "scoped_store"):
        out[f"{k}_vs_hybrid_p95"] = round(out[k]["p95_ms"] / max(out["hybrid"]["p95_ms"], 1e-9), 2)
        out[f"{k}_vs_hybrid_cpu_p95"] = round(out[k]["cpu"]["p95_ms"] / max(out["hybrid"]["cpu"]["p95_ms"], 1e-9), 2)
    return out


def evict(root: Path) -> int:
    """Drop the page-cache pages of every file under ``root`` (``posix_fadvise(DONTNEED)``): the next reads come
    from disk, as in the first run after a reboot or after other jobs pushed the cube out of memory. Only this
    cube's files are touched (nothing machine-wide). Returns the bytes of the files advised."""
    total = 0
    for f in root.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages are not dropped: write them first
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                total += os.fstat(fd).st_size
            finally:
                os.close(fd)
    return total


def run(sizes: list[int], queries: int = 200, batch: int = 2000, workdir: str | None = None, seed: int = 0,
        store: str | None = None, index: str | None = None, users: int = 50,
        log: Callable[[str], None] = print, cold: bool = False) -> dict[str, Any]:
    from memos_core.cube import MemCube, RetrievalConfig

    sizes = sorted(sizes)
    emb = PrecomputedQueries()
    qs = make_queries(queries, seed + 1)
    tmp = tempfile.TemporaryDirectory(prefix="memos-growth-") if workdir is None else None
    root = Path(workdir or tmp.name)  # type: ignore[union-attr]
    # query_cache=0: the library's own query-vector cache stays out of it; the vectors come from the table above
    cfg = RetrievalConfig(query_cache=0)
    if cold:
        if store is not None or workdir is None:
            raise ValueError("--cold needs a SQLite cube kept in --workdir (the server's files are not ours)")
        log(f"cold: dropped {evict(root) / 2**30:.2f} GiB of this cube's files from the page cache")
    if store is not None:
        cube = MemCube(store, index=index, workdir=root / "local", embedder=emb, retrieval=cfg,
                       vector_sync="deferred")
    else:
        cube = MemCube(root / "cube", embedder=emb, retrieval=cfg, vector_sync="deferred", chroma_url=index)
    steps: list[dict[str, Any]] = []
    try:
        have = cube.count()
        if have:
            log(f"resuming: the cube already holds {have} memories")
        specs: list[dict[str, Any]] = []
        if have < sizes[-1]:  # (a resumed cube already at the last size needs none: search timings only)
            t0 = time.perf_counter()
            specs = make_memories(sizes[-1], seed, users)
            log(f"generated {len(specs)} memory specs in {time.perf_counter() - t0:.0f} s")
        for n in sizes:
            if have > n:
                log(f"skipping N={n}: the cube already holds {have}")
                continue
            t_add = time.perf_counter()
            added = 0
            for s in range(have, n, batch):
                chunk = specs[s:min(s + batch, n)]
                cube.add_many(chunk, progress=False)
                added += len(chunk)
                if (s // batch) % 25 == 24:
                    el = time.perf_counter() - t_add
                    log(f"  {s + len(chunk)}/{n} ({added / el:.0f}/s, {el:.0f} s for this step)")
            cube.repair_index()  # every deferred vector applied: nothing left for search to score exactly
            ingest_s = time.perf_counter() - t_add
            have = cube.count()
            if have != n or cube.index.count() != n:
                raise RuntimeError(f"expected {n} memories and vectors, have {have} and {cube.index.count()}")
            log(f"N={n}: added {added} in {ingest_s:.0f} s ({added / ingest_s if added else 0:.0f}/s incl. the final "
                f"index sync); timing {len(qs)} queries x 4 modes")
            step = {"n": n, "added": added, "ingest_s": round(ingest_s, 1),
                    "ingest_per_s": round(added / ingest_s, 1) if added else None,
                    "load_avg_1m_before": round(os.getloadavg()[0], 2)}
            step.update(measure(cube, emb, qs, users))
            step["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
            steps.append(step)
            wu = step["warmup"]
            log(f"N={n}: warm-up pass ({2 * len(qs)} searches) {wu['s']} s, {wu['disk_read_mb']} MB read from disk, "
                f"{wu['major_faults']} major page faults")
            h = step["hybrid"]
            log(f"N={n}: hybrid p50 {h['p50_ms']} / p95 {h['p95_ms']} ms (CPU {h['cpu']['p50_ms']} / "
                f"{h['cpu']['p95_ms']} ms; {h['major_faults']} major page faults in "
                f"{h['calls_with_faults']:.0%} of the calls, {h['disk_read_mb']} MB read from disk" + (f"; CPU mean {h['cpu_mean_ms']} ms + servers "
                                                                   f"{h['server_cpu_mean_ms']} ms" if SERVER_PIDS else "")
                + ")")
            for name in ("dense_only", "lexical_only", "hybrid_scoped_user"):
                v = step[name]
                log(f"   {name:<20} p50 {v['p50_ms']:>8} / p95 {v['p95_ms']:>8} ms "
                    f"(CPU {v['cpu']['p50_ms']} / {v['cpu']['p95_ms']} ms; {v['major_faults']} major page faults, "
                    f"{v['disk_read_mb']} MB read from disk"
                    + (f"; CPU mean {v['cpu_mean_ms']} ms + servers {v['server_cpu_mean_ms']} ms" if SERVER_PIDS
                       else "") + ")")
            il = step["interleaved"]
            log("   interleaved: " + "; ".join(
                f"{k} p50 {il[k]['p50_ms']} / p95 {il[k]['p95_ms']} ms (CPU {il[k]['cpu']['p50_ms']} / "
                f"{il[k]['cpu']['p95_ms']})" for k in ("hybrid", "scoped", "scoped_store")) +
                f"; scoped/hybrid p95 x{il['scoped_vs_hybrid_p95']} (CPU x{il['scoped_vs_hybrid_cpu_p95']}), "
                f"store path x{il['scoped_store_vs_hybrid_p95']}")
        growth = {}
        for a, b in zip(steps, steps[1:]):
            key = f"{a['n']}->{b['n']}"
            growth[key] = {name: {"p50": round(b[name]["p50_ms"] / max(a[name]["p50_ms"], 1e-9), 2),
                                  "p95": round(b[name]["p95_ms"] / max(a[name]["p95_ms"], 1e-9), 2),
                                  "cpu_p95": round(b[name]["cpu"]["p95_ms"] / max(a[name]["cpu"]["p95_ms"], 1e-9), 2)}
                           for name in ("hybrid", "dense_only", "lexical_only", "hybrid_scoped_user")}
            log(f"growth {key}: hybrid p50 x{growth[key]['hybrid']['p50']}, p95 x{growth[key]['hybrid']['p95']} "
                f"(CPU p95 x{growth[key]['hybrid']['cpu_p95']})")
        return {"steps": steps, "growth": growth, "queries": len(qs), "k": 10, "batch": batch, "seed": seed,
                "users": users,
                "embedder": emb.name, "query_vector": "precomputed (embedding excluded)",
                "records": cube.records.backend, "vector_index": "chroma-server" if index else "chroma-embedded",
                "cpu_count": os.cpu_count()}
    finally:
        cube.close()
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES),
                   help="comma-separated cube sizes, grown in order (default 10000,100000,1000000)")
    p.add_argument("--queries", type=int, default=200, help="timed queries per mode and size (default 200)")
    p.add_argument("--batch", type=int, default=2000, help="add_many batch size (default 2000)")
    p.add_argument("--workdir", help="keep the cube (and local artefacts) here; resumes a cube built earlier")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--users", type=int, default=50,
                   help="user scopes the memories are spread over (default 50; the scoped search uses them)")
    p.add_argument("--store", help="a postgresql:// URL with ?cube=NAME (default: SQLite in --workdir)")
    p.add_argument("--index", help="a Chroma server URL (required with --store)")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object with every figure")
    p.add_argument("--server-pids", default="",
                   help="comma-separated pids of the servers on this host (the postmaster, `chroma run`): their CPU "
                        "(with their live children's: the PostgreSQL backends) per search is reported as a mean")
    p.add_argument("--cold", action="store_true",
                   help="SQLite cube in --workdir only: drop its files from the page cache before opening it "
                        "(posix_fadvise DONTNEED), to time a first run from disk")
    a = p.parse_args(argv)
    try:
        sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--sizes takes integers separated by commas")
    if not sizes or min(sizes) < 20 or a.queries < 1 or a.batch < 1 or a.users < 1:
        p.error("every size must be at least 20, --queries, --batch and --users at least 1")
    if a.store and not a.index:
        p.error("--store needs --index (a Chroma server URL)")
    os.environ.setdefault("MEMOS_PROGRESS", "0")
    try:
        SERVER_PIDS[:] = [int(x) for x in a.server_pids.split(",") if x.strip()]
    except ValueError:
        p.error("--server-pids takes process ids separated by commas")
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if a.json else (lambda m: print(m, flush=True))
    rep = run(sizes, a.queries, a.batch, a.workdir, a.seed, a.store, a.index, users=a.users, log=log, cold=a.cold)
    if a.json:
        print(json.dumps(rep, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
