"""Constrained JSON decoding (memos_core.activation.constrained) on tiny random models: a reply that ends by
itself is valid JSON of the schema, whatever the weights; only the masking changes the pick; the LangChain
wrapper's with_structured_output parses it; the LangChain reader adapter keeps structured output after one
unparsable reply."""

from __future__ import annotations

import json
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lmformatenforcer")

from pydantic import BaseModel, Field  # noqa: E402

from memos_core.activation import LocalLLM, SamplingParams, generate  # noqa: E402
from memos_core.activation.constrained import JSONSchemaConstraint, bounded_schema, schema_dict  # noqa: E402
from memos_core.activation.generation import eos_token_ids  # noqa: E402
from memos_core.activation.models import ModelNotInstalled  # noqa: E402
from memos_core.activation.testing import save_tiny_model  # noqa: E402
from memos_core.errors import ValidationError  # noqa: E402
from memos_core.reader.llm import Decisions, Extraction  # noqa: E402

ASK = [{"role": "user", "content": "Extract the facts as JSON: I moved to Lisbon."}]


class Pet(BaseModel):
    name: str
    kind: str = Field(json_schema_extra={"enum": ["dog", "cat"]})
    age: int
    tags: list[str] = Field(default_factory=list)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    return LocalLLM.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("llama"), "llama", seed=3))


def _strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _valid(schema_cls: type[BaseModel], text: str) -> BaseModel:
    return schema_cls.model_validate(json.loads(text))


@pytest.mark.parametrize("schema_cls", [Extraction, Decisions, Pet])
def test_finished_reply_is_valid_json_of_the_schema_greedy_and_sampled(llm, schema_cls):
    schema = bounded_schema(schema_cls.model_json_schema(), max_string_length=12, max_items=2)
    for seed in (None, 1, 2, 3):
        opts = dict(max_new_tokens=400, json_schema=schema)
        if seed is not None:
            opts.update(temperature=1.0, seed=seed)
        res = llm.chat(ASK, **opts)
        assert res.finish_reason == "eos", (seed, res.text)
        obj = _valid(schema_cls, res.text)
        # strings are capped (lm-format-enforcer may close a capped string with one more character)
        assert all(len(s) <= 13 for s in _strings(json.loads(res.text))), res.text


def test_masking_only_restricts_the_pick(llm):
    """Greedy under a schema picks the best-scoring allowed token: check the first step by hand."""
    layout = llm.layout(ASK, [])
    schema = Pet.model_json_schema()
    res = generate(llm.model, llm.tokenizer, layout.input_ids, None,
                   SamplingParams(max_new_tokens=1, json_schema=schema), keep_first_logits=True)
    allowed = JSONSchemaConstraint(llm.tokenizer, schema, vocab_size=res.first_logits.shape[-1],
                                   eos_ids=sorted(eos_token_ids(llm.model, llm.tokenizer))).allowed([])
    assert allowed and len(allowed) < res.first_logits.shape[-1]
    best = max(allowed, key=lambda i: float(res.first_logits[0, i]))
    assert res.token_ids == [best]
    first = llm.tokenizer.decode([best])
    assert first.strip() in ("", "{") or first.lstrip().startswith("{")
    assert all(llm.tokenizer.decode([i]).lstrip()[:1] in ("", "{") for i in allowed)  # an object must open
    free = generate(llm.model, llm.tokenizer, layout.input_ids, None, SamplingParams(max_new_tokens=1),
                    keep_first_logits=True)
    assert free.token_ids == [int(torch.argmax(free.first_logits[0]))]
    assert torch.equal(free.first_logits, res.first_logits)  # the logits kept are the model's own


def test_kv_injected_constrained_reply_equals_full_prompt(llm):
    from memos_core.items import MemoryItem

    items = [MemoryItem(content="Ann moved to Lisbon in May 2023."), MemoryItem(content="Bob has a cat.")]
    schema = bounded_schema(Extraction.model_json_schema(), max_string_length=10, max_items=2)
    cached = llm.chat(ASK, memories=items, max_new_tokens=300, json_schema=schema)
    assert cached.cached_tokens > 0
    layout = llm.layout(ASK, items)
    full = generate(llm.model, llm.tokenizer, layout.input_ids, None,
                    SamplingParams(max_new_tokens=300, json_schema=schema))
    assert cached.token_ids == full.token_ids and cached.text == full.text


def test_bad_options_raise_typed_errors(llm):
    with pytest.raises(ValidationError, match="ignore_eos"):
        llm.chat(ASK, max_new_tokens=4, json_schema=Pet.model_json_schema(), ignore_eos=True)
    with pytest.raises(ValidationError):
        schema_dict(42)
    with pytest.raises(ValidationError):
        schema_dict("{not json")
    assert schema_dict(Pet)["title"] == "Pet" and schema_dict('{"type": "object"}') == {"type": "object"}
    with pytest.raises(ValidationError):
        bounded_schema({"type": "string"}, max_string_length=0)


