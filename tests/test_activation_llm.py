"""LocalLLM (activation memory used automatically), PEFT adapters in the fingerprint, and the thin
LangChain / LlamaIndex wrappers."""

from __future__ import annotations

import warnings
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from memos_core.activation import (  # noqa: E402
    FingerprintMismatch,
    KVCacheStore,
    LocalLLM,
    SamplingParams,
    StaleArtifact,
    fingerprint,
    generate,
)
from memos_core.activation.testing import save_tiny_model  # noqa: E402
from memos_core.errors import ValidationError  # noqa: E402
from memos_core.items import LifecycleState, MemoryItem  # noqa: E402

FACTS = [
    "Ann moved to Lisbon in May 2023 and works as a marine biologist.",
    "Bob prefers green tea over coffee and runs every Sunday morning.",
    "The demo was moved from Tuesday at 10:00 to Thursday at 14:30.",
    "Dan has two cats named Miso and Tofu.",
]
ASK = [{"role": "user", "content": "Where does Ann live?"}]
OPTS = dict(max_new_tokens=8, ignore_eos=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("qwen2"), "qwen2", seed=0)


@pytest.fixture()
def items():
    out = []
    for i, c in enumerate(FACTS):
        it = MemoryItem(content=c)
        out.append(it.model_copy(update={"created_at": it.created_at + timedelta(seconds=i)}))
    return out


def _reference(llm, messages, items, **opts):
    """Generation from the full prompt, no cache."""
    ids = llm.layout(messages, items).input_ids
    return generate(llm.model, llm.tokenizer, ids, None, SamplingParams(**opts))


def test_local_llm_builds_stores_and_reuses_caches(folder, items, tmp_path):
    table = {it.id: it for it in items}
    llm = LocalLLM.from_pretrained(folder, store=tmp_path / "activation", lookup=table.get, memories=items[:3])
    first = llm.chat(ASK, **OPTS)
    assert first.cache_origin == "built" and first.memory_ids == [it.id for it in items[:3]]
    assert first.token_ids == _reference(llm, ASK, items[:3], **OPTS).token_ids
    assert first.cached_tokens > 0 and len(llm.store) == 1
    again = llm.chat(ASK, **OPTS)
    assert again.cache_origin == "memory" and again.token_ids == first.token_ids and again.cache_id == first.cache_id

    # a new process (fresh LocalLLM) finds the cache on disk
    llm2 = LocalLLM.from_pretrained(folder, store=tmp_path / "activation", lookup=table.get, memories=items[:3])
    res = llm2.chat(ASK, **OPTS)
    assert res.cache_origin == "disk" and res.token_ids == first.token_ids

    # a newer memory is appended (chronological order): the old cache is extended, not rebuilt from scratch
    res = llm2.chat(ASK, memories=items, **OPTS)
    assert res.cache_origin.startswith("extended") and res.token_ids == _reference(llm2, ASK, items, **OPTS).token_ids
    assert len(llm2.store) == 2

    # streaming gives the same text
    s = llm2.stream(ASK, memories=items, **OPTS)
    assert "".join(s) == res.text and s.result.cache_origin == "memory"


def test_local_llm_rebuilds_stale_caches_and_forgets(folder, items, tmp_path):
    table = {it.id: it for it in items}
    llm = LocalLLM.from_pretrained(folder, store=tmp_path / "a", lookup=table.get, memories=lambda msgs: [table[i.id] for i in items[:2] if i.id in table])
    first = llm.chat(ASK, **OPTS)
    old_id = first.cache_id
    a = items[0]
    table[a.id] = a.model_copy(update={"content": "Ann moved to Porto in 2024.", "version": 2})
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = llm.chat(ASK, **OPTS)
    assert res.cache_id != old_id and old_id not in llm.store and any("stale" in n for n in res.notes)
    assert res.token_ids == _reference(llm, ASK, [table[a.id], items[1]], **OPTS).token_ids

    strict = LocalLLM.from_pretrained(folder, store=tmp_path / "a", lookup=table.get, on_bad_cache="raise", memories=[table[a.id], items[1]])
    table[items[1].id] = items[1].model_copy(update={"state": LifecycleState.DELETED})
    with pytest.raises(StaleArtifact):
        strict.chat(ASK, memories=[table[a.id], items[1]], **OPTS)
    table[items[1].id] = items[1]

    assert llm.forget([a.id]) and len(llm.store) == 0


