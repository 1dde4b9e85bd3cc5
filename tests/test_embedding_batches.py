"""How the default embedder batches documents: length-sorted batches padded to their own longest text, and the
one-core mode of the cube's background embedding. Batching changes the work, never the vectors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from memos_core import embedding as E

# an agent's turns as the offline reader indexes them (date + turn + the turn it answers) and their topic texts
_TURNS = [
    "Ann moved to Lisbon in May to start a job at the harbour.",
    "Bob is learning Portuguese; he has practised for four weeks now.",
    "ok",
    "Remember that Thea's birthday is on 2020-09-09; Viktor is organising a surprise at the city library.",
    "During the trip to Nairobi in 2024, Lena discovered a tiny restaurant serving shakshuka.",
    "émigré 日本語 café, it's 10:30!",
]
_DOCS = [f"[Tuesday 1 December 2026 (2026-12-01)] {t}" + (f" (in reply to: {_TURNS[i - 1]})" if i % 2 else "")
         for i, t in enumerate(_TURNS)] + _TURNS + ["Lisbon in the summer " * 80]


def test_plan_batches_covers_every_text_once_longest_first_within_the_limits() -> None:
    lengths = [40, 12, 90, 41, 38, 7, 90, 60, 25, 39]
    for max_texts, max_tokens in ((64, None), (3, None), (64, 200), (1, None)):
        batches = E._plan_batches(lengths, max_texts, max_tokens)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(lengths)))  # each text exactly once
        assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
        for b in batches:
            top = max(lengths[i] for i in b)
            assert len(b) <= max_texts
            if max_tokens is not None and len(b) > 1:
                assert len(b) * top <= max_tokens
            # no text is padded far past its own length: the batch would have been split
            assert all(top - lengths[i] <= max(E._PAD_SLACK, top // 3) for i in b)
    # similar lengths share a batch; a much shorter text gets its own
    assert E._plan_batches([30, 29, 31], 64) == [[2, 0, 1]]
    assert E._plan_batches([90, 20], 64) == [[0], [1]]
    assert E._plan_batches([], 64) == []


def _runs(monkeypatch, runner) -> list[tuple[int, int, bool]]:
    """Record (rows, width, one-thread session?) of every ONNX run of ``runner``."""
    seen: list[tuple[int, int, bool]] = []
    real = runner.run_encoded

    def spy(enc, short_tokens=None):
        mask = np.asarray(enc["attention_mask"])
        seen.append((mask.shape[0], mask.shape[1], runner._session(int(mask.size), short_tokens) is runner.short))
        return real(enc, short_tokens)

    monkeypatch.setattr(runner, "run_encoded", spy)
    return seen


def test_batched_documents_give_the_vectors_of_texts_embedded_alone(minilm, monkeypatch) -> None:
    emb = E.MiniLMEmbedder(query_backend="onnx")
    runner = emb._twin()
    assert runner is not None
    alone = np.stack([emb.embed_documents([t])[0] for t in _DOCS])
    seen = _runs(monkeypatch, runner)
    batched = emb.embed_documents(_DOCS)
    assert batched.shape == (len(_DOCS), 384) and batched.dtype == np.float32
    assert np.abs(batched - alone).max() < 1e-5
    assert 1 < len(seen) < len(_DOCS)  # batched, and split where lengths differ
    # padding stays small: every batch is padded to its own longest text, not to the longest of all
    longest = max(w for _, w, _ in seen)
    assert any(w < longest // 2 for _, w, _ in seen)
    assert sum(r * w for r, w, _ in seen) < len(_DOCS) * longest * 0.6


def test_one_core_mode_keeps_every_batch_on_one_thread_with_the_same_vectors(minilm, monkeypatch) -> None:
    emb = E.MiniLMEmbedder(query_backend="onnx")
    runner = emb._twin()
    assert runner is not None
    many = _DOCS * 6  # more than one batch's worth of tokens
    plain = emb.embed_documents(many)
    seen = _runs(monkeypatch, runner)
    with E.one_core():
        on_one = emb.embed_documents(many)
    assert np.abs(on_one - plain).max() < 1e-5
    assert seen and all(one for _, _, one in seen)  # the one-thread session only
    assert all(r * w <= E._ONE_CORE_TOKENS for r, w, _ in seen if r > 1)
    # the mode is this thread's only, and ends with the block
    seen.clear()
    other: list[bool] = []
    with E.one_core():
        t = threading.Thread(target=lambda: other.append(getattr(E._LOCAL, "one_core", False)))
        t.start()
        t.join()
    assert other == [False] and getattr(E._LOCAL, "one_core", False) is False
    emb.embed_documents(["Lisbon in the summer " * 80, "Lisbon in the summer " * 79])
    assert seen and not seen[0][2]  # a long batch outside the block goes to the many-thread session again


def test_deferred_embeddings_equal_the_inline_ones(minilm, tmp_path) -> None:
    """The background thread (one core, batched) stores the vectors an inline add would have stored."""
    from memos_core import MemOS

    pytest.importorskip("chromadb")
    stored = {}
    for mode in ("deferred", "immediate"):
        with MemOS(tmp_path / mode, embed_sync=mode) as mem:
            for i, turn in enumerate(_TURNS):
                mem.add(turn, user_id="ann", session_id="s1")
            cube = next(iter(mem.cubes.values()))
            if mode == "deferred":
                job = cube._embed_job
                assert job is not None
                job.result(timeout=120)
                cube._embed_waiting()  # a row committed while the last job was finishing
            assert cube.records.waiting_embeddings() == []
            rows = sorted(cube.records.get_many_by_rowid(list(range(1, 100))).items())
            topics = cube.records.topic_vectors([r for r, _ in rows])
            stored[mode] = {it.content: (np.asarray(cube.records.embedding(r), dtype=np.float32),
                                         np.frombuffer(topics.get(r) or b"", dtype=np.float32)) for r, it in rows}
    assert stored["deferred"].keys() == stored["immediate"].keys() and len(stored["deferred"]) == len(_TURNS)
    with_topic = 0
    for content, (vec, topic) in stored["deferred"].items():
        want_vec, want_topic = stored["immediate"][content]
        assert vec.shape == (384,) and np.abs(vec - want_vec).max() < 1e-5
        assert topic.shape == want_topic.shape
        if topic.size:
            with_topic += 1
            assert np.abs(topic - want_topic).max() < 1e-5
    assert with_topic >= len(_TURNS) - 1  # the turns' own words were embedded too (not only their index texts)
