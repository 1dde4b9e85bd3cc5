"""Tune hybrid fusion on the dev sets, cheaply: embed each set once, keep every query's candidates, then try
fusion settings on the kept candidates in pure Python.

    python benchmarks/tune_fusion.py [--cache /tmp/memos-tune] [--sets NAME ...]   # collect, then report
    python benchmarks/tune_fusion.py --calibrate                                    # fit the score calibration
    python benchmarks/tune_fusion.py --fresh 101 102                                # + fresh generator seeds
    python benchmarks/tune_fusion.py --fresh 101 102 --variants                     # + the alternatives tried
    python benchmarks/tune_fusion.py --tune-fresh --fresh 101 102                   # + the fresh tuning instances
    python benchmarks/tune_fusion.py --latency 4                                    # search time, topical modes
    python benchmarks/tune_fusion.py --tune-fresh --fresh 101 102 --dialogue-queries  # dialogue query rewrites
    python benchmarks/tune_fusion.py --sets madial --misses madial                  # misses side by side

Which sets are for tuning and which are not is fixed here (``TUNE`` / ``HELD_OUT`` / ``TARGET``) and in the
README: held-out sets and target sets are only *reported*, never used to choose a setting. MADial is a target
set (a published benchmark: report on it, never fit to it). ``--fresh SEED ...`` generates new instances of the
three generated styles (people-QA with seed SEED, assistant SEED+100, synthetic SEED+200) into the cache folder,
never committed: a setting that only wins on the committed instances has learnt the instances, not the style.
``--tune-fresh`` adds fresh assistant-style instances that *are* tuning data (:data:`TUNE_FRESH`, other seeds than
``--fresh``'s): the only questions naming no one that settings may be chosen on.
``--variants`` evaluates the alternatives to the shipped fusion that issue 15 tried (README: what did not
help), so each figure there can be reproduced.

Candidates are gathered with the cube's own code (``cube.retriever.gather`` / ``candidates``) and fused with
:func:`memos_core.plaintext.fusion.fuse`, so what is measured here is what ``memos bench retrieval`` measures
(check with it after tuning).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from memos_core.bench.retrieval import ingest_conversation, load_dataset, scope_of  # noqa: E402
from memos_core.cube import MemCube, RetrievalConfig  # noqa: E402
from memos_core.embedding import CallableEmbedder, resolve_embedder  # noqa: E402
from memos_core.items import SearchFilter  # noqa: E402
from memos_core.plaintext import analyze_query, calibration, entity_matcher  # noqa: E402
from memos_core.plaintext.fusion import Candidates, fuse  # noqa: E402
from memos_core.reader.offline import ACT_WEIGHTS, OfflineReader, topic_text  # noqa: E402

SETS = {
    "madial": Path("/work/shared/data/madial/madial_en.json"),
    "synthetic": ROOT / "benchmarks/data/synthetic_longmem.json",
    "people_qa": ROOT / "benchmarks/data/people_qa.json",
    "assistant": ROOT / "benchmarks/data/assistant_prefs.json",
}
#: generated sets settings may be chosen on (the defaults before issue 15's last stop were also chosen with MADial)
TUNE = ("synthetic", "people_qa")
#: instances of the assistant style that settings may be chosen on (``--tune-fresh``: generated into the cache with
#: these generator seeds, never committed): the only tuning data with questions naming no one ("What's my parrot
#: called?"); the committed assistant set and the ``--fresh`` seeds stay held out
TUNE_FRESH = {"assistant@251": ("make_assistant_prefs.py", 251), "assistant@252": ("make_assistant_prefs.py", 252)}
HELD_OUT = ("assistant",)
TARGET = ("madial",)
#: generator script and seed offset per generated style (``--fresh SEED``: seed + offset)
GENERATORS = {"people_qa": ("make_people_qa.py", 0), "assistant": ("make_assistant_prefs.py", 100),
              "synthetic": ("make_synthetic.py", 200)}
KS = (1, 5, 10, 20)
CACHE_FORMAT = 5  # candidates (+ topical cosines) + memory and query-turn vectors (for --variants)


class _CachedVectors:
    """The default embedder behind a text -> vector cache kept on disk between runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = resolve_embedder(None)
        self.vecs: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as z:
                self.vecs = {k: z[k] for k in z.files}
        self.dirty = False

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha1(text.encode("utf-8")).hexdigest()

    def docs(self, texts: list[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        todo = [i for i, k in enumerate(keys) if k not in self.vecs]
        if todo:
            new = self.base.embed_documents([texts[i] for i in todo])
            for i, v in zip(todo, new):
                self.vecs[keys[i]] = np.asarray(v, dtype=np.float32)
            self.dirty = True
        return np.stack([self.vecs[k] for k in keys])

    def save(self) -> None:
        if self.dirty:
            np.savez(self.path, **self.vecs)
            self.dirty = False

    def embedder(self) -> CallableEmbedder:
        return CallableEmbedder(self.docs, lambda t: self.docs([t])[0], name=self.base.name, dim=self.base.dim)


def collect(name: str, path: Path, cache: Path, vectors: _CachedVectors, n_cand: int = 60) -> list[dict[str, Any]]:
    """Every query's candidates with their features and labels (kept as JSON in ``cache``)."""
    out_path = cache / f"{name}.cands.json"
    vec_path = cache / f"{name}.vecs.npz"
    data = load_dataset(path)
    digest = f"{hashlib.sha1(path.read_bytes()).hexdigest()[:12]}/{CACHE_FORMAT}"
    if out_path.exists() and vec_path.exists():
        kept = json.loads(out_path.read_text())
        if kept.get("digest") == digest:
            return sync_topical(kept["queries"], vectors)
    mem_vecs: dict[int, np.ndarray] = {}
    turn_vecs: list[np.ndarray] = []
    t0 = time.time()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="memos-tune-") as tmp:
        cfg = RetrievalConfig(query_cache=0)
        cube = MemCube(Path(tmp) / "cube", embedder=vectors.embedder(), retrieval=cfg)
        reader = OfflineReader()
        for ci, conv in enumerate(data["conversations"]):
            scope = scope_of(ci, conv)
            ingest_conversation(cube, conv, scope, reader)
            vectors.save()
            f = SearchFilter(user_id=scope)
            states = cube._states(f)
            cf = cube.records.compile_filter(f, states, cube._now().timestamp())
            for q in conv["queries"]:
                evidence = {str(e) for e in q.get("evidence", [])}
                if not evidence:
                    continue
                plan = analyze_query(q["text"])
                ranked, qvec = cube.retriever.gather(plan, "hybrid", f, cf, n_cand)
                c = cube.retriever.candidates(plan, qvec, ranked, n_cand)
                items = cube.records.get_many_by_rowid(list(c.keys))
                for r, blob in zip(*cube.records.embeddings_of([k for k in c.keys if k not in mem_vecs])):
                    mem_vecs[r] = np.frombuffer(blob, dtype=np.float32)
                # each turn of a pasted-dialogue query, embedded alone (multi-vector variants)
                turns = vectors.docs([t for _, t in plan.turns]) if plan.turns else np.zeros((0, vectors.base.dim))
                # the topical leg: each candidate's own words (its topic vector) against the query without its
                # names (``topical``: ``topical_query="topic"``) and against the full query vector (``topical_q``:
                # ``"full"``); computed here rather than read from the cube so that both are kept
                topical: dict[int, float] = {}
                topical_q: dict[int, float] = {}
                if plan.topic:
                    tvecs = vectors.docs([topic_text(items[k].content, items[k].provenance.speaker) for k in c.keys])
                    topical = dict(zip(c.keys, (tvecs @ vectors.docs([plan.topic])[0]).tolist()))
                    topical_q = dict(zip(c.keys, (tvecs @ np.asarray(qvec, dtype=np.float32)).tolist()))
                cands = []
                for key in c.keys:
                    it = items[key]
                    cands.append({"key": key, "dense": c.dense.get(key), "lexical": c.lexical.get(key),
                                  "dr": c.dense_ranks.get(key), "lr": c.lexical_ranks.get(key),
                                  "topical": topical.get(key), "topical_q": topical_q.get(key), "text": c.texts.get(key, ""), "meta": it.metadata,
                                  "hit": bool(set(it.provenance.source_ids) & evidence)})
                rows.append({"query": q["text"], "topic": plan.topic, "category": q.get("category", "all"),
                             "lexical_complete": c.lexical_complete, "n_evidence": len(evidence), "cands": cands,
                             "turns": [len(turn_vecs), len(turn_vecs) + len(turns)],
                             "turn_speakers": [s for s, _ in plan.turns]})
                turn_vecs.extend(np.asarray(turns, dtype=np.float32))
        cube.close()
    keys = sorted(mem_vecs)
    np.savez(vec_path, mem_keys=np.array(keys, dtype=np.int64),
             mem=np.stack([mem_vecs[k] for k in keys]) if keys else np.zeros((0, vectors.base.dim), np.float32),
             turns=np.stack(turn_vecs) if turn_vecs else np.zeros((0, vectors.base.dim), np.float32))
    out_path.write_text(json.dumps({"digest": digest, "queries": rows}))
    print(f"  {name}: {len(rows)} queries collected in {time.time() - t0:.0f}s", file=sys.stderr)
    return rows


_UNKNOWN = object()


def sync_topical(rows: list[dict[str, Any]], vectors: _CachedVectors) -> list[dict[str, Any]]:
    """Kept rows whose name-free question (``QueryPlan.topic``) is not the one the query analysis gives now (or was
    not recorded) get their topical cosines recomputed from the cached vectors: each candidate's topic vector
    against the current topic's vector, as :func:`collect` computes them. So a change to the query analysis is
    measured without collecting the candidates again (they do not depend on the topic)."""
    for row in rows:
        plan = analyze_query(row["query"])
        if row.get("topic", _UNKNOWN) == plan.topic:
            continue
        cands = row["cands"]
        if plan.topic and cands:
            tvecs = vectors.docs([topic_text(c["text"], (c["meta"] or {}).get("speaker")) for c in cands])
            sims = (tvecs @ vectors.docs([plan.topic])[0]).tolist()
        else:
            sims = [None] * len(cands)
        for c, v in zip(cands, sims):
            c["topical"] = v
            if v is None:
                c["topical_q"] = None
        row["topic"] = plan.topic
    return rows


def to_candidates(row: dict[str, Any], topical: bool | str = False) -> Candidates:
    """A kept query row as fusion's input; ``topical`` adds the topical leg (``hybrid+topical``; ``"full query"``:
    the topic vectors compared with the full query's vector instead of the name-free question's)."""
    cs = row["cands"]
    field = "topical_q" if topical == "full query" else "topical"
    return Candidates(keys=[c["key"] for c in cs], dense={c["key"]: c["dense"] for c in cs},
                      lexical={c["key"]: c["lexical"] for c in cs if c["lexical"] is not None},
                      lexical_complete=row["lexical_complete"], texts={c["key"]: c["text"] for c in cs},
                      dense_ranks={c["key"]: c["dr"] for c in cs if c["dr"] is not None},
                      lexical_ranks={c["key"]: c["lr"] for c in cs if c["lr"] is not None},
                      # the reader's current weight for the act the turn was labelled with when collected
                      weights={c["key"]: ACT_WEIGHTS.get((c["meta"] or {}).get("turn_act"), 1.0) for c in cs},
                      topical={c["key"]: c[field] for c in cs if c.get(field) is not None} if topical else {})


def shipped_topical(cfg: RetrievalConfig) -> bool | str:
    """The topical leg as the cube runs it with ``cfg`` (:func:`to_candidates`' ``topical``): the name-free
    question's vector (``topical_query="topic"``), the full query vector (``"full"``), or none (weight 0)."""
    if not float(getattr(cfg, "topical_weight", 0.0) or 0.0):
        return False
    return True if getattr(cfg, "topical_query", "full") == "topic" else "full query"


#: the modes :func:`evaluate` knows: ``hybrid`` is the cube's fusion with ``cfg`` (topical leg as configured);
#: ``hybrid-no-topical`` the same without the topical leg, ``hybrid+topical`` with the name-free question's vector and
#: ``hybrid+topical-full`` with the full query vector, whatever ``cfg`` says
HYBRID_MODES = {"hybrid": None, "hybrid-no-topical": False, "hybrid+topical": True, "hybrid+topical-full": "full query"}


def evaluate(rows: list[dict[str, Any]], cfg: RetrievalConfig, mode: str = "hybrid") -> dict[str, float]:
    """any@k of ``mode`` over the kept candidates (dense/lexical: each retriever's own order; the hybrid modes:
    :data:`HYBRID_MODES`)."""
    hits = {k: 0 for k in KS}
    for row in rows:
        label = {c["key"]: c["hit"] for c in row["cands"]}
        if mode in HYBRID_MODES:
            topical = HYBRID_MODES[mode]
            order = [key for key, *_ in fuse(to_candidates(row, shipped_topical(cfg) if topical is None else topical),
                                             analyze_query(row["query"]), cfg)]
        else:
            field = "dr" if mode == "dense" else "lr"
            order = [c["key"] for c in sorted((c for c in row["cands"] if c[field] is not None), key=lambda c: c[field])]
        for k in KS:
            hits[k] += any(label[key] for key in order[:k])
    n = max(len(rows), 1)
    return {f"any@{k}": round(hits[k] / n, 4) for k in KS}


def role(name: str) -> str:
    if name in TUNE:
        return "tune"
    if name in TUNE_FRESH:
        return "tune (fresh instance)"
    if name in TARGET:
        return "target (report only)"
    return "fresh (held out)" if "@" in name else "held-out"


def fresh_sets(seeds: list[int], cache: Path, tune: bool = False) -> dict[str, Path]:
    """New instances of the generated styles, written into ``cache`` (``people_qa@101`` ...): never committed,
    never tuned on; with ``tune``, first the :data:`TUNE_FRESH` instances (tuning data)."""
    out = {}
    for name, (script, seed) in (TUNE_FRESH.items() if tune else ()):
        path = cache / f"{name}.json"
        if not path.exists():
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--seed", str(seed), "--out", str(path)],
                           check=True, stdout=subprocess.DEVNULL)
        out[name] = path
    for seed in seeds:
        for style, (script, offset) in GENERATORS.items():
            name = f"{style}@{seed + offset}"
            path = cache / f"{name}.json"
            if not path.exists():
                subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--seed", str(seed + offset),
                                "--out", str(path)], check=True, stdout=subprocess.DEVNULL)
            out[name] = path
    return out


