"""An int8 (dynamically quantized) twin of the ONNX MiniLM encoder: speed per token, vectors, retrieval quality.

    python benchmarks/int8_encoder.py [--variants constb ...] [--reps 3]          # speed + cosine to fp32
    python benchmarks/int8_encoder.py --retrieval madial people_qa assistant synthetic [--variant constb]

An experiment (issue 18 item 8), not wired into the library: the default embedder's documents stay fp32 (README
"One memory per call" says why). What it measures:

* **speed**: ms per token of the texts ``benchmarks/add_one.py`` makes ``MemOS.add`` embed (the offline reader's
  index texts and topic texts of ``make_memories(200, seed=7)``, captured through an embedder that records what
  it is given), on ONE thread, batched as the cube's background embedder batches them (:func:`one_core`), for the
  library's fp32 twin and each int8 variant (best of ``--reps``, fp32 re-timed beside each variant, since a
  shared machine's load moves);
* **vectors**: cosine of each variant's vectors to the fp32 ones (mean / min);
* **retrieval** (``--retrieval``): ``memos bench retrieval``'s own run (:func:`memos_core.bench.retrieval.run`,
  hybrid and dense) twice per set, documents embedded by the fp32 twin and by the int8 variant (queries fp32 in
  both: the library's query path is untouched), any@1/5/10/20.

The variants are built from the library's fp32 twin (the file in ``~/.cache/memos/onnx``) with ONNX Runtime's
transformer optimizer (``opt``, fp32) and ``onnxruntime.quantization.quantize_dynamic`` (weights QInt8,
activations quantized per call):

* ``s8``: every quantizable op of the exported graph, per-tensor weights;
* ``s8_pc``: the same, per-channel weights;
* ``u8``: QUInt8 weights, per-tensor;
* ``constb``: the optimized graph, per-channel, only MatMuls with a constant weight (q, k, v, attention output,
  both FFN layers; the attention-score MatMuls stay fp32) -- the best trade measured;
* ``constb_noffn2``: ``constb`` keeping the FFN output layers fp32 (their GELU inputs carry the outliers);
* ``constb_nol05``: ``constb`` keeping the first and last layers fp32.
"""

from __future__ import annotations

import argparse
import json
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

SETS = {
    "madial": Path("/work/shared/data/madial/madial_en.json"),
    "synthetic": ROOT / "benchmarks/data/synthetic_longmem.json",
    "people_qa": ROOT / "benchmarks/data/people_qa.json",
    "assistant": ROOT / "benchmarks/data/assistant_prefs.json",
}
VARIANTS = ("s8", "s8_pc", "u8", "constb", "constb_noffn2", "constb_nol05")


def add_one_texts(n: int = 200) -> list[str]:
    """What ``MemOS.add`` embeds for ``add_one.py``'s timed turns (index texts and topic texts, in call order)."""
    from search_scale import make_memories

    from memos_core import MemOS

    base = E.MiniLMEmbedder()
    seen: list[str] = []

    def docs(texts: list[str]) -> Any:
        seen.extend(texts)
        return base.embed_documents(texts)

    emb = E.CallableEmbedder(docs, base.embed_query, name=E.MiniLMEmbedder.name, dim=384)
    with tempfile.TemporaryDirectory(prefix="memos-int8-") as tmp:
        mem = MemOS(tmp, embedder=emb, embed_sync="immediate")
        for m in make_memories(n, seed=7):
            mem.add(m["content"], user_id=m["user_id"])
        mem.close()
    return seen


