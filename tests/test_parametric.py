"""Parametric memory (LoRA adapters) end to end on tiny models built from a config and reloaded from disk."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import load_tiny_model, save_tiny_model  # noqa: E402

from memos_core.errors import Conflict, CorruptData, NotFound, ValidationError  # noqa: E402
from memos_core.items import LifecycleState, MemoryItem  # noqa: E402
from memos_core.parametric import (  # noqa: E402
    AdapterManager,
    AdapterStore,
    BaseModelMismatch,
    StaleAdapter,
    TrainingConfig,
    model_fingerprint,
    train_adapter,
)

FACTS = [
    "Ann's dog is called Rex.",
    "Bob works as a pilot in Oslo.",
    "The user's favourite colour is teal.",
    "Carla lives in Porto.",
]
OTHER_FACTS = [
    "Dan's cat is called Milo.",
    "Eve works as a baker in Rome.",
    "The user's favourite fruit is mango.",
    "Frank lives in Quito.",
]
pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.usefixtures("one_torch_thread")]

CFG = TrainingConfig(max_steps=40, learning_rate=3e-3, rank=8, alpha=16, progress=False, seed=7)
PROMPT = "Question: What is true about Ann's dog? Answer: Ann's dog is called Rex."


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny llama checkpoint on disk, two trained adapters in a store, and the memories they came from."""
    root = tmp_path_factory.mktemp("parametric")
    model_dir = save_tiny_model(root / "llama", arch="llama", corpus=FACTS + OTHER_FACTS, seed=0)
    items = [MemoryItem(content=f) for f in FACTS]
    others = [MemoryItem(content=f) for f in OTHER_FACTS]
    records = {i.id: i for i in items + others}
    store = AdapterStore(root / "cube" / "parametric")
    model, tok = load_tiny_model(model_dir)
    mgr = AdapterManager(model, tok, store=store, lookup=records.get)
    facts = mgr.train(items, "facts", config=CFG)
    other = mgr.train(others, "other", config=CFG)
    control = mgr.evaluate("facts", others)  # "facts" adapter probed on memories it never saw
    mgr.unload()
    return {
        "root": root,
        "model_dir": model_dir,
        "items": items,
        "others": others,
        "records": records,
        "store": store,
        "facts": facts,
        "other": other,
        "control": control,
    }


def _logits(model, tok, text=PROMPT):
    ids = torch.tensor([tok(text).input_ids])
    with torch.no_grad():
        return model(input_ids=ids).logits


def _fresh(world, **kw):
    model, tok = load_tiny_model(world["model_dir"])
    return AdapterManager(model, tok, store=world["store"], lookup=world["records"].get, **kw)