# ----------------------------------------------------------------------------------------- variants (README)
# Alternatives to the shipped fusion that were tried for issue 15 and not kept. Each takes a kept query row and
# returns candidate keys best first; the figures in the README come from `--variants`.

def _load_vectors(cache: Path, name: str, rows: list[dict[str, Any]]) -> None:
    with np.load(cache / f"{name}.vecs.npz") as z:
        mem = {int(k): v for k, v in zip(z["mem_keys"], z["mem"])}
        turns = z["turns"]
    for row in rows:
        a, b = row["turns"]
        row["_tv"] = turns[a:b]
        row["_mv"] = np.stack([mem[c["key"]] for c in row["cands"]])


def _order(row: dict[str, Any], extra: np.ndarray | None = None, cfg: RetrievalConfig | None = None,
           topical: bool | str = False) -> list[Any]:
    """The fusion's order (without the topical leg unless ``topical``), optionally with ``extra`` (per candidate,
    in standard deviations) added."""
    fused = fuse(to_candidates(row, topical), analyze_query(row["query"]), cfg or RetrievalConfig())
    if extra is None:
        return [key for key, *_ in fused]
    add = dict(zip((c["key"] for c in row["cands"]), extra))
    total = {key: z + float(add[key]) for key, z, *_ in fused}
    return sorted(total, key=lambda key: -total[key])