def test_local_llm_rerotate_mode(folder, items, tmp_path):
    llm = LocalLLM.from_pretrained(folder, store=tmp_path / "r", memories=items[:3], composition="rerotate")
    res = llm.chat(ASK, **OPTS)
    assert res.cache_exact is False and res.cache_origin.startswith("composed")
    assert len(llm.store) == 3  # one cache per memory, reusable in any combination
    res2 = llm.chat(ASK, memories=[items[2], items[0]], **OPTS)
    assert res2.cache_origin == "composed[memory,memory]" and len(llm.store) == 3
    single = llm.chat(ASK, memories=items[:1], **OPTS)  # one memory: nothing to approximate
    assert single.token_ids == _reference(llm, ASK, items[:1], **OPTS).token_ids


def test_local_llm_validates_input(folder, items):
    llm = LocalLLM.from_pretrained(folder, memories=items[:1])
    with pytest.raises(ValidationError):
        llm.chat([], **OPTS)
    with pytest.raises(ValidationError):
        llm.chat(ASK, max_new_tokens=4, beams=3)
    with pytest.raises(ValidationError):
        LocalLLM(llm.model, llm.tokenizer, composition="magic")
    res = llm.chat(ASK, memories=[], **OPTS)  # no memories: plain generation
    assert res.cache_id is None and res.cache_origin == "none"


