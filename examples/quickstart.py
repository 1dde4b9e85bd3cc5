"""MemOS quick start: the facade, offline (no LLM, no API key, no download beyond the package).

1. Open a MemOS in a folder (a "default" cube is created there).
2. Add a conversation: every turn becomes an episode with its speaker, date and turn id.
3. Search, and build a prompt-ready memory block with get_context.
4. Edit a memory: a new version; history and rollback.
5. Optional: LLM mode with a scripted model standing in for a real one (facts, UPDATE, contradiction).

Run:  python examples/quickstart.py [FOLDER]     (add --minilm to use the real default embedder)
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from memos_core import MemOS


_STOP = {"a", "an", "and", "at", "did", "for", "go", "i", "i'm", "is", "it", "m", "my", "of", "s", "so", "the", "to",
         "was", "what", "when", "where"}


def hashed_embedder(texts: list[str]) -> np.ndarray:
    """A tiny stand-in embedder (hashed bag of words) so the example runs in about a second.
    Leave ``embedder=None`` for the real offline default (all-MiniLM-L6-v2)."""
    out = np.zeros((len(texts), 256), dtype=np.float32)
    for i, text in enumerate(texts):
        for w in re.findall(r"[a-z0-9]+", text.lower()):
            if w not in _STOP:
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 256] += 1.0
        out[i, 0] += 0.01
    return out


CONVERSATION = [
    {"id": "D1:1", "speaker": "Caroline", "time": "2023-05-08 13:56",
     "text": "I went to an LGBTQ support group yesterday and it was so powerful."},
    {"id": "D1:2", "speaker": "Melanie", "time": "2023-05-08 13:57",
     "text": "That's wonderful! I've been busy painting a lake sunrise for my art class."},
    {"id": "D1:3", "speaker": "Caroline", "time": "2023-05-08 13:58",
     "text": "I'm thinking about studying counseling next year."},
]


def scripted_llm(messages: list[dict[str, str]]) -> str:
    """Stands in for a chat model: any LangChain chat model, LlamaIndex LLM or callable works the same way."""
    prompt = messages[-1]["content"]
    if prompt.startswith("Existing memories:"):  # the decision step
        target = re.search(r"^(M\d+) .*lives in Lisbon", prompt, re.M)
        return json.dumps({"decisions": [{"fact": "F1", "op": "ADD",
                                          "supersedes": [target.group(1)] if target else []}]})
    if "Berlin" in prompt:
        return '{"facts": [{"text": "Ann lives in Berlin", "turns": ["T1"], "event_time": "2023-09-01"}]}'
    return '```json\n{"facts": [{"text": "Ann lives in Lisbon", "kind": "fact", "turns": ["T1"]}]}\n```'


def main(folder: Path, embedder: object) -> None:
    with MemOS(folder, embedder=embedder) as mem:
        res = mem.add(CONVERSATION, user_id="caroline", session_id="D1")
        print(f"added {len(res.added)} episodes (ok={res.ok})")

        for hit in mem.search("When did Caroline go to the support group?", user_id="caroline", k=2):
            it = hit.item
            print(f"  {hit.score:.4f}  {it.event_time:%Y-%m-%d}  {it.content}  <- turn {it.provenance.source_ids}")

        print(mem.get_context("What is Caroline studying?", user_id="caroline", k=2, token_budget=200))

        item = res.added[2]
        mem.update(item.id, "Caroline: I'm going to study counseling next year.", reason="clarified")
        mem.rollback(item.id, 1)
        print("history:", [(v.version, v.content[:40]) for v in mem.history(item.id)])

    with MemOS(folder / "llm", embedder=embedder, llm=scripted_llm) as mem:
        mem.add({"role": "Ann", "content": "I live in Lisbon", "id": "A1"}, user_id="ann", timestamp="2023-05-01")
        res = mem.add({"role": "Ann", "content": "I moved to Berlin!", "id": "A2"}, user_id="ann",
                      timestamp="2023-09-02")
        print(f"LLM mode: added {[a.content for a in res.added]}, superseded {len(res.superseded)}, "
              f"{res.llm_calls} LLM calls, errors={res.errors}")
        print(mem.get_context("Where does Ann live?", user_id="ann"))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    emb = None if "--minilm" in sys.argv else hashed_embedder
    if args:
        target = Path(args[0])
        shutil.rmtree(target, ignore_errors=True)
        main(target, emb)
    else:
        with tempfile.TemporaryDirectory(prefix="memos-quickstart-") as tmp:
            main(Path(tmp), emb)