def topical_leg(weight: float, query: bool | str = True, shift: bool = True) -> Any:
    """The topical leg (question without its names vs the memory's own words) fused with ``weight`` (plus
    ``TOPICAL_SHIFT`` of the dense weight unless ``shift`` is false); ``query="full query"`` compares the memories'
    topic vectors with the full query vector instead (``topical_query="full"``: no weight moves)."""
    cfg = RetrievalConfig(topical_query="topic" if query is True else "full")
    cfg.topical_weight = weight  # type: ignore[attr-defined]
    if not shift:
        cfg.topical_shift = 0.0  # type: ignore[attr-defined]

    def order(row: dict[str, Any]) -> list[Any]:
        return [key for key, *_ in fuse(to_candidates(row, query), analyze_query(row["query"]), cfg)]
    return order


def _z(values: np.ndarray) -> np.ndarray:
    sd = float(values.std())
    return (values - values.mean()) / sd if sd > 1e-12 else np.zeros_like(values)


def multi_vector(weight: float, agg: str) -> Any:
    """Pasted dialogues: each user turn embedded alone, a memory's similarity to them aggregated (max / mean)
    and added as a third retriever (z-scored, ``weight``); other queries unchanged."""
    from memos_core.plaintext.query import ASSISTANT_NAMES

    def order(row: dict[str, Any]) -> list[Any]:
        users = [i for i, sp in enumerate(row["turn_speakers"]) if sp and sp.lower() not in ASSISTANT_NAMES]
        if len(row["turn_speakers"]) < 2 or not users:
            return _order(row)
        sims = row["_mv"] @ row["_tv"][users].T
        return _order(row, weight * _z(sims.max(1) if agg == "max" else sims.mean(1)))
    return order


def _user_turn_weights(row: dict[str, Any], decay: float) -> tuple[list[int], np.ndarray] | None:
    """The user turns of a pasted dialogue and their weights, the last one 1, each earlier one ``decay`` times the
    next (summing to 1); None for a query that is not a dialogue or has no user turn."""
    from memos_core.plaintext.query import ASSISTANT_NAMES

    sp = row["turn_speakers"]
    users = [i for i, s in enumerate(sp) if s and s.lower() not in ASSISTANT_NAMES]
    if len(sp) < 2 or not users:
        return None
    w = np.array([decay ** (len(users) - 1 - j) for j in range(len(users))])
    return users, w / w.sum()


def _topic_vectors(row: dict[str, Any], vectors: "_CachedVectors") -> np.ndarray:
    """The candidates' topic vectors (their own words: what the cube stores beside each embedding)."""
    if "_topv" not in row:
        row["_topv"] = vectors.docs([topic_text(c["text"], (c["meta"] or {}).get("speaker")) for c in row["cands"]])
    return row["_topv"]


def recency_dense(weight: float, decay: float, vectors: "_CachedVectors", memory_side: str = "topic") -> Any:
    """Pasted dialogues: the user turns' vectors averaged with recency weights (:func:`_user_turn_weights`),
    compared with the candidates' topic vectors (``memory_side="topic"``) or embeddings (``"full"``) and added
    as a third z-scored leg with ``weight``; other queries as shipped."""
    def order(row: dict[str, Any]) -> list[Any]:
        uw = _user_turn_weights(row, decay)
        if uw is None:
            return _order(row, topical=shipped_topical(RetrievalConfig()))
        users, w = uw
        q = (row["_tv"][users] * w[:, None]).sum(0)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        mem = _topic_vectors(row, vectors) if memory_side == "topic" else row["_mv"]
        return _order(row, weight * _z(mem @ q))
    return order


def recency_bm25(weight: float, decay: float, k1: float = 1.2, b: float = 0.75) -> Any:
    """Pasted dialogues: BM25 of each candidate's own words against the user turns, each turn's terms weighted
    by recency (:func:`_user_turn_weights`; document frequencies over the candidates), added as a z-scored leg
    with ``weight``; other queries as shipped."""
    from memos_core.plaintext.lexical import STOPWORDS

    def terms(text: str) -> list[str]:
        return [w for w in re.findall(r"[^\W_]+", text.lower()) if w not in STOPWORDS and len(w) > 1]

    def order(row: dict[str, Any]) -> list[Any]:
        uw = _user_turn_weights(row, decay)
        if uw is None:
            return _order(row, topical=shipped_topical(RetrievalConfig()))
        users, w = uw
        docs = [terms(topic_text(c["text"], (c["meta"] or {}).get("speaker"))) for c in row["cands"]]
        n, avg = len(docs), sum(map(len, docs)) / max(len(docs), 1)
        df: dict[str, int] = {}
        for d in docs:
            for t in set(d):
                df[t] = df.get(t, 0) + 1
        turns = [t for _, t in analyze_query(row["query"]).turns]
        qw: dict[str, float] = {}
        for j, i in enumerate(users):
            for t in set(terms(turns[i])):
                qw[t] = qw.get(t, 0.0) + float(w[j])
        scores = []
        for d in docs:
            tf: dict[str, int] = {}
            for t in d:
                tf[t] = tf.get(t, 0) + 1
            scores.append(sum(qv * math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) * tf[t] * (k1 + 1)
                              / (tf[t] + k1 * (1 - b + b * len(d) / max(avg, 1e-9)))
                              for t, qv in qw.items() if t in tf))
        return _order(row, weight * _z(np.array(scores)))
    return order


def neighbour_penalty(alpha: float, k: int = 10, duplicate_above: float | None = None) -> Any:
    """Hubness: a candidate close to many other candidates is pushed down by ``alpha`` times its mean cosine to
    its ``k`` nearest fellow candidates (CSLS-like); with ``duplicate_above``, by ``alpha * ln(1 + number of
    near-duplicates)`` instead."""
    def order(row: dict[str, Any]) -> list[Any]:
        m = row["_mv"]
        sims = m @ m.T
        np.fill_diagonal(sims, -1.0)
        if duplicate_above is not None:
            pen = np.log1p((sims > duplicate_above).sum(1))
        else:
            kk = min(k, len(m) - 1)
            pen = np.sort(sims, 1)[:, -kk:].mean(1) if kk > 0 else np.zeros(len(m))
        # the dense leg's own scale: the penalty is in cosine units, turned into standard deviations
        sd = float(np.std([c["dense"] for c in row["cands"]])) or 1.0
        return _order(row, -alpha * pen / sd)
    return order


_RANKER_FEATURES = ("dense z", "BM25 z", "dense z x dialogue", "BM25 z x dialogue", "entity share",
                    "ln recall weight", "word coverage", "confidence x BM25 z", "found by BM25", "1/(1+dense rank)",
                    "1/(1+BM25 rank)", "cosine")


def ranker_features(row: dict[str, Any]) -> np.ndarray:
    from memos_core.plaintext.fusion import _peak

    c = to_candidates(row)
    plan = analyze_query(row["query"])
    floor = 0.0 if c.lexical_complete else min(c.lexical.values(), default=0.0)
    d = np.array([c.dense[k] for k in c.keys])
    lex = np.array([c.lexical.get(k, floor) for k in c.keys])
    zd, zl = _z(d), _z(lex)
    dlg = 1.0 if plan.is_dialogue else 0.0
    share = entity_matcher(plan.entities)
    qterms = calibration.query_terms(plan.text)
    conf = (_peak(list(lex)) - _peak(list(d))) / 2 if c.lexical else 0.0
    cols = [zd, zl, zd * dlg, zl * dlg, np.array([share(c.texts[k]) for k in c.keys]),
            np.log(np.clip([c.weights.get(k, 1.0) for k in c.keys], 0.01, 1.0)),
            np.array([calibration.coverage(qterms, c.texts[k]) for k in c.keys]), conf * zl,
            np.array([1.0 if k in c.lexical else 0.0 for k in c.keys]),
            np.array([1 / (1 + c.dense_ranks[k]) if k in c.dense_ranks else 0.0 for k in c.keys]),
            np.array([1 / (1 + c.lexical_ranks[k]) if k in c.lexical_ranks else 0.0 for k in c.keys]), d]
    return np.stack(cols, 1)