def test_import_does_not_load_torch():
    code = (
        "import sys, memos_core.parametric as p; "
        "bad=[m for m in ('torch','transformers','peft','safetensors') if m in sys.modules]; "
        "assert not bad, bad"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_training_raises_heldout_likelihood(world):
    rec = world["facts"]
    ev = rec.evaluation
    assert ev is not None and ev.template_set == "memos.heldout/1"
    # trained facts: much more likely on phrasings never used in training ...
    assert ev.gain > 0.6, ev
    assert all(r.logprob_after > r.logprob_before + 0.3 for r in ev.items)
    assert ev.mean_accuracy_after >= 0.6 > ev.mean_accuracy_before
    # ... and clearly more than same-shaped facts the adapter never saw (so it is not just the format)
    assert ev.gain - world["control"].gain > 0.4, (ev.gain, world["control"].gain)
    # generic language barely moves
    assert abs(ev.control_logprob_after - ev.control_logprob_before) < 0.3
    tr = rec.training
    assert tr.steps == 40 and tr.stopped_by == "max_steps" and len(tr.loss_curve) == 40
    assert sum(tr.loss_curve[-5:]) < sum(tr.loss_curve[:5])
    assert tr.examples_by_form == {"completion": 4, "framed": 16, "qa": 8, "statement": 4}
    assert set(tr.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_record_on_disk(world):
    store, rec = world["store"], world["facts"]
    folder = store.path("facts")
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "memos_adapter.json",
    ]
    data = json.loads((folder / "memos_adapter.json").read_text())
    assert data["format"] == "memos.parametric.adapter/1"
    assert [s["item_id"] for s in data["sources"]] == [i.id for i in world["items"]]
    assert all(s["version"] == 1 for s in data["sources"])
    assert data["hyperparameters"]["rank"] == 8 and data["hyperparameters"]["seed"] == 7
    assert data["base_model"]["model_type"] == "llama"
    assert set(data["versions"]) == {"peft", "torch", "transformers"}
    assert store.names() == ["facts", "other"]
    assert store.record("facts") == rec
    # peft itself can read the folder (standard layout)
    from peft import PeftModel

    model, tok = load_tiny_model(world["model_dir"])
    peft_model = PeftModel.from_pretrained(model, str(folder))
    mgr = _fresh(world)
    mgr.load("facts")
    assert torch.equal(_logits(peft_model, tok), _logits(mgr.model, tok))


def test_unload_restores_base_exactly(world):
    mgr = _fresh(world)
    base_model = mgr.model
    tok = mgr.tokenizer
    base = _logits(base_model, tok)
    grads = {n: p.requires_grad for n, p in base_model.named_parameters()}
    mgr.load("facts")
    assert mgr.active_adapters == ["facts"] and type(mgr.model).__name__.startswith("PeftModel")
    assert not torch.equal(_logits(mgr.model, tok), base)
    mgr.deactivate()
    assert mgr.active_adapters == [] and torch.equal(_logits(mgr.model, tok), base)
    mgr.switch("facts")
    with mgr.disabled() as m:
        assert torch.equal(_logits(m, tok), base)
    assert mgr.active_adapters == ["facts"]
    mgr.unload()
    assert mgr.model is base_model and mgr.loaded_adapters == [] and mgr.state_key == ""
    assert not any("lora" in n for n, _ in base_model.named_modules())
    assert torch.equal(_logits(base_model, tok), base)
    assert {n: p.requires_grad for n, p in base_model.named_parameters()} == grads


def test_switching_adapters_changes_outputs(world):
    mgr = _fresh(world)
    tok = mgr.tokenizer
    mgr.load("facts")
    mgr.load("other", activate=False)
    assert mgr.active_adapters == ["facts"] and mgr.loaded_adapters == ["facts", "other"]
    key_facts, a = mgr.state_key, _logits(mgr.model, tok)
    rev = mgr.revision
    mgr.switch("other")
    b = _logits(mgr.model, tok)
    assert mgr.state_key != key_facts and mgr.revision > rev
    assert (a - b).abs().max() > 1e-2
    mgr.switch("facts")
    assert torch.equal(_logits(mgr.model, tok), a) and mgr.state_key == key_facts
    # the adapter makes its own fact more likely than the other adapter does
    ids = torch.tensor([tok(PROMPT).input_ids])
    rex = ids[0, -2]  # token of "Rex"

    def lp(logits):
        return torch.log_softmax(logits[0, -3], -1)[rex]

    assert lp(a) > lp(b)
    # unloading the active adapter leaves none active (never silently another one)
    mgr.unload("facts")
    assert mgr.active_adapters == [] and mgr.loaded_adapters == ["other"]


def test_save_load_round_trip_is_identical(world, tmp_path):
    mgr = _fresh(world)
    tok = mgr.tokenizer
    rec = mgr.train(world["items"], "again", config=CFG, store=tmp_path / "s")
    trained = _logits(mgr.model, tok)
    # same seed, same data -> the same weights, bit for bit
    assert rec.adapter_sha256 == world["facts"].adapter_sha256
    assert rec.training.loss_curve == world["facts"].training.loss_curve
    other = _fresh(world)
    other.load("again", store=tmp_path / "s")
    assert torch.equal(_logits(other.model, tok), trained)


def test_base_model_mismatch_is_refused(world, tmp_path):
    # same architecture, other weights
    model, tok = load_tiny_model(save_tiny_model(tmp_path / "seed1", corpus=FACTS + OTHER_FACTS, seed=1))
    mgr = AdapterManager(model, tok, store=world["store"])
    with pytest.raises(BaseModelMismatch) as err:
        mgr.load("facts")
    assert any("weights" in d for d in err.value.differences)
    assert mgr.loaded_adapters == [] and mgr.model is model
    # another architecture
    model, tok = load_tiny_model(save_tiny_model(tmp_path / "qwen", arch="qwen2", corpus=FACTS + OTHER_FACTS))
    with pytest.raises(BaseModelMismatch, match="architecture"):
        AdapterManager(model, tok, store=world["store"]).load("facts")
    # same model, another tokenizer
    model, _ = load_tiny_model(world["model_dir"])
    _, tok2 = load_tiny_model(save_tiny_model(tmp_path / "tok", corpus=["something else entirely"] * 3))
    with pytest.raises(BaseModelMismatch, match="tokenizer"):
        AdapterManager(model, tok2, store=world["store"]).load("facts")
    # the same checkpoint in bfloat16 is the same base model
    model, tok = load_tiny_model(world["model_dir"])
    mgr = AdapterManager(model.to(torch.bfloat16), tok, store=world["store"])
    mgr.load("facts")
    assert mgr.active_adapters == ["facts"]
    out = _logits(mgr.model, tok)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    with mgr.disabled() as m:
        assert not torch.equal(_logits(m, tok), out)


def test_fingerprint_is_stable_across_reload_and_dtype(world):
    m1, t1 = load_tiny_model(world["model_dir"])
    m2, t2 = load_tiny_model(world["model_dir"])
    f1, f2 = model_fingerprint(m1, t1), model_fingerprint(m2.to(torch.bfloat16), t2)
    assert f1.config_sha256 == f2.config_sha256 and f1.tokenizer_sha256 == f2.tokenizer_sha256
    assert f1.dtype == "float32" and f2.dtype == "bfloat16"
    assert f1 == world["facts"].base_model


def test_stale_adapters_are_refused_and_retrained(world, tmp_path):
    store = AdapterStore(tmp_path / "p")
    shutil.copytree(world["store"].path("facts"), store.path("facts"))
    records = dict(world["records"])
    mgr = _fresh(world)
    mgr.lookup = records.get
    mgr.store = store
    assert store.stale("facts", records.get) == {}
    first, second = world["items"][0], world["items"][1]
    records[first.id] = first.model_copy(update={"content": "Ann's dog is called Bruno.", "version": 2})
    del records[second.id]  # forgotten
    reasons = store.stale("facts", records.get)
    assert set(reasons) == {first.id, second.id}
    assert "updated" in reasons[first.id] and "forgotten" in reasons[second.id]
    with pytest.raises(StaleAdapter) as err:
        mgr.load("facts")
    assert set(err.value.reasons) == {first.id, second.id} and isinstance(err.value, Conflict)
    assert mgr.loaded_adapters == []
    mgr.load("facts", allow_stale=True)
    assert mgr.active_adapters == ["facts"]
    old_sha = mgr.record("facts").adapter_sha256
    rec = mgr.retrain("facts")
    assert store.stale("facts", records.get) == {}
    assert [(s.item_id, s.version) for s in rec.sources] == [(first.id, 2)] + [
        (i.id, 1) for i in world["items"][2:]
    ]
    assert rec.adapter_sha256 != old_sha and mgr.active_adapters == ["facts"]
    assert mgr.record("facts").adapter_sha256 == rec.adapter_sha256
    assert rec.evaluation.gain > 0.3
    # a deleted (tombstoned) memory is stale too
    third = world["items"][2]
    records[third.id] = third.model_copy(update={"state": LifecycleState.DELETED})
    assert "deleted" in store.stale("facts", records.get)[third.id]
    # erasing derived weights of forgotten memories (right to be forgotten)
    shutil.copytree(world["store"].path("other"), store.path("other"))
    assert store.forget_items({third.id, "unrelated"}) == ["facts"]
    assert store.forget_items([world["others"][0].id], delete=True) == ["other"]
    assert store.names() == ["facts"]
    assert set(store.status(records.get)) == {"facts"}
    # nothing left to train on
    for s in rec.sources:
        records.pop(s.item_id, None)
    with pytest.raises(Conflict, match="delete the adapter"):
        mgr.retrain("facts")


def test_combine(world):
    mgr = _fresh(world)
    tok = mgr.tokenizer
    mgr.load("facts")
    mgr.load("other")
    mgr.activate(["facts", "other"])
    both = _logits(mgr.model, tok)
    rec = mgr.combine(["facts", "other"], [1.0, 1.0], "both", method="cat")
    assert mgr.active_adapters == ["both"] and rec.lora["r"] == 16 and rec.adapter_sha256 is None
    key = mgr.state_key
    mgr.deactivate()
    mgr.switch("both")
    assert mgr.state_key == key != ""
    assert torch.allclose(_logits(mgr.model, tok), both, atol=1e-5)
    assert {s.item_id for s in rec.sources} == {i.id for i in world["items"] + world["others"]}
    assert rec.combination.method == "cat" and rec.combination.adapter_sha256 == [
        world["facts"].adapter_sha256,
        world["other"].adapter_sha256,
    ]
    both_facts = mgr.evaluate("both", world["items"])
    both_other = mgr.evaluate("both", world["others"])
    assert both_facts.gain > 0.3 and both_other.gain > 0.3  # both sets are recalled by the sum
    # weight 0 removes an adapter's contribution exactly
    mgr.combine(["facts", "other"], [1.0, 0.0], "only-facts", method="cat")
    assert abs(mgr.evaluate("only-facts", world["items"]).gain - world["facts"].evaluation.gain) < 1e-4
    with pytest.raises(ValidationError, match="torch.nn.Module attribute"):
        mgr.combine(["facts", "other"], [0.5, 0.5], "half")
    # 'linear' multiplies summed A and B matrices: cross terms hurt recall of independently trained adapters
    mgr.combine(["facts", "other"], [1.0, 1.0], "lin", method="linear")
    assert mgr.evaluate("lin", world["items"]).gain < both_facts.gain
    mgr.combine(["facts", "other"], [1.0, 1.0], "svd8", method="svd", svd_rank=8)
    assert mgr.record("svd8").lora["r"] == 8
    with pytest.raises(Conflict):
        mgr.combine(["facts"], [1.0], "both")
    with pytest.raises(ValidationError):
        mgr.combine(["facts", "other"], [1.0], "x1")
    with pytest.raises(NotFound):
        mgr.combine(["facts", "nope"], [1.0, 1.0], "x2")
    saved = mgr.save("both")
    fresh = _fresh(world)
    fresh.load("both")
    mgr.switch("both")
    assert torch.equal(_logits(fresh.model, tok), _logits(mgr.model, tok))
    assert saved.adapter_sha256 and world["store"].record("both").combination.method == "cat"
    world["store"].delete("both")


def test_corrupt_unknown_and_bad_names(world, tmp_path):
    store = AdapterStore(tmp_path / "p")
    shutil.copytree(world["store"].path("facts"), store.path("facts"))
    mgr = _fresh(world)
    with pytest.raises(NotFound):
        mgr.load("missing", store=store)
    with pytest.raises(ValidationError):
        mgr.load("../facts", store=store)
    with pytest.raises(ValidationError):
        mgr.load("a", store=store)  # part of peft's "lora_" prefix
    weights = store.path("facts") / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptData):
        mgr.load("facts", store=store)
    assert mgr.loaded_adapters == []
    (store.path("facts") / "memos_adapter.json").write_text("{not json")
    with pytest.raises(CorruptData):
        store.record("facts")
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(load_tiny_model(world["model_dir"])[0], LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValidationError, match="bare base model"):
        AdapterManager(wrapped, mgr.tokenizer)


