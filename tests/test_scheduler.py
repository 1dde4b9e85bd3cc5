"""MemScheduler: usage tracking, promotion within a budget with LFU-aging eviction, refresh of stale caches,
LoRA queueing, demotion, persistent jobs across restarts, the background worker, a real KV target and a real
LoRA training target (tiny llama, a few training steps)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from conftest import hashed_embed
from memos_core import LifecycleState, MemCube
from memos_core.errors import NotFound, ValidationError
from memos_core.scheduler import (
    DemoteCold,
    KVActivationTarget,
    LoRATrainingTarget,
    MemScheduler,
    PromoteHotToActivation,
    QueueStableForLoRA,
    RefreshStale,
    RetrainableTarget,
)


def _emb(texts):
    out = []
    for t in texts:
        v = np.full(32, 1e-3, dtype=np.float32)
        for w in t.lower().split():
            v[int(hashlib.md5(w.encode()).hexdigest(), 16) % 32] += 1.0
        out.append(v)
    return out


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw) -> None:
        self.now += timedelta(**kw)


class FakeKV:
    """An activation target whose cache size is 100 bytes per word (deterministic, no model)."""

    def __init__(self) -> None:
        self.built: dict[str, list[str]] = {}
        self.deleted: list[str] = []
        self.fail_next = False

    def estimate(self, item):
        words = len(item.content.split())
        return words * 100, words

    def build(self, items):
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model crashed")
        aid = hashlib.sha256("".join(i.id + str(i.version) for i in items).encode()).hexdigest()[:32]
        self.built[aid] = [i.id for i in items]
        words = sum(len(i.content.split()) for i in items)
        return aid, words * 100, words

    def delete(self, artifact_id):
        self.deleted.append(artifact_id)
        self.built.pop(artifact_id, None)


@pytest.fixture()
def setup(tmp_path: Path):
    clock = Clock()
    cube = MemCube(tmp_path / "c", embedder=_emb, clock=clock)
    items = cube.add_many([f"memory {i} " + "word " * 4 for i in range(10)])  # 6 words each -> 600 bytes
    yield cube, items, clock
    cube.close()


def test_hot_memories_are_promoted_within_budget_and_lfu_evicts(setup) -> None:
    cube, items, clock = setup
    kv = FakeKV()
    s = MemScheduler(cube, activation=kv, budget_bytes=1300, clock=clock, auto_observe=False)
    for _ in range(5):
        s.observe([items[0]])
    for _ in range(3):
        s.observe([items[1]])
    s.observe([items[2]])  # one hit only: below min_hits
    s.step()
    assert set(s.cached()) == {items[0].id, items[1].id}
    assert s.stats()["cache_bytes"] <= 1300
    # a new, hotter memory displaces the coldest cached one (not the hottest)
    for _ in range(4):
        s.observe([items[3]])
    s.step()
    assert set(s.cached()) == {items[0].id, items[3].id}
    actions = [(d["action"], d["item_ids"]) for d in s.decisions()]
    assert ("evict", [items[1].id]) in actions
    assert any("LFU-aging" in d["reason"] for d in s.decisions())
    # a colder candidate never evicts a hotter cache
    for _ in range(2):
        s.observe([items[4]])
    s.step()
    assert items[4].id not in s.cached()
    s.close()


def test_aging_lets_old_heat_fade(setup) -> None:
    cube, items, clock = setup
    s = MemScheduler(cube, activation=FakeKV(), budget_bytes=700, clock=clock, half_life=timedelta(days=1),
                     auto_observe=False)
    for _ in range(8):
        s.observe([items[0]])
    s.step()
    assert set(s.cached()) == {items[0].id}
    clock.advance(days=10)  # 8 hits ten half-lives ago are worth ~0.008 now
    for _ in range(3):
        s.observe([items[1]])
    s.step()
    assert set(s.cached()) == {items[1].id}
    s.close()


def test_search_hits_are_observed_and_injection_counts_savings(setup) -> None:
    cube, items, clock = setup
    s = MemScheduler(cube, activation=FakeKV(), clock=clock)
    for _ in range(3):
        cube.search("memory 7", k=1, mode="lexical")
    assert s.hottest(limit=1)[0][0] == cube.search("memory 7", k=1, mode="lexical")[0].item.id
    s.step()
    hot = s.hottest(limit=1)[0][0]
    assert hot in s.cached()
    s.observe([hot, items[0].id], injected=True)
    st = s.stats()
    assert st["inject_uses"] == 2 and st["cache_hit_rate"] == 0.5
    assert st["prefill_tokens_saved"] == 6 and st["prefill_tokens_total"] == 12
    s.close()


def test_changed_memory_refreshes_and_deleted_drops(setup) -> None:
    cube, items, clock = setup
    kv = FakeKV()
    s = MemScheduler(cube, activation=kv, clock=clock, auto_observe=False)
    s.observe([items[0], items[0], items[1], items[1]])
    s.step()
    old = s.cached()[items[0].id]["artifact_id"]
    cube.update(items[0].id, "memory zero was rewritten")
    cube.delete(items[1].id)
    s.step()
    assert s.cached()[items[0].id]["version"] == 2
    assert old in kv.deleted and items[1].id not in s.cached()
    reasons = {d["action"]: d["reason"] for d in s.decisions()}
    assert "v1 -> v2" in reasons["refresh"] and "deleted" in reasons["drop"]
    s.close()


def test_jobs_persist_and_failures_retry(setup, tmp_path: Path) -> None:
    cube, items, clock = setup
    s = MemScheduler(cube, activation=None, clock=clock, auto_observe=False,
                     policies=[PromoteHotToActivation(min_hits=1, min_score=0.5)])
    s.observe([items[0]])
    s.step()
    assert s.jobs() == []  # without an activation target the promotion policy plans nothing
    s.close()
    kv = FakeKV()
    kv.fail_next = True
    s = MemScheduler(cube, activation=kv, clock=clock, auto_observe=False, policies=[PromoteHotToActivation(min_hits=1, min_score=0.5)])
    s.plan()
    assert len(s.jobs("pending")) == 1
    s.run_jobs()
    job = s.jobs()[0]
    assert job.state == "pending" and job.attempts == 1 and "model crashed" in (job.error or "")
    # simulate a worker that died while running the job: it is taken again after restart
    s._state.set_job_state(None, "running")
    s.close()
    s = MemScheduler(cube, activation=kv, clock=clock, auto_observe=False, policies=[])
    assert [j.state for j in s.jobs()] == ["pending"]
    s.run_jobs()
    assert s.jobs()[0].state == "done" and items[0].id in s.cached()
    s.close()


def test_lora_queue_and_demotion(setup) -> None:
    cube, items, clock = setup
    trained: list[list[str]] = []

    class Trainer:
        def train(self, batch):
            trained.append([i.id for i in batch])
            return "adapter-1"

    s = MemScheduler(cube, parametric=Trainer(), clock=clock, auto_observe=False,
                     policies=[QueueStableForLoRA(min_hits=3, stable_for=timedelta(days=2), batch=2),
                               DemoteCold(cold_after=timedelta(days=30))])
    for _ in range(3):
        s.observe(items[:3])
    s.step()
    assert trained == []  # not stable for long enough yet
    clock.advance(days=3)
    s.step()
    assert len(trained) == 1 and len(trained[0]) == 2
    s.step()
    assert len(trained) == 1  # the same versions are never queued twice
    clock.advance(days=40)
    s.observe([items[0]])
    s.step()
    states = {i.id: cube.get(i.id).state for i in items}
    assert states[items[0].id] == LifecycleState.ACTIVATED
    assert states[items[9].id] == LifecycleState.ARCHIVED
    assert any(d["action"] == "demote" for d in s.decisions(1000))
    s.close()


def test_background_worker_runs_and_stops(setup) -> None:
    cube, items, clock = setup
    kv = FakeKV()
    s = MemScheduler(cube, activation=kv, clock=clock, auto_observe=False, policies=[PromoteHotToActivation(min_hits=1, min_score=0.5)])
    s.observe([items[5]])
    s.start(interval=0.05)
    import time

    deadline = time.time() + 10
    while items[5].id not in s.cached() and time.time() < deadline:
        time.sleep(0.05)
    s.stop()
    assert items[5].id in s.cached()
    assert s._thread is None
    s.close()


def test_real_kv_target_builds_loadable_caches(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tiny_models import load_tiny_model, save_tiny_model

    from memos_core.activation import KVCacheStore

    model, tok = load_tiny_model(save_tiny_model(tmp_path / "tiny", arch="qwen2"))
    cube = MemCube(tmp_path / "c", embedder=_emb)
    try:
        item = cube.add("Ann lives in Lisbon and works as a nurse.")
        store = KVCacheStore(cube.path / "activation", lookup=cube.lookup)
        target = KVActivationTarget(model, tok, store)
        s = MemScheduler(cube, activation=target, auto_observe=False, policies=[RefreshStale(),
                                                                               PromoteHotToActivation(min_hits=1, min_score=0.5)])
        s.observe([item])
        s.step()
        row = s.cached()[item.id]
        assert row["artifact_id"] in store and row["bytes"] == store.info(row["artifact_id"]).total_bytes
        est_bytes, est_tokens = target.estimate(item)
        assert abs(est_bytes - row["bytes"]) / row["bytes"] < 0.6  # the estimate is the right order of size
        cube.update(item.id, "Ann lives in Porto now.")
        s.step()
        assert row["artifact_id"] not in store and s.cached()[item.id]["version"] == 2
        s.close()
    finally:
        cube.close()


def test_without_a_parametric_target_lora_jobs_stay_pending(setup) -> None:
    cube, items, clock = setup
    s = MemScheduler(cube, clock=clock, auto_observe=False,
                     policies=[QueueStableForLoRA(min_hits=1, stable_for=timedelta(0), batch=2)])
    s.observe(items[:2])
    s.step()
    s.step()
    jobs = s.jobs()
    assert [(j.kind, j.state, j.attempts) for j in jobs] == [("queue_lora", "pending", 0)]
    assert set(jobs[0].payload["item_ids"]) == {items[0].id, items[1].id}
    assert {v["state"] for v in s.lora().values()} == {"queued"} and s.stats()["lora"] == {"queued": 2}
    s.close()


def test_importing_the_scheduler_stays_light() -> None:
    code = ("import sys, memos_core.scheduler; bad=[m for m in ('torch','transformers','peft') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------------- LoRA target
LORA_FACTS = [
    "Ann's dog is called Rex.",
    "Bob works as a pilot in Oslo.",
    "The user's favourite colour is teal.",
    "Carla lives in Porto.",
    "Dan's cat is called Milo.",
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from tiny_models import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("sched-lora") / "llama", arch="llama", corpus=LORA_FACTS, seed=0)


@pytest.fixture()
def lora_world(tmp_path: Path, tiny_llama):
    """A cube of five facts, an AdapterManager on a tiny llama storing into the cube, and a fake clock."""
    import torch
    from tiny_models import load_tiny_model

    from memos_core.parametric import AdapterManager

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster on a shared machine
    clock = Clock()
    cube = MemCube(tmp_path / "c", embedder=hashed_embed, clock=clock)
    items = cube.add_many(LORA_FACTS)
    model, tok = load_tiny_model(tiny_llama)
    manager = AdapterManager(model, tok, store=cube.path / "parametric", lookup=cube.lookup)
    yield cube, items, clock, manager
    cube.close()
    torch.set_num_threads(threads)


def _tiny_cfg():
    from memos_core.parametric import TrainingConfig

    return TrainingConfig(max_steps=4, rank=4, alpha=8, learning_rate=3e-3, probes_per_memory=1, progress=False,
                          seed=1)


def _lora_scheduler(cube, clock, target, **kw):
    return MemScheduler(cube, parametric=target, clock=clock, auto_observe=False,
                        policies=[RefreshStale(), QueueStableForLoRA(min_hits=3, stable_for=timedelta(days=1), batch=3)],
                        **kw)


def _train_hot(cube, items, clock, manager, fail_first: bool = False):
    """Make items[:3] hot and stable, run scheduler steps until they are trained; returns (scheduler, target)."""
    target = LoRATrainingTarget(manager, "hot-facts", config=_tiny_cfg(), min_batch=3)
    if fail_first:
        real, calls = manager.train, []

        def flaky(*a, **kw):
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("CUDA out of memory")
            return real(*a, **kw)

        manager.train = flaky
    s = _lora_scheduler(cube, clock, target)
    for _ in range(3):
        s.observe(items[:3])
    s.observe([items[3]])  # used once: not hot
    clock.advance(days=2)
    decisions = s.step()
    assert [(d.action, sorted(d.item_ids)) for d in decisions] == [("queue_lora", sorted(i.id for i in items[:3]))]
    if fail_first:
        job = s.jobs()[0]
        assert (job.state, job.attempts, job.result) == ("pending", 1, None)
        assert job.error == "RuntimeError: CUDA out of memory"
        assert not target.store.exists("hot-facts") and manager.loaded_adapters == []
        assert s.step() == []  # nothing new planned; the job is retried and succeeds
    return s, target


def test_lora_target_trains_hot_memories_into_a_loadable_adapter(lora_world, tiny_llama) -> None:
    import torch
    from tiny_models import load_tiny_model

    from memos_core.parametric import AdapterManager, AdapterStore

    cube, items, clock, manager = lora_world
    s, target = _train_hot(cube, items, clock, manager, fail_first=True)
    assert isinstance(target, RetrainableTarget)
    hot = {(i.id, i.version) for i in items[:3]}
    (job,) = s.jobs()
    assert (job.kind, job.state, job.attempts, job.error) == ("queue_lora", "done", 2, None)
    assert job.result["action"] == "trained" and job.result["adapter"] == "hot-facts"
    assert {tuple(x) for x in job.result["sources"]} == hot
    # the stored record lists exactly the hot memories (at their versions) and carries the recall probe
    store = AdapterStore(cube.path / "parametric")
    rec = store.record("hot-facts")
    assert {(src.item_id, src.version) for src in rec.sources} == hot
    assert rec.training.steps == 4 and rec.evaluation is not None
    assert job.result["recall_gain"] == pytest.approx(rec.evaluation.gain, abs=1e-4)
    assert job.result["details"]["adapter_sha256"] == rec.adapter_sha256
    assert {k: v["state"] for k, v in s.lora().items()} == {i.id: "trained" for i in items[:3]}
    log = [d for d in s.decisions() if d["action"] == "lora_trained"]
    assert len(log) == 1 and "hot-facts" in log[0]["reason"] and "recall gain" in log[0]["reason"]
    assert set(log[0]["item_ids"]) == {i.id for i in items[:3]}
    assert manager.loaded_adapters == ["hot-facts"] and manager.active_adapters == []  # trained, not switched on
    # the adapter loads into a fresh copy of the base model (fingerprint and sources check out) and changes it
    model, tok = load_tiny_model(tiny_llama)
    fresh = AdapterManager(model, tok, store=store, lookup=cube.lookup)
    ids = torch.tensor([tok(LORA_FACTS[0]).input_ids])
    with torch.no_grad():
        base = fresh.model(input_ids=ids).logits
        fresh.load("hot-facts")
        adapted = fresh.model(input_ids=ids).logits
    assert fresh.active_adapters == ["hot-facts"] and not torch.equal(base, adapted)
    # the same versions are never trained twice
    assert s.step() == [] and len(s.jobs()) == 1
    s.close()


def test_lora_target_retrains_when_a_source_changes_and_drops_when_all_are_gone(lora_world) -> None:
    from memos_core.parametric import StaleAdapter

    cube, items, clock, manager = lora_world
    s, target = _train_hot(cube, items, clock, manager)
    before = target.store.record("hot-facts")
    assert target.stale() == {}
    cube.update(items[0].id, "Ann's dog is called Max now.")
    assert "updated (built from v1, now v2)" in target.stale()[items[0].id]
    with pytest.raises(StaleAdapter):
        manager.check(before)  # loading it now would be refused
    decisions = s.step()
    assert [(d.action, d.item_ids) for d in decisions] == [("retrain_lora", [items[0].id])]
    job = s.jobs()[-1]
    assert (job.kind, job.state, job.result["action"]) == ("retrain_lora", "done", "retrained")
    after = target.store.record("hot-facts")
    assert {(src.item_id, src.version) for src in after.sources} == {
        (items[0].id, 2), (items[1].id, 1), (items[2].id, 1)}
    assert after.adapter_sha256 != before.adapter_sha256 and target.stale() == {}
    assert s.lora()[items[0].id] == {"version": 2, "state": "trained", "adapter_id": "hot-facts"}
    log = {d["action"]: d["reason"] for d in s.decisions()}
    assert "updated (built from v1, now v2)" in log["retrain_lora"] and "recall gain" in log["lora_retrained"]
    assert s.step() == [] and [j.kind for j in s.jobs()] == ["queue_lora", "retrain_lora"]
    # every source deleted: the adapter goes too (forgotten knowledge must not live on in weights)
    for it in items[:3]:
        cube.delete(it.id)
    s.step()
    job = s.jobs()[-1]
    assert (job.kind, job.state, job.result["action"]) == ("retrain_lora", "done", "deleted")
    assert not target.store.exists("hot-facts") and "hot-facts" not in manager.loaded_adapters
    assert target.stale() == {} and s.step() == []
    s.close()



def test_forgetting_a_source_memory_deletes_the_cubes_adapter_trained_on_it(lora_world) -> None:
    cube, items, clock, manager = lora_world
    s, target = _train_hot(cube, items, clock, manager)
    assert target.store.exists("hot-facts")
    weights = target.store.path("hot-facts")
    cube.forget(items[3].id)  # not a source: the adapter stays
    assert target.store.exists("hot-facts")
    cube.forget(items[1].id)  # a source: its weights encode the forgotten fact, so they go
    assert not target.store.exists("hot-facts") and not weights.exists()
    s.close()

def test_lora_training_failures_are_retried_a_bounded_number_of_times(lora_world) -> None:
    cube, items, clock, manager = lora_world
    calls: list[int] = []

    def boom(*a, **kw):
        calls.append(1)
        raise RuntimeError("trainer crashed")

    manager.train = boom
    target = LoRATrainingTarget(manager, "hot-facts", config=_tiny_cfg(), min_batch=3)
    s = _lora_scheduler(cube, clock, target, max_attempts=2)
    for _ in range(3):
        s.observe(items[:3])
    clock.advance(days=2)
    s.step()
    assert [(j.state, j.attempts) for j in s.jobs()] == [("pending", 1)]
    s.step()
    (job,) = s.jobs()
    assert (job.state, job.attempts, job.error, job.result) == ("failed", 2, "RuntimeError: trainer crashed", None)
    for _ in range(3):  # never planned or run again for these versions
        assert s.step() == []
    assert len(calls) == 2 and len(s.jobs()) == 1
    assert {v["state"] for v in s.lora().values()} == {"failed"}
    assert not target.store.exists("hot-facts") and manager.loaded_adapters == []
    s.close()


def test_lora_target_skips_too_small_batches_and_releases_them(lora_world) -> None:
    cube, items, clock, manager = lora_world
    target = LoRATrainingTarget(manager, "hot-facts", config=_tiny_cfg(), min_batch=3)
    s = _lora_scheduler(cube, clock, target)
    for _ in range(3):
        s.observe(items[:3])
    clock.advance(days=2)
    s.plan()
    cube.delete(items[0].id)  # deleted between queueing and training
    s.run_jobs()
    (job,) = s.jobs()
    assert job.state == "done" and job.result["action"] == "skipped" and "min_batch=3" in job.result["reason"]
    assert s.lora() == {} and not target.store.exists("hot-facts")
    assert any(d["action"] == "lora_skipped" for d in s.decisions())
    s.close()


def test_lora_target_rejects_bad_input(lora_world, tmp_path: Path) -> None:
    from memos_core.parametric import AdapterManager

    cube, items, clock, manager = lora_world
    with pytest.raises(ValidationError, match="AdapterManager"):
        LoRATrainingTarget(object())  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="store"):
        LoRATrainingTarget(AdapterManager(manager.base_model, manager.tokenizer))
    with pytest.raises(ValidationError, match="lookup"):
        LoRATrainingTarget(AdapterManager(manager.base_model, manager.tokenizer, store=tmp_path / "p"))
    with pytest.raises(ValidationError, match="adapter name"):
        LoRATrainingTarget(manager, "bad name!")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValidationError, match="min_batch"):
            LoRATrainingTarget(manager, min_batch=bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="TrainingConfig"):
        LoRATrainingTarget(manager, config={"max_steps": 1})
    target = LoRATrainingTarget(manager, min_batch=4)
    with pytest.raises(ValidationError, match="min_batch"):
        MemScheduler(cube, parametric=target, policies=[QueueStableForLoRA(batch=2)], auto_observe=False)
    with pytest.raises(ValidationError, match="MemoryItem"):
        target.train(["not an item"])  # type: ignore[list-item]
    with pytest.raises(NotFound):
        target.retrain()
    assert target.stale() == {}