def train_ranker(rows: list[dict[str, Any]], l2: float = 1e-2, iters: int = 300, lr: float = 0.05) -> np.ndarray:
    """A linear ranker over :func:`ranker_features`, fitted by Adam on the listwise softmax loss (the chance
    mass the ranker puts on a query's evidence candidates)."""
    data = [(ranker_features(r), np.array([float(c["hit"]) for c in r["cands"]])) for r in rows]
    data = [(x, y) for x, y in data if y.any()]
    w = np.zeros(len(_RANKER_FEATURES))
    m1, m2 = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, iters + 1):
        g = l2 * w
        for x, y in data:
            s = x @ w
            p = np.exp(s - s.max())
            p /= p.sum()
            py = p * y
            g += (x.T @ p - x.T @ (py / py.sum())) / len(data)
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g * g
        w -= lr * (m1 / (1 - 0.9 ** t)) / (np.sqrt(m2 / (1 - 0.999 ** t)) + 1e-8)
    return w


def ranker(w: np.ndarray) -> Any:
    def order(row: dict[str, Any]) -> list[Any]:
        s = ranker_features(row) @ w
        keys = [c["key"] for c in row["cands"]]
        return [keys[i] for i in np.argsort(-s, kind="stable")]
    return order


def _shipped(row: dict[str, Any], cfg: RetrievalConfig | None = None, extra: np.ndarray | None = None,
             dense: np.ndarray | None = None, topical: dict[Any, float] | None = None) -> list[Any]:
    """The shipped fusion's order (topical leg as ``cfg`` says), optionally with the dense cosines or the topical
    leg's cosines replaced, and ``extra`` (per candidate, in standard deviations) added."""
    cfg = cfg or RetrievalConfig()
    c = to_candidates(row, shipped_topical(cfg))
    if dense is not None:
        c.dense = dict(zip(c.keys, dense.tolist()))
    if topical is not None:
        c.topical = topical
    fused = fuse(c, analyze_query(row["query"]), cfg)
    if extra is None:
        return [key for key, *_ in fused]
    add = dict(zip((x["key"] for x in row["cands"]), extra))
    total = {key: z + float(add[key]) for key, z, *_ in fused}
    return sorted(total, key=lambda key: -total[key])


def rocchio(b: float, src: str = "dense", dialogues_only: bool = False, top: int = 3) -> Any:
    """Pseudo-relevance feedback on the query vector (Rocchio): q' = q + b * mean of the ``top`` candidates'
    embeddings (the dense leg's best, or the shipped fusion's with ``src="fused"``). Over the kept candidates
    this is one matrix product: cos(q', v) is proportional to cos(q, v) + b * mean(v_top . v)."""
    def order(row: dict[str, Any]) -> list[Any]:
        if dialogues_only and not analyze_query(row["query"]).is_dialogue:
            return _shipped(row)
        d = np.array([c["dense"] for c in row["cands"]])
        if src == "dense":
            idx = np.argsort(-d, kind="stable")[:top]
        else:
            pos = {c["key"]: i for i, c in enumerate(row["cands"])}
            idx = np.array([pos[k] for k in _shipped(row)[:top]])
        return _shipped(row, dense=d + b * (row["_mv"] @ row["_mv"][idx].mean(0)))
    return order


def rm3(weight: float, src: str = "fused", dialogues_only: bool = False, fb: int = 3, n_terms: int = 10) -> Any:
    """RM3-style query expansion for BM25: the ``n_terms`` most frequent new words of the ``fb`` best candidates'
    own words (by the shipped fusion, or by BM25 with ``src="lexical"``), weighted by their share there, scored
    with BM25 over the candidates' own words (document frequencies over the candidates) and added as a z-scored
    leg with ``weight``."""
    from memos_core.plaintext.lexical import STOPWORDS

    def terms(text: str) -> list[str]:
        return [w for w in re.findall(r"[^\W_]+", text.lower()) if w not in STOPWORDS and len(w) > 1
                and not w.isdigit()]

    def order(row: dict[str, Any]) -> list[Any]:
        plan = analyze_query(row["query"])
        if dialogues_only and not plan.is_dialogue:
            return _shipped(row)
        best = _shipped(row)
        if src == "lexical":
            best = [c["key"] for c in sorted((c for c in row["cands"] if c["lr"] is not None),
                                             key=lambda c: c["lr"])] or best
        docs = {c["key"]: terms(topic_text(c["text"], (c["meta"] or {}).get("speaker"))) for c in row["cands"]}
        q = set(terms(plan.text))
        dist: dict[str, float] = {}
        for key in best[:fb]:
            for t in docs[key]:
                if t not in q:
                    dist[t] = dist.get(t, 0.0) + 1.0 / len(docs[key])
        exp = sorted(dist, key=lambda t: -dist[t])[:n_terms]
        if not exp:
            return _shipped(row)
        n, avg = len(docs), sum(map(len, docs.values())) / max(len(docs), 1)
        df = {t: sum(1 for d in docs.values() if t in d) for t in exp}
        scores = []
        for c in row["cands"]:
            d = docs[c["key"]]
            scores.append(sum(dist[t] * math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) * d.count(t) * 2.2
                              / (d.count(t) + 1.2 * (0.25 + 0.75 * len(d) / max(avg, 1e-9))) for t in exp if t in d))
        return _shipped(row, extra=weight * _z(np.array(scores)))
    return order


def opening_turns(weight: float, n: int = 1) -> Any:
    """Pasted dialogues: the mean vector of the first ``n`` user turns (where a chat usually states its subject)
    against the candidates' embeddings, added as a z-scored leg with ``weight``; other queries as shipped."""
    from memos_core.plaintext.query import ASSISTANT_NAMES

    def order(row: dict[str, Any]) -> list[Any]:
        sp = row["turn_speakers"]
        users = [i for i, s in enumerate(sp) if s and s.lower() not in ASSISTANT_NAMES]
        if len(sp) < 2 or not users:
            return _shipped(row)
        return _shipped(row, extra=weight * _z(row["_mv"] @ row["_tv"][users[:n]].mean(0)))
    return order


_AUX = "am|is|are|was|were|be|been|do|does|did|has|have|had|will|would|can|could|shall|should|may|might|must"


def _person_names(text: str, entities: tuple[str, ...]) -> tuple[str, ...]:
    """The names of ``entities`` in a person's position in ``text``: right after an auxiliary ("When did Maya
    ...") or with a possessive ("Maya's"); all of them when none is."""
    low = text.lower()
    out = tuple(e for e in entities
                if re.search(r"(?<!\w)" + re.escape(e) + r"['’]s(?!\w)", low)
                or re.search(r"(?<!\w)(?:" + _AUX + r")\s+" + re.escape(e) + r"(?!\w)", low))
    return out or entities


def topic_names(which: str, vectors: "_CachedVectors") -> Any:
    """The topical leg with a name-free question that keeps some names: ``which="speakers"`` takes out only the
    names of the speakers among the candidates (read from their provenance: what the cube would have to know
    before it embeds the query), ``"person"`` only the names in a person's position (:func:`_person_names`: no
    store lookup needed); other capitalised words (a child, a place, a band) stay in the topic."""
    from memos_core.plaintext.query import topic_of

    def order(row: dict[str, Any]) -> list[Any]:
        plan = analyze_query(row["query"])
        if plan.is_dialogue or plan.topic is None:
            return _shipped(row)
        if which == "speakers":
            sp = {((c["meta"] or {}).get("speaker") or "").lower() for c in row["cands"]}
            names = tuple(e for e in plan.entities if e in sp)
        else:
            names = _person_names(plan.text, plan.entities)
        topic = topic_of(plan.text, names) if names else None
        if topic == plan.topic:
            return _shipped(row)
        topical: dict[Any, float] = {}
        if topic:
            tv = vectors.docs([topic_text(c["text"], (c["meta"] or {}).get("speaker")) for c in row["cands"]])
            topical = dict(zip((c["key"] for c in row["cands"]), (tv @ vectors.docs([topic])[0]).tolist()))
        return _shipped(row, topical=topical)
    return order


