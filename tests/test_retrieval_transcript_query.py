"""A pasted transcript between people (two or more speakers, none the assistant) is embedded without its speaker
tags: MiniLM's vector of "Leo: ... Maya: ... Leo: ..." is dominated by the names, so every turn of Leo's or Maya's
looks alike to it. BM25 and the entity bonus still see the names. A user <-> assistant chat, or one person's
messages, keeps its tags (there the user's name keeps another person's memories away)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memos_core.bench.retrieval import ingest_conversation, load_dataset
from memos_core.cube import MemCube, RetrievalConfig
from memos_core.plaintext import analyze_query

TRANSCRIPT = ("Leo: Are you coming to the picnic? Maya: I wish, but between work and errands I don't get a single "
              "hour for me. Leo: That's been going on for a while, hasn't it?")
UNTAGGED = ("Are you coming to the picnic? I wish, but between work and errands I don't get a single hour for me. "
            "That's been going on for a while, hasn't it?")
ROOT = Path(__file__).resolve().parent.parent
CHAT = "Maya: I'm so tired lately. Assistant: Oh no, what's going on? Maya: Work, errands, everything."


def test_a_transcript_is_embedded_without_tags_and_a_chat_with_them() -> None:
    plan = analyze_query(TRANSCRIPT)
    assert plan.dense_text == UNTAGGED
    assert plan.text.startswith("Leo: Are you coming")  # what BM25 sees keeps the names
    assert {"leo", "maya"} <= set(plan.entities)  # and so does the entity bonus
    chat = analyze_query(CHAT)
    assert chat.embed_text is None and chat.dense_text == chat.text
    alone = analyze_query("Maya: I'm so tired lately. Maya: Work, errands, everything.")  # one person's messages
    assert alone.embed_text is None
    question = analyze_query("What does Maya do for work?")
    assert question.embed_text is None and question.dense_text == question.text


class _Spy:
    """Wraps the default embedder and records the texts embedded on the query side."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, emb: Any) -> None:
        self.seen: list[str] = []
        for name in ("embed_query", "embed_queries"):
            real = getattr(emb, name)

            def spy(arg: Any, _real: Any = real) -> Any:
                self.seen.extend([arg] if isinstance(arg, str) else list(arg))
                return _real(arg)

            monkeypatch.setattr(emb, name, spy)


@pytest.mark.parametrize("query_cache", [0, 256])
def test_the_cube_embeds_the_untagged_transcript_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      query_cache: int) -> None:
    with MemCube(tmp_path / "c", retrieval=RetrievalConfig(query_cache=query_cache)) as cube:
        cube.add("Maya: I feel like I never have time for myself anymore.")
        spy = _Spy(monkeypatch, cube.embedder)
        cube.search(TRANSCRIPT, k=3)
        cube.search(TRANSCRIPT, k=3)
        assert spy.seen == [UNTAGGED] * (1 if query_cache else 2)


def test_pasted_transcripts_find_their_evidence_in_a_generated_conversation(tmp_path: Path) -> None:
    """The first conversation of benchmarks/data/synthetic_longmem.json (220 turns between Leo and Maya) has four
    pasted-transcript queries; with the tagged query vector none had its evidence in the top 5, untagged two do
    (the whole set: 6 -> 23 of 32; README, "Tried in issue 15, session 8")."""
    data = load_dataset(ROOT / "benchmarks" / "data" / "synthetic_longmem.json")
    conv = data["conversations"][0]
    queries = [q for q in conv["queries"] if analyze_query(q["text"]).is_dialogue]
    assert len(queries) == 4
    with MemCube(tmp_path / "c") as cube:
        ingest_conversation(cube, conv, "u")
        found = [any(set(h.item.provenance.source_ids) & set(q["evidence"]) for h in cube.search(q["text"], k=5,
                                                                                                   user_id="u"))
                 for q in queries]
    assert sum(found) >= 2
