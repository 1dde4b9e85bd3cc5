"""What the vector index stores beside each vector (and pre-filters on: lifecycle state, kind, the user /
agent / session scope axes that are set) is the same whichever path wrote it: a write applied after commit
(immediate or deferred), the open-time repair re-adding missing rows, a full reindex, and a compaction."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import hashed_embed

from memos_core.cube import MemCube


def _stored_meta(cube: MemCube) -> dict[str, dict[str, Any]]:
    got = cube.index._inner._collection().get(include=["metadatas"])
    return dict(zip(got["ids"], got["metadatas"]))


def _expected(cube: MemCube, ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item_id in ids:
        it = cube.get(item_id, include_deleted=True)
        if it.state.value in ("deleted", "purged"):
            continue  # not in the vector index
        meta: dict[str, Any] = {"state": it.state.value, "kind": it.kind.value}
        for axis in ("user_id", "agent_id", "session_id"):
            if getattr(it.scope, axis) is not None:
                meta[axis] = getattr(it.scope, axis)
        out[item_id] = meta
    return out


def _fill(cube: MemCube) -> list[str]:
    ids = [
        cube.add("ann lives in Lisbon", user_id="ann").id,
        cube.add("ann prefers window seats", kind="preference", user_id="ann", agent_id="travel",
                 session_id="s1").id,
        cube.add("the office closes at six", kind="note").id,
        cube.add("bob met ann at the harbour", kind="episode", user_id="bob", session_id="s2").id,
        cube.add("a memory that gets deleted", user_id="ann").id,
        cube.add("the agent's own procedure", kind="procedure", agent_id="travel").id,
    ]
    cube.transition(ids[3], "archived", reason="cold")
    cube.transition(ids[5], "frozen", reason="hold")
    cube.delete(ids[4])
    return ids


@pytest.mark.parametrize("sync", ["immediate", "deferred"])
def test_every_path_that_writes_the_vector_index_stores_the_same_metadata(tmp_path, sync: str) -> None:
    with MemCube(tmp_path / "c", embedder=hashed_embed, vector_sync=sync, embed_sync=sync) as cube:
        ids = _fill(cube)
        cube.search("ann", k=1)  # applies whatever is deferred
        want = _expected(cube, ids)
        assert len(want) == 5 and want[ids[1]] == {"state": "activated", "kind": "preference", "user_id": "ann",
                                                   "agent_id": "travel", "session_id": "s1"}
        assert want[ids[2]] == {"state": "activated", "kind": "note"}
        assert _stored_meta(cube) == want  # written after each commit

        cube.index._inner.delete([ids[0], ids[1], ids[3]])  # lost rows: the repair adds them back
        assert cube.repair_index()["added"] == 3
        assert _stored_meta(cube) == want

        assert cube.reindex() == {"indexed": 5}
        assert _stored_meta(cube) == want

        assert cube.compact_index()["indexed"] == 5
        assert _stored_meta(cube) == want

        cube.transition(ids[3], "activated", reason="warm again")  # a state change re-applies the row
        cube.search("ann", k=1)
        assert _stored_meta(cube) == _expected(cube, ids)
        assert _stored_meta(cube)[ids[3]]["state"] == "activated"