def name_free_dense(scale: float, lexical: float = 0.5, act: float | None = None) -> Any:
    """Questions and keywords naming no one (no topical leg): the dense leg's weight scaled by ``scale``
    (``name_free_dense_scale``) and the lexical leg's base weight ``lexical`` (``name_free_lexical_weight``; 1.0 and
    0.5: as questions naming someone, the default before session 7); ``act``: the act malus for such questions."""
    cfg = RetrievalConfig()
    cfg.name_free_dense_scale = scale  # type: ignore[attr-defined]
    cfg.name_free_lexical_weight = lexical  # type: ignore[attr-defined]
    if act is not None:
        cfg_act = RetrievalConfig(act_weight=act)
        cfg_act.name_free_dense_scale = scale  # type: ignore[attr-defined]
        cfg_act.name_free_lexical_weight = lexical  # type: ignore[attr-defined]

        def order_act(row: dict[str, Any]) -> list[Any]:
            plan = analyze_query(row["query"])
            return _shipped(row, cfg if plan.is_dialogue or plan.entities else cfg_act)
        return order_act

    def order(row: dict[str, Any]) -> list[Any]:
        return _shipped(row, cfg)
    return order


# ------------------------------------------------------------------ session 8 (issue 15): pasted dialogues
# Every function below changes pasted-dialogue queries only (MADial's 160, synthetic's 32 per instance, the assistant
# style's 20); other queries keep the shipped fusion. README: "Tried in issue 15, session 8".

_ROLE_WORDS = {w: w for w in """mom dad parents grandma grandpa grandparents sister brother cousin uncle aunt family
wife husband son daughter kids children baby friend classmate teacher neighbor boss colleague roommate partner
girlfriend boyfriend deskmate teammate coach""".split()}
_ROLE_WORDS.update({"mother": "mom", "mum": "mom", "mommy": "mom", "father": "dad", "daddy": "dad", "parent": "parents",
                    "grandmother": "grandma", "granny": "grandma", "grandfather": "grandpa", "friends": "friend",
                    "classmates": "classmate", "teachers": "teacher", "sisters": "sister", "brothers": "brother",
                    "cousins": "cousin", "neighbors": "neighbor", "neighbour": "neighbor", "colleagues": "colleague",
                    "coworker": "colleague", "coworkers": "colleague", "teammates": "teammate", "auntie": "aunt"})


def _roles(text: str) -> set[str]:
    return {_ROLE_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in _ROLE_WORDS}


def _user_turns(plan: Any) -> list[tuple[str, str]]:
    from memos_core.plaintext.query import ASSISTANT_NAMES

    return [(s, t) for s, t in plan.turns if s and s.lower() not in ASSISTANT_NAMES]


def _assistant_turns(plan: Any) -> list[tuple[str | None, str]]:
    from memos_core.plaintext.query import ASSISTANT_NAMES

    return [(s, t) for s, t in plan.turns if not (s and s.lower() not in ASSISTANT_NAMES)]


def _has_assistant(plan: Any) -> bool:
    from memos_core.plaintext.query import ASSISTANT_NAMES

    return any(s and s.lower() in ASSISTANT_NAMES for s, _ in plan.turns)


def role_overlap(weight: float) -> Any:
    """Dialogues: a bonus of ``weight`` times the share of the kin and social-role words of the user's turns ("my
    mom", "my classmates") that the candidate mentions (people named by role rather than by name)."""
    def order(row: dict[str, Any]) -> list[Any]:
        plan = analyze_query(row["query"])
        want = _roles(" ".join(t for _, t in _user_turns(plan))) if plan.is_dialogue else set()
        if not want:
            return _shipped(row)
        return _shipped(row, extra=np.array([weight * len(want & _roles(c["text"])) / len(want) for c in row["cands"]]))
    return order


def affect_agreement(weight: float, vectors: "_CachedVectors") -> Any:
    """Dialogues: candidates whose mood agrees with the user's turns get up to ``weight`` (z-scored product of the
    two projections on the embedder's happy-minus-sad direction; the candidates' projections centred)."""
    ends = vectors.docs(["I feel very happy and joyful.", "I feel very sad and upset."])
    axis = (ends[0] - ends[1]) / float(np.linalg.norm(ends[0] - ends[1]))

    def order(row: dict[str, Any]) -> list[Any]:
        plan = analyze_query(row["query"])
        from memos_core.plaintext.query import ASSISTANT_NAMES

        users = [i for i, (s, _) in enumerate(plan.turns) if s and s.lower() not in ASSISTANT_NAMES]
        if not plan.is_dialogue or not users or len(row["_tv"]) != len(plan.turns):
            return _shipped(row)
        mood = float((row["_tv"][users] @ axis).mean())
        am = row["_mv"] @ axis
        return _shipped(row, extra=weight * _z(mood * (am - am.mean())))
    return order


def sentence_max(weight: float, vectors: "_CachedVectors") -> Any:
    """Dialogues: each candidate's own words split into sentences, the best sentence's cosine to the dialogue's
    query vector (text + last user turn, as the cube builds it) added as a z-scored leg with ``weight``."""
    def order(row: dict[str, Any]) -> list[Any]:
        plan = analyze_query(row["query"])
        if not plan.is_dialogue:
            return _shipped(row)
        v = vectors.docs([plan.text] + ([plan.focus] if plan.focus else []))
        q = v[0] + (RetrievalConfig().focus_weight * v[1] if plan.focus else 0.0)
        q = q / float(np.linalg.norm(q))
        best = []
        for c in row["cands"]:
            own = topic_text(c["text"], (c["meta"] or {}).get("speaker"))
            sents = [s for s in re.split(r"(?<=[.!?])\s+", own) if s.strip()] or [own]
            best.append(float((vectors.docs(sents) @ q).max()))
        return _shipped(row, extra=weight * _z(np.array(best)))
    return order


def centroid_corrected(beta: float) -> Any:
    """Dialogues: the dense leg scores ``cos(q, m) - beta * cos(centroid, m)``, the centroid being the candidates'
    mean embedding (what every memory of the scope shares: "X felt very happy"), before fusion."""
    def order(row: dict[str, Any]) -> list[Any]:
        if not analyze_query(row["query"]).is_dialogue:
            return _shipped(row)
        m = row["_mv"]
        cen = m.mean(0)
        cen = cen / float(np.linalg.norm(cen))
        return _shipped(row, dense=np.array([c["dense"] for c in row["cands"]]) - beta * (m @ cen))
    return order


def dialogue_lexical_rule(rule: str, lo: float, hi: float) -> Any:
    """Dialogues: the base lexical weight set per query, from ``lo`` to ``hi`` as the two legs' top 10 overlap
    (``rule="agreement"``: share of memories both rank in their top 10) grows, or by the dense leg's gap
    (``"gap"``: ``0.3 * (1 + lo * (0.8 - (top1 - top5) / sd))`` within [0.09, 0.6]; ``hi`` unused)."""
    def order(row: dict[str, Any]) -> list[Any]:
        if not analyze_query(row["query"]).is_dialogue:
            return _shipped(row)
        if rule == "agreement":
            d = {c["key"] for c in row["cands"] if c["dr"] is not None and c["dr"] <= 10}
            lx = {c["key"] for c in row["cands"] if c["lr"] is not None and c["lr"] <= 10}
            w = lo + (hi - lo) * len(d & lx) / 10
        else:
            ds = sorted((c["dense"] for c in row["cands"]), reverse=True)
            gap = (ds[0] - ds[min(4, len(ds) - 1)]) / max(float(np.std(ds)), 1e-9)
            w = 0.3 * float(np.clip(1 + lo * (0.8 - gap), 0.3, 2.0))
        return _shipped(row, RetrievalConfig(dialogue_lexical_weight=w))
    return order


