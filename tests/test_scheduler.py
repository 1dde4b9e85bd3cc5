"""MemScheduler: usage tracking, promotion within a budget with LFU-aging eviction, refresh of stale caches,
LoRA queueing, demotion, persistent jobs across restarts, the background worker, and a real KV target."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from memos_core import LifecycleState, MemCube
from memos_core.scheduler import (
    DemoteCold,
    KVActivationTarget,
    MemScheduler,
    PromoteHotToActivation,
    QueueStableForLoRA,
    RefreshStale,
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
    s.step()  # no target: the promotion is planned but stays queued
    assert [j.kind for j in s.jobs("pending")] == []  # without a target the policy plans nothing
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
    s._db.execute("UPDATE jobs SET state='running'")
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
