"""The LLM reader's prompts and its JSON repair, tested without any model."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest

from memos_core.reader import prompts
from memos_core.reader.llm import Decisions, Extraction, ParseError, parse_json

D = datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)


def _example(system: str) -> dict:
    """The JSON example a system prompt shows the model."""
    line = next(ln for ln in system.splitlines() if ln.startswith("Return only JSON:"))
    start = line.index("{")
    return json.loads(line[start:line.rindex("}") + 1])


# ------------------------------------------------------------------------------------------------ prompts
def test_prompts_are_short_and_versioned() -> None:
    assert len(prompts.EXTRACT_SYSTEM) < 1000
    assert len(prompts.DECIDE_SYSTEM) < 1000
    assert len(prompts.REPAIR) < 200
    assert prompts.PROMPT_VERSION == "1"


def test_prompt_examples_match_the_schemas_the_reader_validates() -> None:
    ext = Extraction.model_validate(_example(prompts.EXTRACT_SYSTEM))
    assert ext.facts[0].turns == ["T1"] and ext.facts[0].kind == "fact"
    dec = Decisions.model_validate(_example(prompts.DECIDE_SYSTEM))
    assert dec.decisions[0].op == "ADD" and dec.decisions[0].fact == "F1"
    for op in ("ADD", "UPDATE", "DELETE", "NOOP", "supersedes"):
        assert op in prompts.DECIDE_SYSTEM
    for key in ('"text"', '"kind"', '"turns"', '"event_time"'):
        assert key in prompts.EXTRACT_SYSTEM


def test_extract_messages_render_labels_dates_and_speakers() -> None:
    msgs = prompts.extract_messages([("T1", D, "Ann", "I moved to  Lisbon\nyesterday"), ("T2", None, None, "ok")],
                                    user_name="ann")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[0]["content"] == prompts.EXTRACT_SYSTEM
    assert msgs[1]["content"] == (
        "The user is ann.\nTurns:\nT1 [2023-05-08] Ann: I moved to Lisbon yesterday\nT2 ok\n\nJSON:")


def test_user_text_with_braces_cannot_break_a_prompt() -> None:
    nasty = 'I wrote {error} and {"facts": []} and {0} {}'
    msgs = prompts.extract_messages([("T1", D, "Ann", nasty)])
    assert nasty in msgs[1]["content"]
    rep = prompts.repair_messages(msgs, nasty, "bad {thing}")
    assert rep[-1]["content"].startswith("Your reply could not be used: bad {thing}.")
    dm = prompts.decide_messages([("M1", D, "{x}")], [("F1", None, "{y}")])
    assert dm[1]["content"] == "Existing memories:\nM1 [2023-05-08] {x}\n\nNew facts:\nF1 {y}\n\nJSON:"


def test_decide_messages_without_memories_say_none() -> None:
    dm = prompts.decide_messages([], [("F1", D, "Ann likes tea")])
    assert "Existing memories:\n(none)" in dm[1]["content"]


def test_repair_messages_keep_the_original_and_clip_the_bad_reply() -> None:
    orig = prompts.extract_messages([("T1", D, "Ann", "hi")])
    rep = prompts.repair_messages(orig, "x" * 5000, "the answer was empty")
    assert rep[:2] == orig
    assert rep[2]["role"] == "assistant" and len(rep[2]["content"]) < 2100 and rep[2]["content"].endswith(" ...")
    assert rep[3]["role"] == "user" and "the answer was empty" in rep[3]["content"]
    assert prompts.repair_messages(orig, "", "e")[2]["content"] == "(empty)"


# ------------------------------------------------------------------------------------------------ JSON repair
GOOD = {"facts": [{"text": "Ann lives in Lisbon", "turns": ["T1"]}]}


@pytest.mark.parametrize("reply", [
    json.dumps(GOOD),
    "```json\n" + json.dumps(GOOD) + "\n```",
    "```\n" + json.dumps(GOOD, indent=2) + "\n```",
    "Sure! Here is the JSON you asked for:\n" + json.dumps(GOOD) + "\nLet me know if you need more.",
    "<think>The user moved, so {facts} should hold it.</think>\n" + json.dumps(GOOD),
    '{"facts": [{"text": "Ann lives in Lisbon", "turns": ["T1",],},],}',
    '{"facts": [{"text": "Ann lives in Lisbon", "turns": ["T1"]}, {"text": "Ann likes',
    '```json\n{"facts": [{"text": "Ann lives in Lisbon", "turns": ["T1"]},',
    GOOD,
])
def test_parse_json_repairs_common_damage(reply: object) -> None:
    assert parse_json(reply) == GOOD


def test_parse_json_keeps_braces_commas_and_quotes_inside_strings() -> None:
    text = '{"facts": [{"text": "Ann said \\"hi, {there}]\\" twice", "turns": []}]}'
    assert parse_json("prose " + text + " prose")["facts"][0]["text"] == 'Ann said "hi, {there}]" twice'


def test_parse_json_truncated_inside_a_nested_object_keeps_what_is_complete() -> None:
    got = parse_json('{"facts": [{"text": "A is 1", "turns": ["T1", "T2"')
    assert got == {"facts": [{"text": "A is 1", "turns": ["T1"]}]}


def test_parse_json_truncated_after_a_complete_field_keeps_that_field() -> None:
    got = parse_json('{"facts": [{"text": "Ann lives in Lisbon"}, {"text": "Ann likes tea", "tur')
    assert got == {"facts": [{"text": "Ann lives in Lisbon"}, {"text": "Ann likes tea"}]}


def test_parse_json_accepts_a_bare_list() -> None:
    assert parse_json('Here: ["Ann likes tea", "Bob runs"]') == ["Ann likes tea", "Bob runs"]


@pytest.mark.parametrize("reply, message", [
    ("", "empty"),
    ("   \n ", "empty"),
    (None, "empty"),
    ("<think>only thinking</think>", "empty"),
    ("I could not find any facts.", "no JSON"),
    ('{"facts": [}', "unbalanced"),
    ('{"facts": [1 2]}', "invalid JSON"),
    ('{"facts": [{"text": "cut', "truncated"),
    (42, "expected text"),
])
def test_parse_json_reports_what_is_wrong(reply: object, message: str) -> None:
    with pytest.raises(ParseError, match=re.escape(message)):
        parse_json(reply)