def oracle_dialogue_lexical(weights: tuple[float, ...] = (0.3, 0.0, 0.15, 0.6, 1.0)) -> Any:
    """An upper bound, not a method: each dialogue gets whichever base lexical weight ranks its evidence best (it
    reads the labels). What any per-query fusion weight could reach at most over these weights."""
    def order(row: dict[str, Any]) -> list[Any]:
        if not analyze_query(row["query"]).is_dialogue:
            return _shipped(row)
        label = {c["key"]: c["hit"] for c in row["cands"]}
        best: tuple[int, list[Any]] | None = None
        for w in weights:
            o = _shipped(row, RetrievalConfig(dialogue_lexical_weight=w))
            r = next((i for i, k in enumerate(o) if label[k]), len(o))
            if best is None or r < best[0]:
                best = (r, o)
        assert best is not None
        return best[1]
    return order


def session8_variants(vectors: "_CachedVectors") -> dict[str, Any]:
    out: dict[str, Any] = {"dialogues: oracle lexical weight per query (upper bound)": oracle_dialogue_lexical()}
    for w in (0.2, 0.4, 0.8):
        out[f"dialogues: role-word overlap w={w}"] = role_overlap(w)
    for w in (0.2, 0.4, 0.8):
        out[f"dialogues: mood agreement w={w}"] = affect_agreement(w, vectors)
    for w in (0.3, 0.6):
        out[f"dialogues: best memory sentence w={w}"] = sentence_max(w, vectors)
    for b in (0.2, 0.4, 0.7):
        out[f"dialogues: centroid-corrected dense b={b}"] = centroid_corrected(b)
    for lo, hi in ((0.2, 0.5), (0.15, 0.6), (0.45, 0.15)):
        out[f"dialogues: lexical weight by legs' agreement {lo}->{hi}"] = dialogue_lexical_rule("agreement", lo, hi)
    for g in (-0.5, 0.5, 1.0):
        out[f"dialogues: lexical weight by dense gap g={g}"] = dialogue_lexical_rule("gap", g, 0.0)
    return out


# Query rewrites: the legs themselves change (another query vector, another BM25 query), so these run through a cube
# (`--dialogue-queries`): each set with pasted-dialogue queries is ingested again (vectors from the cache) and
# every dialogue's legs are re-run with the cube's own `dense` / `lexical` / `candidates` / `fuse`.

def _vec(vectors: "_CachedVectors", parts: list[tuple[str, float]]) -> np.ndarray:
    parts = [(t, w) for t, w in parts if t and w]
    vs = vectors.docs([t for t, _ in parts])
    q = sum(w * v for (_, w), v in zip(parts, vs))
    return q / max(float(np.linalg.norm(q)), 1e-12)


def _tagged(turns: list[tuple[str | None, str]]) -> str:
    return " ".join(f"{s}: {t}" if s else t for s, t in turns)


def query_rewrites(vectors: "_CachedVectors") -> dict[str, Any]:
    """name -> fn(plan) -> (query vector or None: the cube's, FTS MATCH expression or None: the cube's); a
    ``("expand", tau)`` entry stands for :func:`_expansion` (it needs the scope's vocabulary)."""
    from memos_core.plaintext.lexical import fts_query, terms

    fw = RetrievalConfig().focus_weight

    def shipped_parts(plan: Any) -> list[tuple[str, float]]:
        return [(plan.text, 1.0), (plan.focus or "", fw)]

    out: dict[str, Any] = {"shipped": lambda plan: (None, None)}
    out["dense: user turns only, no speaker tags"] = lambda p: (
        _vec(vectors, [(" ".join(t for _, t in _user_turns(p)), 1.0), (p.focus or "", fw)]), None)
    out["dense: user turns only, tagged"] = lambda p: (
        _vec(vectors, [(_tagged(_user_turns(p)), 1.0), (p.focus or "", fw)]), None)  # type: ignore[arg-type]
    out["dense: no speaker tags"] = lambda p: (
        _vec(vectors, [(" ".join(t for _, t in p.turns), 1.0), (p.focus or "", fw)]), None)
    out["dense: no speaker tags when no assistant speaks (a transcript between people)"] = lambda p: (
        None if _has_assistant(p) else _vec(vectors, [(" ".join(t for _, t in p.turns), 1.0)]), None)
    out["dense: no speaker tags in a transcript between two or more people, none the assistant"] = lambda p: (
        None if _has_assistant(p) or len({s.lower() for s, _ in p.turns if s}) < 2
        else _vec(vectors, [(" ".join(t for _, t in p.turns), 1.0)]), None)
    out["dense: turns in reverse order"] = lambda p: (
        _vec(vectors, [(_tagged(list(reversed(p.turns))), 1.0), (p.focus or "", fw)]), None)
    out["dense: last two user turns"] = lambda p: (
        _vec(vectors, [(" ".join(t for _, t in _user_turns(p)[-2:]), 1.0)]), None)
    for g in (0.1, 0.2, 0.3, 0.4, 0.6):
        out[f"dense: minus the assistant turns' vector g={g}"] = (lambda g: lambda p: (
            _vec(vectors, shipped_parts(p) + [(_tagged(_assistant_turns(p)), -g)]), None))(g)
    for b in (0.2, 0.4):
        out[f"dense: plus the user turns' vector b={b}"] = (lambda b: lambda p: (
            _vec(vectors, shipped_parts(p) + [(_tagged(_user_turns(p)), b)]), None))(b)  # type: ignore[arg-type]
    for c in (-0.2, 0.0, 0.2, 0.4, 0.6):
        for f in (0.3, 0.5, 1.0):
            out[f"dense: user turns + {c} x assistant turns + {f} x last user turn"] = (lambda c, f: lambda p: (
                _vec(vectors, [(_tagged(_user_turns(p)), 1.0), (_tagged(_assistant_turns(p)), c),  # type: ignore[arg-type]
                               (p.focus or "", f)]) if _user_turns(p) else None, None))(c, f)
    out["BM25: user turns only"] = lambda p: (None, fts_query(_tagged(_user_turns(p))))  # type: ignore[arg-type]
    out["BM25: 96 terms"] = lambda p: (None, fts_query(p.text, 96))
    out["BM25: 24 terms"] = lambda p: (None, fts_query(p.text, 24))
    out["BM25: without the word 'assistant'"] = lambda p: (
        None, fts_query(" ".join(t for t in terms(p.text) if t != "assistant")))
    out["BM25: latest turn first"] = lambda p: (
        None, fts_query(" ".join(t for _, t in reversed(p.turns)) + " " + " ".join(s for s, _ in _user_turns(p))))
    for tau in (0.6, 0.7, 0.8):
        out[f"BM25: + the scope's words closest to the user's (cos >= {tau})"] = ("expand", tau)
    return out


def _expansion(plan: Any, vocab: list[str], vocab_vecs: np.ndarray, vectors: "_CachedVectors", tau: float) -> str:
    """The scope's own words (``vocab``) whose vector is within ``tau`` cosine of a content word of the user's
    turns, put before the dialogue (the BM25 query keeps its first 48 terms)."""
    from memos_core.plaintext.lexical import terms

    words = [w for w in terms(" ".join(t for _, t in _user_turns(plan)), 10**6) if w.isalpha() and len(w) > 2]
    have = set(terms(plan.text, 10**6))
    extra: list[str] = []
    if words:
        sims = vectors.docs(words) @ vocab_vecs.T
        for i in range(len(words)):
            for j in np.where(sims[i] >= tau)[0]:
                if vocab[j] not in have and vocab[j] not in extra:
                    extra.append(vocab[j])
    return " ".join(extra) + " " + plan.text


