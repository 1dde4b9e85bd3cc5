"""bfloat16 documents (memos_core.embedding_bf16) against fp32: speed per token, vectors, retrieval quality.

    python benchmarks/doc_precision.py [--reps 5]                                  # speed + cosine
    python benchmarks/doc_precision.py --retrieval madial people_qa assistant synthetic [--fresh 101]

* **speed**: the texts ``benchmarks/add_one.py`` makes ``MemOS.add`` embed (index and topic texts of its 200 timed
  turns), embedded as the cube's background embedder embeds them (:func:`memos_core.embedding.one_core`: one
  thread, length-sorted batches of at most 512 padded tokens), fp32 ONNX twin against the bfloat16 PyTorch model,
  alternated, best of ``--reps``; and the same texts in bulk (the caller's thread, all cores). Also the cosine of
  each bfloat16 vector to its fp32 vector.
* **retrieval** (``--retrieval``): ``memos bench retrieval``'s own run (:func:`memos_core.bench.retrieval.run`)
  per set, once with ``MEMOS_DOC_PRECISION=fp32`` and once with ``bf16`` (queries are fp32 both times, as
  shipped), hybrid and dense-only any@1/5/10. ``--fresh SEED ...`` adds new instances of the generated styles
  (``people_qa@SEED+0``, ``assistant@SEED+100``, ``synthetic@SEED+200``; see ``tune_fusion.fresh_sets``).

Prints ratios measured in one process (the machine is shared and noisy): compare within a run.
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

from memos_core import embedding as E  # noqa: E402
from memos_core import embedding_bf16 as B  # noqa: E402


def _embed(emb: Any, texts: list[str], background: bool) -> np.ndarray:
    if background:
        with E.one_core():
            return emb.embed_documents(texts)
    return emb.embed_documents(texts)


def speed(reps: int) -> dict[str, Any]:
    from int8_encoder import add_one_texts

    texts = add_one_texts()
    fp = E.MiniLMEmbedder(doc_precision="fp32")
    bf = E.MiniLMEmbedder(doc_precision="bf16")
    tokens = int(np.asarray(fp._twin().encode(texts, 256)["attention_mask"]).sum())  # type: ignore[union-attr]
    out: dict[str, Any] = {"texts": len(texts), "tokens": tokens, "amx_bf16": B.amx_bf16()}
    for background in (True, False):
        best = {"fp32": float("inf"), "bf16": float("inf")}
        vecs = {}
        for label, emb in (("fp32", fp), ("bf16", bf)):
            vecs[label] = _embed(emb, texts, background)  # warm
        for _ in range(reps):
            for label, emb in (("fp32", fp), ("bf16", bf)):
                t = time.perf_counter()
                _embed(emb, texts, background)
                best[label] = min(best[label], time.perf_counter() - t)
        cos = np.sum(vecs["fp32"] * vecs["bf16"], axis=1)
        key = "one_core" if background else "bulk"
        out[key] = {"fp32_s": round(best["fp32"], 3), "bf16_s": round(best["bf16"], 3),
                    "speedup": round(best["fp32"] / best["bf16"], 2),
                    "cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6)}
        print(key, json.dumps(out[key]), flush=True)
    return out


def retrieval(sets: list[str], fresh: list[int]) -> dict[str, Any]:
    from tune_fusion import SETS, fresh_sets

    from memos_core.bench import retrieval as R

    paths = {name: SETS[name] for name in sets}
    if fresh:
        paths.update(fresh_sets(fresh, Path(tempfile.gettempdir()) / "memos-doc-precision"))
    before = os.environ.get("MEMOS_DOC_PRECISION")
    out: dict[str, Any] = {}
    try:
        for name, path in paths.items():
            for label in ("fp32", "bf16"):
                os.environ["MEMOS_DOC_PRECISION"] = label
                t = time.perf_counter()
                rep = R.run(path, modes=("hybrid", "dense"))
                row = {m: {k: round(r[k], 3) for k in r if k.startswith("any@")}
                       for m, r in (("hybrid", rep), ("dense", rep["ablations"]["dense"]))}
                row["seconds"] = round(time.perf_counter() - t, 1)
                out.setdefault(name, {})[label] = row
                print(name, label, json.dumps(row), flush=True)
            d = {m: {k: round(out[name]["bf16"][m][k] - out[name]["fp32"][m][k], 3) for k in out[name]["fp32"][m]}
                 for m in ("hybrid", "dense")}
            out[name]["delta"] = d
            print(name, "delta", json.dumps(d), flush=True)
    finally:
        if before is None:
            os.environ.pop("MEMOS_DOC_PRECISION", None)
        else:
            os.environ["MEMOS_DOC_PRECISION"] = before
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--retrieval", nargs="*", choices=("madial", "synthetic", "people_qa", "assistant"),
                    help="sets to score with bfloat16 documents against fp32")
    ap.add_argument("--fresh", nargs="*", type=int, default=[], help="seeds of fresh generated sets to add")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("MEMOS_PROGRESS", "0")
    result = retrieval(args.retrieval, args.fresh) if args.retrieval is not None else speed(args.reps)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
