"""A large embedded vector index is opened and loaded on a background thread when its cube opens (like the
embedder preload), so that the first search or write after opening does not wait for Chroma to open the client
and read the HNSW segment. The open-time consistency check still runs on the index's first real use, the warm-up
never opens a second client, and closing the cube meanwhile leaves no client open."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import hashed_embed

import memos_core.cube as cube_mod
from memos_core.cube import MemCube
from memos_core.plaintext.vector import ChromaVectorIndex


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cube whose Chroma folder holds a persisted HNSW segment (Chroma persists every 1,000 writes)."""
    folder = tmp_path_factory.mktemp("warm") / "c"
    with MemCube(folder, embedder=hashed_embed) as cube:
        cube.add_many([f"memory {i} about subject {i % 17}" for i in range(1100)], progress=False)
    return folder


def _warm_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "memos-index-warm"]


def _counting_clients(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    import chromadb

    made: list[Any] = []
    real = chromadb.PersistentClient

    def counting(*args: Any, **kwargs: Any) -> Any:
        client = real(*args, **kwargs)
        made.append(client)
        return client

    monkeypatch.setattr(chromadb, "PersistentClient", counting)
    return made


def test_opening_a_large_index_loads_it_in_the_background(big_folder: Path, monkeypatch) -> None:
    assert ChromaVectorIndex(path=big_folder / "chroma").persisted_bytes() > 0
    monkeypatch.setattr(cube_mod, "WARM_INDEX_BYTES", 1)
    made = _counting_clients(monkeypatch)
    with MemCube(big_folder, embedder=hashed_embed) as cube:
        for t in _warm_threads():
            t.join(120)
        inner = cube.index._inner  # type: ignore[attr-defined]
        assert inner._col is not None and len(made) == 1  # opened and loaded before any use
        assert not cube._index_checked  # the consistency check is still the first real use's
        hits = cube.search("memory 7 about subject 7", k=1, mode="dense")
        assert hits[0].item.content == "memory 7 about subject 7"
        assert len(made) == 1  # the first use took the warmed client, no second one


def test_a_small_index_or_preload_off_opens_nothing(big_folder: Path, monkeypatch) -> None:
    made = _counting_clients(monkeypatch)
    monkeypatch.setattr(cube_mod, "WARM_INDEX_BYTES", 1 << 40)  # larger than this index
    with MemCube(big_folder, embedder=hashed_embed):
        assert not _warm_threads() and made == []
    monkeypatch.setattr(cube_mod, "WARM_INDEX_BYTES", 1)
    monkeypatch.setenv("MEMOS_PRELOAD", "0")
    with MemCube(big_folder, embedder=hashed_embed):
        assert not _warm_threads() and made == []


def test_warm_and_first_use_at_once_open_one_client_and_close_releases_it(big_folder: Path, monkeypatch) -> None:
    made = _counting_clients(monkeypatch)
    index = ChromaVectorIndex(path=big_folder / "chroma")
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(fn: Any) -> None:
        try:
            start.wait(30)
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(index.warm,)) for _ in range(2)]
    threads += [threading.Thread(target=run, args=(index.count,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(made) == 1
    index.close()
    assert index._client is None and index.warm() == 0.0 and index._client is None  # closed: warm opens nothing
    assert index.count() == 1100  # a real call after close reopens it, as before
    index.close()
