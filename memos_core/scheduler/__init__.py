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
  - :class:`RefreshStale`: caches whose source memories changed or were forgotten are rebuilt or dropped.
* **Jobs** persist in ``scheduler.sqlite3`` in the cube folder: a job taken by a worker that dies is taken
  again after restart (nothing is lost). Run synchronously with :meth:`MemScheduler.step` (tests, cron) or as
  a bounded background worker (:meth:`MemScheduler.start` / :meth:`MemScheduler.stop`).
* **Observable**: :meth:`MemScheduler.stats` and :meth:`MemScheduler.decisions` (every decision and why).

The executors that do the work are seams: :class:`ActivationTarget` (e.g. :class:`KVActivationTarget`, which
builds caches with :mod:`memos_core.activation`) and :class:`ParametricTarget` (e.g. a LoRA trainer from
:mod:`memos_core.parametric`). Without a target, the corresponding jobs stay queued and visible.
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
)

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
    "KVActivationTarget",
]
