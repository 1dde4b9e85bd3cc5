"""What fingerprinting every weight costs (``memos_core.artifacts.Fingerprinter``).

A KV cache or a LoRA adapter is tied to the exact model that built it by a SHA-256 over every weight tensor.
This measures, on a randomly initialised model of a realistic shape (the values do not change the cost):

* ``full_s``: the first fingerprint of a loaded model (every tensor hashed, on ``MEMOS_HASH_THREADS`` threads,
  default min(8, cores)); ``gb_per_s`` its throughput over the weight bytes;
* ``full_1thread_s``: the same on one thread;
* ``casts_s``: the fingerprint an adapter records (also the weights cast to bfloat16 and float16, fp32 only);
* ``cached_ms``: a later call on the same model (parameters unchanged: only their version counters are read);
* with ``--disk``: the model is saved and loaded with ``from_pretrained`` + ``mark_loaded_from`` twice, and
  ``disk_hit_ms`` is the first fingerprint of the second load (digest read from the on-disk cache keyed by the
  checkpoint files' identity);
* ``prefill_s`` (``--prefill N``): one prefill of N tokens on the same model, for scale.

Examples::

    python benchmarks/fingerprint_cost.py --config-size 0.5b --dtype float32 bfloat16 [--disk] [--json]
    python benchmarks/fingerprint_cost.py --config-size tiny

With ``--json`` the last line printed is one JSON object ``{"runs": [...], "machine": {...}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES = {
    # Qwen2-0.5B's shape (as in benchmarks/kv_ttft.py)
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, rope_theta=1_000_000.0, tie_word_embeddings=True),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=32000, rope_theta=1_000_000.0, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, rope_theta=10_000.0, tie_word_embeddings=True),
}


def build(size: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from memos_core.activation.testing import tiny_tokenizer

    cfg = Qwen2Config(**SIZES[size], max_position_embeddings=32768)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, dtype))
    model = model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(0.02).to(p.dtype))
    for name, mod in list(model.named_modules()):  # rotary frequencies: rebuilt from the config on the CPU
        if "rotary" in type(mod).__name__.lower():
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, type(mod)(config=cfg))
    model.tie_weights()
    model.eval()
    return model, tiny_tokenizer("chatml")


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(size: str, dtype: str, disk: bool, prefill: int) -> dict:
    import torch

    from memos_core.artifacts import _SHARED, Fingerprinter, _hash_threads, mark_loaded_from

    model, tok = build(size, dtype)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out: dict = {"config_size": size, "dtype": dtype, "parameters": sum(p.numel() for p in model.parameters()),
                 "weight_bytes": nbytes, "hash_threads": _hash_threads()}
    fp = Fingerprinter(model, tok)
    first, out["full_s"] = timed(fp)
    out["gb_per_s"] = round(nbytes / out["full_s"] / 1e9, 3)
    _, cached = timed(fp)
    out["cached_ms"] = round(cached * 1000, 3)
    _SHARED.pop(model, None)  # forget the digest so the next Fingerprinter hashes again
    os.environ["MEMOS_HASH_THREADS"], before = "1", os.environ.get("MEMOS_HASH_THREADS")
    try:
        one, out["full_1thread_s"] = timed(Fingerprinter(model, tok).__call__)
    finally:
        if before is None:
            os.environ.pop("MEMOS_HASH_THREADS", None)
        else:
            os.environ["MEMOS_HASH_THREADS"] = before
    assert one == first
    if dtype == "float32":
        _SHARED.pop(model, None)
        _, out["casts_s"] = timed(Fingerprinter(model, tok, casts=True).__call__)
    if prefill:
        ids = torch.randint(0, model.config.vocab_size, (1, prefill))
        with torch.no_grad():
            _, t = timed(lambda: model(input_ids=ids, logits_to_keep=1))
        out["prefill_s"] = round(t, 3)
        out["prefill_tokens"] = prefill
    if disk:
        from transformers import AutoModelForCausalLM

        with tempfile.TemporaryDirectory() as tmp:
            os.environ.setdefault("MEMOS_CACHE_DIR", str(Path(tmp) / "cache"))
            model.save_pretrained(Path(tmp) / "ckpt")
            del model, fp
            for attempt in ("miss", "hit"):
                m = AutoModelForCausalLM.from_pretrained(Path(tmp) / "ckpt", dtype=getattr(torch, dtype))
                mark_loaded_from(m, Path(tmp) / "ckpt")
                fpd, t = timed(Fingerprinter(m, tok).__call__)
                out[f"disk_{attempt}_ms"] = round(t * 1000, 1)
                assert fpd.weights_sha256 == first.weights_sha256
                del m
    out["full_s"] = round(out["full_s"], 3)
    out["full_1thread_s"] = round(out["full_1thread_s"], 3)
    if "casts_s" in out:
        out["casts_s"] = round(out["casts_s"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-size", default="0.5b", choices=sorted(SIZES))
    ap.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--disk", action="store_true", help="also time the disk cache (saves the model to a temp dir)")
    ap.add_argument("--prefill", type=int, default=0, help="also time one prefill of this many tokens")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (the hash threads: MEMOS_HASH_THREADS)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = []
    for dtype in args.dtype:
        r = run(args.config_size, dtype, args.disk, args.prefill)
        runs.append(r)
        if not args.json:
            print(json.dumps(r))
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
               "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}
    if args.json:
        print(json.dumps({"runs": runs, "machine": machine}))
    else:
        print(json.dumps({"machine": machine}))


if __name__ == "__main__":
    main()
