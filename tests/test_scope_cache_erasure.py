"""A memory forgotten (or purged) through another handle -- another worker, another connection -- leaves this
handle's scope cache at this handle's next call of ANY kind on the cube (it was: only at its next scoped search or
close), on SQLite and on PostgreSQL (``records_backends``).

The cost on the common path is nothing on PostgreSQL (the erasure counter rides on the role/settings statement
every governed call makes) and one local read on SQLite; only a call that sees the counter moved replays the
vector change log.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memos_core.plaintext import scope_cache

pytestmark = pytest.mark.records_backends


def _holds(cache, vec: np.ndarray) -> bool:
    return any(bool(np.any(np.all(e.mat == vec, axis=1))) for e in cache._entries.values())


def test_another_handles_forget_leaves_the_cache_at_the_next_call_of_any_kind(tmp_path: Path, open_cube) -> None:
    a = open_cube(tmp_path / "c")
    b = open_cube(tmp_path / "c")
    texts = ["apple banana cherry dog", "egg fig grape hat", "ice jam kite lemon", "mango nut orange pear",
             "quilt rose sand tulip", "umbrella violin whale yak", "zebra apple egg ice", "mango quilt umbrella fig",
             "banana dog hat lemon", "cherry grape kite nut"]
    items = a.add_many([{"content": t, "user_id": "u0"} for t in texts])
    other = a.add("a memory of another user", user_id="u1")
    a.search("apple", k=3, user_id="u0")
    a.search("apple", k=3, user_id="u0")
    cache = scope_cache.cache_for(a.records)
    assert cache is not None

    calls = [
        ("get", lambda: a.get(other.id)),
        ("unscoped search", lambda: a.search("memory", k=2)),
        ("lexical search", lambda: a.search("memory", k=2, mode="lexical")),
        ("count", lambda: a.count()),
        ("add", lambda: a.add("one more memory", user_id="u1")),
        ("list", lambda: a.list(limit=2)),
    ]
    victims = items[:len(calls)]
    for (name, call), victim in zip(calls, victims):
        rowid = a.records.rowid(victim.id)
        vec = a.records.embedding(rowid).astype(np.float32)
        assert rowid in cache.cached_rowids() and _holds(cache, vec), name
        b.forget(victim.id)  # the other worker
        assert rowid in cache.cached_rowids()  # (nothing told this handle yet)
        call()  # no scoped search: any call on the cube
        assert rowid not in cache.cached_rowids() and not _holds(cache, vec), name

    survivor = items[len(calls)]  # purge blanks the content and drops the embedding: also an erasure
    rowid = a.records.rowid(survivor.id)
    vec = a.records.embedding(rowid).astype(np.float32)
    assert _holds(cache, vec)
    b.delete(survivor.id)
    b.purge(survivor.id)
    a.get(other.id)
    assert rowid not in cache.cached_rowids() and not _holds(cache, vec)

    # the cache still answers exactly afterwards
    hits = a.search("banana dog hat lemon", k=3, user_id="u0", mode="dense")
    assert hits[0].item.id == items[8].id
    assert not {v.id for v in victims} & {h.item.id for h in a.search("apple egg", k=20, user_id="u0")}


def test_no_erasure_no_replay(tmp_path: Path, open_cube) -> None:
    """Calls that see no new erasure leave the cache alone (no replay of the log on the common path)."""
    a = open_cube(tmp_path / "c")
    b = open_cube(tmp_path / "c")
    a.add_many([{"content": f"memory {i} of the first user", "user_id": "u0"} for i in range(5)])
    a.search("memory", k=3, user_id="u0")
    cache = scope_cache.cache_for(a.records)
    syncs = cache.erasure_syncs
    b.add("written by the other worker", user_id="u0")
    for _ in range(3):
        a.get(a.list(limit=1)[0].id)
        a.search("memory", k=2)
    assert cache.erasure_syncs == syncs