def dialogue_queries(paths: dict[str, Path], vectors: "_CachedVectors", n_cand: int = 60,
                     match: str | None = None) -> None:
    """``--dialogue-queries``: every :func:`query_rewrites` variant on each set's pasted-dialogue queries, through
    a cube. Prints, per variant and set, the dialogues' hits at 1 / 5 / 10 (of how many)."""
    from memos_core.plaintext.lexical import fts_query, terms

    rewrites = {k: v for k, v in query_rewrites(vectors).items() if not match or match in k or k == "shipped"}
    for name, path in paths.items():
        data = load_dataset(path)
        with tempfile.TemporaryDirectory(prefix="memos-tune-dlg-") as tmp:
            cube = MemCube(Path(tmp) / "cube", embedder=vectors.embedder(), retrieval=RetrievalConfig(query_cache=0))
            queries = []
            vocab: dict[str, list[str]] = {}
            for ci, conv in enumerate(data["conversations"]):
                scope = scope_of(ci, conv)
                plans = [(q, analyze_query(q["text"])) for q in conv["queries"] if q.get("evidence")]
                plans = [(q, p) for q, p in plans if p.is_dialogue]
                if not plans:
                    continue
                ingest_conversation(cube, conv, scope, OfflineReader())
                vocab[scope] = sorted({w for s in conv["sessions"] for t in s["turns"]
                                       for w in terms(str(t.get("text", "")), 10**6) if w.isalpha() and len(w) > 2})
                f = SearchFilter(user_id=scope)
                cf = cube.records.compile_filter(f, cube._states(f), cube._now().timestamp())
                queries += [(p, f, cf, {str(e) for e in q["evidence"]}) for q, p in plans]
            vectors.save()
            if not queries:
                cube.close()
                continue
            vocab_vecs = {s: vectors.docs(v) for s, v in vocab.items()}
            r = cube.retriever
            for vname, fn in rewrites.items():
                hits = [0, 0, 0]
                for plan, f, cf, evidence in queries:
                    if isinstance(fn, tuple):
                        qvec, fts = None, fts_query(_expansion(plan, vocab[f.user_id], vocab_vecs[f.user_id], vectors,
                                                               fn[1]))
                    else:
                        qvec, fts = fn(plan)
                    if qvec is None:
                        qvec = r.query_vector(plan, with_topic=False)
                    if fts is None:
                        fts = fts_query(plan.text)
                    ranked = {"dense": r.dense(qvec, f, cf, n_cand), "lexical": cube.records.lexical(fts, cf, n_cand)}
                    order = [k for k, *_ in fuse(r.candidates(plan, qvec, ranked, n_cand), plan, RetrievalConfig())]
                    items = cube.records.get_many_by_rowid(order[:10])
                    first = next((i for i, k in enumerate(order[:10], 1)
                                  if set(items[k].provenance.source_ids) & evidence), 99)
                    for j, k in enumerate((1, 5, 10)):
                        hits[j] += first <= k
                print(f"{vname:<64} {name}: dialogues {len(queries)}, hits@1/5/10 {hits[0]}/{hits[1]}/{hits[2]}",
                      flush=True)
            vectors.save()
            cube.close()


def show_misses(rows: list[dict[str, Any]], k: int = 5, limit: int = 40) -> None:
    """``--misses SET``: the queries whose evidence the shipped fusion leaves out of its top ``k``, side by side
    with the evidence, each leg's rank of it and what ranked above it (the miss analysis of the README)."""
    cfg = RetrievalConfig()
    shown = 0
    for row in rows:
        order = _shipped(row, cfg)
        cands = {c["key"]: c for c in row["cands"]}
        gold = [key for key in order if cands[key]["hit"]]
        if gold and order.index(gold[0]) < k:
            continue
        shown += 1
        if shown > limit:
            break
        g = cands[gold[0]] if gold else None
        print(f"=== fused rank {order.index(gold[0]) + 1 if gold else '-'}, dense {g and g['dr']}, "
              f"BM25 {g and g['lr']} ({row['category']})")
        for s, t in analyze_query(row["query"]).turns or [(None, row["query"])]:
            print(f"    {s or '-'}: {t[:200]}")
        print(f"  EVIDENCE: {g['text'][:220] if g else '(not among the candidates)'}")
        for i, key in enumerate(order[:k], 1):
            c = cands[key]
            print(f"  {i}. dense {c['dr']} BM25 {c['lr']}: {c['text'][:160]}")


def run_variants(all_rows: dict[str, list[dict[str, Any]]], cache: Path, train_seed: int | None,
                 vectors: "_CachedVectors", match: str | None = None) -> None:
    for name, rows in all_rows.items():
        _load_vectors(cache, name, rows)
    variants: dict[str, Any] = {"shipped": _shipped, "no topical leg": _order}
    for w in (0.5, 1.0, 1.5):
        variants[f"topical leg w={w}"] = topical_leg(w)
    variants["topical leg w=1.0, no shift"] = topical_leg(1.0, shift=False)
    variants["topical leg w=1.0, full query"] = topical_leg(1.0, "full query")
    # pasted dialogues (with the shipped topical leg for the other queries)
    for side in ("topic", "full"):
        for decay in (1.0, 0.5):
            for w in (0.3, 1.0):
                variants[f"recency dense {side} d={decay} w={w}"] = recency_dense(w, decay, vectors, side)
    for decay in (1.0, 0.5):
        for w in (0.2, 0.4):
            variants[f"recency BM25 d={decay} w={w}"] = recency_bm25(w, decay)
    for agg in ("max", "mean"):
        for w in (0.3, 1.0):
            variants[f"multi-vector {agg} w={w}"] = multi_vector(w, agg)
    variants["neighbour penalty a=0.5"] = neighbour_penalty(0.5)
    variants["duplicate penalty cos>0.97"] = neighbour_penalty(1.0, duplicate_above=0.97)
    # session 7 (issue 15): feedback and expansion on every query, the opening user turns of a dialogue, a
    # topic keeping some names, a lower dense weight for questions naming no one
    for src in ("dense", "fused"):
        for dlg in (False, True):
            for b in (0.3, 0.7):
                variants[f"Rocchio {src}{' dialogues' if dlg else ''} b={b}"] = rocchio(b, src, dlg)
    for src in ("fused", "lexical"):
        for dlg in (False, True):
            for w in (0.2, 0.5):
                variants[f"RM3 {src}{' dialogues' if dlg else ''} w={w}"] = rm3(w, src, dlg)
    for n in (1, 2):
        for w in (0.2, 0.4, 0.8):
            variants[f"opening user turns n={n} w={w}"] = opening_turns(w, n)
    variants["topic without the speakers' names"] = topic_names("speakers", vectors)
    variants["topic without person-position names"] = topic_names("person", vectors)
    for scale, lexical, act in ((1.0, 0.5, None), (0.8, 0.5, None), (0.6, 0.5, None), (0.5, 0.5, None),
                                (0.4, 0.5, None), (0.5, 0.4, None), (0.5, 0.3, None), (0.7, 0.5, 3.0),
                                (1.0, 0.5, 3.0), (0.5, 0.4, 3.0)):
        variants[f"name-free: dense x{scale}, lexical {lexical}" + (f", act {act}" if act else "")] = \
            name_free_dense(scale, lexical, act)
    # session 8 (issue 15): pasted dialogues (query rewrites: --dialogue-queries)
    variants.update(session8_variants(vectors))
    # the learned ranker is fitted on the fresh instances of the first --fresh seed only
    train = [f"{style}@{train_seed + off}" for style, (_, off) in GENERATORS.items()] if train_seed is not None else []
    if train and (not match or match in "learned ranker"):
        w = train_ranker([r for n in train for r in all_rows[n]])
        print(f"learned ranker trained on {', '.join(train)}: "
              + json.dumps({f: round(float(v), 3) for f, v in zip(_RANKER_FEATURES, w)}))
        variants["learned ranker"] = ranker(w)
    for vname, order in variants.items():
        if match and match not in vname and vname != "shipped":
            continue
        line = []
        for name, rows in all_rows.items():
            hits1 = hits5 = hits10 = 0
            for row in rows:
                o = order(row)
                label = {c["key"]: c["hit"] for c in row["cands"]}
                hits1 += any(label[k] for k in o[:1])
                hits5 += any(label[k] for k in o[:5])
                hits10 += any(label[k] for k in o[:10])
            mark = " (trained on)" if vname == "learned ranker" and name in train else ""
            line.append(f"{name}{mark} {hits1 / len(rows):.3f}/{hits5 / len(rows):.3f}/{hits10 / len(rows):.3f}")
        print(f"{vname:<36} any@1/any@5/any@10: " + "  ".join(line), flush=True)


