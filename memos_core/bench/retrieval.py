"""Retrieval benchmark on the shared dataset format (see DESIGN.md / README).

Each conversation is ingested turn by turn into its own fresh scope (``user_id`` = conversation id), with the
session date (or the turn's own date) as event time and the turn id in provenance; every query runs in that
scope; a hit is a returned memory whose provenance holds an evidence turn id.

Reports any@k / frac@k for k in 1, 5, 10, 20 overall and per category, search latency p50/p95 and ingest
throughput, for hybrid retrieval and, in the same process on the same cube, dense-only and lexical-only
(``ablations``).
"""

from __future__ import annotations

import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..cube import MemCube, RetrievalConfig
from ..errors import ValidationError
from ..reader.offline import OfflineReader, Turn

KS = (1, 5, 10, 20)


def load_dataset(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValidationError(f"cannot read benchmark file {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("conversations"), list):
        raise ValidationError(f"{path}: expected an object with a 'conversations' list (see DESIGN.md)")
    for c in data["conversations"]:
        if not isinstance(c, dict) or "sessions" not in c or "queries" not in c:
            raise ValidationError(f"{path}: every conversation needs 'sessions' and 'queries'")
    return data


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    idx = min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))
    return s[idx]


class _Acc:
    def __init__(self) -> None:
        self.n = 0
        self.any = {k: 0.0 for k in KS}
        self.frac = {k: 0.0 for k in KS}

    def add(self, ranked_sources: list[set[str]], evidence: set[str]) -> None:
        self.n += 1
        for k in KS:
            found: set[str] = set()
            for src in ranked_sources[:k]:
                found |= src & evidence
            self.any[k] += 1.0 if found else 0.0
            self.frac[k] += len(found) / len(evidence)

    def result(self) -> dict[str, float]:
        n = max(self.n, 1)
        out = {f"any@{k}": round(self.any[k] / n, 4) for k in KS}
        out.update({f"frac@{k}": round(self.frac[k] / n, 4) for k in KS})
        out["queries"] = self.n
        return out


def scope_of(index: int, conv: dict[str, Any]) -> str:
    """The user scope a benchmark run gives conversation number ``index``."""
    return f"bench-{index}-{conv.get('id', index)}"


def ingest_conversation(cube: MemCube, conv: dict[str, Any], scope: str,
                        reader: OfflineReader | None = None) -> list[Turn]:
    """Add a conversation's turns to ``cube`` in ``scope``, session by session, as the offline reader makes
    them (one memory per non-blank turn: turn id in provenance, the turn's or else the session's date as event
    time, earlier turns as reading context). Returns the turns, in order.

    The one ingest every benchmark shares (retrieval, ``bench.qa``, ``benchmarks/tune_fusion.py``), so their
    figures describe the same memories."""
    reader = reader or OfflineReader()
    history: list[Turn] = []
    for sess in conv["sessions"]:
        turns = [Turn(text=t["text"], speaker=t.get("speaker"), id=str(t["id"]),
                      time=_time(t.get("date") or sess.get("date")), session_id=str(sess.get("id")))
                 for t in sess["turns"] if str(t.get("text", "")).strip()]
        specs = reader.read(turns, history=history)
        history.extend(turns)
        cube.add_many(specs, user_id=scope)
    return history


