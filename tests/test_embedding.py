"""The offline default embedder: the single-query fast path equals the batch path."""

from __future__ import annotations

import numpy as np

from memos_core.embedding import _mean_pooled_bert

TEXTS = ["Where does Ann live?", "x", "Lisbon in the summer " * 120, "   ", "émigré 日本語 café", "I'm fine."]


def test_query_path_matches_document_path(minilm) -> None:
    assert _mean_pooled_bert(minilm._model()) is not None  # the fast path is the one exercised
    docs = minilm.embed_documents(TEXTS)
    for text, doc in zip(TEXTS, docs):
        q = minilm.embed_query(text)
        assert q.dtype == np.float32 and q.shape == (384,)
        assert np.abs(q - doc).max() < 1e-5, text
        assert abs(float(np.linalg.norm(q)) - 1.0) < 1e-5


def test_other_model_shapes_use_the_generic_path() -> None:
    class Odd:
        def __iter__(self):
            return iter([object()])

    assert _mean_pooled_bert(Odd()) is None
    assert _mean_pooled_bert(42) is None


# ------------------------------------------------------------------ query-vector cache
class CountingEmbedder:
    """emb32 with call counters (a LangChain-style Embeddings)."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.batches: list[list[str]] = []

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from conftest import emb32

        self.batches.append(list(texts))
        return emb32(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        from conftest import emb32

        self.queries.append(text)
        return emb32([text])[0].tolist()


def _cube(tmp_path, emb, **cfg):
    from memos_core.cube import MemCube, RetrievalConfig

    cube = MemCube(tmp_path / "c", embedder=emb, retrieval=RetrievalConfig(**cfg))
    cube.add_many([{"content": f"memory number {i} about sailing to Lisbon"} for i in range(5)])
    cube.add("Ann keeps a greyhound named Biscuit")
    return cube


def test_repeated_query_is_embedded_once_and_ranks_the_same(tmp_path) -> None:
    emb = CountingEmbedder()
    cube = _cube(tmp_path, emb)
    first = cube.search("Ann greyhound Biscuit", k=3)
    again = cube.search("Ann greyhound Biscuit", k=3)
    # the question and, for the topical leg, the question without its names ("Biscuit"): each embedded once
    assert emb.queries == ["Ann greyhound Biscuit", "Ann greyhound"]
    assert [(h.item.id, h.score) for h in first] == [(h.item.id, h.score) for h in again]
    assert first[0].item.content == "Ann keeps a greyhound named Biscuit"
    cube.search("sailing to Lisbon", k=3)  # another query is embedded (and its name-free topic)
    assert emb.queries[2:] == ["sailing to Lisbon", "sailing to"]
    # a dialogue query (text + last user turn, one batch) is cached as a whole too
    dialogue = "<Ann>: I miss my dog. <Assistant>: Tell me about him. <Ann>: He is a greyhound."
    cube.search(dialogue, k=3)
    cube.search(dialogue, k=3)
    assert sum(1 for b in emb.batches if len(b) == 2) == 1
    cube.close()


def test_query_cache_is_bounded_and_can_be_disabled(tmp_path) -> None:
    emb = CountingEmbedder()
    cube = _cube(tmp_path / "a", emb, query_cache=2)
    for q in ("one", "two", "three", "one"):  # "one" was evicted by "three"
        cube.search(q, k=1)
    assert emb.queries == ["one", "two", "three", "one"]
    cube.search("three", k=1)
    assert emb.queries.count("three") == 1
    cube.close()

    emb2 = CountingEmbedder()
    off = _cube(tmp_path / "b", emb2, query_cache=0)
    off.search("same", k=1)
    off.search("same", k=1)
    assert emb2.queries == ["same", "same"]
    off.close()


def test_query_cache_setting_is_validated() -> None:
    import pytest

    from memos_core.cube import RetrievalConfig
    from memos_core.errors import ValidationError

    for bad in (-1, 1.5, True, "10"):
        with pytest.raises(ValidationError, match="query_cache"):
            RetrievalConfig(query_cache=bad)  # type: ignore[arg-type]


def test_cubes_sharing_an_embedder_embed_a_query_once(tmp_path) -> None:
    from memos_core.os import MemOS

    emb = CountingEmbedder()
    mem = MemOS(tmp_path / "os", embedder=emb)
    mem.add("Ann lives in Porto", user_id="ann")
    mem.create_cube("work")
    mem.add("Ann's manager is Bruno", user_id="ann", cube="work")
    hits = mem.search("who is Ann's manager?", user_id="ann", cubes=["default", "work"], k=3)
    assert any("Bruno" in h.item.content for h in hits)
    assert emb.queries.count("who is Ann's manager?") == 1
    mem.close()


def test_cached_vectors_are_read_only() -> None:
    import pytest

    from memos_core.embedding import cached_query_vector

    class E:  # any weakly referenceable object will do as the key owner
        pass

    e = E()
    v = cached_query_vector(e, "q", lambda: np.ones(4, dtype=np.float32), 8)
    with pytest.raises(ValueError):
        v[0] = 5.0
    assert cached_query_vector(e, "q", lambda: np.zeros(4, dtype=np.float32), 8)[0] == 1.0
    # an object that cannot be weakly referenced is simply not cached
    calls = []
    assert cached_query_vector(1, "q", lambda: calls.append(1) or np.ones(2), 8).shape == (2,)
    cached_query_vector(1, "q", lambda: calls.append(1) or np.ones(2), 8)
    assert len(calls) == 2


# ------------------------------------------------------------------ ONNX Runtime query path
def test_onnx_query_path_gives_the_pytorch_vectors(minilm) -> None:
    from memos_core.embedding import MiniLMEmbedder

    onnx, torch_ = MiniLMEmbedder(query_backend="onnx"), MiniLMEmbedder(query_backend="torch")
    docs = minilm.embed_documents(TEXTS)
    for text, doc in zip(TEXTS, docs):
        a, b = onnx.embed_query(text), torch_.embed_query(text)
        assert a.dtype == np.float32 and a.shape == (384,)
        assert np.abs(a - b).max() < 1e-5 and np.abs(a - doc).max() < 1e-5, text


def test_query_backend_is_validated(monkeypatch) -> None:
    import pytest

    from memos_core.embedding import MiniLMEmbedder
    from memos_core.errors import ValidationError

    with pytest.raises(ValidationError, match="query_backend"):
        MiniLMEmbedder(query_backend="tensorrt")
    monkeypatch.setenv("MEMOS_QUERY_BACKEND", "gpu")
    with pytest.raises(ValidationError, match="query_backend"):
        MiniLMEmbedder()
    monkeypatch.setenv("MEMOS_QUERY_BACKEND", "torch")
    assert MiniLMEmbedder().query_backend == "torch"


def test_a_bad_cached_onnx_file_is_never_used(minilm, monkeypatch, tmp_path) -> None:
    """A truncated/tampered file, or one whose output disagrees with PyTorch, is deleted and PyTorch serves."""
    import shutil

    import pytest

    from memos_core import embedding as E

    bert, tok = E._mean_pooled_bert(minilm._model())
    good = E._onnx_runner(bert, tok, required=True)  # exported (or found) in the user's cache
    assert good is not None
    path = E._onnx_path(bert)
    monkeypatch.setenv("MEMOS_CACHE_DIR", str(tmp_path))
    mine = E._onnx_path(bert)
    assert mine != path and str(mine).startswith(str(tmp_path))
    mine.parent.mkdir(parents=True)

    # garbage bytes: not loaded, deleted, PyTorch serves
    mine.write_bytes(b"\x08\x01not an onnx model")
    monkeypatch.setattr(E, "_ONNX", {})
    assert E._onnx_runner(bert, tok) is None
    assert not mine.exists()
    want = E.MiniLMEmbedder(query_backend="torch").embed_query("Where does Ann live?")
    assert np.abs(E.MiniLMEmbedder().embed_query("Where does Ann live?") - want).max() < 1e-6

    # a readable model that disagrees with PyTorch: refused and deleted
    shutil.copyfile(path, mine)
    monkeypatch.setattr(E, "_ONNX", {})
    monkeypatch.setattr(E._OnnxBert, "hidden", lambda self, texts, n: (np.zeros((len(texts), 3, 384)), None))
    with pytest.raises(E.ValidationError, match="disagrees"):
        E._try_load_onnx(bert, tok, mine, required=True)
    assert not mine.exists()
    monkeypatch.undo()


def test_auto_backend_exports_in_the_background_and_switches_when_ready(minilm, monkeypatch, tmp_path) -> None:
    import threading

    from memos_core import embedding as E

    monkeypatch.setenv("MEMOS_CACHE_DIR", str(tmp_path))  # nothing cached here
    monkeypatch.setattr(E, "_ONNX", {})
    monkeypatch.setattr(E, "_ONNX_JOBS", {})
    release = threading.Event()
    marker = np.full(384, 0.05, dtype=np.float32)

    class Fake:
        def embed(self, text: str, n: int) -> np.ndarray:
            return marker

    def slow_export(bert, tok, path):
        release.wait(10)
        return Fake()

    monkeypatch.setattr(E, "_load_onnx", slow_export)
    emb = E.MiniLMEmbedder()
    first = emb.embed_query("Where does Ann live?")  # export still running: PyTorch answers at once
    assert not np.array_equal(first, marker) and abs(float(np.linalg.norm(first)) - 1) < 1e-5
    (job,) = E._ONNX_JOBS.values()
    assert job.is_alive() and not job.daemon
    release.set()
    job.join(10)
    assert np.array_equal(emb.embed_query("Where does Ann live?"), marker)


def test_embed_queries_matches_the_document_path(minilm) -> None:
    from memos_core.embedding import MiniLMEmbedder

    for backend in ("onnx", "torch"):
        got = MiniLMEmbedder(query_backend=backend).embed_queries(TEXTS)
        assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
        assert np.abs(got - minilm.embed_documents(TEXTS)).max() < 1e-5, backend


def test_a_cached_query_in_use_is_not_the_one_evicted(tmp_path) -> None:
    emb = CountingEmbedder()
    cube = _cube(tmp_path, emb, query_cache=2)
    for q in ("one", "two", "one", "three", "one"):  # re-using "one" keeps it; "two" is the least recent
        cube.search(q, k=1)
    assert emb.queries == ["one", "two", "three"]
    cube.close()


def test_bench_leaves_the_callers_config_alone(tmp_path) -> None:
    import json

    from memos_core.bench.retrieval import run
    from memos_core.cube import RetrievalConfig

    data = {"name": "tiny", "conversations": [{"id": "c", "sessions": [{"id": "s", "date": "2024-01-02", "turns": [
        {"id": "t1", "speaker": "Ann", "text": "I adopted a greyhound named Biscuit"},
        {"id": "t2", "speaker": "Bob", "text": "We sailed to Lisbon last spring"}]}],
        "queries": [{"id": "q", "text": "What is Ann's dog called?", "evidence": ["t1"], "category": "x"}]}]}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    cfg = RetrievalConfig(query_cache=64)
    rep = run(path, embedder=CountingEmbedder(), modes=("hybrid",), retrieval=cfg)
    assert rep["queries"] == 1 and cfg.query_cache == 64


# ------------------------------------------------------------------ framework conversions (memos_core._adapters)
def test_framework_embedders_are_converted_by_their_adapter_packages() -> None:
    from langchain_core.embeddings import Embeddings
    from llama_index.core.embeddings import MockEmbedding

    from memos_core.embedding import CallableEmbedder, resolve_embedder

    class MyLangChainEmbeddings(Embeddings):  # a user's subclass, defined outside any langchain module
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[float(len(t)), 1.0, 0.0] for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return [0.0, 1.0, float(len(text))]

    lc = resolve_embedder(MyLangChainEmbeddings())
    assert isinstance(lc, CallableEmbedder) and lc.name == "langchain:MyLangChainEmbeddings"
    assert lc.dim == 3 and np.allclose(lc.embed_query("ab"), np.array([0, 1, 2]) / np.sqrt(5))

    li = resolve_embedder(MockEmbedding(embed_dim=8))
    assert isinstance(li, CallableEmbedder) and li.name == "unknown"  # its model_name
    docs = li.embed_documents(["a", "b"])  # through get_text_embedding_batch
    assert docs.shape == (2, 8) and np.allclose(np.linalg.norm(docs, axis=1), 1.0)
    assert li.embed_query("q").shape == (8,)


def test_core_conventions_need_no_adapter_and_unknown_objects_are_refused() -> None:
    import pytest

    from memos_core.embedding import CallableEmbedder, resolve_embedder
    from memos_core.errors import ValidationError

    duck = resolve_embedder(CountingEmbedder())  # the Embedder protocol, no framework class
    assert isinstance(duck, CallableEmbedder) and duck.embed_query("x").shape == (32,)
    fn = resolve_embedder(lambda texts: [[1.0, 0.0]] * len(texts))
    assert fn.embed_documents(["a", "b"]).shape == (2, 2)
    with pytest.raises(ValidationError, match="embedder: expected"):
        resolve_embedder(object())


def test_a_third_party_registers_its_own_conversions() -> None:
    from memos_core import _adapters
    from memos_core.embedding import CallableEmbedder, resolve_embedder
    from memos_core.reader.llm import ChatModel, LLMRequest

    class VendorEmbedder:  # neither the Embedder protocol nor callable
        def vectors(self, texts: list[str]) -> list[list[float]]:
            return [[1.0, float(len(t))] for t in texts]

    class VendorChat:
        def respond(self, prompt: str) -> str:
            return '{"facts": []}'

    class Backend:
        kind = "vendor"

        def __init__(self, model: VendorChat) -> None:
            self.model, self.name = model, "vendor-chat"
            self.seen: list[type | None] = []

        def call(self, messages, schema):
            self.seen.append(schema)
            return self.model.respond(messages[-1]["content"])

        async def acall(self, messages, schema):
            return self.call(messages, schema)

    class SubVendorChat(VendorChat):
        pass

    try:
        _adapters.register_embedder_adapter(VendorEmbedder, lambda o: CallableEmbedder(o.vectors, name="vendor"))
        _adapters.register_chat_model_adapter(VendorChat, Backend)
        emb = resolve_embedder(VendorEmbedder())
        assert emb.name == "vendor" and emb.embed_documents(["abc"]).shape == (1, 2)
        chat = ChatModel(SubVendorChat())  # found through the MRO
        assert chat.kind == "vendor" and chat.name == "vendor-chat"
        req = LLMRequest(purpose="extract", messages=[{"role": "user", "content": "hi"}], schema=dict)
        assert chat.call(req) == '{"facts": []}'
        chat.call(LLMRequest(purpose="extract", messages=[{"role": "user", "content": "hi"}], schema=dict,
                             attempt=1))
        off = ChatModel(SubVendorChat(), structured="off")
        off.call(req)
        assert chat.backend.seen == [dict, None] and off.backend.seen == [None]  # schema on first attempts only
    finally:
        _adapters._EMBED.pop(VendorEmbedder, None)
        _adapters._CHAT.pop(VendorChat, None)


def test_chat_models_of_each_kind() -> None:
    import pytest
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from llama_index.core.llms import MockLLM

    from memos_core.errors import ValidationError
    from memos_core.reader.llm import ChatModel, LLMRequest

    req = LLMRequest(purpose="extract", messages=[{"role": "system", "content": "S"},
                                                  {"role": "user", "content": "U"}], schema=dict)
    lc = ChatModel(FakeListChatModel(responses=["hello"]), structured="off")
    assert lc.kind == "langchain" and lc.call(req) == "hello"
    li = ChatModel(MockLLM())
    assert li.kind == "llamaindex" and li.call(req) == "S\n\nU"  # MockLLM echoes the one prompt string
    fn = ChatModel(lambda messages: {"facts": [], "n": len(messages)})
    assert fn.kind == "callable" and fn.call(req) == {"facts": [], "n": 2}
    assert ChatModel(fn).backend is not fn.backend and ChatModel(fn).llm is fn.llm
    with pytest.raises(ValidationError, match="llm: expected"):
        ChatModel(42)


# ------------------------------------------------------------------ documents and the light twin
def test_documents_through_the_onnx_twin_match_pytorch(minilm) -> None:
    from memos_core.embedding import MiniLMEmbedder

    docs = TEXTS + [f"memory {i}: Ann sailed to Lisbon with {i} friends " * (1 + i % 5) for i in range(70)]
    onnx = MiniLMEmbedder(query_backend="onnx").embed_documents(docs)  # sorted batches, both sessions
    torch_ = MiniLMEmbedder(query_backend="torch").embed_documents(docs)
    assert onnx.shape == torch_.shape == (len(docs), 384) and onnx.dtype == np.float32
    assert np.abs(onnx - torch_).max() < 1e-5
    one = MiniLMEmbedder(query_backend="onnx").embed_documents([docs[-1]])
    assert np.abs(one[0] - torch_[-1]).max() < 1e-5


_LIGHT_PROBE = """
import json, sys
import numpy as np
from memos_core.embedding import MiniLMEmbedder
texts = ["Where does Ann live?", "Ann moved to Lisbon in May " * 12]
emb = MiniLMEmbedder()
docs = emb.embed_documents(texts)
q = emb.embed_query(texts[0])
print(json.dumps({"torch": "torch" in sys.modules, "docs": docs.tolist(), "q": q.tolist()}))
"""


def test_a_new_process_embeds_without_torch_once_a_checked_twin_is_recorded(minilm, tmp_path) -> None:
    """The first process exports and checks the twin (PyTorch), the next one loads it with ONNX Runtime and
    tokenizers only, and both give the PyTorch vectors."""
    import json
    import os
    import subprocess
    import sys

    from memos_core.embedding import MiniLMEmbedder

    env = dict(os.environ, MEMOS_CACHE_DIR=str(tmp_path), MEMOS_QUERY_BACKEND="onnx", MEMOS_PRELOAD="0")

    def probe() -> dict:
        out = subprocess.run([sys.executable, "-c", _LIGHT_PROBE], capture_output=True, text=True, env=env,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = probe(), probe()
    assert first["torch"] and not second["torch"]
    assert list(tmp_path.glob("onnx/minilm-*.json")) and list(tmp_path.glob("onnx/bert-*.onnx"))
    want = MiniLMEmbedder(query_backend="torch")
    texts = ["Where does Ann live?", "Ann moved to Lisbon in May " * 12]
    for run in (first, second):
        assert np.abs(np.array(run["docs"]) - want.embed_documents(texts)).max() < 1e-5
        assert np.abs(np.array(run["q"]) - want.embed_query(texts[0])).max() < 1e-5


def test_a_recorded_twin_that_disagrees_is_not_used(minilm, monkeypatch, tmp_path, caplog) -> None:
    import json
    import shutil

    from memos_core import embedding as E

    E.MiniLMEmbedder(query_backend="onnx").embed_query("warm")  # the user cache holds a checked twin now
    rec = E._light_record_path()
    assert rec is not None and rec.exists()
    data = json.loads(rec.read_text())
    monkeypatch.setenv("MEMOS_CACHE_DIR", str(tmp_path))
    mine = E._light_record_path()
    mine.parent.mkdir(parents=True)
    shutil.copyfile(rec.parent / data["onnx"], mine.parent / data["onnx"])
    data["vectors"][0][0] += 0.01  # a record that does not match what the file computes
    mine.write_text(json.dumps(data))
    monkeypatch.setattr(E, "_LIGHT", {})
    assert E._light_twin() is None and not mine.exists()
    assert any("not used" in r.getMessage() for r in caplog.records)
    data["vectors"][0][0] -= 0.01  # intact: used
    mine.write_text(json.dumps(data))
    monkeypatch.setattr(E, "_LIGHT", {})
    twin = E._light_twin()
    assert twin is not None and not hasattr(twin.tok, "convert_ids_to_tokens")  # the tokenizers-only tokenizer
    want = E.MiniLMEmbedder(query_backend="torch").embed_query("Where does Ann live?")
    assert np.abs(twin.embed("Where does Ann live?", 256) - want).max() < 1e-5
