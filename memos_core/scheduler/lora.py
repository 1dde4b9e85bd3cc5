"""``LoRATrainingTarget``: the scheduler's parametric target, built on :class:`memos_core.parametric.AdapterManager`.

The target keeps **one** adapter (``adapter_name``) in the manager's store and grows it: every ``queue_lora`` job
trains it again, from scratch, on its current sources (their current versions) plus the newly queued memories. One
adapter trained on the union keeps the recall of every set, while independently trained adapters interfere when
combined (see :meth:`AdapterManager.combine`). Use several targets (and schedulers) for separate adapters.

torch, transformers and peft are imported only when training runs.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..artifacts import ItemLookup, stale_sources
from ..errors import NotFound, ValidationError
from ..items import LifecycleState, MemoryItem
from .core import TrainingOutcome

__all__ = ["LoRATrainingTarget"]

_GONE = (LifecycleState.DELETED, LifecycleState.PURGED)


class LoRATrainingTarget:
    """:class:`~memos_core.scheduler.RetrainableTarget` that trains a LoRA adapter with an ``AdapterManager``.

    Parameters
    ----------
    manager: an :class:`~memos_core.parametric.AdapterManager` with a store (in a cube: ``cube.path /
        "parametric"``). Adapters are saved there.
    adapter_name: the adapter this target maintains.
    config: the :class:`~memos_core.parametric.TrainingConfig` (default: the library defaults without a progress
        bar). With ``config.evaluate`` (default) the recall probe runs and its gain is recorded on the job.
    min_batch: a training run needs at least this many live memories (new ones plus the adapter's current
        sources); with fewer the job is *skipped* and its queue entries are released so the memories can be queued
        again with a later batch. Must not exceed :class:`QueueStableForLoRA`'s ``batch`` (the scheduler checks).
        Retraining a stale adapter ignores it: updates and forgets must reach the weights.
    lookup: ``item id -> MemoryItem | None`` for staleness and retraining (default: the manager's ``lookup``;
        give one of the two, e.g. ``cube.lookup``).
    generator: optional ``prompt -> str`` callable for LLM-written training variants (see ``AdapterManager.train``).

    After a run, the adapter is active in the manager only if it was active before (as ``AdapterManager.retrain``).
    Training holds the manager's lock: a forward pass on ``manager.model`` from another thread waits or, if it
    does not take the lock, sees an undefined mix (see :class:`~memos_core.parametric.AdapterManager`).
    """

    def __init__(
        self,
        manager: Any,
        adapter_name: str = "scheduler",
        config: Any | None = None,
        min_batch: int = 4,
        *,
        lookup: ItemLookup | None = None,
        generator: Callable[[str], str] | None = None,
    ) -> None:
        from ..parametric import AdapterManager, TrainingConfig
        from ..parametric.schema import validate_adapter_name

        if not isinstance(manager, AdapterManager):
            raise ValidationError(f"LoRATrainingTarget needs a memos_core.parametric.AdapterManager, "
                                  f"got {type(manager).__name__}")
        if manager.store is None:
            raise ValidationError("LoRATrainingTarget needs a manager with a store: "
                                  "AdapterManager(model, tokenizer, store=cube.path / 'parametric', lookup=cube.lookup)")
        validate_adapter_name(adapter_name)
        if config is not None and not isinstance(config, TrainingConfig):
            raise ValidationError(f"config must be a TrainingConfig, got {type(config).__name__}")
        if isinstance(min_batch, bool) or not isinstance(min_batch, int) or min_batch < 1:
            raise ValidationError(f"min_batch must be an integer >= 1, got {min_batch!r}")
        if generator is not None and not callable(generator):
            raise ValidationError("generator must be a callable prompt -> str")
        self.lookup: ItemLookup | None = lookup or manager.lookup
        if self.lookup is None:
            raise ValidationError("LoRATrainingTarget needs a lookup for staleness and retraining: pass "
                                  "lookup=cube.lookup, or give the AdapterManager one")
        self.manager = manager
        self.adapter_name = adapter_name
        self.config = config if config is not None else TrainingConfig(progress=False)
        self.min_batch = min_batch
        self.generator = generator

    def __repr__(self) -> str:
        return (f"LoRATrainingTarget(adapter={self.adapter_name!r}, store={self.manager.store!r}, "
                f"min_batch={self.min_batch})")

    @property
    def store(self) -> Any:
        return self.manager.store

    def _lookup(self, item_id: str) -> MemoryItem | None:
        assert self.lookup is not None
        return self.lookup(item_id)

    # ------------------------------------------------------------------ RetrainableTarget
    def stale(self) -> dict[str, str]:
        """Memory id -> what happened to it, for each changed source of the stored adapter; ``{}`` when the adapter
        is fresh or not trained yet."""
        if not self.store.exists(self.adapter_name):
            return {}
        return stale_sources(self.store.record(self.adapter_name).sources, self._lookup)

    def train(self, items: Sequence[MemoryItem]) -> TrainingOutcome:
        """Train (or rebuild) the adapter from ``items`` plus the current versions of its live sources; save it.

        Deleted/purged memories are left out. Returns a ``"skipped"`` outcome when nothing is new and the adapter
        is fresh, or when fewer than ``min_batch`` live memories remain.
        """
        items = list(items)
        for it in items:
            if not isinstance(it, MemoryItem):
                raise ValidationError(f"expected MemoryItem objects, got {type(it).__name__}")
        name = self.adapter_name
        existed = self.store.exists(name)
        live: dict[str, MemoryItem] = {}
        held: set[tuple[str, int]] = set()
        if existed:
            for ref in self.store.record(name).sources:
                held.add((ref.item_id, ref.version))
                cur = self._lookup(ref.item_id)
                if cur is not None and cur.state not in _GONE:
                    live[cur.id] = cur
        new = 0
        for it in items:
            if it.state in _GONE:
                continue
            if (it.id, it.version) not in held:
                new += 1
            live[it.id] = it  # the queued memory as fetched now wins over an older lookup
        batch = list(live.values())
        if existed and new == 0 and not self.stale():
            return TrainingOutcome("skipped", name, reason=f"adapter {name!r} already holds these memories")
        if len(batch) < self.min_batch:
            return TrainingOutcome(
                "skipped", name if existed else None,
                reason=f"only {len(batch)} live memories, fewer than min_batch={self.min_batch}; "
                       f"their queue entries are released")
        was_active = name in self.manager.active_adapters
        rec = self.manager.train(
            batch, name, config=self.config, overwrite=True, activate=was_active, generator=self.generator,
            description="trained by the MemScheduler from frequently used, unchanged memories")
        return self._outcome("retrained" if existed else "trained", rec, new=new)

    def retrain(self) -> TrainingOutcome:
        """Rebuild the stored adapter from the current versions of its sources (``AdapterManager.retrain``);
        deleted, purged or forgotten sources are left out. When every source is gone the adapter is deleted (a
        forgotten memory must not live on in weights). Raises NotFound when the adapter does not exist."""
        name = self.adapter_name
        if not self.store.exists(name):
            raise NotFound(f"no adapter {name!r} in {self.store.root} to retrain")
        reasons = self.stale()
        rec = self.store.record(name)
        live = [it for it in (self._lookup(r.item_id) for r in rec.sources) if it is not None and it.state not in _GONE]
        if not live:
            if name in self.manager.loaded_adapters:
                self.manager.unload(name)
            self.store.delete(name)
            return TrainingOutcome("deleted", name, reason=f"adapter {name!r} deleted: every source memory is gone",
                                   details={"stale": reasons})
        rec = self.manager.retrain(name, lookup=self.lookup, config=self.config, generator=self.generator)
        return self._outcome("retrained", rec, stale=reasons)

    # ------------------------------------------------------------------ helpers
    def _outcome(self, action: Any, rec: Any, **details: Any) -> TrainingOutcome:
        ev = rec.evaluation
        tr = rec.training
        info: dict[str, Any] = {"adapter_sha256": rec.adapter_sha256, "path": str(self.store.path(rec.name))}
        if tr is not None:
            info.update(steps=tr.steps, final_loss=tr.final_loss, seconds=tr.seconds, examples=tr.examples)
        info.update(details)
        return TrainingOutcome(
            action,
            rec.name,
            [(s.item_id, s.version) for s in rec.sources],
            recall_gain=None if ev is None or ev.gain is None else round(ev.gain, 4),
            reason=f"adapter {rec.name!r} {action}",
            details=info,
        )
