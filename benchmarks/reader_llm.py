"""The LLM MemReader driven by a real local model, measured (SmolLM2-135M-Instruct by default).

The reader gets the model the way a LangChain user would give it one: ``MemOSLocalChatModel`` (the LangChain
chat-model wrapper of :class:`memos_core.activation.LocalLLM`) passed as ``MemOS(llm=...)``. It runs the cases
of ``tests/data/reader_cases.json`` (synthetic, CC0): for each, one ``add`` of a few turns, and for most a
second ``add`` whose right outcome against the first one's memories is known (UPDATE, SUPERSEDE, DELETE,
NOOP or a plain ADD). Each case has its own user scope in one cube (the default MiniLM embedder).

Reported:

* ``calls``: every model reply, by purpose (extract / decide): how many parse as JSON with the right top-level
  shape (``json_ok``), as the reader's lenient parser sees it (code fences, prose, truncation repaired);
* ``adds``: how many adds ended with a usable extraction, and how many fell back to storing the raw turns as
  episodes -- and whether, in that case, every turn is indeed stored (``turns_kept``);
* ``facts``: expected facts found among the stored fact memories (every keyword of the expectation in one
  memory), facts stored in all, and those matching no expectation;
* ``decisions``: for the second adds, the expected operation(s) against what the reader did.

Usage::

    python benchmarks/reader_llm.py [--model smollm2|FOLDER|FILE.gguf] [--max-new-tokens 192]
                                    [--structured auto|off] [--json]

``--structured auto`` (default) lets the reader ask the wrapper for structured output on first attempts, which
``MemOSLocalChatModel.with_structured_output`` serves by constrained JSON decoding (lm-format-enforcer, see
:mod:`memos_core.activation.constrained`); ``off`` is free text parsed leniently (the only path before).

A 135M model is a weak extractor; this measures how weak, and that nothing is lost when it fails.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "reader_cases.json"


def load_model(spec: str) -> tuple[Any, Any, str]:
    from memos_core.activation.models import load_gguf, load_smollm2

    if spec == "smollm2":
        model, tok = load_smollm2()
        return model, tok, "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)"
    if spec.endswith(".gguf"):
        model, tok = load_gguf(spec)
        return model, tok, Path(spec).name
    from memos_core.activation import LocalLLM

    llm = LocalLLM.from_pretrained(spec)
    return llm.model, llm.tokenizer, Path(spec).name


def recording_chat_model(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """``MemOSLocalChatModel`` over ``LocalLLM(model, tokenizer)`` that keeps every (purpose, reply)."""
    from memos_core.activation import LocalLLM
    from memos_langchain.local_chat_model import MemOSLocalChatModel

    class Recording(MemOSLocalChatModel):
        replies: list = []

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):  # type: ignore[no-untyped-def]
            out = super()._generate(messages, stop=stop, run_manager=run_manager, **kwargs)
            system = str(messages[0].content) if messages else ""
            purpose = "extract" if system.startswith("You extract") else "decide" if system.startswith("You keep") else "other"
            msg = out.generations[0].message
            self.replies.append({"purpose": purpose, "text": msg.content, "retry": len(messages) > 2,
                                 "constrained": kwargs.get("json_schema") is not None,
                                 "tokens": (msg.usage_metadata or {}).get("output_tokens"),
                                 "ttft_s": msg.response_metadata.get("ttft_s")})
            return out

    return Recording(llm=LocalLLM(model, tokenizer), max_new_tokens=max_new_tokens)


def shape_ok(purpose: str, text: str) -> bool:
    """Whether the reply parses (leniently, as the reader parses it) into the top-level shape asked for."""
    from memos_core.reader.llm import ParseError, parse_json

    try:
        obj = parse_json(text)
    except ParseError:
        return False
    keys = ("facts", "memories", "items") if purpose == "extract" else ("decisions", "operations", "actions")
    if isinstance(obj, list):
        return True
    return isinstance(obj, dict) and (any(isinstance(obj.get(k), list) for k in keys) or "text" in obj or "op" in obj)


def _matches(keywords: list[str], text: str) -> bool:
    low = text.lower()
    return all(k.lower() in low for k in keywords)


def _turns(case_id: str, phase: int, turns: list[dict[str, str]], day: str) -> list[dict[str, Any]]:
    return [{"id": f"{case_id}:{phase}:{i}", "speaker": t["speaker"], "content": t["text"], "time": day}
            for i, t in enumerate(turns, start=1)]


def observed_op(res: Any) -> str:
    facts = [m for m in res.added if m.kind.value != "episode"]
    if res.deleted:
        return "DELETE"
    if res.superseded:
        return "SUPERSEDE"
    if res.updated:
        return "UPDATE"
    if facts:
        return "ADD"
    if res.unchanged:
        return "NOOP"
    if any("extraction failed" in e for e in res.errors):
        return "FAILED"
    return "NOTHING"


def run(model: Any, tokenizer: Any, *, max_new_tokens: int = 192, cases_path: Path = CASES,
        embedder: Any = None, log: Any = print, limit: int | None = None,
        structured: str = "auto") -> dict[str, Any]:
    from memos_core.os import MemOS
    from memos_core.reader import LLMReader

    cases = json.loads(cases_path.read_text())["cases"][:limit]
    chat = recording_chat_model(model, tokenizer, max_new_tokens)
    adds: list[dict[str, Any]] = []
    facts_expected = facts_found = facts_stored = facts_unexpected = 0
    decisions: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="memos-reader-bench-") as tmp:
        mem = MemOS(Path(tmp) / "mem", embedder=embedder, llm=LLMReader(chat, structured=structured))
        try:
            for case in cases:
                user = f"{case['id']}-{case['user']}"
                phases = [(case["turns"], case["expect"], None)]
                if case.get("then"):
                    phases.append((case["then"]["turns"], case["then"]["expect"], case["then"]["op"]))
                for phase, (turns, expect, ops) in enumerate(phases, start=1):
                    msgs = _turns(case["id"], phase, turns, f"2024-0{phase}-15T10:00:00Z")
                    t = time.perf_counter()
                    res = mem.add(msgs, user_id=user)
                    took = time.perf_counter() - t
                    ids = {m["id"] for m in msgs}
                    failed = any("extraction failed" in e for e in res.errors)
                    episodes = [m for m in res.added if m.kind.value == "episode"]
                    kept = ids <= {s for m in episodes for s in m.provenance.source_ids}
                    facts = [m for m in res.added + res.updated if m.kind.value != "episode"]
                    if phase == 1:
                        facts_expected += len(expect)
                        found = [e for e in expect if any(_matches(e, m.content) for m in facts)]
                        facts_found += len(found)
                        facts_stored += len(facts)
                        facts_unexpected += sum(1 for m in facts if not any(_matches(e, m.content) for e in expect))
                    op = observed_op(res)
                    if ops is not None:
                        decisions.append({"case": case["id"], "expected": ops, "observed": op, "ok": op in ops,
                                          "facts": [m.content for m in facts]})
                    adds.append({"case": case["id"], "phase": phase, "seconds": round(took, 2), "llm_calls": res.llm_calls,
                                 "extraction_failed": failed, "turns_kept": kept if failed else None,
                                 "facts": [m.content for m in facts], "op": op, "errors": res.errors})
                    log(f"{case['id']:<12} add {phase}: {took:5.1f}s {res.llm_calls} call(s)  "
                        f"{'EXTRACTION FAILED -> ' + str(len(episodes)) + ' episode(s)' if failed else op}  "
                        f"{[m.content for m in facts]}")
        finally:
            mem.close()
    replies = chat.replies
    by_purpose: dict[str, dict[str, Any]] = {}
    for purpose in ("extract", "decide"):
        rs = [r for r in replies if r["purpose"] == purpose]
        ok = [shape_ok(purpose, r["text"]) for r in rs]
        first = [shape_ok(purpose, r["text"]) for r in rs if not r["retry"]]
        by_purpose[purpose] = {"calls": len(rs), "json_ok": sum(ok), "json_ok_rate": round(sum(ok) / len(rs), 3) if rs else None,
                               "first_attempt_ok_rate": round(sum(first) / len(first), 3) if first else None,
                               "constrained": sum(1 for r in rs if r["constrained"]),
                               "constrained_ok": sum(1 for r, k in zip(rs, ok) if r["constrained"] and k),
                               "tokens_mean": round(sum(r["tokens"] or 0 for r in rs) / len(rs), 1) if rs else None}
    failed_adds = [a for a in adds if a["extraction_failed"]]
    report = {
        "cases": len(cases),
        "max_new_tokens": max_new_tokens,
        "structured": structured,
        "calls": by_purpose,
        "adds": {"total": len(adds), "extraction_ok": len(adds) - len(failed_adds),
                 "fell_back_to_episodes": len(failed_adds),
                 "turns_kept_after_failure": f"{sum(1 for a in failed_adds if a['turns_kept'])}/{len(failed_adds)}"},
        "facts": {"expected": facts_expected, "found": facts_found,
                  "recall": round(facts_found / facts_expected, 3) if facts_expected else None,
                  "stored": facts_stored, "matching_no_expectation": facts_unexpected},
        "decisions": {"total": len(decisions), "as_expected": sum(d["ok"] for d in decisions),
                      "observed": {d["case"]: d["observed"] for d in decisions},
                      "expected": {d["case"]: d["expected"] for d in decisions}},
        "seconds": round(time.perf_counter() - t_start, 1),
        "details": adds,
        "sample_replies": [r["text"][:300] for r in replies[:6]],
    }
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--limit", type=int, help="only the first N cases")
    ap.add_argument("--structured", choices=("auto", "off"), default="auto",
                    help="auto: constrained JSON decoding on first attempts; off: free text only")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok, label = load_model(args.model)
    print(f"model: {label}, loaded in {time.perf_counter() - t0:.1f}s", flush=True)
    rep = run(model, tok, max_new_tokens=args.max_new_tokens, limit=args.limit, structured=args.structured,
              log=lambda m: print(m, flush=True))
    rep["model"] = label
    c, a, f, d = rep["calls"], rep["adds"], rep["facts"], rep["decisions"]
    print(f"replies parsing as the JSON asked for: extract {c['extract']['json_ok']}/{c['extract']['calls']}, "
          f"decide {c['decide']['json_ok']}/{c['decide']['calls']} (constrained: extract "
          f"{c['extract']['constrained_ok']}/{c['extract']['constrained']}, decide "
          f"{c['decide']['constrained_ok']}/{c['decide']['constrained']})")
    print(f"adds: {a['extraction_ok']}/{a['total']} extracted; {a['fell_back_to_episodes']} fell back to episodes "
          f"(turns kept: {a['turns_kept_after_failure']})")
    print(f"facts: {f['found']}/{f['expected']} expected facts found; {f['stored']} stored, "
          f"{f['matching_no_expectation']} matching no expectation")
    print(f"decisions: {d['as_expected']}/{d['total']} as expected; observed {d['observed']}")
    if args.json:
        print(json.dumps(rep, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