def test_peft_adapters_key_the_caches(folder, items, tmp_path):
    peft = pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    base = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    fp_base = fingerprint(base, tok)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, cfg, adapter_name="alpha")
    model.add_adapter("beta", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.eval()
    llm = LocalLLM(model, tok, store=tmp_path / "p", memories=items[:2])
    fp_alpha = llm.fingerprint()
    assert fp_alpha.adapters == ["alpha"] and fp_alpha.weights_sha256 == fp_base.weights_sha256
    res_alpha = llm.chat(ASK, **OPTS)
    assert res_alpha.token_ids == _reference(llm, ASK, items[:2], **OPTS).token_ids
    cache_alpha = llm.store.load(res_alpha.cache_id, fingerprint=fp_alpha)

    model.set_adapter("beta")
    fp_beta = llm.fingerprint()
    assert fp_beta.adapters == ["beta"] and fp_beta.key != fp_alpha.key
    with pytest.raises(FingerprintMismatch) as err:
        llm.store.load(res_alpha.cache_id, fingerprint=fp_beta)
    assert "adapters" in err.value.differences
    ids = llm.layout(ASK, items[:2]).input_ids
    with pytest.raises(FingerprintMismatch):
        generate(model, tok, ids, cache_alpha, SamplingParams(**OPTS))
    res_beta = llm.chat(ASK, **OPTS)  # builds its own cache under beta
    assert res_beta.cache_id != res_alpha.cache_id and res_beta.cache_origin == "built"
    assert res_beta.token_ids == _reference(llm, ASK, items[:2], **OPTS).token_ids

    with model.disable_adapter():
        assert llm.fingerprint().adapters == [] and llm.fingerprint().key == fp_base.key
    model.set_adapter("alpha")
    assert llm.chat(ASK, **OPTS).cache_origin == "memory"


# --------------------------------------------------------------------------------------------------- adapters


def test_langchain_chat_model(folder, items, tmp_path):
    pytest.importorskip("langchain_core")
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from memos_langchain.local_chat_model import MemOSLocalChatModel

    llm = LocalLLM.from_pretrained(folder, store=tmp_path / "lc", memories=items[:2])
    chat = MemOSLocalChatModel(llm=llm, max_new_tokens=8)
    msgs = [SystemMessage("Be brief."), HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage("Where does Ann live?")]
    out = chat.invoke(msgs, ignore_eos=True)
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Where does Ann live?"}]
    ref = _reference(llm, conv, items[:2], **OPTS)
    assert out.content == ref.text
    assert out.response_metadata["cache_origin"] == "built" and out.response_metadata["cached_tokens"] > 0
    assert out.usage_metadata["output_tokens"] == 8
    chunks = list(chat.stream(msgs, ignore_eos=True))
    assert "".join(c.content for c in chunks) == ref.text
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.response_metadata["cache_origin"] == "memory" and merged.usage_metadata["output_tokens"] == 8
    other = chat.bind(memories=items[2:3]).invoke("Where does Ann live?", ignore_eos=True)
    assert other.response_metadata["memory_ids"] == [items[2].id]


def test_llamaindex_llm(folder, items, tmp_path):
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    from memos_llamaindex.local_llm import MemOSLocalLLM

    llm = LocalLLM.from_pretrained(folder, store=tmp_path / "li", memories=items[:2])
    li = MemOSLocalLLM(llm=llm, max_new_tokens=8)
    assert li.metadata.is_chat_model and li.metadata.context_window == llm.model.config.max_position_embeddings
    ref = _reference(llm, ASK, items[:2], **OPTS)
    resp = li.chat([ChatMessage(role=MessageRole.USER, content="Where does Ann live?")], ignore_eos=True)
    assert resp.message.content == ref.text and resp.raw["cache_origin"] == "built"
    comp = li.complete("Where does Ann live?", ignore_eos=True)
    assert comp.text == ref.text and comp.raw["cache_origin"] == "memory"
    streamed = list(li.stream_chat([ChatMessage(role=MessageRole.USER, content="Where does Ann live?")], ignore_eos=True))
    assert streamed[-1].message.content == ref.text
    pieces = list(li.stream_complete("Where does Ann live?", ignore_eos=True))
    assert "".join(p.delta or "" for p in pieces) == ref.text


# --------------------------------------------------------------------------------------------------- from a cube
# A real MemCube (conftest's ``cube``: hashed bag-of-words embedder, fake clock) feeds the model: its search picks
# the memories, its folder holds the caches, its records decide staleness.

ANN = FACTS[0]


def _fill(cube, clock, user_id="u1"):
    ids = {}
    for fact in FACTS:
        ids[fact] = cube.add(fact, user_id=user_id).id
        clock.advance(1)
    return ids


def _injected(llm, res):
    """(the items that were injected, as the cube holds them now; the text of the cached prefix)."""
    info = {i.cache_id: i for i in llm.store.list()}[res.cache_id]
    return info.meta, llm.tokenizer.decode(info.meta.token_ids)


def _full_prompt(llm, items, **opts):
    return _reference(llm, ASK, items, **opts)


def test_from_cube_injects_the_searched_memories(folder, cube, clock):
    ids = _fill(cube, clock)
    cube.add("Ann lives in Oslo with her brother.", user_id="u2")  # another user's memory: never injected
    llm = LocalLLM.from_cube(cube, folder, k=2, user_id="u1")
    assert llm.cube is cube and llm.store.folder == cube.path / "activation"
    res = llm.chat(ASK, **OPTS)
    assert ids[ANN] in res.memory_ids and len(res.memory_ids) <= 2 and res.cache_origin == "built"
    items = [cube.get(i) for i in res.memory_ids]
    assert all(it.scope.user_id == "u1" for it in items)
    meta, cached_text = _injected(llm, res)
    assert ANN in cached_text and "Oslo" not in cached_text
    assert meta.token_ids == llm.layout(ASK, items).prefix and res.cached_tokens == len(meta.token_ids)
    assert res.token_ids == _full_prompt(llm, items, **OPTS).token_ids

    assert llm.chat(ASK, **OPTS).cache_origin == "memory"
    again = LocalLLM.from_cube(cube, llm.model, llm.tokenizer, k=2, user_id="u1")  # a new process: found on disk
    res2 = again.chat(ASK, **OPTS)
    assert res2.cache_origin == "disk" and res2.token_ids == res.token_ids
    # no user message: no search, no memories
    assert llm.chat([{"role": "system", "content": "Say hi."}], **OPTS).memory_ids == []


def test_from_cube_rebuilds_after_update_and_drops_deleted(folder, cube, clock):
    ids = _fill(cube, clock)
    llm = LocalLLM.from_cube(cube, folder, k=2, user_id="u1")
    first = llm.chat(ASK, **OPTS)
    assert ids[ANN] in first.memory_ids

    cube.update(ids[ANN], "Ann moved to Porto in 2024 and teaches biology.")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = llm.chat(ASK, **OPTS)
    assert res.cache_id != first.cache_id and first.cache_id not in llm.store
    assert any("stale" in n for n in res.notes) and res.cache_origin == "built"
    meta, cached_text = _injected(llm, res)
    assert "Porto" in cached_text and "Lisbon" not in cached_text
    assert {s.item_id: s.version for s in meta.sources}[ids[ANN]] == 2
    items = [cube.get(i) for i in res.memory_ids]
    assert res.token_ids == _full_prompt(llm, items, **OPTS).token_ids

    cube.delete(ids[ANN])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        gone = llm.chat(ASK, **OPTS)
    assert ids[ANN] not in gone.memory_ids
    meta, cached_text = _injected(llm, gone)
    assert "Porto" not in cached_text and ids[ANN] not in meta.source_ids
    items = [cube.get(i) for i in gone.memory_ids]
    assert gone.token_ids == _full_prompt(llm, items, **OPTS).token_ids
    llm.drop_stale()
    assert all(ids[ANN] not in info.meta.source_ids for info in llm.store.list())


def test_from_cube_never_uses_a_cache_of_a_forgotten_memory(folder, cube, clock):
    ids = _fill(cube, clock)
    llm = LocalLLM.from_cube(cube, folder, k=2, user_id="u1", on_bad_cache="raise")
    res = llm.chat(ASK, **OPTS)
    assert ids[ANN] in res.memory_ids
    cube.forget(ids[ANN], drop_artifacts=False)  # the cache file stays behind ...
    with pytest.raises(StaleArtifact):  # ... and strict mode refuses it loudly, never uses it
        llm.chat(ASK, **OPTS)
    assert res.cache_id in llm.drop_stale() and res.cache_id not in llm.store
    after = llm.chat(ASK, **OPTS)
    assert ids[ANN] not in after.memory_ids and ANN not in _injected(llm, after)[1]


def test_forget_deletes_the_cubes_caches_built_from_the_memory(folder, cube, clock):
    ids = _fill(cube, clock)
    llm = LocalLLM.from_cube(cube, folder, k=2, user_id="u1", on_bad_cache="raise")
    res = llm.chat(ASK, **OPTS)
    assert ids[ANN] in res.memory_ids and res.cache_id in llm.store
    files = sorted(p.name for p in (cube.path / "activation").iterdir())
    assert any(res.cache_id in f for f in files)
    cube.forget(ids[ANN])  # default: the derived KV cache (its token ids spell the memory) goes too
    assert res.cache_id not in llm.store
    assert not any(res.cache_id in p.name for p in (cube.path / "activation").iterdir())
    after = llm.chat(ASK, **OPTS)  # strict mode, yet nothing stale is left to refuse
    assert ids[ANN] not in after.memory_ids and ANN not in _injected(llm, after)[1]


def test_from_cube_respects_governance(folder, cube, clock):
    from memos_core.errors import PermissionDenied

    _fill(cube, clock)
    with pytest.raises(PermissionDenied):  # eve was never given a role on this cube
        LocalLLM.from_cube(cube, folder, actor="eve")
    cube.share("bob", "guest")  # guests may read
    cube.governance.configure(audit_reads=True)
    llm = LocalLLM.from_cube(cube, folder, k=2, user_id="u1", actor="bob")
    res = llm.chat(ASK, **OPTS)
    assert res.memory_ids
    assert any(e["actor"] == "bob" and e["op"] == "search" for e in cube.events())
    cube.revoke("bob")
    with pytest.raises(PermissionDenied):  # every chat searches as bob
        llm.chat(ASK, **OPTS)


def test_from_cube_validates_input(folder, cube):
    llm = LocalLLM.from_pretrained(folder)
    with pytest.raises(ValidationError):
        LocalLLM.from_cube(cube, llm.model)  # a loaded model needs its tokenizer
    with pytest.raises(ValidationError):
        LocalLLM.from_cube(cube, llm.model, llm.tokenizer, k=0)
    with pytest.raises(ValidationError):
        LocalLLM.from_cube(cube, llm.model, llm.tokenizer, store="elsewhere")
    with pytest.raises(ValidationError):
        LocalLLM.from_cube(cube, llm.model, llm.tokenizer, dtype="float16")
    with pytest.raises(ValidationError):
        LocalLLM.from_cube("not a cube", folder)


def test_adapters_from_cube(folder, cube, clock):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import ChatMessage, MessageRole

    from memos_langchain.local_chat_model import MemOSLocalChatModel
    from memos_llamaindex.local_llm import MemOSLocalLLM

    ids = _fill(cube, clock)
    chat = MemOSLocalChatModel.from_cube(cube, folder, k=2, user_id="u1", max_new_tokens=8)
    assert chat.max_new_tokens == 8 and chat.llm.cube is cube
    out = chat.invoke("Where does Ann live?", ignore_eos=True)
    meta = out.response_metadata
    assert ids[ANN] in meta["memory_ids"] and meta["cache_origin"] == "built"
    items = [cube.get(i) for i in meta["memory_ids"]]
    assert out.content == _full_prompt(chat.llm, items, **OPTS).text

    li = MemOSLocalLLM.from_cube(cube, chat.llm.model, chat.llm.tokenizer, k=2, user_id="u1", max_new_tokens=8)
    resp = li.chat([ChatMessage(role=MessageRole.USER, content="Where does Ann live?")], ignore_eos=True)
    assert resp.message.content == out.content and resp.raw["cache_origin"] == "disk"
    assert resp.raw["memory_ids"] == meta["memory_ids"]