def test_failed_training_leaves_nothing(world, tmp_path, monkeypatch):
    mgr = _fresh(world)
    base = _logits(mgr.model, mgr.tokenizer)
    bad = CFG.model_copy(update={"target_modules": ["no_such_module"]})
    with pytest.raises(ValidationError, match="no_such_module"):
        mgr.train(world["items"], "bad", config=bad, store=tmp_path / "s")

    import memos_core.parametric.manager as manager_module

    def broken_loop(model, *args, **kwargs):  # fails after touching the weights, like an OOM mid-training
        next(p for n, p in model.named_parameters() if "lora_B" in n).data += 1.0
        raise RuntimeError("out of memory")

    monkeypatch.setattr(manager_module, "train_loop", broken_loop)
    with pytest.raises(RuntimeError, match="out of memory"):
        mgr.train(world["items"], "boom", config=CFG, store=tmp_path / "s")
    monkeypatch.undo()
    assert mgr.loaded_adapters == [] and AdapterStore(tmp_path / "s").names() == []
    assert torch.equal(_logits(mgr.model, mgr.tokenizer), base)
    with pytest.raises(ValidationError):
        mgr.train([], "empty", config=CFG, store=tmp_path / "s")
    gone = world["items"][0].model_copy(update={"state": LifecycleState.DELETED})
    with pytest.raises(ValidationError, match="deleted"):
        mgr.train([gone], "gone", config=CFG, store=tmp_path / "s")
    with pytest.raises(ValidationError, match="already exists"):
        mgr.train(world["items"], "facts", config=CFG)