def run(path: str | Path, *, workdir: str | Path | None = None, embedder: Any = None,
        modes: tuple[str, ...] = ("hybrid", "dense", "lexical"), limit_conversations: int | None = None,
        progress: Callable[[str], None] | None = None, retrieval: RetrievalConfig | None = None) -> dict[str, Any]:
    """Run the benchmark and return the report dict (``ablations`` holds the non-hybrid modes).

    ``retrieval`` tunes the cube (default: :class:`RetrievalConfig` defaults); its query cache is always off so
    every mode's latency includes embedding the query (the modes share queries)."""
    data = load_dataset(path)
    convs = data["conversations"][:limit_conversations] if limit_conversations else data["conversations"]
    tmp = tempfile.TemporaryDirectory(prefix="memos-bench-") if workdir is None else None
    root = Path(workdir or tmp.name)  # type: ignore[union-attr]
    cfg = copy.copy(retrieval) if retrieval is not None else RetrievalConfig()  # the caller's config stays as it was
    cfg.query_cache = 0
    cube = MemCube(root / "cube", embedder=embedder, retrieval=cfg)
    cube.embedder.embed_query("warm up")  # load the model outside the timed ingest (a one-time cost)
    reader = OfflineReader()
    accs = {m: _Acc() for m in modes}
    cat_accs: dict[str, dict[str, _Acc]] = {m: {} for m in modes}
    lat: dict[str, list[float]] = {m: [] for m in modes}
    n_turns = 0
    ingest_s = 0.0
    try:
        for ci, conv in enumerate(convs):
            scope = scope_of(ci, conv)
            t0 = time.perf_counter()
            n = len(ingest_conversation(cube, conv, scope, reader))
            n_turns += n
            ingest_s += time.perf_counter() - t0
            if progress:
                progress(f"conversation {conv.get('id', ci)}: {n} turns ingested")
            for q in conv["queries"]:
                evidence = {str(e) for e in q.get("evidence", [])}
                if not evidence:
                    continue
                cat = str(q.get("category", "all"))
                for m in modes:
                    t1 = time.perf_counter()
                    hits = cube.search(q["text"], k=max(KS), user_id=scope, mode=m, record_usage=False)  # type: ignore[arg-type]
                    lat[m].append((time.perf_counter() - t1) * 1000)
                    ranked = [set(h.item.provenance.source_ids) for h in hits]
                    accs[m].add(ranked, evidence)
                    cat_accs[m].setdefault(cat, _Acc()).add(ranked, evidence)
    finally:
        cube.close()
        if tmp is not None:
            tmp.cleanup()

    def report(m: str) -> dict[str, Any]:
        r: dict[str, Any] = accs[m].result()
        r["by_category"] = {c: a.result() for c, a in sorted(cat_accs[m].items())}
        r["search_p50_ms"] = round(_pct(lat[m], 0.5), 2)
        r["search_p95_ms"] = round(_pct(lat[m], 0.95), 2)
        return r

    main = report(modes[0])
    main["name"] = data.get("name")
    main["turns"] = n_turns
    main["ingest_per_s"] = round(n_turns / ingest_s, 1) if ingest_s else 0.0
    main["ablations"] = {m: report(m) for m in modes[1:]}
    return main


def _time(value: Any) -> Any:
    from ..items import to_utc

    if value in (None, ""):
        return None
    try:
        return to_utc(value)
    except ValidationError:
        return None


def format_table(rep: dict[str, Any]) -> str:
    lines = [f"dataset: {rep.get('name')}  turns: {rep['turns']}  queries: {rep['queries']}  "
             f"ingest: {rep['ingest_per_s']}/s"]
    head = "mode      " + " ".join(f"{k:>9}" for k in ("any@1", "any@5", "any@10", "any@20", "frac@5", "frac@10",
                                                       "p50 ms", "p95 ms"))
    lines.append(head)
    rows = [("hybrid", rep)] + list(rep.get("ablations", {}).items())
    for name, r in rows:
        lines.append(f"{name:<10}" + " ".join(f"{r[k]:>9}" for k in ("any@1", "any@5", "any@10", "any@20", "frac@5",
                                                                       "frac@10", "search_p50_ms", "search_p95_ms")))
    if len(rep.get("by_category", {})) > 1:
        lines.append("by category (hybrid):")
        for c, r in rep["by_category"].items():
            lines.append(f"  {c:<18} n={r['queries']:<5} any@5={r['any@5']:<7} any@10={r['any@10']:<7} "
                         f"frac@10={r['frac@10']}")
    return "\n".join(lines)