def build(variant: str, fp32: Path, work: Path) -> Path:
    """The int8 file of ``variant`` (built once into ``work``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / f"{variant}.onnx"
    if out.exists():
        return out
    opt = work / "opt.onnx"
    if variant.startswith("constb") and not opt.exists():
        from onnxruntime.transformers.optimizer import optimize_model

        optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384, opt_level=1).save_model_to_file(str(opt))
    extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if variant.startswith("constb"):
        names = [n.name for n in onnx.load(str(opt)).graph.node if n.op_type == "MatMul"]
        exclude = {"constb": [],
                   "constb_noffn2": [n for n in names if n.endswith("/output/dense/MatMul") and "attention" not in n],
                   "constb_nol05": [n for n in names if "layer.0/" in n or "layer.5/" in n]}[variant]
        quantize_dynamic(str(opt), str(out), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], nodes_to_exclude=exclude,
                         extra_options={**extra, "MatMulConstBOnly": True})
    else:
        quantize_dynamic(str(fp32), str(out), weight_type=QuantType.QUInt8 if variant == "u8" else QuantType.QInt8,
                         per_channel=variant.endswith("_pc"), extra_options=extra)
    return out


def _embed(runner: Any, texts: list[str]) -> np.ndarray:
    with E.one_core():  # the cube's background embedder: one thread, length-sorted batches
        return E._embed_sorted(runner, texts, 256, 64, E._ALWAYS_SHORT, max_tokens=E._ONE_CORE_TOKENS)


def _best(runner: Any, texts: list[str], reps: int) -> float:
    _embed(runner, texts)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        _embed(runner, texts)
        best = min(best, time.perf_counter() - t)
    return best


def speed(variants: list[str], work: Path, reps: int) -> dict[str, Any]:
    fp = E.MiniLMEmbedder()._twin()
    if fp is None:
        raise SystemExit("the fp32 ONNX twin is not available here (ONNX Runtime missing?)")
    texts = add_one_texts()
    tokens = int(np.asarray(fp.encode(texts, 256)["attention_mask"]).sum())
    ref = _embed(fp, texts)
    out: dict[str, Any] = {"texts": len(texts), "tokens": tokens, "variants": {}}
    for v in variants:
        runner = E._OnnxBert(build(v, Path(fp.path), work), fp.tok)
        cos = (_embed(runner, texts) * ref).sum(1)
        t32, t8 = _best(fp, texts, reps), _best(runner, texts, reps)
        out["variants"][v] = {"ms_per_token_fp32": round(1000 * t32 / tokens, 4),
                              "ms_per_token_int8": round(1000 * t8 / tokens, 4), "speedup": round(t32 / t8, 2),
                              "cos_mean": round(float(cos.mean()), 5), "cos_min": round(float(cos.min()), 5)}
        print(v, json.dumps(out["variants"][v]), flush=True)
    return out


def retrieval(sets: list[str], variant: str, work: Path) -> dict[str, Any]:
    """``memos bench retrieval`` per set with fp32 and with int8 documents (queries fp32 both times)."""
    from memos_core.bench import retrieval as R

    fp = E.MiniLMEmbedder()._twin()
    if fp is None:
        raise SystemExit("the fp32 ONNX twin is not available here (ONNX Runtime missing?)")
    q = E._OnnxBert(build(variant, Path(fp.path), work), fp.tok)
    original = E.MiniLMEmbedder.embed_documents
    use: dict[str, Any] = {"runner": None}

    def docs(self: Any, texts: Any) -> np.ndarray:  # documents through ``use["runner"]``, batched as the library does
        runner = use["runner"]
        if runner is None or not texts:
            return original(self, texts)
        if getattr(E._LOCAL, "one_core", False):
            return E._embed_sorted(runner, list(texts), self.max_seq_length, self.batch_size, E._ALWAYS_SHORT,
                                   max_tokens=E._ONE_CORE_TOKENS)
        return E._embed_sorted(runner, list(texts), self.max_seq_length, self.batch_size, runner.DOC_SHORT_TOKENS)

    E.MiniLMEmbedder.embed_documents = docs  # type: ignore[method-assign]
    out: dict[str, Any] = {}
    try:
        for name in sets:
            for label, runner in (("fp32", None), ("int8", q)):
                use["runner"] = runner
                rep = R.run(SETS[name], modes=("hybrid", "dense"))
                row = {m: {k: round(r[k], 3) for k in r if k.startswith("any@")}
                       for m, r in (("hybrid", rep), ("dense", rep["ablations"]["dense"]))}
                out.setdefault(name, {})[label] = row
                print(name, label, json.dumps(row), flush=True)
    finally:
        E.MiniLMEmbedder.embed_documents = original  # type: ignore[method-assign]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--retrieval", nargs="*", choices=sorted(SETS), help="sets to score with int8 documents")
    ap.add_argument("--variant", default="constb", choices=VARIANTS, help="the int8 variant --retrieval uses")
    ap.add_argument("--workdir", default=None, help="where the int8 files are built (default: a temporary folder)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="memos-int8-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = retrieval(args.retrieval, args.variant, work) if args.retrieval else speed(args.variants, work, args.reps)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
