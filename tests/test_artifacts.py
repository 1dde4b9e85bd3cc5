"""One artefact layer for KV caches and LoRA adapters (issue 17, items 2 and 5).

* fingerprints hash every weight: another fine-tune of the same architecture (A + 0.05·randn on the q/v
  projections), or one changed value anywhere, is another model, for KV caches and for adapters alike; the
  same checkpoint in float32 / bfloat16 / float16 is the same base for an adapter;
* the digest is cached by checkpoint identity on disk for models MemOS loaded, and recomputed after an edit;
* one error family, one store protocol (the same verbs on both stores), one ``from_cube`` for both wrappers.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from memos_core.artifacts import (  # noqa: E402
    ArtifactStore,
    BaseModelMismatch,
    FingerprintMismatch,
    Fingerprinter,
    StaleAdapter,
    StaleArtifact,
    compatibility_differences,
    fingerprint,
    mark_loaded_from,
    source_ref,
)
from memos_core.errors import Conflict  # noqa: E402
from memos_core.items import MemoryItem  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from memos_core.activation.testing import save_tiny_model

    folder = save_tiny_model(tmp_path_factory.mktemp("base"), "llama", seed=0)
    return folder


def _load(folder, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval(), AutoTokenizer.from_pretrained(folder)


def _fine_tune(model, scale=0.05):
    """B = A + scale·randn on every q_proj / v_proj (a different fine-tune of the same architecture)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "v_proj" in name:
                p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def test_a_fine_tune_of_the_same_architecture_is_another_model(base):
    a, tok = _load(base)
    b, _ = _load(base)
    fa = fingerprint(a, tok, casts=True)
    assert fingerprint(b, tok, casts=True) == fa  # same checkpoint, same fingerprint
    _fine_tune(b)
    fb = fingerprint(b, tok, casts=True)
    assert fb.weights_sha256 != fa.weights_sha256 and fb.key != fa.key
    assert "weights_sha256" in compatibility_differences(fa, fb)
    # one value changed anywhere (here: the middle of the largest matrix, away from any sampled point)
    c, _ = _load(base)
    big = max(c.parameters(), key=lambda p: p.numel())
    with torch.no_grad():
        big.view(-1)[big.numel() // 2 + 12345] += 1e-3
    assert fingerprint(c, tok).weights_sha256 != fa.weights_sha256


def test_the_same_checkpoint_in_other_dtypes_is_the_same_base(base):
    a, tok = _load(base)
    fa = fingerprint(a, tok, casts=True)
    for dtype in (torch.bfloat16, torch.float16):
        low, _ = _load(base, dtype)
        f = fingerprint(low, tok, casts=True)
        assert f.dtype == str(dtype).replace("torch.", "") and f.weights_sha256 != fa.weights_sha256
        assert compatibility_differences(fa, f) == {} and compatibility_differences(f, fa) == {}
        # but not for a KV cache, whose tensors depend on the dtype
        assert f.key != fa.key
    b16, _ = _load(base, torch.bfloat16)
    f16, _ = _load(base, torch.float16)
    diffs = compatibility_differences(fingerprint(b16, tok, casts=True), fingerprint(f16, tok, casts=True))
    assert "not comparable" in str(diffs["weights_sha256"])  # bf16 <-> fp16 cannot be checked exactly: say so
    fine, _ = _load(base, torch.bfloat16)
    assert "weights_sha256" in compatibility_differences(fa, fingerprint(_fine_tune(fine), tok, casts=True))


def test_an_adapter_refuses_another_fine_tune(base, tmp_path):
    pytest.importorskip("peft")
    from memos_core.parametric import AdapterManager, TrainingConfig

    a, tok = _load(base)
    items = [MemoryItem(content="Ann lives in Lisbon."), MemoryItem(content="Bob drinks green tea.")]
    cfg = TrainingConfig(max_steps=2, rank=4, alpha=8, evaluate=False, progress=False)
    AdapterManager(a, tok, store=tmp_path / "p").train(items, "facts", config=cfg, activate=False)
    b, _ = _load(base)
    mgr = AdapterManager(_fine_tune(b), tok, store=tmp_path / "p")
    with pytest.raises(BaseModelMismatch) as err:
        mgr.load("facts")
    assert "weights_sha256" in err.value.differences and isinstance(err.value, FingerprintMismatch)
    assert mgr.loaded_adapters == []
    same, _ = _load(base, torch.bfloat16)
    AdapterManager(same, tok, store=tmp_path / "p").load("facts")  # the same base in bf16 loads


def test_kv_caches_refuse_another_fine_tune(base):
    from memos_core.activation import build_cache, generate, render_layout

    a, tok = _load(base)
    items = [MemoryItem(content="Ann lives in Lisbon.")]
    cache = build_cache(a, tok, items)
    b, _ = _load(base)
    _fine_tune(b, scale=1e-4)
    ids = render_layout(tok, [{"role": "user", "content": "Where?"}], [it.content for it in items]).input_ids
    with pytest.raises(FingerprintMismatch) as err:
        generate(b, tok, ids, cache)
    assert "weights_sha256" in err.value.differences


def test_digest_is_cached_by_checkpoint_identity_and_recomputed_after_edits(base, tmp_path, monkeypatch):
    import memos_core.artifacts as artifacts

    monkeypatch.setenv("MEMOS_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = artifacts.weights_digest
    monkeypatch.setattr(artifacts, "weights_digest", lambda *a, **k: calls.append(1) or real(*a, **k))
    a, tok = _load(base)
    mark_loaded_from(a, base)
    fp = Fingerprinter(a, tok)
    first = fp()
    assert len(calls) == 1 and list((tmp_path / "cache" / "fingerprints").glob("*.json"))
    assert fp() == first and len(calls) == 1  # once per loaded model
    b, _ = _load(base)  # another load of the same files (as in a new process): digest read from disk
    mark_loaded_from(b, base)
    assert Fingerprinter(b, tok)() == first and len(calls) == 1
    with torch.no_grad():  # a tracked in-place edit after loading: recomputed, and different
        next(b.parameters()).add_(1.0)
    assert Fingerprinter(b, tok)().weights_sha256 != first.weights_sha256 and len(calls) == 2
    c, _ = _load(base)  # a model loaded without mark_loaded_from is always hashed
    assert Fingerprinter(c, tok)() == first and len(calls) == 3
    # an edit through .data bypasses the version counters: refresh() recomputes (and skips the disk cache)
    d, _ = _load(base)
    mark_loaded_from(d, base)
    fd = Fingerprinter(d, tok)
    assert fd() == first
    next(d.parameters()).data.add_(1.0)
    fd.refresh()
    assert fd().weights_sha256 != first.weights_sha256


def test_one_error_family():
    assert issubclass(StaleAdapter, StaleArtifact) and issubclass(StaleArtifact, Conflict)
    assert issubclass(BaseModelMismatch, FingerprintMismatch) and issubclass(FingerprintMismatch, Conflict)
    from memos_core.activation import FingerprintMismatch as KVMismatch
    from memos_core.activation import StaleArtifact as KVStale
    from memos_core.parametric import BaseModelMismatch as PBase
    from memos_core.parametric import StaleAdapter as PStale

    assert KVStale is StaleArtifact and KVMismatch is FingerprintMismatch
    assert PStale is StaleAdapter and PBase is BaseModelMismatch
    from memos_core.activation.fingerprint import ModelFingerprint as A
    from memos_core.parametric.fingerprint import ModelFingerprint as B

    assert A is B


def test_both_stores_implement_one_protocol(base, tmp_path):
    from memos_core.activation import KVCacheStore, build_cache
    from memos_core.parametric import AdapterStore
    from memos_core.parametric.schema import AdapterRecord

    a, tok = _load(base)
    items = [MemoryItem(content="Ann lives in Lisbon."), MemoryItem(content="Bob drinks green tea.")]
    table = {it.id: it for it in items}
    kv = KVCacheStore(tmp_path / "kv", lookup=table.get)
    ad = AdapterStore(tmp_path / "ad", lookup=table.get)
    c0, c1 = build_cache(a, tok, items[:1]), build_cache(a, tok, items[1:])
    kv.put(c0)
    kv.put(c1)
    fp = fingerprint(a, tok, casts=True)
    for i, it in enumerate(items):
        rec = AdapterRecord(name=f"a{i}", base_model=fp, sources=[source_ref(it)], lora={"r": 1})
        ad.save(rec, {"w": torch.zeros(2)}, {"peft_type": "LORA"})
    ids = {"kv": [c0.cache_id, c1.cache_id], "ad": ["a0", "a1"]}
    for name, store in (("kv", kv), ("ad", ad)):
        assert isinstance(store, ArtifactStore)
        assert sorted(store.artifact_ids()) == sorted(ids[name])
        assert [s.item_id for s in store.artifact_sources(ids[name][0])] == [items[0].id]
        assert store.built_from([items[1].id]) == [ids[name][1]]
        assert store.stale_artifacts() == {}
        table[items[0].id] = items[0].model_copy(update={"content": "Ann lives in Porto.", "version": 2})
        assert list(store.stale_artifacts()) == [ids[name][0]]
        assert store.drop_stale() == [ids[name][0]]
        table[items[0].id] = items[0]
        assert store.forget([items[1].id]) == [ids[name][1]]
        assert store.artifact_ids() == [] and store.remove(ids[name][0]) is False


def test_the_wrappers_share_one_from_cube():
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from memos_core.activation.local_llm import LocalLLMWrapper
    from memos_langchain.local_chat_model import MemOSLocalChatModel
    from memos_llamaindex.local_llm import MemOSLocalLLM

    assert MemOSLocalChatModel.from_cube.__func__ is LocalLLMWrapper.from_cube.__func__
    assert MemOSLocalLLM.from_cube.__func__ is LocalLLMWrapper.from_cube.__func__
