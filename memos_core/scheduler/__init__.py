"""MemScheduler: watches how memory is used and moves it between forms.

* **Usage**: every search hit and every injected-context hit is recorded per memory as an exponentially
  aged frequency (``score = Σ 0.5 ** (age / half_life)``), plus hit count and last hit.
* **Policies** (pluggable; each returns :class:`Decision` objects with a reason):

  - :class:`PromoteHotToActivation`: the hottest plaintext memories get a KV cache (activation memory) for a
    configured local model, within a byte budget; when over budget, caches are evicted by **LFU with aging**
    (lowest aged score first, ties by oldest last hit) — never a cache hotter than the one that would replace it.
  - :class:`QueueStableForLoRA`: memories used often and unchanged for a while are queued for LoRA training
    (parametric memory) in batches.
  - :class:`DemoteCold`: activated memories with no hit for ``cold_after`` are archived.
  - :class:`RefreshStale`: caches whose source memories changed or were forgotten are rebuilt or dropped; an
    adapter of a :class:`RetrainableTarget` whose sources changed is retrained.
* **Jobs** persist in ``scheduler.sqlite3`` in the cube folder (for a cube on PostgreSQL: the worker's own
  ``workdir``, beside its KV caches; ``memos_core.records.scheduler_state``): a job taken by a worker that dies is taken
  again after restart (nothing is lost). A failing job is retried at later steps up to ``max_attempts``, then
  kept as ``failed`` with its error. Run synchronously with :meth:`MemScheduler.step` (tests, cron) or as a
  bounded background worker (:meth:`MemScheduler.start` / :meth:`MemScheduler.stop`).
* **Observable**: :meth:`MemScheduler.stats` and :meth:`MemScheduler.decisions` (every decision and why, and the
  outcome of every training job); :meth:`MemScheduler.jobs` (state, error, and a training job's result:
  adapter, sources, recall gain).

The executors that do the work are seams: :class:`ActivationTarget` (e.g. :class:`KVActivationTarget`, which
builds caches with :mod:`memos_core.activation`) and :class:`ParametricTarget` (e.g. :class:`LoRATrainingTarget`,
which trains an adapter with :class:`memos_core.parametric.AdapterManager`). Without a target:

* no activation target: :class:`PromoteHotToActivation` plans nothing (no cache can be built, so nothing is
  promoted); refresh/drop jobs for caches an earlier run built stay pending until a scheduler with a target runs.
* no parametric target: :class:`QueueStableForLoRA` still plans ``queue_lora`` jobs; they stay pending and
  visible in :meth:`MemScheduler.jobs` until a scheduler with a target runs them.
"""

from .core import (
    ActivationTarget,
    Decision,
    DemoteCold,
    Job,
    KVActivationTarget,
    MemScheduler,
    ParametricTarget,
    Policy,
    PromoteHotToActivation,
    QueueStableForLoRA,
    RefreshStale,
    RetrainableTarget,
    TrainingOutcome,
)
from .lora import LoRATrainingTarget

__all__ = [
    "MemScheduler",
    "Policy",
    "Decision",
    "Job",
    "PromoteHotToActivation",
    "QueueStableForLoRA",
    "DemoteCold",
    "RefreshStale",
    "ActivationTarget",
    "ParametricTarget",
    "RetrainableTarget",
    "TrainingOutcome",
    "KVActivationTarget",
    "LoRATrainingTarget",
]