def test_time_budget_generator_and_train_adapter(world, tmp_path):
    model, tok = load_tiny_model(world["model_dir"])
    base = _logits(model, tok)
    prompts = []

    def fake_llm(prompt: str) -> str:
        prompts.append(prompt)
        fact = prompt.split('Fact: "', 1)[1].split('"', 1)[0]
        return f"1. {fact}\n- In other words: {fact}\nQ: What should I remember? A: {fact}\n\nQ: broken line"

    cfg = CFG.model_copy(update={"max_steps": 10_000, "max_seconds": 0.5, "evaluate": False})
    rec = train_adapter(model, tok, world["items"][:2], "budget", tmp_path / "s", config=cfg, generator=fake_llm)
    assert rec.training.stopped_by == "max_seconds" and 0 < rec.training.steps < 10_000
    assert rec.training.generator_used and rec.training.generated_examples == 4
    assert rec.training.examples_by_form["generated"] == 4 and len(prompts) == 2
    assert rec.evaluation is None
    # train_adapter leaves the model exactly as it was
    assert not any("lora" in n for n, _ in model.named_modules())
    assert torch.equal(_logits(model, tok), base)
    assert AdapterStore(tmp_path / "s").names() == ["budget"]


def test_rng_is_not_disturbed(world, tmp_path):
    mgr = _fresh(world)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    mgr.train(world["items"][:1], "one", config=CFG.model_copy(update={"max_steps": 3}), store=tmp_path / "s")
    assert torch.equal(torch.rand(3), expected)