def test_bounded_schema_caps_strings_and_arrays_without_overriding():
    s = bounded_schema(Extraction.model_json_schema(), max_string_length=50, max_items=3)
    fact = s["$defs"]["ExtractedFact"]["properties"]
    assert fact["text"]["maxLength"] == 50
    assert "maxLength" not in fact["kind"]  # an enum is already bounded
    assert fact["turns"]["maxItems"] == 3 and fact["turns"]["items"]["maxLength"] == 50
    assert s["properties"]["facts"]["maxItems"] == 3
    assert bounded_schema({"type": "string", "maxLength": 5}, max_string_length=50) == {"type": "string", "maxLength": 5}
    assert bounded_schema({"type": ["string", "null"]}, max_string_length=7)["maxLength"] == 7
    assert bounded_schema({"type": "string"}) == {"type": "string"}
    req = bounded_schema(Extraction.model_json_schema(), require_all=True)
    assert req["required"] == ["facts"]
    assert set(req["$defs"]["ExtractedFact"]["required"]) == {"text", "kind", "turns", "event_time"}
    assert "required" not in Extraction.model_json_schema()  # the caller's schema is not changed


def test_missing_library_says_what_to_install(llm, monkeypatch):
    monkeypatch.setitem(sys.modules, "lmformatenforcer", None)
    with pytest.raises(ModelNotInstalled, match="lm-format-enforcer"):
        llm.chat(ASK, max_new_tokens=4, json_schema=Pet.model_json_schema())


def pet_json(chat):
    raw = chat.with_structured_output(Pet, include_raw=True, max_string_length=8, max_items=2).invoke(
        "Describe a pet as JSON.")
    return raw["raw"].content


def test_langchain_with_structured_output(llm):
    pytest.importorskip("langchain_core")
    from langchain_core.exceptions import OutputParserException

    from memos_langchain.local_chat_model import MemOSLocalChatModel

    chat = MemOSLocalChatModel(llm=llm, max_new_tokens=400)
    pet = chat.with_structured_output(Pet, max_string_length=8, max_items=2).invoke("Describe a pet as JSON.")
    assert '"tags"' in pet_json(chat)  # every property written out, the optional one too
    assert isinstance(pet, Pet) and len(pet.name) <= 9 and pet.kind in ("dog", "cat") and len(pet.tags) <= 2
    as_dict = chat.with_structured_output(Pet.model_json_schema(), max_string_length=8).invoke("A pet?")
    assert isinstance(as_dict, dict) and Pet.model_validate(as_dict)
    raw = chat.with_structured_output(Pet, include_raw=True, max_string_length=8).invoke("A pet?")
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], Pet)
    assert json.loads(raw["raw"].content) == raw["parsed"].model_dump()
    # cut by the token limit: LangChain's own parsing error, nothing silently invented
    short = MemOSLocalChatModel(llm=llm, max_new_tokens=3)
    with pytest.raises(OutputParserException):
        short.with_structured_output(Pet).invoke("A pet?")
    cut = short.with_structured_output(Pet, include_raw=True).invoke("A pet?")
    assert cut["parsed"] is None and cut["parsing_error"] is not None
    with pytest.raises(ValidationError):
        chat.with_structured_output(Pet, tools=[1])


def test_reader_adapter_keeps_structured_output_after_an_unparsable_reply():
    pytest.importorskip("langchain_core")
    from langchain_core.exceptions import OutputParserException

    from memos_langchain._convert import LangChainChat

    class Model:
        def __init__(self, error):
            self.error, self.structured_calls = error, 0

        def with_structured_output(self, schema):
            model = self

            class R:
                def invoke(self, msgs):
                    model.structured_calls += 1
                    raise model.error

            return R()

        def invoke(self, msgs):
            return "text"

    parse_fail = Model(OutputParserException("cut"))
    chat = LangChainChat(parse_fail)
    for _ in range(2):
        with pytest.raises(OutputParserException):
            chat.call([{"role": "user", "content": "x"}], Pet)
    assert parse_fail.structured_calls == 2  # still structured
    refused = Model(ValueError("schema not supported"))
    chat = LangChainChat(refused)
    with pytest.raises(ValueError):
        chat.call([{"role": "user", "content": "x"}], Pet)
    assert chat.call([{"role": "user", "content": "x"}], Pet) == "text"  # plain text from now on
    assert refused.structured_calls == 1


def test_llamaindex_structured_predict(llm):
    pytest.importorskip("llama_index.core")
    import asyncio

    from llama_index.core.prompts import PromptTemplate

    from memos_llamaindex.local_llm import MemOSLocalLLM

    wrapper = MemOSLocalLLM(llm=llm, max_new_tokens=400)
    prompt = PromptTemplate("Describe {what} as JSON.")
    pet = wrapper.structured_predict(Pet, prompt, what="a pet")
    assert isinstance(pet, Pet) and pet.kind in ("dog", "cat")
    again = asyncio.run(wrapper.astructured_predict(Pet, prompt, what="a pet"))
    assert again == pet  # greedy: the same reply
    with pytest.raises(ValidationError, match="length"):
        MemOSLocalLLM(llm=llm, max_new_tokens=3).structured_predict(Pet, prompt, what="a pet")
