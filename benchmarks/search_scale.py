"""Search latency and ingest throughput of one MemCube at scale.

    python benchmarks/search_scale.py --n 10000 [--queries 200] [--json]

Builds a cube of N synthetic memories (varied sentences from templates: people, places, activities, foods,
dates, numbers; no downloads), ingesting with ``MemCube.add_many`` in batches, then times ``search`` (hybrid,
k=10, query embedding included) over Q queries.

Reports

* ``search_p50_ms`` / ``search_p95_ms``: wall time of ``cube.search(q, k=10)`` (hybrid, unscoped), query
  embedding included; plus a breakdown (query embedding alone, dense-only, lexical-only, scoped hybrid);
* ``ingest_per_s``: memories per second through ``add_many`` (embedding + records + FTS + vector index);
* ``bare_encode_per_s``: the embedder alone on the same batches, measured in the same run, interleaved batch by
  batch with the ingest so that CPU contention affects both alike (for large N only every ``--bare-every``-th
  batch is encoded bare, to keep the run short);
* ``ingest_vs_bare``: the ratio of the two (1.0 = the cube adds no overhead over embedding).

With ``--json`` the last line of stdout is one JSON object with all of it.

Backends: ``--store postgresql://user@host/db?cube=bench --index http://host:8000`` runs the same benchmark twice
in one process -- first SQLite + embedded Chroma (the default, in a temp folder), then the given system of record
and Chroma server -- and reports both plus ``p95_ratio`` (store / SQLite). ``--only-store`` skips the SQLite run.
The PostgreSQL cube must be empty (a fresh ``?cube=`` name) or already hold exactly N memories (search only).
After both runs, both cubes stay open for an **interleaved** pass: the same Q queries alternate between the two
(hybrid, k=10, the order flipped every query), so the load of a shared machine weighs on both alike; it reports
``interleaved`` (p50/p95 of each and their ratios) next to the sequential figures, whose ratio also carries the
load's drift between the two runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

FIRST = ("Ann Bob Carla Dana Eli Fatima George Hana Ivan Julia Kofi Lena Mateo Nadia Omar Priya Quentin Rosa "
         "Samir Tara Ugo Vera Wei Xena Yusuf Zoe Amara Bruno Chen Diego Elena Farah Gustav Helga Ines Jonas Kaito "
         "Leila Marco Nina Oskar Paula Rafael Sofia Tomas Uma Viktor Wanda Yara Zain Aisha Boris Clara Dmitri Emma "
         "Felix Greta Hugo Ingrid Jamal Katya Liam Maya Nico Olga Pedro Rhea Stefan Thea Vikram Willa").split()
LAST = ("Silva Okafor Tanaka Novak Garcia Muller Rossi Kowalski Haddad Larsen Nguyen Petrov Costa Dubois Sato "
        "Fischer Moreau Jensen Ibrahim Romero Park Walsh Singh Andersen Kim Lopez Weber Ivanova Mendes Horvat").split()
PLACES = ("Lisbon Porto Berlin Kyoto Nairobi Lima Oslo Seville Krakow Montreal Hanoi Cusco Tbilisi Dublin Bergen "
          "Valencia Marrakesh Reykjavik Tallinn Naples Zagreb Bruges Salzburg Cartagena Hobart Leipzig Galway Bologna "
          "Ghent Lucerne Malaga Sintra Cascais Aveiro Coimbra Braga Faro Evora Madeira Azores").split()
VENUES = ["the city library", "a small jazz bar", "the farmers market", "the old harbour", "the climbing gym",
          "her aunt's house", "his office", "the community garden", "the train station", "a rooftop cafe",
          "the science museum", "the football stadium", "the river trail", "a pottery studio", "the night market"]
ACTIVITIES = ["hiking", "sailing", "baking sourdough", "learning the cello", "running a half marathon",
              "painting watercolours", "birdwatching", "rock climbing", "learning Portuguese", "kayaking",
              "knitting a scarf", "playing chess", "restoring an old bicycle", "growing tomatoes", "surfing",
              "writing a novel", "photographing street art", "volunteering at the shelter", "brewing kombucha",
              "practising yoga", "building a treehouse", "studying astronomy", "making pottery", "cycling to work"]
FOODS = ["ramen", "pastel de nata", "sushi", "lentil soup", "paella", "dumplings", "tacos al pastor", "moussaka",
         "pho", "shakshuka", "pierogi", "bibimbap", "falafel", "risotto", "jollof rice", "pad thai", "goulash"]
OBJECTS = ["a red umbrella", "a vintage camera", "a blue notebook", "a pair of hiking boots", "an old guitar",
           "a ceramic teapot", "a silver bracelet", "a folding bike", "a wool blanket", "a telescope",
           "a leather wallet", "a sourdough starter", "a chess set", "a sketchbook", "a drone"]
PETS = ["a cat called Pixel", "a greyhound named Biscuit", "two goldfish", "a parrot called Mango",
        "a rescue dog named Rex", "a tortoise called Speedy", "a rabbit named Clover"]
JOBS = ["nurse", "software engineer", "teacher", "architect", "chef", "pharmacist", "journalist", "electrician",
        "marine biologist", "accountant", "firefighter", "translator", "veterinarian", "librarian"]
FEELINGS = ["excited", "nervous", "relieved", "proud", "exhausted", "curious", "homesick", "thrilled"]

TEMPLATES = [
    "{name} went {activity} near {place} on {date} and said it was the best weekend of the year.",
    "On {date}, {name} moved to {place} to start a new job as a {job}.",
    "{name} is {feeling} about {activity}; they have been practising for {num} weeks now.",
    "{name}'s favourite food is {food}, especially the one served at {venue} in {place}.",
    "{name} lost {object} at {venue} on {date} and is still hoping someone hands it in.",
    "{name} has {pet} and takes it to {venue} every {weekday} morning.",
    "The meeting with {name2} about the {place} project moved to {weekday} at {hour} o'clock.",
    "{name} and {name2} met at {venue} in {place} back in {year}, and they still talk every {weekday}.",
    "{name} paid {num} euros for {object} at a flea market in {place}.",
    "{name} is allergic to {food} and always asks the waiter twice before ordering.",
    "Remember that {name}'s birthday is on {date}; {name2} is organising a surprise at {venue}.",
    "{name} ran {num} kilometres along the coast of {place} on {date}, a personal record.",
    "{name} told {name2} that {activity} helped a lot after a stressful month at work as a {job}.",
    "Last {weekday}, {name} cooked {food} for {num} friends and everyone asked for the recipe.",
    "{name} plans to visit {place} in {month} with {name2} to try {activity}.",
    "The flight of {name} to {place} on {date} was delayed by {num} hours because of a storm.",
    "{name} borrowed {object} from {name2} and promised to return it before {month}.",
    "{name} works as a {job} in {place} and commutes {num} minutes each way.",
    "{name} felt {feeling} when {name2} finally agreed to join the {activity} club in {place}.",
    "During the trip to {place} in {year}, {name} discovered a tiny restaurant serving {food}.",
    "{name}'s sister lives in {place} and has {pet}.",
    "{name} signed up for a course on {activity} that starts on {date} at {venue}.",
    "{name} keeps {object} on the desk as a reminder of the summer in {place}.",
    "The doctor told {name} to avoid {food} for {num} days after the appointment on {date}.",
]
QUESTIONS = [
    "When did {name} go {activity}?",
    "Where does {name} work as a {job}?",
    "What is {name}'s favourite food?",
    "Who has {pet}?",
    "What did {name} lose at {venue}?",
    "When is {name}'s birthday party?",
    "Which city did {name} move to?",
    "Who is learning {activity} in {place}?",
    "How far did {name} run in {place}?",
    "What is {name} allergic to?",
    "Who met {name2} in {place}?",
    "What did {name} buy at the flea market?",
    "When is the meeting about the {place} project?",
    "Why was the flight to {place} delayed?",
    "what does {name} do for a living",
    "{activity} {place}",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
START = datetime(2019, 1, 1, tzinfo=timezone.utc)


def _fill(rng: random.Random, template: str) -> tuple[str, datetime]:
    when = START + timedelta(days=rng.randrange(6 * 365), minutes=rng.randrange(24 * 60))
    style = rng.randrange(3)
    date = (f"{when.day} {MONTHS[when.month - 1]} {when.year}" if style == 0 else
            f"{MONTHS[when.month - 1]} {when.day}, {when.year}" if style == 1 else when.strftime("%Y-%m-%d"))
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.3 else rng.choice(FIRST)
    values = dict(name=name, name2=rng.choice(FIRST), place=rng.choice(PLACES), venue=rng.choice(VENUES),
                  activity=rng.choice(ACTIVITIES), food=rng.choice(FOODS), object=rng.choice(OBJECTS),
                  pet=rng.choice(PETS), job=rng.choice(JOBS), feeling=rng.choice(FEELINGS), date=date,
                  weekday=rng.choice(WEEKDAYS), month=rng.choice(MONTHS), year=when.year,
                  hour=rng.randrange(8, 19), num=rng.choice([2, 3, 4, 5, 7, 8, 10, 12, 15, 21, 30, 42, 60, 120]))
    text = template.format(**values)
    return text[0].upper() + text[1:], when


def make_memories(n: int, seed: int = 0, users: int = 50) -> list[dict[str, Any]]:
    """N memory specs for ``add_many``: varied text, a user scope, kind, tags, event time and metadata."""
    rng = random.Random(seed)
    out = []
    kinds = ["fact", "episode", "preference", "note"]
    for i in range(n):
        text, when = _fill(rng, rng.choice(TEMPLATES))
        if rng.random() < 0.25:  # some memories are two sentences
            text = text + " " + _fill(rng, rng.choice(TEMPLATES))[0]
        out.append({"content": text, "user_id": f"user-{rng.randrange(users)}", "kind": rng.choice(kinds),
                    "event_time": when, "tags": [rng.choice(["travel", "food", "work", "health", "family",
                                                             "hobby"])],
                    "metadata": {"n": i, "importance": rng.randrange(1, 6)},
                    "provenance": {"source": "conversation", "source_ids": [f"t{i}"]}})
    return out


def make_queries(q: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [_fill(rng, rng.choice(QUESTIONS))[0] for _ in range(q)]


class HashedEmbedder:
    """A fast stand-in for smoke runs (``--embedder hashed``): hashed bag of words, 384 dimensions. The hash is
    CRC-32, not Python's ``hash`` (salted per process): a cube kept with ``--workdir`` (or on a server) and searched
    by a later run gets the same vectors for the same words."""

    name = "bench-hashed-384"
    dim = 384

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
            out[i] /= max(float(np.linalg.norm(out[i])), 1e-9)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))] if s else 0.0


_CPU: list[float] = []  # process CPU ms of the last _timed calls (see --threads: CPU = latency on an idle core)


def _timed(fn: Any, *a: Any, **kw: Any) -> float:
    c0 = time.process_time()
    t0 = time.perf_counter()
    fn(*a, **kw)
    wall = (time.perf_counter() - t0) * 1000.0
    _CPU.append((time.process_time() - c0) * 1000.0)
    return wall


def run(n: int, queries: int = 200, batch: int = 256, bare_every: int | None = None, embedder: str = "default",
        workdir: str | None = None, seed: int = 0, log: Any = print, threads: int | None = None,
        store: str | None = None, index: str | None = None, keep: list[Any] | None = None) -> dict[str, Any]:
    """Build (or reuse) a cube of ``n`` memories, time ingest and search; returns the report. With ``keep`` (a
    list), the open cube and its temporary folder are appended to it instead of closed (the caller closes them:
    :func:`close_kept`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if threads:
        import torch

        torch.set_num_threads(threads)
    from memos_core.cube import MemCube, RetrievalConfig
    from memos_core.embedding import resolve_embedder

    emb = HashedEmbedder() if embedder == "hashed" else resolve_embedder(None)
    bare_every = bare_every or (1 if n <= 20_000 else 5)
    specs = make_memories(n, seed)
    qs = make_queries(queries, seed + 1)
    chars = [len(s["content"]) for s in specs]
    log(f"{n} memories, {statistics.mean(chars):.0f} chars on average (min {min(chars)}, max {max(chars)}); "
        f"{len(qs)} queries; embedder {emb.name}")
    emb.embed_documents([s["content"] for s in specs[:8]])  # load / warm up the model outside the timings

    tmp = tempfile.TemporaryDirectory(prefix="memos-scale-") if workdir is None else None
    root = Path(workdir or tmp.name)  # type: ignore[union-attr]
    # Every timed query is embedded (the per-embedder query cache is off); repeats are timed separately below.
    if store is not None:
        cube = MemCube(store, index=index, workdir=root / "local", embedder=emb,
                       retrieval=RetrievalConfig(query_cache=0))
        reused = cube.count() > 0
    else:
        reused = workdir is not None and (root / "cube" / "cube.json").exists()
        cube = MemCube(root / "cube", embedder=emb, retrieval=RetrievalConfig(query_cache=0), chroma_url=index)
    try:
        ingest_s = bare_s = ingest_cpu = bare_cpu = 0.0
        bare_n = 0
        if reused:  # --workdir with a cube from an earlier run: time search only
            if cube.count() != n:
                raise SystemExit(f"{store or root / 'cube'} holds {cube.count()} memories, not {n}")
            log(f"reusing the cube in {store or root / 'cube'}: search timings only")
        t_start = time.perf_counter()
        for b, s in enumerate(range(0, 0 if reused else n, batch)):
            chunk = specs[s:s + batch]
            texts = [c["content"] for c in chunk]
            measure_bare = b % bare_every == 0
            if measure_bare and (b // bare_every) % 2 == 1:  # alternate the order: neither side always runs second
                bare_s += _timed(emb.embed_documents, texts) / 1000
                bare_cpu += _CPU[-1] / 1000
                bare_n += len(texts)
                measure_bare = False
            ingest_s += _timed(cube.add_many, chunk) / 1000
            ingest_cpu += _CPU[-1] / 1000
            if measure_bare:
                bare_s += _timed(emb.embed_documents, texts) / 1000
                bare_cpu += _CPU[-1] / 1000
                bare_n += len(texts)
            if b % 40 == 39:
                done = s + len(chunk)
                log(f"  ingested {done}/{n}  ({done / ingest_s:.0f}/s through add_many, "
                    f"{bare_n / bare_s:.0f}/s bare encode, {time.perf_counter() - t_start:.0f}s elapsed)")
        ingest_per_s = n / ingest_s if ingest_s else 0.0
        bare_per_s = bare_n / bare_s if bare_s else 0.0
        if not reused:
            log(f"ingest: {ingest_per_s:.1f}/s through add_many; bare encode {bare_per_s:.1f}/s "
                f"(ratio {ingest_per_s / bare_per_s:.3f})")
        assert cube.count() == n and cube.index.count() == n

        for q in qs[:10]:  # warm-up (first-query costs: HNSW load, SQLite page cache)
            cube.search(q, k=10)
        cpu: dict[str, list[float]] = {}

        def timed_all(name: str, calls: list[Any]) -> list[float]:
            _CPU.clear()
            out = [_timed(fn) for fn in calls]
            cpu[name] = list(_CPU)
            return out

        lat = timed_all("hybrid", [lambda q=q: cube.search(q, k=10) for q in qs])
        enc = timed_all("query_embed", [lambda q=q: emb.embed_query(q) for q in qs])
        dense = timed_all("dense_only", [lambda q=q: cube.search(q, k=10, mode="dense") for q in qs])
        lexical = timed_all("lexical_only", [lambda q=q: cube.search(q, k=10, mode="lexical") for q in qs])
        scoped = timed_all("hybrid_scoped_user", [lambda q=q, i=i: cube.search(q, k=10, user_id=f"user-{i % 50}")
                                                  for i, q in enumerate(qs)])
        cube.retrieval.query_cache = 256  # an agent re-asking the same query (tool loop): the vector is cached
        for q in qs[:50]:
            cube.search(q, k=10)
        repeat = timed_all("hybrid_repeated_query", [lambda q=q: cube.search(q, k=10) for q in qs[:50]])
        cube.retrieval.query_cache = 0
        hits = [len(cube.search(q, k=10)) for q in qs[:20]]
        assert min(hits) == 10

        def block(v: list[float]) -> dict[str, float]:
            return {"p50_ms": round(pct(v, 0.5), 2), "p95_ms": round(pct(v, 0.95), 2)}

        rep = {
            "n": n,
            "queries": len(qs),
            "search_p50_ms": round(pct(lat, 0.5), 2),
            "search_p95_ms": round(pct(lat, 0.95), 2),
            "ingest_per_s": round(ingest_per_s, 1) if not reused else None,
            "bare_encode_per_s": round(bare_per_s, 1) if not reused else None,
            "ingest_vs_bare": round(ingest_per_s / bare_per_s, 3) if bare_per_s else None,
            # CPU-time views of the same runs: on a shared machine they show what an idle one would give
            # (with --threads 1, CPU time of a call = its latency on one dedicated core)
            "cpu": {"search_p50_ms": round(pct(cpu["hybrid"], 0.5), 2),
                    "search_p95_ms": round(pct(cpu["hybrid"], 0.95), 2),
                    "ingest_per_cpu_s": round(n / ingest_cpu, 1) if ingest_cpu else None,
                    "bare_encode_per_cpu_s": round(bare_n / bare_cpu, 1) if bare_cpu else None,
                    "ingest_vs_bare": round((n / ingest_cpu) / (bare_n / bare_cpu), 3) if ingest_cpu and bare_cpu
                    else None,
                    "breakdown": {name: {"p50_ms": round(pct(v, 0.5), 2), "p95_ms": round(pct(v, 0.95), 2)}
                                  for name, v in cpu.items() if name != "hybrid"}},
            "bare_encoded": bare_n,
            "breakdown": {"query_embed": block(enc), "dense_only": block(dense), "lexical_only": block(lexical),
                          "hybrid_scoped_user": block(scoped), "hybrid_repeated_query": block(repeat)},
            "embedder": emb.name,
            "batch": batch,
            "avg_chars": round(statistics.mean(chars), 1),
            "cpu_count": os.cpu_count(),
            "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
            "torch_threads": _torch_threads(),
            "records": cube.records.backend,
            "vector_index": "chroma-server" if index else "chroma-embedded",
        }
        log(f"search (hybrid, k=10, query embedding included): p50 {rep['search_p50_ms']} ms, "
            f"p95 {rep['search_p95_ms']} ms  (CPU: p50 {rep['cpu']['search_p50_ms']} ms, "
            f"p95 {rep['cpu']['search_p95_ms']} ms)")
        for name, v in rep["breakdown"].items():
            c = rep["cpu"]["breakdown"][name]
            log(f"  {name:<20} p50 {v['p50_ms']:>8} ms   p95 {v['p95_ms']:>8} ms   "
                f"(CPU p50 {c['p50_ms']:>7} ms, p95 {c['p95_ms']:>7} ms)")
        if not reused:
            log(f"CPU-time ingest: {rep['cpu']['ingest_per_cpu_s']}/s vs bare {rep['cpu']['bare_encode_per_cpu_s']}/s "
                f"(ratio {rep['cpu']['ingest_vs_bare']})")
        if keep is not None:
            keep.append((cube, tmp))
            cube = tmp = None
        return rep
    finally:
        if cube is not None:
            cube.close()
        if tmp is not None:
            tmp.cleanup()


def close_kept(kept: list[Any]) -> None:
    for cube, tmp in kept:
        try:
            cube.close()
        finally:
            if tmp is not None:
                tmp.cleanup()


def interleaved(first: Any, second: Any, queries: list[str], k: int = 10) -> dict[str, Any]:
    """Search latency of two open cubes measured turn about: each query runs on both, the order flipped every
    query, so that what else runs on the machine affects both alike. Hybrid, k=10, the cubes' own settings."""
    a: list[float] = []
    b: list[float] = []
    for q in queries[:10]:  # warm-up after the other cube's run
        first.search(q, k=k)
        second.search(q, k=k)
    for i, q in enumerate(queries):
        turns = [(first, a), (second, b)] if i % 2 == 0 else [(second, b), (first, a)]
        for cube, lat in turns:
            t0 = time.perf_counter()
            cube.search(q, k=k)
            lat.append((time.perf_counter() - t0) * 1000.0)
    out = {"sqlite_embedded": {"p50_ms": round(pct(a, 0.5), 2), "p95_ms": round(pct(a, 0.95), 2)},
           "store": {"p50_ms": round(pct(b, 0.5), 2), "p95_ms": round(pct(b, 0.95), 2)},
           "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}
    out["p50_ratio"] = round(out["store"]["p50_ms"] / out["sqlite_embedded"]["p50_ms"], 3)
    out["p95_ratio"] = round(out["store"]["p95_ms"] / out["sqlite_embedded"]["p95_ms"], 3)
    return out


def _torch_threads() -> int | None:
    if "torch" not in sys.modules:
        return None
    return int(sys.modules["torch"].get_num_threads())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000, help="number of memories (default 10000)")
    p.add_argument("--queries", type=int, default=200, help="number of timed queries (default 200)")
    p.add_argument("--batch", type=int, default=256, help="add_many batch size (default 256)")
    p.add_argument("--bare-every", type=int, default=None,
                   help="encode every K-th batch bare for bare_encode_per_s (default 1, or 5 above 20000)")
    p.add_argument("--embedder", choices=["default", "hashed"], default="default",
                   help="'default' = all-MiniLM-L6-v2 (offline); 'hashed' = a fast stand-in for smoke runs")
    p.add_argument("--workdir", help="keep the cube in this folder instead of a temp dir; when it already holds "
                   "a cube of N memories from an earlier run, only search is timed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for the embedder (default: torch's choice, one per core)")
    p.add_argument("--store", help="a postgresql:// URL (with ?cube=NAME): also run on this system of record")
    p.add_argument("--index", help="a Chroma server URL for the --store run (required with --store)")
    p.add_argument("--only-store", action="store_true", help="skip the SQLite + embedded Chroma run")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object with every figure")
    a = p.parse_args(argv)
    if a.n < 20 or a.queries < 1:
        p.error("--n must be at least 20 and --queries at least 1")
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if a.json else print
    if a.store and not a.index:
        p.error("--store needs --index (a Chroma server URL shared by the workers)")
    rep: dict[str, Any] = {}
    kept: list[Any] = []
    both = bool(a.store and not a.only_store)
    try:
        if not (a.store and a.only_store):
            rep = run(a.n, a.queries, a.batch, a.bare_every, a.embedder, a.workdir, a.seed, log, a.threads,
                      keep=kept if both else None)
        if a.store:
            log(f"--- the same on {a.store.split('@')[-1]} + Chroma server {a.index}")
            other = run(a.n, a.queries, a.batch, a.bare_every, a.embedder, None, a.seed, log, a.threads,
                        store=a.store, index=a.index, keep=kept if both else None)
            rep = {"sqlite_embedded": rep or None, "store": other}
            if both:
                log("--- interleaved: each query on both, turn about")
                inter = interleaved(kept[0][0], kept[1][0], make_queries(a.queries, a.seed + 1))
                rep["interleaved"] = inter
                log(f"interleaved search p50/p95: SQLite {inter['sqlite_embedded']['p50_ms']} / "
                    f"{inter['sqlite_embedded']['p95_ms']} ms, store {inter['store']['p50_ms']} / "
                    f"{inter['store']['p95_ms']} ms (x{inter['p50_ratio']} / x{inter['p95_ratio']})")
    finally:
        close_kept(kept)
    if a.store:
        if rep["sqlite_embedded"]:
            base = rep["sqlite_embedded"]
            rep["p95_ratio"] = round(other["search_p95_ms"] / base["search_p95_ms"], 3)
            rep["p50_ratio"] = round(other["search_p50_ms"] / base["search_p50_ms"], 3)
            if base.get("ingest_per_s") and other.get("ingest_per_s"):
                rep["ingest_ratio"] = round(other["ingest_per_s"] / base["ingest_per_s"], 3)
            log(f"store / SQLite: search p50 x{rep['p50_ratio']}, p95 x{rep['p95_ratio']}, "
                f"ingest x{rep.get('ingest_ratio')}")
    if a.json:
        print(json.dumps(rep, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
