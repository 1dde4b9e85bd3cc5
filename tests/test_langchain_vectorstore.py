"""MemOSVectorStore: LangChain's standard VectorStore suite (sync and async) plus MemOS specifics.

The standard suite hands the store its own embeddings (``DeterministicFakeEmbedding(size=6)`` from
``get_embeddings()``); the fixture builds each cube with them, in a fresh folder per test. The standard suite and
the scope/version test also run on PostgreSQL (records_backends): there the store is built from the
``postgresql://`` URL with the Chroma server as ``index=``, as an app on several workers would build it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Iterator

import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests

from memos_core import Conflict, MemCube, MemoryKind
from memos_langchain import MemOSVectorStore
from memos_langchain.testing import HashingEmbeddings


def mark_async_tests(cls: type) -> type:
    """langchain-tests' async tests carry no marker (they assume asyncio_mode=auto); mark them here."""
    for name in dir(cls):
        fn = getattr(cls, name)
        if name.startswith("test_") and inspect.iscoroutinefunction(fn):
            pytest.mark.asyncio(fn)
    return cls


def open_store(path: Path, store_for: Any, chroma_url: str | None, **kw: Any) -> MemOSVectorStore:
    """A store on a cube folder at ``path``, or (PostgreSQL backend) on a fresh PostgreSQL cube opened by URL."""
    target = store_for(path)
    if target != path:
        kw["index"] = chroma_url
    return MemOSVectorStore(target, **kw)


@pytest.fixture
def url_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemOS opened by URL keeps its local folder under $XDG_CACHE_HOME: the test's own folder here."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


@mark_async_tests
@pytest.mark.records_backends
class TestMemOSVectorStoreStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path: Path, store_for: Any, chroma_url: str | None,  # type: ignore[override]
                    url_workdir: None) -> Iterator[MemOSVectorStore]:
        store = open_store(tmp_path / "cube", store_for, chroma_url, embedding=self.get_embeddings(), user_id="ann")
        try:
            yield store
        finally:
            store.cube.close()


@pytest.fixture
def vs(tmp_path: Path, store_for: Any, chroma_url: str | None, url_workdir: None) -> Iterator[MemOSVectorStore]:
    store = open_store(tmp_path / "cube", store_for, chroma_url, embedding=HashingEmbeddings(64), user_id="ann")
    yield store
    store.cube.close()


@pytest.mark.records_backends
def test_versions_scope_filters_and_scores(vs: MemOSVectorStore) -> None:
    ids = vs.add_texts(["Ann likes green tea", "Ann lives in Lisbon", "The cello is a string instrument"],
                       [{"topic": "food", "n": 1}, {"topic": "home", "n": 2}, {"topic": "music", "n": 3}],
                       ids=["tea", "home", "cello"])
    assert ids == ["tea", "home", "cello"]
    item = vs.cube.get("tea")
    assert item.scope.user_id == "ann" and item.kind == MemoryKind.DOCUMENT
    vs.add_texts(["Ann likes black tea"], [{"topic": "food", "n": 1}], ids=["tea"])
    assert [v.content for v in vs.cube.history("tea")] == ["Ann likes green tea", "Ann likes black tea"]
    assert vs.similarity_search("tea", k=1)[0].id == "tea"
    assert [d.id for d in vs.similarity_search("Ann", k=5, filter={"n": {"$gte": 2}})] in (["home", "cello"],
                                                                                           ["cello", "home"])
    docs_scores = vs.similarity_search_with_score("black tea", k=3)
    assert docs_scores[0][0].id == "tea" and -1.0 <= docs_scores[-1][1] <= docs_scores[0][1] <= 1.0001
    rel = vs.similarity_search_with_relevance_scores("black tea", k=3)
    assert all(0.0 <= s <= 1.0 for _, s in rel) and rel[0][0].id == "tea"
    # another scope does not see these documents, nor may it overwrite them
    other = MemOSVectorStore(vs.cube, user_id="bob")
    assert other.similarity_search("tea", k=3) == [] and other.get_by_ids(["tea"]) == []
    with pytest.raises(Conflict):
        other.add_texts(["hijack"], ids=["tea"])
    other.delete(["tea"])  # not in its scope: ignored
    assert vs.get_by_ids(["tea"])[0].page_content == "Ann likes black tea"
    # delete is a tombstone; re-adding the id revives the memory with a new version
    vs.delete(["tea"])
    assert vs.get_by_ids(["tea"]) == []
    vs.add_documents([Document(page_content="Ann likes mint tea", metadata={}, id="tea")])
    assert vs.get_by_ids(["tea"])[0].page_content == "Ann likes mint tea"
    assert len(vs.cube.history("tea")) == 3
    with pytest.raises(ValueError):
        vs.delete()


def test_hybrid_mode_and_retriever(tmp_path: Path) -> None:
    cube = MemCube(tmp_path / "c", embedder=HashingEmbeddings(64))
    vs = MemOSVectorStore.from_texts(["alpha beta", "gamma delta", "epsilon"], HashingEmbeddings(64),
                                     memory=cube, search_mode="hybrid", user_id="ann")
    assert vs.similarity_search("gamma", k=1)[0].page_content == "gamma delta"
    retriever = vs.as_retriever(search_kwargs={"k": 2})
    assert len(retriever.invoke("alpha")) == 2
    with pytest.raises(ValueError):
        MemOSVectorStore(cube, search_mode="fuzzy", user_id="ann")


def test_from_texts_without_memory_creates_a_cube() -> None:
    vs = MemOSVectorStore.from_texts(["one text"], HashingEmbeddings(16), ids=["x"], single_user=True)
    try:
        assert vs.get_by_ids(["x"])[0].page_content == "one text"
        assert isinstance(vs.embeddings, HashingEmbeddings)
    finally:
        vs.cube.close()


@pytest.mark.records_backends
def test_upserts_from_several_workers(tmp_path: Path, store_for: Any, chroma_url: str | None, url_workdir: None
                                      ) -> None:
    """Workers with their own handle on one cube add documents with the same ids at once: no error (a version
    conflict with another writer is read again and retried; an id another worker added first becomes a new
    version), every id ends with one of the written texts, versions contiguous."""
    import threading

    stores = [open_store(tmp_path / "cube", store_for, chroma_url, embedding=HashingEmbeddings(64), user_id="ann")
              for _ in range(3)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def work(w: int, vs: MemOSVectorStore) -> None:
        start.wait()
        for r in range(10):
            try:
                vs.add_texts([f"worker {w} round {r} doc {d}" for d in range(3)], ids=[f"r{r}-d{d}" for d in range(3)])
            except BaseException as exc:  # noqa: BLE001 - collected and reported below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(w, vs)) for w, vs in enumerate(stores)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        ids = [f"r{r}-d{d}" for r in range(10) for d in range(3)]
        docs = {d.id: d.page_content for d in stores[0].get_by_ids(ids)}
        assert set(docs) == set(ids)
        for item_id, text in docs.items():
            r, d = item_id[1:].split("-d")
            assert text in {f"worker {w} round {r} doc {d}" for w in range(3)}
            versions = [v.version for v in stores[0].cube.history(item_id)]
            assert versions == list(range(1, len(versions) + 1))
    finally:
        for vs in stores:
            vs.cube.close()