def report(all_rows: dict[str, list[dict[str, Any]]], cfg: RetrievalConfig) -> dict[str, Any]:
    out = {}
    for name, rows in all_rows.items():
        res = {m: evaluate(rows, cfg, m) for m in ("hybrid", "hybrid-no-topical", "dense", "lexical")}
        best = {k: max(res["dense"][k], res["lexical"][k]) for k in ("any@5", "any@10")}
        res["margin"] = {k: round(res["hybrid"][k] - best[k], 4) for k in best}
        res["role"] = role(name)
        out[name] = res
    return out


CALIBRATE_ON = ("synthetic", "people_qa")  # generated by this project: the calibration is fitted on these only


def _calibration_rows(rows: list[dict[str, Any]], mode: str) -> list[tuple[list[float], int]]:
    out = []
    for row in rows:
        plan = analyze_query(row["query"])
        qterms = calibration.query_terms(plan.text)
        share = entity_matcher(plan.entities)
        for c in row["cands"]:
            cov = calibration.coverage(qterms, c["text"])
            ent = share(c["text"])
            # the reader's current weights (a set collected before they changed keeps its acts)
            lw = math.log(ACT_WEIGHTS.get((c["meta"] or {}).get("turn_act"), 1.0))
            feats = {"hybrid": [c["dense"], cov, ent, lw], "dense": [c["dense"], lw], "lexical": [cov, ent, lw]}[mode]
            out.append((feats, int(c["hit"])))
    return out


def calibrate(all_rows: dict[str, list[dict[str, Any]]]) -> None:
    """Fit the score calibration (logistic regression) per mode on ``CALIBRATE_ON``; print reliability tables
    (mean predicted score vs share of evidence per score bin) on every set."""
    fitted = {}
    for mode in ("hybrid", "dense", "lexical"):
        train = [r for name in CALIBRATE_ON if name in all_rows for r in _calibration_rows(all_rows[name], mode)]
        w = calibration.fit_logistic(train)
        full = {"hybrid": w, "dense": [w[0], w[1], 0.0, 0.0, w[2]], "lexical": [w[0], 0.0, *w[1:]]}[mode]
        fitted[mode] = tuple(round(v, 3) for v in full)
    print("CALIBRATION =", json.dumps(fitted))
    calibration.CALIBRATION.update(fitted)
    for name, rows in all_rows.items():
        for mode in ("hybrid",):
            bins: dict[int, list[tuple[float, int]]] = {}
            for feats, lab in _calibration_rows(rows, mode):
                p = calibration.calibrated_score(mode, feats[0], feats[1], feats[2], math.exp(feats[3]))
                bins.setdefault(min(int(p * 10), 9), []).append((p, lab))
            table = " ".join(f"{b / 10:.1f}:{np.mean([p for p, _ in v]):.2f}/{np.mean([l for _, l in v]):.2f}"
                             f"(n={len(v)})" for b, v in sorted(bins.items()))
            print(f"  reliability {name} ({'fit' if name in CALIBRATE_ON else 'not fitted on'}): {table}")


def latency_cube(tmp: Path, conversations: int = 2) -> tuple[MemCube, list[tuple[str, str]]]:
    """A cube in ``tmp`` holding people-QA's first ``conversations`` conversations (the real embedder,
    ``query_cache=0`` so every search embeds its query, the query encoder warmed up) and those conversations'
    questions as ``(text, scope)``: what the latency measurements here and in ``lm_rerank.py`` search."""
    from memos_core.bench import retrieval as bench

    data = load_dataset(SETS["people_qa"])
    cube = MemCube(tmp / "c", retrieval=RetrievalConfig(query_cache=0))
    qs = []
    for ci, conv in enumerate(data["conversations"][:conversations]):
        scope = bench.scope_of(ci, conv)
        bench.ingest_conversation(cube, conv, scope, OfflineReader())
        qs += [(q["text"], scope) for q in conv["queries"]]
    cube.embedder.embed_query("warm up")
    return cube, qs


def latency(rounds: int, conversations: int = 2) -> None:
    """Search time of the topical leg's two query modes, same cube and questions, alternated query by query
    (people-QA's first ``conversations`` conversations, the real embedder, ``query_cache=0`` so every search embeds):
    p50 / p95 ms of ``topical_query="full"`` (no second text) and ``"topic"`` (the name-free question too)."""
    with tempfile.TemporaryDirectory(prefix="memos-lat-") as tmp:
        cube, qs = latency_cube(Path(tmp), conversations)
        cfg = cube.retrieval  # the cube's own config object: the mode is switched in place
        lat: dict[str, list[float]] = {"full": [], "topic": []}
        for rnd in range(rounds):
            for q, scope in qs:
                for mode in (("full", "topic") if rnd % 2 == 0 else ("topic", "full")):
                    cfg.topical_query = mode  # type: ignore[assignment]
                    t0 = time.perf_counter()
                    cube.search(q, k=20, user_id=scope, record_usage=False)
                    lat[mode].append((time.perf_counter() - t0) * 1000)
        cube.close()
    for mode, v in lat.items():
        v.sort()
        print(json.dumps({"topical_query": mode, "searches": len(v), "p50_ms": round(v[len(v) // 2], 2),
                          "p95_ms": round(v[min(len(v) - 1, int(0.95 * len(v)))], 2)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "memos-tune"))
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--calibrate", action="store_true", help="fit the score calibration and print reliability")
    ap.add_argument("--fresh", nargs="*", type=int, default=[],
                    help="also generate and report fresh instances of the generated styles with these seeds")
    ap.add_argument("--tune-fresh", action="store_true",
                    help="also generate and report the fresh assistant-style instances that are tuning data (TUNE_FRESH)")
    ap.add_argument("--variants", action="store_true",
                    help="evaluate the alternatives tried for issue 15 (the learned ranker trains on the first "
                         "--fresh seed's sets)")
    ap.add_argument("--dialogue-queries", action="store_true",
                    help="re-run the legs of every pasted-dialogue query with the query rewrites tried in session 8")
    ap.add_argument("--match", metavar="TEXT",
                    help="with --variants or --dialogue-queries: only the variants whose name contains TEXT")
    ap.add_argument("--misses", metavar="SET", help="print the shipped fusion's misses at 5 on SET, side by side")
    ap.add_argument("--latency", type=int, metavar="ROUNDS", default=0,
                    help="only time searches with topical_query 'full' vs 'topic', alternated, ROUNDS rounds")
    args = ap.parse_args()
    if args.latency:
        latency(args.latency)
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    vectors = _CachedVectors(cache / "vectors.npz")
    paths = {**{name: SETS[name] for name in args.sets}, **fresh_sets(args.fresh, cache, args.tune_fresh)}
    if args.dialogue_queries:
        dialogue_queries(paths, vectors, match=args.match)
        return
    rows = {name: collect(name, path, cache, vectors) for name, path in paths.items()}
    vectors.save()
    if args.calibrate:
        calibrate(rows)
        return
    if args.variants:
        run_variants(rows, cache, args.fresh[0] if args.fresh else None, vectors, args.match)
        return
    if args.misses:
        show_misses(rows[args.misses])
        return
    for name, res in report(rows, RetrievalConfig()).items():
        print(name, res["role"], json.dumps({m: res[m] for m in ("hybrid", "hybrid-no-topical", "dense", "lexical",
                                                                 "margin")}))


if __name__ == "__main__":
    main()
