"""Issue 15 experiment: rerank the shipped hybrid's top K with a small causal LM that reads query and memory together.

    python benchmarks/lm_rerank.py --sets madial synthetic people_qa --every 3 [--model gemma3-270m] [--prompt recall]
    python benchmarks/lm_rerank.py --sets assistant --tune-fresh --fresh 101 102 --every 3 --forms ql
    python benchmarks/lm_rerank.py --sets people_qa@101 people_qa@102 synthetic@301 synthetic@302 --every 3 \
        --forms ql --model gemma3-270m                                              # (after the line above)
    python benchmarks/lm_rerank.py --sets madial synthetic people_qa --report-only   # re-print from the cache
    python benchmarks/lm_rerank.py --latency 60 [--k 10]                             # search time with / without
    python benchmarks/lm_rerank.py --latency 60 --library [--k 10]   # the same through RetrievalConfig(reranker=...)
    python benchmarks/lm_rerank.py --library-bench people_qa synthetic   # memos bench retrieval without / with it

The figures and what they mean are in the README ("Tried in issue 15, session 9"): nothing reaches MADial any@5 0.80;
``ql`` on questions naming someone lifts any@1 on every set that has them, at ~0.35-0.7 s per search on CPU.

For every query of a set: the shipped hybrid's top K (K = 20; K = 10 is its prefix) from the candidates the cube's
own code gathers (``tune_fusion.collect``: kept as JSON in the cache folder, so reruns are cheap), each scored
zero-shot by the LM in three forms (kept in the cache folder too, per model, set and query):

* ``cond``: mean log P(memory tokens | a prompt holding the query) -- "A memory this brings to mind:";
* ``pmi``: ``cond`` minus the mean log P(memory tokens | the same prompt without the query) (the memory's prior,
  one pass per distinct memory text);
* ``ql``: log P(query focus | a prompt holding the memory) -- the focus being the last user turn of a pasted
  dialogue (the last turn of a transcript) or the whole question.

``cond``/``pmi`` run one forward over the shared prefix and reuse its KV cache for the K candidates (right-padded:
a causal model's real tokens never see the padding after them); ``ql`` batches the K (memory, focus) texts.
torch uses one thread. Combined as ``final = fused + w * z(LM score over the K)`` (``fused``: the shipped fusion's
score in standard deviations), reordering only inside the top K. ``w``, K, the form and the scope are chosen on the
tuning sets (``tune_fusion.TUNE``: synthetic, people-QA, and the ``TUNE_FRESH`` assistant instances when scored: the
``chosen on`` lines); MADial, the assistant set and the fresh seeds are only reported.
Nothing here sees insertion order: the candidates are ordered by the shipped fusion, the LM sees texts only.

``--every N`` scores every Nth query of the generated sets (MADial always whole) to bound CPU time; the report says
how many queries each figure is over and the search latency the LM adds per query (ms, and as a ratio to the plain
hybrid search measured on the same machine, ``--latency``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import tune_fusion as tf  # noqa: E402
from memos_core.cube import RetrievalConfig  # noqa: E402
from memos_core.plaintext import analyze_query  # noqa: E402
from memos_core.plaintext.fusion import fuse  # noqa: E402
from memos_core.plaintext.rerank import combine, memory_text, ql_scores, query_focus  # noqa: E402

FORMS = ("cond", "pmi", "ql")
WEIGHTS = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
#: the text between the query and the memory (``--prompt``): ``cue`` names what follows; ``recall`` lets the assistant
#: bring the memory up as the next line of the conversation (how a memory-augmented chat would use it)
PROMPTS = {"cue": ("\n\n", "A memory this brings to mind:"),
           "recall": ("\n", "Assistant: That reminds me of something that happened before:")}
CUE = PROMPTS["cue"][1]


def query_context(query: str) -> str:
    plan = analyze_query(query)
    if plan.is_dialogue:
        return "\n".join(f"{s}: {t}" if s else t for s, t in plan.turns)
    return f"Question: {plan.text}"


class Scorer:
    """Zero-shot LM scores of (query, memory) pairs. ``model``: ``smollm2`` or ``gemma3-270m``; ``loaded``: an
    already loaded ``(model, tokenizer)`` instead (tests: a tiny model), ``bos``: whether prompts start with the
    tokenizer's BOS token (default: for Gemma, whose base model expects it; the SmolLM2 figures were measured
    without)."""

    def __init__(self, model: str = "smollm2", max_context: int = 384, dtype: str = "bfloat16",
                 prompt: str = "cue", loaded: tuple[Any, Any] | None = None, bos: bool | None = None) -> None:
        import torch

        from memos_core.activation.models import load_gemma3_270m, load_smollm2

        self.torch = torch
        # bfloat16 halves the time on a CPU with AMX/AVX-512 bf16; measured on one MADial query: the same order of
        # the 20 candidates as float32, scores correlated 0.9998 (logits are read back as float32)
        if loaded is not None:
            self.model, self.tok = loaded
        else:
            torch.set_num_threads(1)  # what the figures were measured with
            self.model, self.tok = (load_smollm2(dtype=dtype) if model == "smollm2" else load_gemma3_270m(dtype=dtype))
        use_bos = (model != "smollm2") if bos is None else bos
        self.bos = [self.tok.bos_token_id] if use_bos and self.tok.bos_token_id is not None else []
        self.max_context = max_context
        self.sep, self.cue = PROMPTS[prompt]
        self.prior_cache: dict[str, float] = {}

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def _conts(self, prefix_ids: list[int], conts: list[list[int]]) -> list[float]:
        """Mean log-probability of each continuation after ``prefix_ids`` (one prefix pass, its KV cache reused)."""
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([prefix_ids]), use_cache=True)
            last = torch.log_softmax(out.logits[0, -1].float(), -1)
            cache = out.past_key_values
            n = len(conts)
            cache.batch_repeat_interleave(n)
            width = max(len(c) for c in conts)
            pad = [c + [0] * (width - len(c)) for c in conts]
            ids = torch.tensor(pad)
            pos = torch.arange(len(prefix_ids), len(prefix_ids) + width)[None].expand(n, -1)
            logits = self.model(input_ids=ids, cache=cache, position_ids=pos, use_cache=False).logits
            lp = torch.log_softmax(logits.float(), -1)
        res = []
        for i, c in enumerate(conts):
            s = float(last[c[0]])
            if len(c) > 1:
                s += float(lp[i, torch.arange(len(c) - 1), torch.tensor(c[1:])].sum())
            res.append(s / len(c))
        return res

    def cond(self, context: str, memories: list[str]) -> list[float]:
        ctx = self.ids(context)[-self.max_context:]
        prefix = self.bos + ctx + self.ids(self.sep + self.cue)
        return self._conts(prefix, [self.ids(" " + m) for m in memories])

    def prior(self, memories: list[str]) -> list[float]:
        todo = [m for m in dict.fromkeys(memories) if m not in self.prior_cache]
        if todo:
            for m, v in zip(todo, self._conts(self.bos + self.ids(self.cue), [self.ids(" " + m) for m in todo])):
                self.prior_cache[m] = v
        return [self.prior_cache[m] for m in memories]

    def ql(self, focus: str, memories: list[str]) -> list[float]:
        """log P(focus | "Memory: m\\n\\nWhat someone says next:") per memory (summed over the focus' tokens), batched
        with left padding: the library's :func:`memos_core.plaintext.rerank.ql_scores`, which
        ``QueryLikelihoodReranker`` runs in search."""
        return ql_scores(self.model, self.tok, focus, memories, self.bos)


def shipped(row: dict[str, Any], cfg: RetrievalConfig) -> list[tuple[Any, float]]:
    """The shipped fusion's (key, fused score) best first."""
    c = tf.to_candidates(row, tf.shipped_topical(cfg))
    return [(key, z) for key, z, *_ in fuse(c, analyze_query(row["query"]), cfg)]


def score_set(name: str, rows: list[dict[str, Any]], scorer: Scorer, cache: Path, k: int, every: int,
              forms: tuple[str, ...]) -> dict[int, dict[str, Any]]:
    """LM scores of the top ``k`` of every ``every``-th query (kept in ``cache``; only missing ones computed)."""
    path = cache / f"{name}.lm.json"
    kept: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    cfg = RetrievalConfig()
    done = 0
    t_start = time.time()
    for i, row in enumerate(rows):
        if name != "madial" and i % every:
            continue
        top = shipped(row, cfg)[:k]
        keys = [key for key, _ in top]
        entry = kept.get(str(i))
        if entry and entry.get("keys") == keys and all(f in entry for f in forms):
            continue
        entry = entry if entry and entry.get("keys") == keys else {"keys": keys, "ms": {}}
        texts = {c["key"]: memory_text(c["text"]) for c in row["cands"]}
        mems = [texts[key] for key in keys]
        if "cond" in forms or "pmi" in forms:
            t0 = time.perf_counter()
            entry["cond"] = scorer.cond(query_context(row["query"]), mems)
            entry["ms"]["cond"] = (time.perf_counter() - t0) * 1000
            t0 = time.perf_counter()
            entry["pmi"] = [a - b for a, b in zip(entry["cond"], scorer.prior(mems))]
            entry["ms"]["prior"] = (time.perf_counter() - t0) * 1000
        if "ql" in forms:
            t0 = time.perf_counter()
            entry["ql"] = scorer.ql(query_focus(row["query"]), mems)
            entry["ms"]["ql"] = (time.perf_counter() - t0) * 1000
        kept[str(i)] = entry
        done += 1
        if done % 20 == 0:
            path.write_text(json.dumps(kept))
            print(f"  {name}: {done} queries scored ({time.time() - t_start:.0f}s)", file=sys.stderr, flush=True)
    path.write_text(json.dumps(kept))
    return {int(i): e for i, e in kept.items()}


def _z(v: np.ndarray) -> np.ndarray:
    sd = float(v.std())
    return (v - v.mean()) / sd if sd > 1e-12 else np.zeros_like(v)


def evaluate(rows: list[dict[str, Any]], lm: dict[int, dict[str, Any]], form: str | None, w: float,
             k: int, only: str | None = None) -> dict[str, float]:
    """any@1/5/10/20 over the scored queries with ``final = fused + w * z(form)`` inside the top ``k``
    (``form=None``: the shipped order; ``w=inf``: the LM's order alone inside the top ``k``; ``only="questions"``:
    pasted dialogues keep the shipped order; ``only="named"``: only questions naming someone are reranked;
    ``only="dialogues"``: only pasted dialogues are)."""
    cfg = RetrievalConfig()
    hits = {n: 0 for n in (1, 5, 10, 20)}
    for i, entry in lm.items():
        row = rows[i]
        label = {c["key"]: c["hit"] for c in row["cands"]}
        order = shipped(row, cfg)
        plan = analyze_query(row["query"])
        skip = (only == "questions" and plan.is_dialogue) or (only == "dialogues" and not plan.is_dialogue) or (
            only == "named" and (plan.is_dialogue or not plan.entities))
        if form is not None and not skip:
            head = order[:k]
            assert [key for key, _ in head] == entry["keys"][:k], "cached LM scores are for another candidate order"
            if math.isinf(w):
                idx = np.argsort(-_z(np.array(entry[form][:k])), kind="stable")
            else:  # what search does with RetrievalConfig(reranker=..., rerank_weight=w, rerank_k=k)
                idx = combine([z for _, z in head], entry[form][:k], w)
            head = [head[j] for j in idx]
            order = head + order[k:]
        keys = [key for key, _ in order]
        for n in hits:
            hits[n] += any(label[key] for key in keys[:n])
    m = max(len(lm), 1)
    return {f"any@{n}": round(v / m, 3) for n, v in hits.items()}


def latency(model: str, dtype: str, k: int, n_queries: int, conversations: int = 2) -> None:
    """``--latency N``: the search time the ``ql`` reranker adds, measured in one process on one cube (people-QA's
    first ``conversations`` conversations, the real embedder, ``query_cache=0``): for each of N questions, the
    plain hybrid search of the top ``k`` (``cube.search``), then the LM's ``ql`` scores of those ``k``. Prints p50 /
    p95 ms of the search alone and of search + LM, and their ratio."""
    import tempfile

    scorer = Scorer(model, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="memos-lmr-lat-") as tmp:
        cube, qs = tf.latency_cube(Path(tmp), conversations)
        scorer.ql("warm up", ["warm up"])
        plain, lm = [], []
        for q, scope in qs[:n_queries]:
            t0 = time.perf_counter()
            hits = cube.search(q, k=k, user_id=scope, record_usage=False)
            t1 = time.perf_counter()
            scorer.ql(query_focus(q), [memory_text(h.item.content) for h in hits])
            t2 = time.perf_counter()
            plain.append((t1 - t0) * 1000)
            lm.append((t2 - t0) * 1000)
        cube.close()

    def pct(v: list[float], p: float) -> float:
        v = sorted(v)
        return round(v[min(len(v) - 1, int(p * len(v)))], 1)
    out = {"queries": len(plain), "k": k, "model": model, "dtype": dtype, "torch_threads": 1,
           "hybrid_p50_ms": pct(plain, 0.5), "hybrid_p95_ms": pct(plain, 0.95),
           "hybrid+ql_p50_ms": pct(lm, 0.5), "hybrid+ql_p95_ms": pct(lm, 0.95)}
    out["ratio_p50"] = round(out["hybrid+ql_p50_ms"] / out["hybrid_p50_ms"], 1)
    out["ratio_p95"] = round(out["hybrid+ql_p95_ms"] / out["hybrid_p95_ms"], 1)
    print(json.dumps(out))


def latency_library(dtype: str, k: int, rerank_k: int, n_queries: int, conversations: int = 2) -> None:
    """``--latency N --library``: the same cube and questions as :func:`latency`, searched through the library
    (``RetrievalConfig(reranker=QueryLikelihoodReranker(), rerank_k=...)``, scope ``named``) and without a reranker,
    alternated query by query. Prints p50 / p95 ms of both (over the questions in the reranker's scope, and over
    all), how many were in scope, and how often the first hit changed."""
    import tempfile

    from memos_core.plaintext.rerank import QueryLikelihoodReranker, in_scope

    import torch

    torch.set_num_threads(1)  # as the README's figures were measured
    reranker = QueryLikelihoodReranker(dtype=dtype)
    with tempfile.TemporaryDirectory(prefix="memos-lmr-lib-") as tmp:
        cube, qs = tf.latency_cube(Path(tmp), conversations)
        cfg = cube.retrieval  # read on every search: the reranker is switched in place
        cfg.rerank_k = rerank_k
        cfg.reranker = reranker
        cube.search("What did Ann say?", k=k, user_id=qs[0][1], record_usage=False)  # loads the model
        lat: dict[str, list[float]] = {"plain": [], "rerank": [], "plain_in": [], "rerank_in": []}
        changed = 0
        for i, (q, scope) in enumerate(qs[:n_queries]):
            first: dict[str, Any] = {}
            for mode in (("plain", "rerank") if i % 2 == 0 else ("rerank", "plain")):
                cfg.reranker = reranker if mode == "rerank" else None
                t0 = time.perf_counter()
                hits = cube.search(q, k=k, user_id=scope, record_usage=False)
                ms = (time.perf_counter() - t0) * 1000
                lat[mode].append(ms)
                if in_scope(analyze_query(q), cfg.rerank_scope):
                    lat[mode + "_in"].append(ms)
                first[mode] = hits[0].item.id if hits else None
            changed += first["plain"] != first["rerank"]
        cube.close()

    def pct(v: list[float], p: float) -> float | None:
        v = sorted(v)
        return round(v[min(len(v) - 1, int(p * len(v)))], 1) if v else None
    out: dict[str, Any] = {"queries": len(lat["plain"]), "in_scope": len(lat["plain_in"]), "k": k,
                           "rerank_k": rerank_k, "dtype": dtype, "first_hit_changed": changed}
    for name, v in lat.items():
        out[f"{name}_p50_ms"], out[f"{name}_p95_ms"] = pct(v, 0.5), pct(v, 0.95)
    print(json.dumps(out))


def library_bench(names: list[str], dtype: str, rerank_k: int) -> None:
    """``--library-bench SET ...``: ``memos bench retrieval`` (hybrid only, the whole set, real embedder) without and
    with ``RetrievalConfig(reranker=QueryLikelihoodReranker(), rerank_k=...)``: what a user turning it on gets.
    Prints one JSON line per set and configuration (any@1/5/10/20, search p50/p95)."""
    import torch

    from memos_core.bench import retrieval as bench
    from memos_core.plaintext.rerank import QueryLikelihoodReranker

    torch.set_num_threads(1)
    reranker = QueryLikelihoodReranker(dtype=dtype)
    for name in names:
        for label, cfg in (("hybrid", RetrievalConfig()),
                           ("hybrid+ql", RetrievalConfig(reranker=reranker, rerank_k=rerank_k))):
            rep = bench.run(tf.SETS.get(name, name), modes=("hybrid",), retrieval=cfg)
            print(json.dumps({"set": name, "config": label, "rerank_k": rerank_k if cfg.reranker else None,
                              "queries": rep["queries"], **{f"any@{n}": rep[f"any@{n}"] for n in (1, 5, 10, 20)},
                              "p50_ms": rep["search_p50_ms"], "p95_ms": rep["search_p95_ms"]}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default="/tmp/memos-lmr")
    ap.add_argument("--sets", nargs="*", default=["madial", "synthetic", "people_qa"])
    ap.add_argument("--fresh", nargs="*", type=int, default=[])
    ap.add_argument("--tune-fresh", action="store_true", help="also the fresh assistant-style tuning instances")
    ap.add_argument("--model", default="smollm2", choices=("smollm2", "gemma3-270m"))
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    ap.add_argument("--prompt", default="cue", choices=tuple(PROMPTS))
    ap.add_argument("--every", type=int, default=1, help="score every Nth query of the generated sets")
    ap.add_argument("--forms", nargs="*", default=list(FORMS))
    ap.add_argument("--report-only", action="store_true", help="no LM runs: report what the cache holds")
    ap.add_argument("--latency", type=int, metavar="N", default=0,
                    help="only time N searches with and without the ql reranker (people-QA, one cube)")
    ap.add_argument("--library", action="store_true",
                    help="with --latency: search through RetrievalConfig(reranker=QueryLikelihoodReranker()) "
                         "(top --k reranked, 10 returned) against the same search without it")
    ap.add_argument("--library-bench", nargs="*", metavar="SET",
                    help="memos bench retrieval on these sets without / with the library's reranker (top --k)")
    args = ap.parse_args()
    if args.library_bench:
        library_bench(args.library_bench, args.dtype, args.k)
        return
    if args.latency and args.library:
        latency_library(args.dtype, 10, args.k, args.latency)
        return
    if args.latency:
        latency(args.model, args.dtype, args.k, args.latency)
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    vectors = tf._CachedVectors(cache / "vectors.npz")
    paths = {**{n: tf.SETS[n] for n in args.sets if n in tf.SETS}, **tf.fresh_sets(args.fresh, cache, args.tune_fresh)}
    paths.update({n: cache / f"{n}.json" for n in args.sets if n not in tf.SETS})
    rows = {n: tf.collect(n, p, cache, vectors) for n, p in paths.items()}
    vectors.save()
    lm_cache = cache / (f"lm-{args.model}-{args.dtype}" + ("" if args.prompt == "cue" else f"-{args.prompt}"))
    lm_cache.mkdir(exist_ok=True)
    scorer = None if args.report_only else Scorer(args.model, dtype=args.dtype, prompt=args.prompt)
    report: dict[str, Any] = {}
    for name, rs in rows.items():
        if scorer is not None:
            lm = score_set(name, rs, scorer, lm_cache, args.k, args.every, tuple(args.forms))
        else:
            p = lm_cache / f"{name}.lm.json"
            lm = {int(i): e for i, e in json.loads(p.read_text()).items()} if p.exists() else {}
        lm = {i: e for i, e in lm.items() if all(f in e for f in args.forms)}
        if not lm:
            continue
        res: dict[str, Any] = {"role": tf.role(name), "queries": len(lm), "shipped": evaluate(rs, lm, None, 0, 0)}
        for form in args.forms:
            for k in (10, args.k) if args.k != 10 else (10,):
                for w in (*WEIGHTS, math.inf):
                    res[f"{form} K={k} w={w}"] = evaluate(rs, lm, form, w, k)
                    for only in ("questions", "named", "dialogues"):
                        res[f"{form}/{only} K={k} w={w}"] = evaluate(rs, lm, form, w, k, only=only)
        ms = {f: float(np.mean([e["ms"].get(f, 0.0) for e in lm.values()])) for f in ("cond", "prior", "ql")}
        res["lm_ms_per_query"] = {f: round(v, 1) for f, v in ms.items()}
        report[name] = res
        print(name, res["role"], f"queries {len(lm)}", "shipped", res["shipped"], "ms", res["lm_ms_per_query"],
              flush=True)
    (lm_cache / "report.json").write_text(json.dumps(report, indent=1))
    # one line per variant: any@1/5/10 on every set
    variants = [v for v in next(iter(report.values()), {}) if v.startswith(tuple(args.forms))]
    for v in ["shipped", *variants]:
        print(f"{v:<32}" + "  ".join(f"{n} " + "/".join(f"{r[v][f'any@{x}']:.3f}" for x in (1, 5, 10))
                                     for n, r in report.items()))
    # the setting the tuning sets choose per form and scope: best any@1 + any@5 + any@10 summed over them (the
    # fresh assistant-style tuning instances count when scored: the only tuning questions naming no one)
    tune = [n for n in report if n in tf.TUNE or n in tf.TUNE_FRESH]
    if tune:
        for prefix in sorted({v.split(" K=")[0] for v in variants}):
            best = max((v for v in variants if v.split(" K=")[0] == prefix),
                       key=lambda v: sum(report[n][v][f"any@{x}"] for n in tune for x in (1, 5, 10)))
            print(f"chosen on {'+'.join(tune)}: {best}")


if __name__ == "__main__":
    main()
