"""MemScheduler benchmark: skewed (Zipf) use of many memories, KV-cache promotion within a byte budget.

Each access injects one memory into a model's context. With a KV cache for it, its prefill is skipped. We
compare, in the same run and on the same access sequence:

* ``none``: no scheduler (every injection pays full prefill),
* ``lru_on_demand``: cache every memory on first use, evict least recently used (a common simple policy),
* ``memos``: MemScheduler (aged-frequency promotion, LFU-with-aging eviction, one step every --step accesses).

Cache sizes follow the KV-cache formula of a real model shape (default: Qwen2-0.5B, fp16:
2 x 24 layers x 2 KV heads x 64 head dim x 2 bytes = 12,288 bytes per token); no tensors are computed, so this
measures the policy, not the model. Memory lengths vary (20-400 tokens).

    python benchmarks/scheduler.py [--n 2000] [--accesses 20000] [--budget-frac 0.1] [--zipf 1.1] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from collections import OrderedDict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from memos_core import MemCube
from memos_core.scheduler import MemScheduler, PromoteHotToActivation, RefreshStale


def _emb(texts):  # the benchmark measures scheduling, not retrieval: a cheap deterministic embedder
    out = np.zeros((len(texts), 16), dtype=np.float32)
    for i, t in enumerate(texts):
        out[i, int(hashlib.md5(t.encode()).hexdigest(), 16) % 16] = 1.0
    return out + 1e-3


class ShapeTarget:
    def __init__(self, bytes_per_token: int, tokens: dict[str, int]) -> None:
        self.bpt = bytes_per_token
        self.tokens = tokens
        self.builds = 0

    def estimate(self, item):
        t = self.tokens[item.id]
        return t * self.bpt, t

    def build(self, items):
        self.builds += 1
        t = sum(self.tokens[i.id] for i in items)
        return hashlib.sha256(items[0].id.encode()).hexdigest()[:32], t * self.bpt, t

    def delete(self, artifact_id):
        pass


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 1, 1, tzinfo=timezone.utc)

    def __call__(self):
        return self.now


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--accesses", type=int, default=20000)
    ap.add_argument("--budget-frac", type=float, default=0.1, help="budget as a fraction of all memories' KV bytes")
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--step", type=int, default=250, help="scheduler step every N accesses")
    ap.add_argument("--bytes-per-token", type=int, default=2 * 24 * 2 * 64 * 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory() as td:
        clock = Clock()
        cube = MemCube(Path(td) / "c", embedder=_emb, clock=clock)
        lengths = [int(min(400, max(20, rng.lognormvariate(4.3, 0.7)))) for _ in range(a.n)]
        items = cube.add_many([f"memory {i}: " + "w " * L for i, L in enumerate(lengths)])
        tokens = {it.id: L for it, L in zip(items, lengths)}
        total_bytes = sum(lengths) * a.bytes_per_token
        budget = int(total_bytes * a.budget_frac)
        # Zipf popularity over a random permutation of the memories
        weights = np.array([1.0 / (r + 1) ** a.zipf for r in range(a.n)])
        weights /= weights.sum()
        order = list(range(a.n))
        rng.shuffle(order)
        nprng = np.random.default_rng(a.seed)
        seq = [items[order[r]].id for r in nprng.choice(a.n, size=a.accesses, p=weights)]

        # baseline: LRU on demand
        lru: OrderedDict[str, int] = OrderedDict()
        used = 0
        lru_hits = lru_saved = 0
        for iid in seq:
            t = tokens[iid]
            if iid in lru:
                lru.move_to_end(iid)
                lru_hits += 1
                lru_saved += t
                continue
            need = t * a.bytes_per_token
            while used + need > budget and lru:
                _, b = lru.popitem(last=False)
                used -= b
            if need <= budget:
                lru[iid] = need
                used += need
        lru_peak = used

        target = ShapeTarget(a.bytes_per_token, tokens)
        sched = MemScheduler(cube, activation=target, budget_bytes=budget, clock=clock, auto_observe=False,
                             half_life=timedelta(hours=12), policies=[RefreshStale(), PromoteHotToActivation()])
        t0 = time.perf_counter()
        peak = 0
        for n, iid in enumerate(seq, 1):
            clock.now += timedelta(seconds=30)
            sched.observe([iid], injected=True)
            if n % a.step == 0:
                sched.step()
                peak = max(peak, sched.stats()["cache_bytes"])
        elapsed = time.perf_counter() - t0
        st = sched.stats()
        sched.close()
        cube.close()
    total_tokens = sum(tokens[i] for i in seq)
    rep = {
        "memories": a.n, "accesses": a.accesses, "zipf": a.zipf, "budget_bytes": budget,
        "budget_frac": a.budget_frac, "total_kv_bytes_all_memories": total_bytes,
        "prefill_tokens_total": total_tokens,
        "none": {"cache_hit_rate": 0.0, "prefill_tokens_saved": 0},
        "lru_on_demand": {"cache_hit_rate": round(lru_hits / a.accesses, 4), "prefill_tokens_saved": lru_saved,
                          "saved_frac": round(lru_saved / total_tokens, 4), "cache_builds": a.accesses - lru_hits,
                          "bytes_used_end": lru_peak},
        "memos": {"cache_hit_rate": st["cache_hit_rate"], "prefill_tokens_saved": st["prefill_tokens_saved"],
                  "saved_frac": round(st["prefill_tokens_saved"] / total_tokens, 4), "cache_builds": target.builds,
                  "bytes_used_peak": peak, "bytes_used_end": st["cache_bytes"],
                  "scheduler_overhead_ms_per_access": round(elapsed * 1000 / a.accesses, 3)},
    }
    if not a.json:
        print(f"{a.n} memories, {a.accesses} Zipf({a.zipf}) accesses, budget {budget / 2**20:.1f} MiB "
              f"({a.budget_frac:.0%} of {total_bytes / 2**20:.1f} MiB)")
        for name in ("none", "lru_on_demand", "memos"):
            r = rep[name]
            print(f"  {name:<14} hit rate {r['cache_hit_rate']:.3f}  prefill tokens saved {r['prefill_tokens_saved']:>9}"
                  f" ({r.get('saved_frac', 0):.1%})  cache builds {r.get('cache_builds', 0)}")
        print(f"  memos peak bytes {peak} <= budget {budget}: {peak <= budget}")
    else:
        print(json.dumps(rep))
    return rep


if __name__ == "__main__":
    main(sys.argv[1:])
