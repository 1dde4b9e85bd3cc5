"""`memos bench qa` with ``rerank``: the answering model picks the notes among the top-k hits (no model needed:
a stand-in answerer scores the notes, so the selection can be checked exactly)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import hashed_embed

from memos_core.bench import qa
from memos_core.errors import ValidationError

QA_FILE = Path(__file__).resolve().parent / "data" / "qa_small.json"


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def _echo_chat_model():
    """A LangChain chat model that answers with the last memory line of its prompt (or "I don't know")."""
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class LastLine(BaseChatModel):
        @property
        def _llm_type(self) -> str:
            return "last-line"

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            lines = [ln for ln in messages[0].content.splitlines() if ln.startswith("- [")]
            text = re.sub(r"^- \[[^\]]*\] [^:]+: ", "", lines[-1]) if lines else "I don't know."
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    return LastLine()


class ScoringAnswerer(qa.ChatAnswerer):
    """A chat answerer that also 'scores' notes, as a local model does with its likelihoods: here the count of
    the question's words a note shares, minus a penalty for the note's search rank (so the test can tell that
    the model's score, not the search order, decides). It records every call."""

    def __init__(self) -> None:
        super().__init__(_echo_chat_model())
        self.calls: list[tuple[str, list[str], list[float]]] = []

    def question_logprobs(self, question: str, notes):
        scores = [float(len(_words(n) & _words(question))) - 0.01 * i for i, n in enumerate(notes)]
        self.calls.append((question, list(notes), scores))
        return scores


def test_rerank_keeps_the_notes_the_model_scores_best() -> None:
    ans = ScoringAnswerer()
    rep = qa.run(QA_FILE, ans, modes=["text"], k=4, min_score=None, rerank=1, embedder=hashed_embed,
                 limit_conversations=2)
    assert rep["rerank"] == 1 and rep["rerank_s_mean"] is not None and rep["memories_mean"] == 1.0
    by_q = {q: (notes, scores) for q, notes, scores in ans.calls}
    assert len(by_q) == rep["questions"]
    moved = 0
    for row in rep["answers"]:
        notes, scores = by_q[row["question"]]
        assert len(notes) == 4 and all(n.startswith("[") for n in notes)  # dated lines, as the prompt shows them
        best = max(range(len(notes)), key=lambda i: scores[i])
        # the one memory in the prompt is the model's best note: the echo model answers with it
        assert row["memories"] == 1
        assert row["modes"]["text"]["answer"] == re.sub(r"^\[[^\]]*\] [^:]+: ", "", notes[best])
        moved += best != 0
    assert moved > 0  # the model's choice is not just the search's top hit


def test_rerank_two_keeps_them_in_the_asked_order() -> None:
    ans = ScoringAnswerer()
    rep = qa.run(QA_FILE, ans, modes=["text"], k=3, min_score=None, rerank=2, order="relevance",
                 embedder=hashed_embed, limit_conversations=1)
    by_q = {q: (notes, scores) for q, notes, scores in ans.calls}
    for row in rep["answers"]:
        notes, scores = by_q[row["question"]]
        ranked = sorted(range(len(notes)), key=lambda i: -scores[i])
        assert row["memories"] == 2
        # "relevance": the model's best note last, right before the question
        assert row["modes"]["text"]["answer"] == re.sub(r"^\[[^\]]*\] [^:]+: ", "", notes[ranked[0]])


def test_rerank_needs_a_model_with_likelihoods_and_a_positive_count() -> None:
    with pytest.raises(ValidationError, match="likelihoods"):
        qa.run(QA_FILE, qa.ChatAnswerer(_echo_chat_model()), modes=["text"], rerank=1, embedder=hashed_embed)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValidationError, match="rerank"):
            qa.run(QA_FILE, ScoringAnswerer(), modes=["text"], rerank=bad, embedder=hashed_embed)
    # no rerank: the search's hits as before, and nothing asked of the model
    ans = ScoringAnswerer()
    rep = qa.run(QA_FILE, ans, modes=["text"], k=3, min_score=None, embedder=hashed_embed, limit_conversations=1)
    assert ans.calls == [] and rep["rerank"] is None and rep["memories_mean"] == 3.0


def test_rerank_on_a_local_model_keeps_kv_identical_to_text(tmp_path) -> None:
    """A tiny random local model scores the notes itself (one forward pass each): the kept memory goes to both
    (b) and (c), whose tokens stay identical; the scores are the model's log-probabilities of the question."""
    pytest.importorskip("transformers")
    from memos_core.activation.testing import save_tiny_model

    folder = save_tiny_model(tmp_path / "tiny", "qwen2", max_positions=600)
    ans = qa.load_answerer(str(folder), max_new_tokens=4)
    lps = ans.question_logprobs("Where does Ann live?", ["[1 May 2023] Ann: I live in Lisbon.", "[2 May 2023] Bob: Hi."])
    assert len(lps) == 2 and all(lp < 0 for lp in lps) and lps[0] != lps[1]
    # the same note scored again gives the same value (a pure function of note and question)
    assert ans.question_logprobs("Where does Ann live?", ["[2 May 2023] Bob: Hi."]) == pytest.approx([lps[1]], abs=1e-4)
    rep = qa.run(QA_FILE, ans, modes=["text", "kv"], k=3, min_score=None, rerank=1, embedder=hashed_embed,
                 limit_conversations=2, limit_queries=2)
    assert rep["kv_identical_count"] == "4/4" and rep["memories_mean"] == 1.0 and rep["rerank"] == 1
    assert all(r["rerank_s"] >= 0 for r in rep["answers"])


def test_cli_rerank_flag(monkeypatch, capsys) -> None:
    """`memos bench qa --rerank N` reaches qa.run; a chat model cannot rerank and says so in one line."""
    import json

    from memos_core.cli import main
    from memos_core.cube import MemCube

    monkeypatch.setattr("memos_core.bench.qa.MemCube", lambda *a, **kw: MemCube(*a, **{**kw, "embedder": hashed_embed}))
    monkeypatch.setattr("memos_core.bench.qa.load_answerer", lambda *a, **kw: ScoringAnswerer())
    rc = main(["bench", "qa", str(QA_FILE), "--modes", "text", "--k", "3", "--min-score", "-1", "--rerank", "1",
               "--limit", "1", "--limit-queries", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rep = json.loads(out.strip().splitlines()[-1])
    assert rep["rerank"] == 1 and rep["memories_mean"] == 1.0 and rep["k"] == 3 and rep["min_score"] is None
    monkeypatch.setattr("memos_core.bench.qa.load_answerer", lambda *a, **kw: qa.ChatAnswerer(_echo_chat_model()))
    assert main(["bench", "qa", str(QA_FILE), "--modes", "text", "--rerank", "1"]) == 2
    _, err = capsys.readouterr()
    assert err.startswith("error: ") and "likelihoods" in err
    rc = main(["bench", "qa", str(QA_FILE), "--modes", "text", "--limit", "1", "--limit-queries", "1", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and json.loads(out.strip().splitlines()[-1])["rerank"] is None  # off by default
