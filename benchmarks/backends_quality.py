"""Retrieval quality and latency on both systems of record, same datasets, same embedder.

    python benchmarks/backends_quality.py --store postgresql://user@host/db --index http://host:8000 FILE...
        [--limit N] [--embedder default|hashed] [--json]

Runs ``memos bench retrieval`` (memos_core.bench.retrieval.run) on every FILE twice: on SQLite + embedded
Chroma (the default) and on PostgreSQL + the Chroma server (a fresh cube schema per file, dropped afterwards),
and reports any@k / frac@k / latency for both and the any@5 difference. The two backends differ only in the
lexical retriever (SQLite FTS5 with the Porter stemmer vs PostgreSQL tsvector with the english Snowball
stemmer and stopwords, both BM25) and in where the records live; dense retrieval is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run_file(path: str, store: str | None, index: str | None, limit: int | None, embedder: Any) -> dict[str, Any]:
    from memos_core.bench import retrieval as bench
    from memos_core.cube import MemCube

    if store is None:
        return bench.run(path, embedder=embedder, limit_conversations=limit)
    name = f"quality{os.getpid()}_{time.monotonic_ns() % 10**9}"
    url = f"{store}{'&' if '?' in store else '?'}cube={name}"
    real = bench.MemCube

    def on_store(folder: Any, **kw: Any) -> MemCube:
        return real(url, index=index, workdir=folder, **kw)

    bench.MemCube = on_store  # type: ignore[assignment]
    try:
        return bench.run(path, embedder=embedder, limit_conversations=limit)
    finally:
        bench.MemCube = real  # type: ignore[assignment]
        from memos_core.records.postgres import PostgresRecordStore

        s = PostgresRecordStore(url)
        s.drop_schema()
        s.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="+")
    p.add_argument("--store", required=True, help="postgresql:// URL of a database (a cube schema is created per file)")
    p.add_argument("--index", required=True, help="Chroma server URL")
    p.add_argument("--limit", type=int, help="only the first N conversations of each file")
    p.add_argument("--embedder", choices=["default", "hashed"], default="default")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    embedder: Any = None
    if a.embedder == "hashed":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from search_scale import HashedEmbedder

        embedder = HashedEmbedder()
    else:
        from memos_core.embedding import resolve_embedder

        embedder = resolve_embedder(None)
    # Both backends embed the same texts: the second run reuses the first one's document vectors (so the
    # comparison costs one embedding pass; ingest_per_s of the PostgreSQL run therefore excludes embedding).
    import numpy as np

    memo: dict[str, np.ndarray] = {}
    embed_docs = embedder.embed_documents

    def cached(texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in memo]
        if todo:
            for t, v in zip(todo, embed_docs(todo)):
                memo[t] = v
        return np.stack([memo[t] for t in texts]) if texts else embed_docs(texts)

    embedder.embed_documents = cached
    out: dict[str, Any] = {}
    for f in a.files:
        sq = run_file(f, None, None, a.limit, embedder)
        pg = run_file(f, a.store, a.index, a.limit, embedder)
        keys = ("any@1", "any@5", "any@10", "frac@10", "search_p50_ms", "search_p95_ms", "ingest_per_s")
        row = {"sqlite_embedded": {k: sq[k] for k in keys}, "postgres_server": {k: pg[k] for k in keys},
               "any@5_diff": round(pg["any@5"] - sq["any@5"], 4), "queries": sq["queries"],
               "lexical_any@5": {"sqlite": sq["ablations"]["lexical"]["any@5"],
                                 "postgres": pg["ablations"]["lexical"]["any@5"]}}
        out[Path(f).name] = row
        print(f"{Path(f).name}: queries {row['queries']}  any@5 SQLite {sq['any@5']} / PostgreSQL {pg['any@5']} "
              f"(diff {row['any@5_diff']:+}); lexical-only any@5 {row['lexical_any@5']}; hybrid p50 "
              f"{sq['search_p50_ms']} / {pg['search_p50_ms']} ms", file=sys.stderr if a.json else sys.stdout,
              flush=True)
    if a.json:
        print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
