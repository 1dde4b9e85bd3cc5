"""MemScheduler implementation (see the package docstring for the model)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Protocol, Sequence, runtime_checkable

from pydantic import BaseModel

from ..log import get_logger
from ..errors import MemOSError, ValidationError
from ..items import LifecycleState, MemoryItem, SearchHit, to_utc, utcnow
from ..records.scheduler_state import SchedulerState

__all__ = [
    "MemScheduler", "Policy", "Decision", "Job", "PromoteHotToActivation", "QueueStableForLoRA", "DemoteCold",
    "RefreshStale", "ActivationTarget", "ParametricTarget", "RetrainableTarget", "TrainingOutcome",
    "KVActivationTarget",
]

log = get_logger(__name__)


# ---------------------------------------------------------------------------------------------- seams
@runtime_checkable
class ActivationTarget(Protocol):
    """Builds and drops activation-memory artefacts (KV caches) for memories."""

    def estimate(self, item: MemoryItem) -> tuple[int, int]:
        """(bytes, prefix tokens) a cache of this one memory would take/save."""
        ...

    def build(self, items: Sequence[MemoryItem]) -> tuple[str, int, int]:
        """Build and store a cache; returns (artifact id, bytes on disk, tokens)."""
        ...

    def delete(self, artifact_id: str) -> None: ...


@dataclass
class TrainingOutcome:
    """What a :class:`ParametricTarget` did for one job; stored as the job's ``result`` and in the decision log.

    ``action``: ``"trained"`` (a new adapter), ``"retrained"`` (an existing adapter rebuilt), ``"skipped"`` (too
    few live memories: the batch's queue entries are released so they can be queued again) or ``"deleted"``
    (every source memory of the adapter is gone, so the adapter was removed). ``sources`` are the ``(memory id,
    version)`` pairs the adapter now holds; ``recall_gain`` is the recall probe's gain when it ran.
    """

    action: Literal["trained", "retrained", "skipped", "deleted"]
    adapter: str | None
    sources: list[tuple[str, int]] = field(default_factory=list)
    recall_gain: float | None = None
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "adapter": self.adapter, "sources": [list(s) for s in self.sources],
                "recall_gain": self.recall_gain, "reason": self.reason, "details": self.details}


@runtime_checkable
class ParametricTarget(Protocol):
    """Trains a LoRA adapter from memories (the current versions, fetched through the cube).

    Returns the adapter's name, or a :class:`TrainingOutcome` for a richer record (e.g. :class:`LoRATrainingTarget`).
    """

    def train(self, items: Sequence[MemoryItem]) -> "str | TrainingOutcome": ...


@runtime_checkable
class RetrainableTarget(ParametricTarget, Protocol):
    """A :class:`ParametricTarget` that keeps an adapter it can check and rebuild: :class:`RefreshStale` plans a
    ``retrain_lora`` job when :meth:`stale` reports changed sources, and the scheduler runs it with :meth:`retrain`."""

    def stale(self) -> dict[str, str]:
        """Memory id -> what happened to it, for every changed source of the target's adapter (empty: fresh)."""
        ...

    def retrain(self) -> "str | TrainingOutcome": ...


class KVActivationTarget:
    """:class:`ActivationTarget` backed by :mod:`memos_core.activation` (one exact cache per memory,
    stored in a :class:`~memos_core.activation.KVCacheStore`, e.g. ``cube.path / "activation"``)."""

    def __init__(self, model: Any, tokenizer: Any, store: Any, **build_kwargs: Any) -> None:
        from ..activation import KVCacheStore

        self.model = model
        self.tokenizer = tokenizer
        self.store = store if isinstance(store, KVCacheStore) else KVCacheStore(store)
        self.build_kwargs = build_kwargs
        cfg = model.config
        heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        itemsize = next(model.parameters()).element_size()
        self._bytes_per_token = 2 * cfg.num_hidden_layers * heads * head_dim * itemsize

    def estimate(self, item: MemoryItem) -> tuple[int, int]:
        tokens = len(self.tokenizer(item.content, add_special_tokens=False)["input_ids"]) + 16
        return tokens * self._bytes_per_token, tokens

    def build(self, items: Sequence[MemoryItem]) -> tuple[str, int, int]:
        from ..activation import build_cache

        cache = build_cache(self.model, self.tokenizer, list(items), **self.build_kwargs)
        info = self.store.put(cache)
        return info.cache_id, info.total_bytes, len(info.meta.token_ids)

    def delete(self, artifact_id: str) -> None:
        self.store.delete(artifact_id)


# ---------------------------------------------------------------------------------------------- records
@dataclass
class Decision:
    policy: str
    action: Literal["promote", "evict", "queue_lora", "retrain_lora", "demote", "refresh", "drop",
                    "lora_trained", "lora_retrained", "lora_skipped", "lora_deleted"]
    item_ids: list[str]
    reason: str
    payload: dict[str, Any] = field(default_factory=dict)


class Job(BaseModel):
    id: int
    kind: str
    payload: dict[str, Any]
    state: str
    attempts: int
    error: str | None = None
    result: dict[str, Any] | None = None


class Policy(ABC):
    """A scheduling policy: looks at usage and state, returns decisions. Subclass and implement :meth:`plan`."""

    name = "policy"

    @abstractmethod
    def plan(self, sched: "MemScheduler", now: float) -> list[Decision]:
        """The decisions this policy takes now (each with a reason)."""


class PromoteHotToActivation(Policy):
    """Give the hottest memories KV caches within the byte budget; evict by LFU with aging when full.

    A memory qualifies with at least ``min_hits`` hits and an aged score of at least ``min_score``. A cached
    memory is evicted only for a candidate whose aged score is higher than its own.
    """

    name = "promote_hot"

    def __init__(self, min_hits: int = 2, min_score: float = 1.0, max_per_step: int = 32) -> None:
        self.min_hits = min_hits
        self.min_score = min_score
        self.max_per_step = max_per_step

    def plan(self, sched: "MemScheduler", now: float) -> list[Decision]:
        if sched.activation is None:
            return []
        budget = sched.budget_bytes
        cached = sched.cached()
        used = sum(c["bytes"] for c in cached.values())
        scores = sched.scores(now)
        victims = sorted(cached, key=lambda i: (scores.get(i, 0.0), cached[i]["created"]))
        out: list[Decision] = []
        for item_id, score, hits in sched.hottest(now, limit=self.max_per_step * 4):
            if len(out) >= self.max_per_step or score < self.min_score:
                break
            if item_id in cached or hits < self.min_hits:
                continue
            item = sched.cube.lookup(item_id)
            if item is None or item.state not in (LifecycleState.ACTIVATED, LifecycleState.GENERATED,
                                                    LifecycleState.FROZEN):
                continue
            need, tokens = sched.activation.estimate(item)
            evict: list[str] = []
            if budget is not None:
                if need > budget:
                    continue
                free = budget - used
                while free < need and victims and scores.get(victims[0], 0.0) < score:
                    v = victims.pop(0)
                    evict.append(v)
                    free += cached[v]["bytes"]
                if free < need:
                    break  # nothing colder left to evict: the cache holds the hottest set that fits
                for v in evict:
                    out.append(Decision(self.name, "evict", [v], f"LFU-aging victim (score {scores.get(v, 0.0):.2f} "
                                        f"< {score:.2f} of {item_id})", {"artifact_id": cached[v]["artifact_id"]}))
                    used -= cached.pop(v)["bytes"]
            out.append(Decision(self.name, "promote", [item_id], f"hot: {hits} hits, aged score {score:.2f}; "
                                f"~{tokens} prefill tokens saved per use", {"est_bytes": need}))
            used += need
            cached[item_id] = {"bytes": need, "created": now, "artifact_id": None}
        return out


class QueueStableForLoRA(Policy):
    """Queue memories that are used often and unchanged for ``stable_for`` for LoRA training, in batches."""

    name = "queue_lora"

    def __init__(self, min_hits: int = 10, stable_for: timedelta = timedelta(days=7), batch: int = 16) -> None:
        self.min_hits = min_hits
        self.stable_for = stable_for
        self.batch = batch

    def plan(self, sched: "MemScheduler", now: float) -> list[Decision]:
        done = sched.lora_versions()
        ready: list[str] = []
        for item_id, score, hits in sched.hottest(now, limit=10_000):
            if hits < self.min_hits:
                continue
            item = sched.cube.lookup(item_id)
            if item is None or item.state not in (LifecycleState.ACTIVATED, LifecycleState.FROZEN):
                continue
            if (item.id, item.version) in done or now - item.updated_at.timestamp() < self.stable_for.total_seconds():
                continue
            ready.append(item_id)
        if len(ready) < self.batch:
            return []
        return [Decision(self.name, "queue_lora", ready[i:i + self.batch],
                         f"{self.min_hits}+ hits and unchanged for {self.stable_for}")
                for i in range(0, len(ready) - self.batch + 1, self.batch)]


class DemoteCold(Policy):
    """Archive activated memories with no hit (and no change) for ``cold_after``. Off unless configured."""

    name = "demote_cold"

    def __init__(self, cold_after: timedelta, max_per_step: int = 500) -> None:
        self.cold_after = cold_after
        self.max_per_step = max_per_step

    def plan(self, sched: "MemScheduler", now: float) -> list[Decision]:
        cutoff = now - self.cold_after.total_seconds()
        last = sched.last_hits()
        out: list[str] = []
        for item in sched.cube.records.iter_items(states=[LifecycleState.ACTIVATED]):
            seen = max(last.get(item.id, 0.0), item.updated_at.timestamp())
            if seen < cutoff:
                out.append(item.id)
                if len(out) >= self.max_per_step:
                    break
        return [Decision(self.name, "demote", [i], f"no use since before {datetime.fromtimestamp(cutoff):%Y-%m-%d}")
                for i in out]


class RefreshStale(Policy):
    """Rebuild caches whose memory changed; drop caches whose memory was deleted or forgotten.

    With ``adapters`` (default) and a :class:`RetrainableTarget` as the scheduler's ``parametric`` target, also
    plan a ``retrain_lora`` job when the target's adapter has sources that were updated, deleted or forgotten. One
    job per set of changes: after it ran (or failed for good) the same changes are not planned again.
    """

    name = "refresh_stale"

    def __init__(self, adapters: bool = True) -> None:
        self.adapters = adapters

    def plan(self, sched: "MemScheduler", now: float) -> list[Decision]:
        out = self._caches(sched)
        target = sched.parametric
        if self.adapters and isinstance(target, RetrainableTarget):
            reasons = target.stale()
            if reasons:
                adapter = getattr(target, "adapter_name", None)
                payload = {"adapter": adapter, "stale": dict(sorted(reasons.items()))}
                if not sched._has_job("retrain_lora", payload, ("pending", "running", "failed")):
                    what = "; ".join(f"{i}: {r}" for i, r in sorted(reasons.items()))
                    out.append(Decision(self.name, "retrain_lora", sorted(reasons),
                                        f"adapter {adapter!r} has changed sources ({what})", payload))
        return out

    def _caches(self, sched: "MemScheduler") -> list[Decision]:
        out: list[Decision] = []
        for item_id, row in sched.cached().items():
            item = sched.cube.lookup(item_id)
            if item is None or item.state in (LifecycleState.DELETED, LifecycleState.PURGED,
                                              LifecycleState.ARCHIVED, LifecycleState.MERGED):
                out.append(Decision(self.name, "drop", [item_id], "source memory is "
                                    + ("forgotten" if item is None else item.state.value),
                                    {"artifact_id": row["artifact_id"]}))
            elif item.version != row["version"]:
                out.append(Decision(self.name, "refresh", [item_id], f"source changed v{row['version']} -> "
                                    f"v{item.version}", {"artifact_id": row["artifact_id"]}))
        return out


# ---------------------------------------------------------------------------------------------- scheduler
class MemScheduler:
    """Usage tracking + policies + a persistent job queue for one cube.

    Parameters
    ----------
    cube: the :class:`~memos_core.cube.MemCube` to schedule.
    activation: builds KV caches (e.g. :class:`KVActivationTarget`). Without it nothing is promoted; refresh/drop
        jobs for caches built by an earlier run stay pending until a scheduler with a target runs them.
    parametric: trains LoRA adapters (e.g. :class:`LoRATrainingTarget`). Without it ``queue_lora`` jobs are still
        planned and stay pending (visible in :meth:`jobs`) until a scheduler with a target runs them.
    budget_bytes: byte budget for activation artefacts (``None``: unbounded).
    half_life: the aging half-life of usage scores.
    policies: default ``[RefreshStale(), PromoteHotToActivation(), QueueStableForLoRA()]``.
    auto_observe: record the cube's search hits automatically.
    actor: the principal the scheduler acts as on the cube (default: the cube's default principal); it needs
        the writer role for demotion.
    """

    def __init__(self, cube: Any, *, activation: ActivationTarget | None = None,
                 parametric: ParametricTarget | None = None, budget_bytes: int | None = None,
                 half_life: timedelta = timedelta(days=7), policies: Sequence[Policy] | None = None,
                 clock: Callable[[], datetime] | None = None, auto_observe: bool = True,
                 max_jobs_per_step: int = 64, max_attempts: int = 3, actor: str | None = None) -> None:
        if budget_bytes is not None and budget_bytes < 0:
            raise ValidationError("budget_bytes must be >= 0")
        if half_life.total_seconds() <= 0:
            raise ValidationError("half_life must be positive")
        self.cube = cube
        self.actor = actor
        self.activation = activation
        self.parametric = parametric
        self.budget_bytes = budget_bytes
        self.half_life = half_life.total_seconds()
        self.policies = list(policies) if policies is not None else [
            RefreshStale(), PromoteHotToActivation(), QueueStableForLoRA()]
        min_batch = getattr(parametric, "min_batch", None)
        for p in self.policies:
            if isinstance(p, QueueStableForLoRA) and isinstance(min_batch, int) and p.batch < min_batch:
                raise ValidationError(
                    f"QueueStableForLoRA(batch={p.batch}) queues fewer memories than the parametric target's "
                    f"min_batch={min_batch}: its jobs would be skipped and queued again forever; raise batch or "
                    f"lower min_batch")
        self._clock = clock or utcnow
        self.max_jobs_per_step = max_jobs_per_step
        self.max_attempts = max_attempts
        # usage, jobs, caches, LoRA queue, decisions: soft state of this deployment (memos_core.records.scheduler_state)
        self._state = SchedulerState(Path(cube.path) / "scheduler.sqlite3")
        self._lock = self._state.lock
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._listener = self._on_search if auto_observe else None
        if self._listener is not None and hasattr(cube, "listeners"):
            cube.listeners.append(self._listener)

    # ------------------------------------------------------------------ time & usage
    def _now(self) -> float:
        return (to_utc(self._clock()) or utcnow()).timestamp()

    def _on_search(self, query: str, hits: Sequence[SearchHit]) -> None:
        self.observe(hits)

    def observe(self, hits: Iterable[SearchHit | MemoryItem | str], *, injected: bool = False,
                at: float | None = None) -> None:
        """Record one use of each memory (a search hit, or with ``injected`` a use in a model's context)."""
        now = self._now() if at is None else at
        ids = []
        for h in hits:
            ids.append(h.item.id if isinstance(h, SearchHit) else h.id if isinstance(h, MemoryItem) else str(h))
        if not ids:
            return
        with self._state.transaction():
            for i in ids:
                row = self._state.usage_of(i)
                score = 1.0 if row is None else row[0] * 0.5 ** ((now - row[1]) / self.half_life) + 1.0
                self._state.put_usage(i, score, now, injected)
            if injected:
                cached = self.cached()
                hit = [i for i in ids if i in cached]
                self._bump("inject_uses", len(ids))
                self._bump("inject_cache_hits", len(hit))
                self._bump("prefill_tokens_saved", sum(cached[i]["tokens"] for i in hit))
                self._bump("prefill_tokens_total", sum(cached[i]["tokens"] for i in hit)
                           + sum(self._est_tokens(i) for i in ids if i not in cached))

    def _est_tokens(self, item_id: str) -> int:
        if self.activation is None:
            return 0
        item = self.cube.lookup(item_id)
        return 0 if item is None else self.activation.estimate(item)[1]

    def _bump(self, name: str, by: float) -> None:
        self._state.bump(name, by)

    def scores(self, now: float | None = None) -> dict[str, float]:
        now = self._now() if now is None else now
        return {r[0]: r[1] * 0.5 ** ((now - r[2]) / self.half_life) for r in self._state.usage()}

    def hottest(self, now: float | None = None, limit: int = 100) -> list[tuple[str, float, int]]:
        """(item id, aged score, hits), hottest first."""
        now = self._now() if now is None else now
        rows = self._state.usage()
        scored = sorted(((r[0], r[1] * 0.5 ** ((now - r[2]) / self.half_life), r[3]) for r in rows),
                        key=lambda t: (-t[1], t[0]))
        return scored[:limit]

    def last_hits(self) -> dict[str, float]:
        return {r[0]: r[4] for r in self._state.usage()}

    def cached(self) -> dict[str, dict[str, Any]]:
        """item id -> {artifact_id, version, bytes, tokens, created} for memories with an activation cache."""
        return self._state.activation()

    def lora_versions(self) -> set[tuple[str, int]]:
        return {(r[0], r[1]) for r in self._state.lora()}

    # ------------------------------------------------------------------ decisions and jobs
    def _record(self, d: Decision, now: float) -> None:
        self._state.add_decision(now, d.policy, d.action, d.item_ids, d.reason)

    def plan(self) -> list[Decision]:
        """Run every policy and persist their decisions as jobs (does not execute them)."""
        now = self._now()
        decisions: list[Decision] = []
        for p in self.policies:
            try:
                decisions += p.plan(self, now)
            except MemOSError as exc:
                log.warning("scheduler policy %s failed: %s", p.name, exc)
        with self._state.transaction():
            pending = self._state.open_jobs()
            for d in decisions:
                payload = json.dumps({"item_ids": d.item_ids, **d.payload, "reason": d.reason})
                if (d.action, payload) in pending:
                    continue
                self._record(d, now)
                self._state.add_job(d.action, payload, now)
                if d.action == "queue_lora":
                    for i in d.item_ids:
                        item = self.cube.lookup(i)
                        if item is not None:
                            self._state.put_lora(i, item.version, "queued", None, now)
        return decisions

    def lora(self) -> dict[str, dict[str, Any]]:
        """item id -> {version, state, adapter_id} of the latest LoRA queue entry of each memory (state:
        ``queued``, ``trained`` or ``failed``)."""
        return {r[0]: {"version": r[1], "state": r[2], "adapter_id": r[3]} for r in self._state.lora()}

    def _has_job(self, kind: str, payload: dict[str, Any], states: Sequence[str]) -> bool:
        """Whether a job of ``kind`` in one of ``states`` has a payload containing every key/value of ``payload``."""
        for raw in self._state.job_payloads(kind, states):
            have = json.loads(raw)
            if all(have.get(k) == v for k, v in payload.items()):
                return True
        return False

    def jobs(self, state: str | None = None) -> list[Job]:
        """Jobs (optionally in one ``state``: pending, running, done, failed), oldest first. A parametric job's
        ``result`` holds its :class:`TrainingOutcome` (adapter, sources, recall gain)."""
        rows = self._state.jobs(state)
        return [Job(id=r[0], kind=r[1], payload=json.loads(r[2]), state=r[3], attempts=r[4], error=r[5],
                    result=None if r[6] is None else json.loads(r[6])) for r in rows]

    def run_jobs(self, limit: int | None = None) -> int:
        """Execute pending jobs in order (up to ``limit``); returns how many ran. A job that fails goes back to
        pending (retried at a later call) until ``max_attempts``, then stays ``failed`` with its error."""
        limit = self.max_jobs_per_step if limit is None else limit
        kinds = self._runnable()
        todo = self._state.pending_jobs(kinds, limit)
        n = 0
        for job_id, kind, payload, attempts in todo:
            if self._stop.is_set() and self._thread is not None and threading.current_thread() is self._thread:
                break
            self._state.start_job(job_id, self._now())
            data = json.loads(payload)
            outcome: TrainingOutcome | None = None
            try:
                outcome = self._execute(kind, data)
                state, err = "done", None
            except Exception as exc:  # noqa: BLE001 - recorded on the job; retried up to max_attempts
                log.warning("scheduler job %s (%s) failed: %s", job_id, kind, exc)
                state = "failed" if attempts + 1 >= self.max_attempts else "pending"
                err = f"{type(exc).__name__}: {exc}"
            now = self._now()
            with self._lock:
                self._state.finish_job(job_id, state, err, None if outcome is None else json.dumps(outcome.to_dict()),
                                       now)
                if outcome is not None:
                    self._record(self._outcome_decision(job_id, outcome), now)
                if state == "failed" and kind == "queue_lora":
                    self._state.fail_queued_lora(data["item_ids"], now)
            n += 1
        return n

    def _runnable(self) -> list[str]:
        kinds = ["demote"]
        if self.activation is not None:
            kinds += ["promote", "evict", "refresh", "drop"]
        if self.parametric is not None:
            kinds += ["queue_lora"]
        if isinstance(self.parametric, RetrainableTarget):
            kinds += ["retrain_lora"]
        return kinds

    @staticmethod
    def _outcome(result: Any, items: Sequence[MemoryItem]) -> TrainingOutcome:
        if isinstance(result, TrainingOutcome):
            return result
        if isinstance(result, str):  # a plain ParametricTarget: it trained on exactly these items
            return TrainingOutcome("trained", result, [(it.id, it.version) for it in items])
        raise ValidationError(f"a parametric target must return an adapter name or a TrainingOutcome, "
                              f"got {type(result).__name__}")

    @staticmethod
    def _outcome_decision(job_id: int, o: TrainingOutcome) -> Decision:
        reason = f"job {job_id}: " + (o.reason or f"adapter {o.adapter!r} {o.action}")
        if o.action in ("trained", "retrained"):
            reason += f" from {len(o.sources)} memories"
            if o.recall_gain is not None:
                reason += f"; recall gain {o.recall_gain:+.3f}"
        action = {"trained": "lora_trained", "retrained": "lora_retrained", "skipped": "lora_skipped",
                  "deleted": "lora_deleted"}[o.action]
        return Decision("parametric", action, [s[0] for s in o.sources], reason)  # type: ignore[arg-type]

    def _lora_done(self, released: Sequence[str], outcome: TrainingOutcome, now: float) -> None:
        """Bookkeeping after a parametric job: queue entries of ``released`` are cleared (a skipped batch can be
        queued again) and every source the adapter now holds is recorded as trained at that version."""
        with self._lock:
            if released:
                self._state.release_queued_lora(released)
            if outcome.action in ("trained", "retrained"):
                for item_id, version in outcome.sources:
                    self._state.put_lora(item_id, version, "trained", outcome.adapter, now)

    def _execute(self, kind: str, payload: dict[str, Any]) -> TrainingOutcome | None:
        ids: list[str] = payload["item_ids"]
        now = self._now()
        if kind == "demote":
            item = self.cube.lookup(ids[0])
            if item is not None and item.state == LifecycleState.ACTIVATED:
                self.cube.transition(ids[0], LifecycleState.ARCHIVED, reason=f"scheduler: {payload['reason']}",
                                     actor=self.actor)
            return None
        if kind == "queue_lora":
            assert self.parametric is not None
            # the current versions, fetched through the cube now (a memory may have changed since it was queued)
            items = [it for it in (self.cube.lookup(i) for i in ids) if it is not None]
            outcome = self._outcome(self.parametric.train(items), items)
            self._lora_done(ids, outcome, now)
            return outcome
        if kind == "retrain_lora":
            assert isinstance(self.parametric, RetrainableTarget)
            outcome = self._outcome(self.parametric.retrain(), [])
            self._lora_done([], outcome, now)
            return outcome
        assert self.activation is not None
        if kind in ("evict", "drop", "refresh"):
            row = self.cached().get(ids[0])
            if row is not None:
                self.activation.delete(row["artifact_id"])
                self._state.delete_activation(ids[0])
            if kind != "refresh":
                return None
        item = self.cube.lookup(ids[0])
        if item is None or item.state in (LifecycleState.DELETED, LifecycleState.PURGED):
            return None
        if ids[0] in self.cached():
            return None
        if self.budget_bytes is not None:
            used = sum(c["bytes"] for c in self.cached().values())
            if used + self.activation.estimate(item)[0] > self.budget_bytes:
                raise MemOSError("activation budget is full; the next step re-plans evictions")
        artifact, nbytes, tokens = self.activation.build([item])
        self._state.put_activation(item.id, item.version, artifact, nbytes, tokens, now)
        return None

    def step(self) -> list[Decision]:
        """Plan, then execute pending jobs (bounded). Returns this step's decisions."""
        decisions = self.plan()
        self.run_jobs()
        return decisions

    # ------------------------------------------------------------------ background worker
    def start(self, interval: float = 30.0) -> None:
        """Run :meth:`step` every ``interval`` seconds in a daemon thread (and when :meth:`wake` is called)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.step()
                except Exception as exc:  # noqa: BLE001 - a failed step must not kill the worker
                    log.exception("scheduler step failed: %s", exc)
                self._wake.wait(interval)
                self._wake.clear()

        self._thread = threading.Thread(target=loop, name="memos-scheduler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker after its current job; unfinished jobs stay queued for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        if self._listener is not None and hasattr(self.cube, "listeners") and self._listener in self.cube.listeners:
            self.cube.listeners.remove(self._listener)
        self._state.close()

    # ------------------------------------------------------------------ observability
    def decisions(self, limit: int = 100) -> list[dict[str, Any]]:
        return [{"seq": r[0], "at": datetime.fromtimestamp(r[1]).isoformat(), "policy": r[2], "action": r[3],
                 "item_ids": r[4], "reason": r[5]} for r in self._state.decisions(limit)]

    def stats(self) -> dict[str, Any]:
        cached = self.cached()
        counters = self._state.counters()
        jobs, lora, tracked = self._state.counts()
        uses = counters.get("inject_uses", 0.0)
        return {
            "tracked_memories": tracked,
            "cached_memories": len(cached),
            "cache_bytes": sum(c["bytes"] for c in cached.values()),
            "budget_bytes": self.budget_bytes,
            "inject_uses": int(uses),
            "cache_hit_rate": round(counters.get("inject_cache_hits", 0.0) / uses, 4) if uses else 0.0,
            "prefill_tokens_saved": int(counters.get("prefill_tokens_saved", 0.0)),
            "prefill_tokens_total": int(counters.get("prefill_tokens_total", 0.0)),
            "jobs": jobs,
            "lora": lora,
        }
