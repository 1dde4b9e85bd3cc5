"""The activation layer passes the KV cache to transformers the way the installed version wants it: no
"`past_key_values` is deprecated ... Use `cache` instead" on every generate, and greedy tokens unchanged."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from memos_core.activation import SamplingParams, build_cache, generate, render_layout, rope_for  # noqa: E402
from memos_core.activation.testing import save_tiny_model  # noqa: E402
from memos_core.items import MemoryItem  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

FACTS = ["Ann moved to Lisbon in May 2023.", "Bob prefers green tea over coffee."]
QUESTION = [{"role": "user", "content": "Where does Ann live?"}]


@pytest.fixture()
def deprecations(monkeypatch):
    """Every message transformers' cache-name back-compat shim would log (its warning_once is cached per
    process, so the shim's own logger is watched instead of stderr)."""
    import transformers.utils.generic as generic

    seen: list[str] = []

    def record(msg, *args, **kwargs):
        seen.append(str(msg) % args if args else str(msg))

    monkeypatch.setattr(generic.logger, "warning_once", record, raising=False)
    monkeypatch.setattr(generic.logger, "warning", record, raising=False)
    return seen


def test_generate_and_rope_check_pass_the_cache_without_deprecation(tmp_path, deprecations, recwarn) -> None:
    folder = save_tiny_model(tmp_path / "m", "llama", seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    items = [MemoryItem(content=c) for c in FACTS]
    cache = build_cache(model, tok, items)
    layout = render_layout(tok, QUESTION, FACTS)
    greedy = SamplingParams(max_new_tokens=6, ignore_eos=True)
    ref = generate(model, tok, layout.input_ids, None, greedy)
    res = generate(model, tok, layout.input_ids, cache, greedy)
    assert res.token_ids == ref.token_ids and res.cached_tokens == len(cache)  # reuse still exact
    rope_for(model)
    assert [m for m in deprecations if "deprecated" in m] == []
    assert [str(w.message) for w in recwarn if "past_key_values" in str(w.message)] == []
