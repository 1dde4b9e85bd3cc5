"""Offline MemReader: turns become episodes with event time, provenance, resolved dates and context."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from memos_core.errors import ValidationError
from memos_core.items import MemoryKind, SourceKind, to_utc
from memos_core.reader.offline import EXTRACTOR, OfflineReader, Turn, coerce_turns, resolve_relative_dates

MONDAY = to_utc("2023-05-08 13:56")  # a Monday


def _session():
    return [
        Turn(text="How was your weekend?", speaker="Bob", id="D1:1", time=MONDAY, session_id="s1"),
        Turn(text="I went hiking in Sintra yesterday with my sister.", speaker="Ann", id="D1:2", time=MONDAY,
             session_id="s1"),
        Turn(text="Nice! We are meeting next Friday, right?", speaker="Bob", id="D1:3", time=MONDAY,
             session_id="s1"),
    ]


def test_each_turn_becomes_an_episode_with_provenance_and_event_time() -> None:
    specs = OfflineReader().read(_session())
    assert len(specs) == 3
    s = specs[1]
    assert s["content"] == "Ann: I went hiking in Sintra yesterday with my sister."
    assert s["kind"] == MemoryKind.EPISODE
    assert s["event_time"] == datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)
    assert s["session_id"] == "s1"
    prov = s["provenance"]
    assert prov["source_ids"] == ["D1:2"] and prov["session_id"] == "s1" and prov["speaker"] == "Ann"
    assert prov["extractor"] == EXTRACTOR and prov["source"] == SourceKind.CONVERSATION
    assert s["metadata"] == {"speaker": "Ann"}


def test_relative_dates_are_resolved_against_the_session_date() -> None:
    specs = OfflineReader().read(_session())
    assert "yesterday = Sunday 7 May 2023 (2023-05-07)" in specs[1]["index_text"]
    assert "next friday = Friday 12 May 2023 (2023-05-12)" in specs[2]["index_text"]
    assert "[Monday 8 May 2023 (2023-05-08)]" in specs[0]["index_text"]  # the date in words
    # the content shown to a model stays verbatim
    assert "2023-05-07" not in specs[1]["content"]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("yesterday", "Sunday 7 May 2023 (2023-05-07)"),
        ("Yesterday!", "Sunday 7 May 2023 (2023-05-07)"),
        ("today", "Monday 8 May 2023 (2023-05-08)"),
        ("tomorrow", "Tuesday 9 May 2023 (2023-05-09)"),
        ("two days ago", "Saturday 6 May 2023 (2023-05-06)"),
        ("a couple of days ago", "Saturday 6 May 2023 (2023-05-06)"),
        ("3 weeks ago", "Monday 17 April 2023 (2023-04-17)"),
        ("last friday", "Friday 5 May 2023 (2023-05-05)"),
        ("last monday", "Monday 1 May 2023 (2023-05-01)"),
        ("next monday", "Monday 15 May 2023 (2023-05-15)"),
        ("last month", "April 2023"),
        ("next month", "June 2023"),
        ("last year", "2022"),
        ("next week", "the week of Monday 15 May 2023 (2023-05-15)"),
    ],
)
def test_relative_date_table(text, expected) -> None:
    assert resolve_relative_dates(f"we talked about it {text}", MONDAY) == [f"{text.lower().rstrip('!')} = {expected}"]


def test_month_arithmetic_crosses_years() -> None:
    jan = to_utc("2024-01-15")
    assert resolve_relative_dates("last month", jan) == ["last month = December 2023"]
    assert resolve_relative_dates("next month", to_utc("2023-12-03")) == ["next month = January 2024"]


def test_no_date_means_nothing_is_invented() -> None:
    specs = OfflineReader().read([Turn(text="I went out yesterday", speaker="Ann", id="t1")])
    assert specs[0]["event_time"] is None
    assert "yesterday =" not in specs[0]["index_text"]
    assert resolve_relative_dates("yesterday", None) == []


def test_neighbour_turn_is_context_in_index_text() -> None:
    specs = OfflineReader().read(_session())
    assert "in reply to" not in specs[0]["index_text"]
    assert "(in reply to: Bob: How was your weekend?)" in specs[1]["index_text"]
    assert "(in reply to: Ann: I went hiking in Sintra" in specs[2]["index_text"]
    # history from an earlier call gives the first new turn its context
    more = OfflineReader().read([Turn(text="Yes, Friday at six.", speaker="Ann", id="D1:4", time=MONDAY)],
                                history=_session())
    assert "(in reply to: Bob: Nice! We are meeting next Friday, right?)" in more[0]["index_text"]
    # context can be switched off, and only the previous turn is used
    none = OfflineReader(context_turns=0).read(_session())
    assert all("in reply to" not in s["index_text"] for s in none)
    two = OfflineReader(context_turns=2).read(_session())
    assert two[2]["index_text"].count("in reply to") == 2
    assert OfflineReader().read(_session())[2]["index_text"].count("in reply to") == 1
    with pytest.raises(ValidationError):
        OfflineReader(context_turns=-1)


def test_long_context_is_truncated() -> None:
    long = "word " * 200
    specs = OfflineReader().read([Turn(text=long, speaker="Ann", id="a"), Turn(text="ok", speaker="Bob", id="b")])
    ctx = specs[1]["index_text"].split("(in reply to: ", 1)[1]
    assert len(ctx) < 270 and ctx.endswith("...)")


def test_coerce_turns_accepts_common_shapes_and_rejects_bad_ones() -> None:
    turns = coerce_turns([{"role": "user", "content": "hi", "id": 7, "time": "2023-05-08T10:00:00Z"},
                          {"speaker": "Ann", "text": "hello"}, "plain string",
                          Turn(text="a turn", speaker="Bob")], session_id="s9", timestamp="2023-05-09")
    assert [t.speaker for t in turns] == ["user", "Ann", None, "Bob"]
    assert turns[0].id == "7" and turns[0].time == to_utc("2023-05-08T10:00:00Z")
    assert turns[1].time == to_utc("2023-05-09")  # the default timestamp fills in
    assert all(t.session_id == "s9" for t in turns)
    for bad in ([{"content": "   "}], [{"content": 5}], [42], b"bytes", 3.5, [{"content": "x", "time": "garbage"}]):
        with pytest.raises(ValidationError):
            coerce_turns(bad)


def test_reader_output_goes_into_a_cube_and_is_found(cube) -> None:
    specs = OfflineReader().read(_session())
    items = cube.add_many(specs, user_id="ann")
    assert [i.provenance.source_ids for i in items] == [["D1:1"], ["D1:2"], ["D1:3"]]
    got = cube.get(items[1].id)
    assert got.event_time == MONDAY and got.kind == MemoryKind.EPISODE
    assert got.provenance.extractor == EXTRACTOR and got.index_text == specs[1]["index_text"]
    # the resolved date is searchable although the turn only said "yesterday"
    hits = cube.search("what happened on Sunday?", mode="lexical", user_id="ann")
    assert [h.item.provenance.source_ids for h in hits] == [["D1:2"]]
    assert cube.search("2023-05-07", mode="lexical", user_id="ann")[0].item.id == items[1].id
    hits = cube.search("Sintra hiking", k=1, user_id="ann", filter={"event_after": "2023-05-08",
                                                                   "event_before": "2023-05-09"})
    assert hits[0].item.id == items[1].id


# ---------------------------------------------------------------------------------------------- what gets remembered

def test_turn_acts_label_questions_acks_unknowns_and_small_talk() -> None:
    from memos_core.reader.offline import turn_act

    assert turn_act("What's my cat's name?") == "question"
    assert turn_act("I don't know your cat's name yet.") == "unknown"
    assert turn_act("I don't think you've told me your cat's name yet. What is it?") == "unknown"
    assert turn_act("Thanks!") == "ack" and turn_act("Got it, I'll remember that.") == "ack"
    assert turn_act("Good morning!") == "chitchat"
    for fact in ("My cat is called Miso.", "Oh, it's Miso!", "Yes, twice! The food alone is worth the flight.",
                 "Wait, have you ever been to Lisbon? I'm thinking of going in the spring."):
        assert turn_act(fact) == "statement", fact


def test_non_facts_are_kept_but_weighted_down_and_echoes_are_recognised() -> None:
    turns = [Turn("What's my cat's name?", "Dana", "t1", MONDAY, "s1"),
             Turn("I don't know your cat's name yet. What is it?", "Assistant", "t2", MONDAY, "s1"),
             Turn("It's Miso!", "Dana", "t3", MONDAY, "s1"),
             Turn("Thanks for telling me! Noted.", "Assistant", "t4", MONDAY, "s1"),
             Turn("I took my nephew Eli to a pottery workshop.", "Ann", "t5", MONDAY, "s1"),
             Turn("A pottery workshop with Eli? So cool!", "Bob", "t6", MONDAY, "s1")]
    specs = OfflineReader().read(turns)
    assert len(specs) == len(turns)  # nothing is dropped
    acts = [s["metadata"].get("turn_act", "statement") for s in specs]
    assert acts == ["question", "unknown", "statement", "ack", "statement", "echo"]
    weights = [s["metadata"].get("recall_weight", 1.0) for s in specs]
    assert weights[2] == weights[4] == 1.0 and all(0 < w < 1 for i, w in enumerate(weights) if i not in (2, 4))
    assert "recall_weight" not in specs[2]["metadata"]  # a fact's metadata stays as it was
    # the short answer carries the question it answers
    assert "(in reply to: Assistant: I don't know your cat's name yet. What is it?)" in specs[2]["index_text"]


def test_the_next_question_finds_the_fact_not_its_echo(tmp_path, minilm) -> None:
    """Issue 15: with k=2 an agent was given "What's my cat's name?" and "I don't know your cat's name yet."
    and not the fact. The echoes stay stored, but the fact comes first."""
    from memos_core import MemOS

    mem = MemOS(tmp_path / "m", embedder=minilm)
    chat = [("user", "Hi! Can you help me plan my week?"),
            ("assistant", "Of course! What's on your plate?"),
            ("user", "What's my cat's name?"),
            ("assistant", "I don't know your cat's name yet. You haven't told me."),
            ("user", "Ha, right. My cat is called Miso, she's a tabby."),
            ("assistant", "Got it, I'll remember that."),
            ("user", "Thanks!"),
            ("user", "What's my cat's name again?"),
            ("assistant", "I'm not sure, I don't have that information."),
            ("user", "Also, I'm allergic to peanuts."),
            ("assistant", "Thanks for telling me! Noted.")]
    mem.add([{"role": r, "content": c, "time": f"2024-05-0{1 + i // 4}T10:0{i % 4}:00Z"} for i, (r, c) in
             enumerate(chat)], user_id="dana")
    assert len(mem.search("anything", user_id="dana", k=50, mode="lexical")) >= 0  # searchable at all
    for k in (1, 2, 5):
        hits = mem.search("What's my cat's name?", user_id="dana", k=k)
        assert "Miso" in hits[0].item.content, [h.item.content for h in hits]
    ranked = mem.search("What is my cat called?", user_id="dana", k=5)
    assert [h.rank for h in ranked] == [1, 2, 3, 4, 5]  # the facade keeps the cube's (fusion's) order
    top5 = [h.item.content for h in ranked]
    assert "Miso" in top5[0]
    assert not any("I don't know" in c or "not sure" in c for c in top5[:2]), top5
    # the absolute score ranks the fact above the questions and "I don't know"s that repeat the query's words,
    # so a threshold keeps the fact and drops the echoes (through the facade too)
    for q in ("What's my cat's name?", "What is my cat called?"):
        hits = mem.search(q, user_id="dana", k=8)
        best = max(hits, key=lambda h: h.score)
        assert "Miso" in best.item.content, [(h.score, h.item.content) for h in hits]
        kept = mem.search(q, user_id="dana", k=8, min_score=0.1)
        assert kept and "Miso" in kept[0].item.content
        assert not any(h.item.metadata.get("turn_act") for h in kept), [h.item.content for h in kept]
    # nothing was destroyed: the echoes are still stored and can be found by what they say
    assert any("don't know your cat's name" in h.item.content
               for h in mem.search("I don't know your cat's name yet", user_id="dana", k=3))
    mem.close()
