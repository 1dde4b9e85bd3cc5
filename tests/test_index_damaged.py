"""An embedded Chroma index whose HNSW files a killed process left damaged (an empty ``index_metadata.pickle``:
SIGTERM while Chroma persisted it) no longer locks the cube out. The index is derived data: the cube moves the
damaged folder aside (renamed with a timestamp), logs a WARNING saying where, rebuilds the index from the
embeddings stored in the records, then deletes the old folder. A Chroma server that is down is not "damage": it still raises
BackendUnavailable and nothing is moved."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from chroma_server import running_server
from conftest import hashed_embed

from memos_core.cube import MemCube
from memos_core.errors import BackendUnavailable
from memos_core.plaintext.vector import ChromaVectorIndex, IndexFilesDamaged, _damaged_files

QUERIES = ["memory 7 about subject 7", "subject 3", "memory 1042 about subject 5"]


def _dense_hits(cube: MemCube) -> list[tuple[list[float], set[str]]]:
    """Per query: the top-5 dense scores, and the ids scored above the 5th (a tie at the cut may come out either
    way in a rebuilt HNSW graph; every hit above it must be the same)."""
    out = []
    for q in QUERIES:
        hits = cube.search(q, k=5, mode="dense")
        scores = [round(h.score, 4) for h in hits]
        out.append((scores, {h.item.id for h, s in zip(hits, scores) if s > scores[-1]}))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]]]:
    """A cube whose Chroma folder holds a persisted HNSW segment (Chroma persists every 1,000 writes), and its
    dense search hits before any damage."""
    folder = tmp_path_factory.mktemp("damaged") / "c"
    with MemCube(folder, embedder=hashed_embed) as cube:
        cube.add_many([f"memory {i} about subject {i % 17}" for i in range(1100)], progress=False)
    with MemCube(folder, embedder=hashed_embed) as cube:
        hits = _dense_hits(cube)
    assert all(len(scores) == 5 and ids for scores, ids in hits)
    return folder, hits


def _segment_file(folder: Path, name: str) -> Path:
    found = list((folder / "chroma").glob(f"*/{name}"))
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("name", ["index_metadata.pickle", "header.bin"])
def test_damaged_index_is_moved_aside_and_rebuilt(built, tmp_path: Path, caplog, name: str) -> None:
    src, before = built
    folder = tmp_path / "c"
    shutil.copytree(src, folder)
    damaged = _segment_file(folder, name)
    damaged.write_bytes(b"")  # what SIGTERM during Chroma's persist left behind

    # the damage is what chromadb reports on the first call, recognised as such (not a plain outage)
    raw = ChromaVectorIndex(path=folder / "chroma")
    with pytest.raises(IndexFilesDamaged):
        raw.count()
    raw.close()

    with caplog.at_level(logging.WARNING, logger="memos"):
        with MemCube(folder, embedder=hashed_embed) as cube:
            assert _dense_hits(cube) == before
            assert not cube.index_degraded
            assert cube.index.count() == 1100
    # the old folder was moved aside, then deleted once the index was rebuilt: it may hold vectors of memories
    # forgotten since, and forget leaves no derived copy
    assert not list(tmp_path.glob("c/chroma.damaged-*"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("memos")]
    assert any("damaged" in m and "moved it aside" in m for m in warnings), warnings
    assert any("rebuilt" in m and "deleted" in m for m in warnings), warnings

    # the rebuilt index is a normal one: the next open neither moves nor rebuilds anything
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="memos"):
        with MemCube(folder, embedder=hashed_embed) as cube:
            assert _dense_hits(cube) == before
    assert not list(tmp_path.glob("c/chroma.damaged-*"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "damaged" in r.getMessage()]


def test_only_damaged_segment_errors_count_as_damage() -> None:
    from chromadb.errors import InternalError

    assert _damaged_files(InternalError("Error executing plan: Error sending backfill request to compactor: Error "
                                        "constructing hnsw segment reader: Error creating hnsw segment reader: Error "
                                        "deserializing pickle file: eval error at offset 0: EOF while parsing"))
    assert not _damaged_files(InternalError("database is locked"))
    assert not _damaged_files(ConnectionError("Could not connect to a Chroma server"))
    assert not _damaged_files(ModuleNotFoundError("No module named 'chromadb'"))


def test_a_chroma_server_that_is_down_still_raises_backend_unavailable(tmp_path_factory, tmp_path: Path) -> None:
    gen = running_server(tmp_path_factory, "chroma-down")
    server = next(gen)
    try:
        with MemCube(tmp_path / "c", embedder=hashed_embed, chroma_url=server.url) as cube:
            cube.add_many(["alpha fact", "beta fact"], progress=False)
        server.stop()
        index = ChromaVectorIndex(url=server.url, collection="probe")
        with pytest.raises(BackendUnavailable) as err:
            index.count()
        assert not isinstance(err.value, IndexFilesDamaged)
        index.close()
        with MemCube(tmp_path / "c", embedder=hashed_embed, chroma_url=server.url) as cube:
            assert cube.index_degraded  # an outage: lexical search, pending writes wait; nothing set aside
            assert cube.count() == 2
        assert not list(tmp_path.glob("**/*.damaged-*"))
    finally:
        gen.close()  # stops the server (stop() is idempotent)
