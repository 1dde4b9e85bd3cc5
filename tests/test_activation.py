"""Activation memory: exactness of KV-cache injection, composition, storage safety.

Tiny Llama- and Qwen2-family models are built from a config, saved with save_pretrained and loaded back
with from_pretrained (no download). All comparisons are fp32.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from memos_core.activation import (  # noqa: E402
    BudgetExceeded,
    FingerprintMismatch,
    KVCacheStore,
    SamplingParams,
    StaleArtifact,
    UnsupportedModel,
    build_cache,
    build_caches,
    compose,
    composition_error,
    fingerprint,
    generate,
    render_layout,
    rope_for,
    stream,
)
from memos_core.activation.testing import save_tiny_model  # noqa: E402
from memos_core.errors import CorruptData, NotFound, ValidationError  # noqa: E402
from memos_core.items import LifecycleState, MemoryItem  # noqa: E402

LOGIT_TOL = 1e-4
N_NEW = 10
GREEDY = SamplingParams(max_new_tokens=N_NEW, ignore_eos=True)
FACTS = [
    "Ann moved to Lisbon in May 2023 and works as a marine biologist.",
    "Bob prefers green tea over coffee and runs every Sunday morning.",
    "The demo was moved from Tuesday at 10:00 to Thursday at 14:30.",
]
QUESTION = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Where does Ann live, and what does Bob drink?"}]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    folder = save_tiny_model(tmp_path_factory.mktemp(request.param), request.param, seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert not model.training and model.dtype == torch.float32
    return request.param, model, tok, folder


@pytest.fixture()
def items():
    base = [MemoryItem(content=c) for c in FACTS]
    return base


def _lookup(items):
    table = {it.id: it for it in items}
    return table.get


def _full_and_cached(model, tok, ids, cache, **kw):
    ref = generate(model, tok, ids, None, GREEDY, keep_first_logits=True)
    res = generate(model, tok, ids, cache, GREEDY, keep_first_logits=True, **kw)
    return ref, res


def _assert_exact(ref, res):
    assert res.token_ids == ref.token_ids
    diff = (ref.first_logits - res.first_logits).abs().max().item()
    assert diff < LOGIT_TOL, diff


# --------------------------------------------------------------------------------------------------- layout


def test_layout_memory_sits_in_the_system_message(tiny, items):
    family, model, tok, _ = tiny
    layout = render_layout(tok, QUESTION, [it.content for it in items])
    # the pieces concatenate to the canonical tokenization of the rendered chat
    assert tok(layout.text, add_special_tokens=False)["input_ids"] == layout.input_ids
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "Relevant memories (use them when they help answer):"
          + "".join(f"\n- {c}" for c in FACTS) + "\n\nAnswer briefly."}, QUESTION[1]],
        tokenize=False, add_generation_prompt=True)
    assert layout.text == expected
    assert layout.placement == "system"
    start, end = layout.segments[1]
    assert tok.decode(layout.prefix[start:end]) == "\n- " + FACTS[1]
    with pytest.raises(ValidationError):
        render_layout(tok, [{"role": "robot", "content": "x"}], ["m"])


def test_templates_without_system_role_carry_memory_in_the_first_user_turn(tiny, items):
    family, model, tok, _ = tiny
    no_system = (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    kw = {"chat_template": no_system}
    layout = render_layout(tok, QUESTION, FACTS, template_kwargs=kw)
    assert layout.placement == "first_user" and "Answer briefly." in layout.text
    cache = build_cache(model, tok, items, template_kwargs=kw)
    assert cache.token_ids == layout.prefix
    ref, res = _full_and_cached(model, tok, layout.input_ids, cache)
    _assert_exact(ref, res)


# --------------------------------------------------------------------------------------------------- exactness


def test_single_cache_matches_full_prompt_and_hf_generate(tiny, items):
    family, model, tok, _ = tiny
    cache = build_cache(model, tok, items)
    layout = render_layout(tok, QUESTION, [it.content for it in items])
    assert layout.prefix == cache.token_ids
    ref, res = _full_and_cached(model, tok, layout.input_ids, cache)
    _assert_exact(ref, res)
    assert res.cached_tokens == len(cache) and res.prefill_tokens == len(layout.rest)
    # our decode loop agrees with transformers' own greedy generate on the full prompt
    hf = model.generate(torch.tensor([layout.input_ids]), attention_mask=torch.ones(1, len(layout.input_ids), dtype=torch.long),
                        max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
    assert hf[0, len(layout.input_ids):].tolist() == ref.token_ids


def test_repeated_use_never_mutates_the_cache(tiny, items, tmp_path):
    family, model, tok, _ = tiny
    cache = build_cache(model, tok, items)
    store = KVCacheStore(tmp_path)
    store.put(cache)
    snapshot = [(k.clone(), v.clone()) for k, v in cache.layers]
    on_disk = (tmp_path / f"{cache.cache_id}.safetensors").read_bytes()
    loaded = store.load(cache.cache_id, fingerprint=fingerprint(model, tok))
    ids = render_layout(tok, QUESTION, FACTS).input_ids
    results = [generate(model, tok, ids, c, GREEDY, keep_first_logits=True) for c in [cache] * 10 + [loaded] * 10]
    first = results[0]
    for r in results[1:]:
        assert r.token_ids == first.token_ids
        assert torch.equal(r.first_logits, first.first_logits)  # bit-identical: same computation every time
        assert r.cached_tokens == first.cached_tokens and r.prefill_tokens == first.prefill_tokens
    for (k, v), (k0, v0) in zip(cache.layers, snapshot):
        assert torch.equal(k, k0) and torch.equal(v, v0) and k.shape[-2] == len(cache)
    assert loaded.same_tensors(cache)
    assert (tmp_path / f"{cache.cache_id}.safetensors").read_bytes() == on_disk


def test_save_load_round_trip_is_exact(tiny, items, tmp_path):
    family, model, tok, folder = tiny
    cache = build_cache(model, tok, items)
    store = KVCacheStore(tmp_path, lookup=_lookup(items))
    info = store.put(cache)
    assert info.meta.fingerprint == fingerprint(model, tok)
    assert info.meta.token_ids == cache.token_ids and [s.item_id for s in info.meta.sources] == [i.id for i in items]
    assert [s.version for s in info.meta.sources] == [1, 1, 1]
    # a fresh model object loaded from disk has the same fingerprint and accepts the cache
    model2 = AutoModelForCausalLM.from_pretrained(folder)
    tok2 = AutoTokenizer.from_pretrained(folder)
    loaded = KVCacheStore(tmp_path, lookup=_lookup(items)).load(cache.cache_id, fingerprint=fingerprint(model2, tok2))
    assert loaded.same_tensors(cache)
    ids = render_layout(tok2, QUESTION, FACTS).input_ids
    ref, res = _full_and_cached(model2, tok2, ids, loaded)
    _assert_exact(ref, res)


def test_cache_covering_the_whole_prompt_and_prefix_views(tiny, items):
    family, model, tok, _ = tiny
    cache = build_cache(model, tok, items)
    ids = cache.token_ids
    ref, res = _full_and_cached(model, tok, ids, cache)  # last token recomputed for its logits
    _assert_exact(ref, res)
    assert res.cached_tokens == len(ids) - 1
    # the first two memories' part of the cache is exactly the cache of a prompt that continues differently
    cut = cache.meta.segments[1].end
    part = cache.prefix(cut)
    assert [s.item_id for s in part.meta.sources] == [items[0].id, items[1].id]
    other = render_layout(tok, QUESTION, FACTS[:2]).input_ids
    ref, res = _full_and_cached(model, tok, other, part)
    _assert_exact(ref, res)


def test_prompt_that_does_not_extend_the_cache_is_refused(tiny, items):
    family, model, tok, _ = tiny
    cache = build_cache(model, tok, items)
    wrong = render_layout(tok, QUESTION, FACTS[::-1]).input_ids
    with pytest.raises(ValidationError):
        generate(model, tok, wrong, cache, GREEDY)


def test_streaming_equals_generate_and_honours_stop(tiny, items):
    family, model, tok, _ = tiny
    cache = build_cache(model, tok, items)
    ids = render_layout(tok, QUESTION, FACTS).input_ids
    full = generate(model, tok, ids, cache, SamplingParams(max_new_tokens=16, ignore_eos=True))
    s = stream(model, tok, ids, cache, SamplingParams(max_new_tokens=16, ignore_eos=True))
    pieces = list(s)
    assert "".join(pieces) == full.text == s.result.text and s.result.token_ids == full.token_ids
    assert s.result.ttft_s is not None and s.result.ttft_s <= s.result.total_s
    if len(full.text) > 4:
        stop = full.text[2:4]
        s2 = stream(model, tok, ids, cache, SamplingParams(max_new_tokens=16, ignore_eos=True, stop=[stop]))
        text = "".join(s2)
        assert text == full.text[: full.text.find(stop)] and s2.result.finish_reason == "stop"
    # seeded sampling is reproducible with and without the cache
    p = SamplingParams(max_new_tokens=8, temperature=0.8, top_p=0.9, top_k=50, seed=7, ignore_eos=True)
    assert generate(model, tok, ids, cache, p).token_ids == generate(model, tok, ids, None, p).token_ids


# --------------------------------------------------------------------------------------------------- composition


def test_composition_recompute_is_exact_rerotate_is_measured(tiny, items):
    family, model, tok, _ = tiny
    singles = build_caches(model, tok, [[it] for it in items], progress=False)
    exact = compose(model, singles, mode="recompute", tokenizer=tok)
    direct = build_cache(model, tok, items)
    assert exact.token_ids == direct.token_ids and exact.meta.exact
    assert [s.item_id for s in exact.meta.segments] == [it.id for it in items]
    for (k1, v1), (k2, v2) in zip(exact.layers, direct.layers):
        assert (k1 - k2).abs().max() < 1e-4 and (v1 - v2).abs().max() < 1e-4
    ids = render_layout(tok, QUESTION, FACTS).input_ids
    ref, res = _full_and_cached(model, tok, ids, exact)
    _assert_exact(ref, res)

    approx = compose(model, singles, mode="rerotate", tokenizer=tok)
    assert approx.token_ids == direct.token_ids and not approx.meta.exact and "rerotate" in approx.meta.approximation
    # the first cache's part and every value tensor's first piece are untouched; later keys are rotated
    n0 = len(singles[0])
    assert torch.equal(approx.layers[0][0][:, :, :n0], singles[0].layers[0][0])
    for c in singles:  # inputs unchanged
        assert c.same_tensors(build_caches(model, tok, [[items[singles.index(c)]]], progress=False)[0])

    report = {e.mode: e for e in composition_error(model, tok, singles, render_layout(tok, QUESTION, FACTS).rest, max_new_tokens=N_NEW)}
    assert report["recompute"].exact and report["recompute"].tokens_identical
    assert report["recompute"].max_abs_logit_diff < LOGIT_TOL
    # re-rotation is approximate but far closer to the full recompute than plain concatenation
    assert report["rerotate"].kl_divergence < report["naive"].kl_divergence
    assert report["rerotate"].max_abs_logit_diff < report["naive"].max_abs_logit_diff


def test_rerotation_itself_is_exact(tiny):
    family, model, tok, _ = tiny
    rope = rope_for(model)
    assert rope.self_check_error < 1e-4
    assert rope.rope_type == ("llama3" if family == "llama" else "default")


def test_composition_refuses_mixed_layouts_and_duplicates(tiny, items):
    family, model, tok, _ = tiny
    a = build_cache(model, tok, items[:1])
    with pytest.raises(ValidationError):
        compose(model, [a, a], mode="rerotate", tokenizer=tok)
    from memos_core.activation import MemoryFormat

    b = build_cache(model, tok, items[1:2], memory_format=MemoryFormat(preamble="Other header:"))
    with pytest.raises(ValidationError):
        compose(model, [a, b], mode="recompute", tokenizer=tok)


# --------------------------------------------------------------------------------------------------- safety


def test_fingerprint_mismatch_is_refused(tiny, items, tmp_path):
    family, model, tok, _ = tiny
    cache = build_cache(model, tok, items)
    store = KVCacheStore(tmp_path)
    store.put(cache)
    other_folder = save_tiny_model(tmp_path / "other", family, seed=1)  # same config, other weights
    other = AutoModelForCausalLM.from_pretrained(other_folder)
    fp_other = fingerprint(other, tok)
    assert fp_other.config_sha256 == cache.meta.fingerprint.config_sha256
    assert fp_other.weights_sha256 != cache.meta.fingerprint.weights_sha256
    with pytest.raises(FingerprintMismatch) as err:
        store.load(cache.cache_id, fingerprint=fp_other)
    assert "weights_sha256" in err.value.differences and "weights_sha256" in str(err.value)
    ids = render_layout(tok, QUESTION, FACTS).input_ids
    with pytest.raises(FingerprintMismatch):
        generate(other, tok, ids, cache, GREEDY)
    with pytest.raises(FingerprintMismatch):
        compose(other, [cache], tokenizer=tok)
    # a different dtype is another fingerprint too
    half = AutoModelForCausalLM.from_pretrained(other_folder, dtype=torch.bfloat16)
    assert fingerprint(half, tok).dtype == "bfloat16"


def test_corrupt_and_truncated_files_raise(tiny, items, tmp_path):
    family, model, tok, _ = tiny
    store = KVCacheStore(tmp_path)
    cache = build_cache(model, tok, items)
    cid = cache.cache_id
    tensors = tmp_path / f"{cid}.safetensors"
    meta = tmp_path / f"{cid}.json"

    def fresh():
        store.delete(cid)
        store.put(cache)

    fresh()
    blob = bytearray(tensors.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # flip one byte inside the tensor data
    tensors.write_bytes(bytes(blob))
    with pytest.raises(CorruptData, match="checksum"):
        store.load(cid)

    fresh()
    tensors.write_bytes(tensors.read_bytes()[:-100])  # truncated
    with pytest.raises(CorruptData, match="truncated"):
        store.load(cid)
    with pytest.raises(CorruptData):
        store.load(cid, verify="size")

    fresh()
    raw = bytearray(tensors.read_bytes())
    raw[8:12] = b"\x00\x00\x00\x00"  # break the safetensors header, keep the size
    tensors.write_bytes(bytes(raw))
    record = json.loads(meta.read_text())
    record["file"]["sha256"] = __import__("hashlib").sha256(bytes(raw)).hexdigest()
    meta.write_text(json.dumps(record))
    with pytest.raises(CorruptData):
        store.load(cid)

    fresh()
    meta.write_text("{not json")
    with pytest.raises(CorruptData):
        store.load(cid)
    assert cid in store.problems()

    fresh()
    tensors.unlink()
    with pytest.raises(CorruptData, match="missing"):
        store.load(cid)
    with pytest.raises(NotFound):
        store.load("0" * 32)
    with pytest.raises(ValidationError):
        store.load("../../etc/passwd")


def test_stale_sources_raise(tiny, items, tmp_path):
    family, model, tok, _ = tiny
    table = {it.id: it for it in items}
    store = KVCacheStore(tmp_path, lookup=table.get)
    cache = build_cache(model, tok, items)
    store.put(cache)
    assert store.load(cache.cache_id).same_tensors(cache)

    a, b, c = items
    table[a.id] = a.model_copy(update={"content": "Ann moved to Porto.", "version": 2, "updated_at": a.updated_at + timedelta(seconds=1)})
    with pytest.raises(StaleArtifact) as err:
        store.load(cache.cache_id)
    assert a.id in err.value.reasons and "updated" in err.value.reasons[a.id]
    table[a.id] = a

    table[b.id] = b.model_copy(update={"state": LifecycleState.DELETED})
    with pytest.raises(StaleArtifact, match="deleted"):
        store.load(cache.cache_id)
    table[b.id] = b

    del table[c.id]  # forgotten
    with pytest.raises(StaleArtifact, match="forgotten"):
        store.load(cache.cache_id)
    with pytest.raises(StaleArtifact):
        cache.check_fresh(table.get)
    assert list(store.stale()) == [cache.cache_id]
    assert store.delete_stale() == [cache.cache_id] and len(store) == 0


def test_store_budget_listing_eviction(tiny, items, tmp_path):
    family, model, tok, _ = tiny
    caches = build_caches(model, tok, [[it] for it in items], progress=False)
    one = KVCacheStore(tmp_path / "probe")
    size = one.put(caches[0]).total_bytes
    store = KVCacheStore(tmp_path / "s", budget_bytes=int(size * 2.5))
    store.put(caches[0])
    store.put(caches[1])
    assert store.total_bytes() <= store.budget_bytes and len(store) == 2
    with pytest.raises(BudgetExceeded):
        store.put(caches[2])
    store.load(caches[0].cache_id)  # now caches[1] is the least recently used
    info = store.put(caches[2], make_room=True)
    assert info.cache_id == caches[2].cache_id
    ids = {i.cache_id for i in store.list()}
    assert ids == {caches[0].cache_id, caches[2].cache_id}
    assert store.list(fingerprint(model, tok))[0].cache_id in ids
    assert store.list("0" * 32) == []
    assert store.delete_for_items([items[2].id]) == [caches[2].cache_id]
    assert store.evict(1) == [caches[0].cache_id] and store.total_bytes() == 0
    tiny_store = KVCacheStore(tmp_path / "t", budget_bytes=10)
    with pytest.raises(BudgetExceeded):
        tiny_store.put(caches[0], make_room=True)
    assert tiny_store.total_bytes() == 0 and not list((tmp_path / "t").iterdir())


def test_build_refuses_bad_input(tiny, items):
    family, model, tok, _ = tiny
    with pytest.raises(ValidationError):
        build_cache(model, tok, [])
    with pytest.raises(ValidationError):
        build_cache(model, tok, [items[0].model_copy(update={"state": LifecycleState.DELETED})])
    with pytest.raises(ValidationError):
        build_cache(model, tok, [items[0], items[0]])


def test_non_rope_model_cannot_rerotate(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=128)).eval()
    with pytest.raises(UnsupportedModel):
        rope_for(model)


def test_import_does_not_load_torch():
    code = "import sys, memos_core.activation, memos_core.activation.local_llm; print('torch' in sys.modules or 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------- issue 17


def test_editing_a_token_id_in_the_metadata_is_refused(tiny, items, tmp_path):
    family, model, tok, _ = tiny
    store = KVCacheStore(tmp_path)
    cache = build_cache(model, tok, items)
    store.put(cache)
    meta = tmp_path / f"{cache.cache_id}.json"
    original = meta.read_text()
    record = json.loads(original)
    record["meta"]["token_ids"][5] = (record["meta"]["token_ids"][5] + 1) % len(tok)
    meta.write_text(json.dumps(record))
    with pytest.raises(CorruptData, match="checksum"):
        store.load(cache.cache_id, verify="size")
    # re-computing the metadata checksum is not enough: the id no longer matches the tokens, nor the header
    from memos_core.activation.store import meta_digest

    record["meta_sha256"] = meta_digest(record["meta"])
    meta.write_text(json.dumps(record))
    with pytest.raises(CorruptData):
        store.load(cache.cache_id)
    assert cache.cache_id in store.problems()
    # an edited segment (not part of the id) is caught by the checksum alone
    record = json.loads(original)
    record["meta"]["segments"][0]["end"] += 1
    meta.write_text(json.dumps(record))
    with pytest.raises(CorruptData, match="checksum"):
        store.load(cache.cache_id)
    # caches written before the checksum existed (format 1) are refused, never trusted
    record = json.loads(original)
    record["meta"]["format_version"] = 1
    del record["meta_sha256"]
    meta.write_text(json.dumps(record))
    with pytest.raises(CorruptData, match="older MemOS"):
        store.load(cache.cache_id)
    meta.write_text(original)
    assert store.load(cache.cache_id).same_tensors(cache)


def test_a_batch_of_prompts_is_refused_with_batch_size_1(tiny, items):
    family, model, tok, _ = tiny
    cache = build_cache(model, tok, items)
    ids = render_layout(tok, QUESTION, FACTS).input_ids
    with pytest.raises(ValidationError, match="batch size 1"):
        generate(model, tok, torch.tensor([ids, ids]), cache, GREEDY)
    with pytest.raises(ValidationError, match="batch size 1"):
        generate(model, tok, [ids, ids], cache, GREEDY)
    # a batch of one is one prompt
    one = generate(model, tok, torch.tensor([ids]), cache, GREEDY)
    assert one.token_ids == generate(model, tok, ids, cache, GREEDY).token_ids


def _length_rope_model(tmp_path, kind):
    from memos_core.activation.testing import tiny_config, tiny_tokenizer

    tok = tiny_tokenizer("chatml")
    if kind == "dynamic":
        cfg = tiny_config("llama", len(tok), max_positions=64,
                          rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0})
    else:
        from transformers import Phi3Config

        cfg = Phi3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         original_max_position_embeddings=160, initializer_range=0.2, pad_token_id=tok.pad_token_id,
                         bos_token_id=None, eos_token_id=tok.eos_token_id,
                         rope_scaling={"type": "longrope", "short_factor": [1.0 + 0.1 * i for i in range(8)],
                                       "long_factor": [3.0 + 2.0 * i for i in range(8)]})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    folder = tmp_path / kind
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("kind", ["dynamic", "longrope"])
def test_length_dependent_rope_is_exact_or_recomputed(kind, tmp_path):
    from memos_core.activation import LocalLLM
    from memos_core.activation.rope import length_dependent_rope

    model, tok = _length_rope_model(tmp_path, kind)
    threshold = 64 if kind == "dynamic" else 160
    assert length_dependent_rope(model) == [(kind, threshold)]
    n_items = 1 if kind == "dynamic" else 5
    items = [MemoryItem(content=FACTS[i % 3]) for i in range(n_items)]
    llm = LocalLLM(model, tok, store=tmp_path / "kv", memory_order="given")

    def check(question):
        conv = [{"role": "user", "content": question}]
        layout = llm.layout(conv, items)
        ref = generate(model, tok, layout.input_ids, None, GREEDY, keep_first_logits=True)
        cache, _, origin = llm.cache_for(conv, items)
        res = generate(model, tok, layout.input_ids, cache, GREEDY, keep_first_logits=True)
        _assert_exact(ref, res)
        assert llm.chat(conv, memories=items, max_new_tokens=N_NEW, ignore_eos=True).token_ids == ref.token_ids
        return layout, cache, res, origin

    short = "Where?"
    long_q = "Where does Ann live, what does Bob drink and when is the demo? " * 4
    layout, cache, res, _ = check(short)
    assert len(layout.prefix) < threshold and len(layout.input_ids) <= threshold
    assert res.cached_tokens == len(cache)  # below the threshold the cache is used
    built_short = cache
    layout, cache, res, origin = check(long_q)
    assert len(layout.input_ids) > threshold
    if kind == "dynamic":  # frequencies unique to this length: no cache, the prompt is computed in full
        assert cache is None and "length-dependent RoPE" in origin
        with pytest.raises(UnsupportedModel, match="RoPE"):  # a memory prefix alone beyond the limit: said so
            llm.build([MemoryItem(content=f) for f in FACTS * 2])
    else:  # a long-regime cache was built inside the long prompt and is reused by the next long prompt
        assert cache is not None and cache.meta.rope_regime == "longrope>160" and res.cached_tokens == len(cache)
        _, again, res2, origin2 = check(long_q.replace("Ann", "Carla"))
        assert again.cache_id == cache.cache_id and origin2 in ("memory", "disk") and res2.cached_tokens > 0
    # a cache from the other regime, injected by hand, is not used: the prompt is recomputed, and said so
    ids = layout.input_ids
    if ids[: len(built_short)] == built_short.token_ids:
        mixed = generate(model, tok, ids, built_short, GREEDY, keep_first_logits=True)
        _assert_exact(generate(model, tok, ids, None, GREEDY, keep_first_logits=True), mixed)
        assert mixed.cached_tokens == 0 and any("RoPE" in n for n in mixed.notes)
    with pytest.raises(UnsupportedModel):
        rope_for(model)
    with pytest.raises(UnsupportedModel):
        LocalLLM(model, tok, composition="rerotate")


def test_dynamic_rope_output_does_not_depend_on_earlier_calls(tmp_path):
    # transformers' dynamic RoPE keeps the frequencies of the longest pass so far; our prefill gives every prompt
    # the frequencies a fresh model uses: it equals transformers' generate on a freshly loaded model
    model, tok = _length_rope_model(tmp_path, "dynamic")
    for n in (90, 40, 64, 70):  # longest first: later prompts must not inherit its frequencies
        ids = [(7 * i + 3) % len(tok) for i in range(n)]
        ours = generate(model, tok, ids, None, GREEDY)
        fresh = AutoModelForCausalLM.from_pretrained(tmp_path / "dynamic").eval()
        hf = fresh.generate(torch.tensor([ids]), attention_mask=torch.ones(1, n, dtype=torch.long),
                            max_new_tokens=N_NEW, min_new_tokens=N_NEW, do_sample=False)
        assert hf[0, n:].tolist() == ours.token_ids


def test_gemma3_per_layer_type_rotary_rerotates(tmp_path, items):
    from transformers import Gemma3TextConfig

    from memos_core.activation.testing import tiny_tokenizer

    tok = tiny_tokenizer("chatml")
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=512,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           max_position_embeddings=2048, initializer_range=0.2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    rope = rope_for(model)
    assert rope.self_check_error < 1e-4 and rope.layer_inv_freq is not None
    assert not torch.equal(rope.layer_inv_freq[0], rope.layer_inv_freq[1])  # sliding and full differ
    singles = build_caches(model, tok, [[it] for it in items], progress=False)
    approx = compose(model, singles, mode="rerotate", tokenizer=tok)
    assert not approx.meta.exact and len(approx) == sum(len(c) for c in singles) - 2 * singles[0].meta.shared_len
    report = {e.mode: e for e in composition_error(model, tok, singles, render_layout(tok, QUESTION, FACTS).rest,
                                                   max_new_tokens=4)}
    assert report["recompute"].max_abs_logit_diff < LOGIT_TOL
    assert report["rerotate"].kl_divergence < report["naive"].kl_divergence