def test_adapters_saved_with_the_sampled_fingerprint_still_load(world, tmp_path):
    """Records written before fingerprints hashed every weight (scheme 1: 64 sampled weights) are checked with
    that algorithm: the same base loads them, another checkpoint is still refused."""
    from memos_core.parametric.fingerprint import _legacy_clean, _legacy_probe, _legacy_tokenizer_hash

    model, tok = load_tiny_model(world["model_dir"])
    params = sorted(model.named_parameters())
    legacy = {
        "model_type": model.config.model_type,
        "architecture": type(model).__name__,
        "config_sha256": hashlib.sha256(json.dumps(_legacy_clean(model.config.to_dict()), sort_keys=True, default=str,
                                                   separators=(",", ":")).encode()).hexdigest(),
        "tokenizer_sha256": _legacy_tokenizer_hash(tok),
        "num_parameters": sum(p.numel() for _, p in params),
        "weights_probe": _legacy_probe(params),
        "dtype": "float32",
        "transformers_version": "4.57.0",
    }
    store = AdapterStore(tmp_path / "p")
    shutil.copytree(world["store"].path("facts"), store.path("facts"))
    path = store.path("facts") / "memos_adapter.json"
    record = json.loads(path.read_text())
    record["base_model"] = legacy
    path.write_text(json.dumps(record))
    assert store.record("facts").base_model.scheme == 1
    AdapterManager(model, tok, store=store).load("facts")
    other, tok2 = load_tiny_model(save_tiny_model(tmp_path / "seed1", corpus=FACTS + OTHER_FACTS, seed=1))
    with pytest.raises(BaseModelMismatch, match="weights"):
        AdapterManager(other, tok2, store=store).load("facts")
