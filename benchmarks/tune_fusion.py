"""Tune hybrid fusion on the dev sets, cheaply: embed each set once, keep every query's candidates, then try
fusion settings on the kept candidates in pure Python.

    python benchmarks/tune_fusion.py [--cache /tmp/memos-tune] [--sets NAME ...]   # collect, then report
    python benchmarks/tune_fusion.py --calibrate                                    # fit the score calibration

Which sets are for tuning and which are held out is fixed here (``TUNE`` / ``HELD_OUT``) and in the README:
held-out sets are only *reported*, never used to choose a setting. Candidates are gathered with the cube's own
code (``MemCube._gather`` / ``_candidates``) and fused with :func:`memos_core.plaintext.fusion.fuse`, so what is
measured here is what ``memos bench retrieval`` measures (check with it after tuning).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
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
from memos_core.reader.offline import ACT_WEIGHTS, OfflineReader  # noqa: E402

SETS = {
    "madial": Path("/work/shared/data/madial/madial_en.json"),
    "synthetic": ROOT / "benchmarks/data/synthetic_longmem.json",
    "people_qa": ROOT / "benchmarks/data/people_qa.json",
    "assistant": ROOT / "benchmarks/data/assistant_prefs.json",
}
TUNE = ("madial", "synthetic", "people_qa")
HELD_OUT = ("assistant",)
KS = (1, 5, 10, 20)


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
    data = load_dataset(path)
    digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    if out_path.exists():
        kept = json.loads(out_path.read_text())
        if kept.get("digest") == digest:
            return kept["queries"]
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
            where, args = cube.records.compile_filter(f, states, cube._now().timestamp())
            for q in conv["queries"]:
                evidence = {str(e) for e in q.get("evidence", [])}
                if not evidence:
                    continue
                plan = analyze_query(q["text"])
                ranked, qvec = cube.retriever.gather(plan, "hybrid", f, where, args, n_cand)
                c = cube.retriever.candidates(plan, qvec, ranked, n_cand)
                items = cube.records.get_many_by_rowid(list(c.keys))
                cands = []
                for key in c.keys:
                    it = items[key]
                    cands.append({"key": key, "dense": c.dense.get(key), "lexical": c.lexical.get(key),
                                  "dr": c.dense_ranks.get(key), "lr": c.lexical_ranks.get(key),
                                  "text": c.texts.get(key, ""), "meta": it.metadata,
                                  "hit": bool(set(it.provenance.source_ids) & evidence)})
                rows.append({"query": q["text"], "category": q.get("category", "all"),
                             "lexical_complete": c.lexical_complete, "n_evidence": len(evidence), "cands": cands})
        cube.close()
    out_path.write_text(json.dumps({"digest": digest, "queries": rows}))
    print(f"  {name}: {len(rows)} queries collected in {time.time() - t0:.0f}s", file=sys.stderr)
    return rows


def to_candidates(row: dict[str, Any]) -> Candidates:
    cs = row["cands"]
    return Candidates(keys=[c["key"] for c in cs], dense={c["key"]: c["dense"] for c in cs},
                      lexical={c["key"]: c["lexical"] for c in cs if c["lexical"] is not None},
                      lexical_complete=row["lexical_complete"], texts={c["key"]: c["text"] for c in cs},
                      dense_ranks={c["key"]: c["dr"] for c in cs if c["dr"] is not None},
                      lexical_ranks={c["key"]: c["lr"] for c in cs if c["lr"] is not None},
                      # the reader's current weight for the act the turn was labelled with when collected
                      weights={c["key"]: ACT_WEIGHTS.get((c["meta"] or {}).get("turn_act"), 1.0) for c in cs})


def evaluate(rows: list[dict[str, Any]], cfg: RetrievalConfig, mode: str = "hybrid") -> dict[str, float]:
    """any@k of ``mode`` over the kept candidates (dense/lexical: each retriever's own order)."""
    hits = {k: 0 for k in KS}
    for row in rows:
        label = {c["key"]: c["hit"] for c in row["cands"]}
        if mode == "hybrid":
            order = [key for key, *_ in fuse(to_candidates(row), analyze_query(row["query"]), cfg)]
        else:
            field = "dr" if mode == "dense" else "lr"
            order = [c["key"] for c in sorted((c for c in row["cands"] if c[field] is not None), key=lambda c: c[field])]
        for k in KS:
            hits[k] += any(label[key] for key in order[:k])
    n = max(len(rows), 1)
    return {f"any@{k}": round(hits[k] / n, 4) for k in KS}


def report(all_rows: dict[str, list[dict[str, Any]]], cfg: RetrievalConfig) -> dict[str, Any]:
    out = {}
    for name, rows in all_rows.items():
        res = {m: evaluate(rows, cfg, m) for m in ("hybrid", "dense", "lexical")}
        best = {k: max(res["dense"][k], res["lexical"][k]) for k in ("any@5", "any@10")}
        res["margin"] = {k: round(res["hybrid"][k] - best[k], 4) for k in best}
        res["role"] = "tune" if name in TUNE else "held-out"
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "memos-tune"))
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--calibrate", action="store_true", help="fit the score calibration and print reliability")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    vectors = _CachedVectors(cache / "vectors.npz")
    rows = {name: collect(name, SETS[name], cache, vectors) for name in args.sets}
    vectors.save()
    if args.calibrate:
        calibrate(rows)
        return
    for name, res in report(rows, RetrievalConfig()).items():
        print(name, res["role"], json.dumps({m: res[m] for m in ("hybrid", "dense", "lexical", "margin")}))


if __name__ == "__main__":
    main()
