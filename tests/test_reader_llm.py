"""LLM MemReader through the MemOS facade, with scripted models.

Models: LangChain's FakeListChatModel / GenericFakeChatModel, a LlamaIndex CustomLLM returning scripted text,
LlamaIndex's MockLLM (which echoes its prompt), and plain callables (sync and async). Each test checks the
resulting memory state exactly: what was added, versioned, tombstoned, superseded, deduplicated, and where each
memory came from.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from memos_core import LifecycleState, MemOS, NotFound, ValidationError
from memos_core.reader import LLMReader

_WORD = re.compile(r"[a-z0-9]+")


def embed(texts: list[str]) -> np.ndarray:
    """Hashed bag of words (64 dims): fast, deterministic, texts sharing words are close."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in _WORD.findall(t.lower()):
            out[i, int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little") % 64] += 1.0
        out[i, 63] += 0.01
    return out


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


class Script:
    """A callable model: replies in order (text, dict, an exception to raise, or fn(messages) -> text)."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls: list[list[dict[str, str]]] = []

    def __call__(self, messages: list[dict[str, str]]) -> Any:
        self.calls.append(messages)
        if not self.replies:
            raise AssertionError("the model was called more often than scripted")
        r = self.replies.pop(0)
        if isinstance(r, BaseException):
            raise r
        return r(messages) if callable(r) else r


def facts(*items: tuple[str, list[str]] | tuple[str, list[str], str], **extra: Any) -> str:
    out = []
    for it in items:
        f: dict[str, Any] = {"text": it[0], "kind": it[2] if len(it) > 2 else "fact", "turns": it[1],
                             "event_time": None}
        f.update(extra)
        out.append(f)
    return json.dumps({"facts": out})


def label(messages: list[dict[str, str]], text: str) -> str:
    """The M-label the decision prompt gave the memory whose text is ``text``."""
    for line in messages[-1]["content"].splitlines():
        m = re.match(r"^(M\d+) (?:\[[0-9-]+\] )?(.*)$", line)
        if m and m.group(2).startswith(text):
            return m.group(1)
    raise AssertionError(f"{text!r} not offered to the model:\n{messages[-1]['content']}")


def decide(*decisions: tuple[str, str, str | None] | tuple[str, str, str | None, dict[str, Any]]
           ) -> Callable[[list[dict[str, str]]], str]:
    """A reply function: decisions given as (fact label, op, target text or None[, extra fields])."""
    def reply(messages: list[dict[str, str]]) -> str:
        out = []
        for d in decisions:
            dd: dict[str, Any] = {"fact": d[0], "op": d[1], "target": label(messages, d[2]) if d[2] else None}
            for k, v in (d[3] if len(d) > 3 else {}).items():  # type: ignore[misc]
                dd[k] = [label(messages, x) for x in v] if k == "supersedes" else v
            out.append(dd)
        return json.dumps({"decisions": out})
    return reply


ANN = [
    {"role": "Ann", "content": "I just moved to Lisbon, I love it here!", "id": "s1:1"},
    {"role": "assistant", "content": "Congratulations! What do you like most?", "id": "s1:2"},
    {"role": "Ann", "content": "The pastries. And I drink green tea every morning.", "id": "s1:3"},
]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_mem(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., MemOS]]:
    opened: list[MemOS] = []

    def make(llm: Any, **reader: Any) -> MemOS:
        reader.setdefault("similar_k", 4)
        mem = MemOS(tmp_path / f"m{len(opened)}", embedder=embed, llm=LLMReader(llm, **reader), clock=clock)
        opened.append(mem)
        return mem

    yield make
    for m in opened:
        m.close()


def live(mem: MemOS) -> list[tuple[str, str, int, str | None]]:
    """Every live memory of the default cube as (kind, content, version, valid_until date), sorted."""
    items = mem.cubes["default"].list({"states": ["generated", "activated", "frozen"]}, limit=1000)
    return sorted((it.kind.value, it.content, it.version,
                   it.valid_until.strftime("%Y-%m-%d") if it.valid_until else None) for it in items)


def seed(mem: MemOS, llm: Script, *texts: tuple[str, str]) -> dict[str, str]:
    """Store facts through the reader (extraction only); returns content -> id."""
    llm.replies.insert(0, facts(*[(t, ["T1"]) for t, _ in texts]))
    res = mem.add([{"role": "Ann", "content": " ".join(c for _, c in texts), "id": "seed"}], user_id="ann",
                  timestamp="2023-05-01")
    assert res.ok, res.errors
    return {it.content: it.id for it in res.added}


# ------------------------------------------------------------------------------------------------ adds
def test_extraction_adds_facts_with_provenance_and_times(make_mem: Callable[..., MemOS]) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    reply = "```json\n" + facts(("Ann moved to Lisbon", ["T1"]), ("Ann loves pastries", ["T3"], "preference"),
                                ("Ann drinks green tea every morning", ["T3", "s1:1", "T9"], "preference")) + "\n```"
    mem = make_mem(FakeListChatModel(responses=[reply]))
    res = mem.add(ANN, user_id="ann", session_id="s1", timestamp="2023-05-08 13:56")
    assert res.ok and res.mode == "llm" and res.llm_calls == 1 and res.cube == "default"
    assert (res.updated, res.deleted, res.unchanged) == ([], [], [])
    got = {it.content: it for it in res.added}
    assert sorted(got) == ["Ann drinks green tea every morning", "Ann loves pastries", "Ann moved to Lisbon"]
    tea = got["Ann drinks green tea every morning"]
    assert tea.kind.value == "preference"
    assert tea.provenance.source_ids == ["s1:3", "s1:1"]  # labels and real turn ids; unknown T9 dropped
    assert tea.provenance.extractor == "reader.llm/1" and tea.provenance.source.value == "conversation"
    assert tea.provenance.session_id == "s1" and tea.provenance.speaker == "Ann"
    assert tea.scope.user_id == "ann" and tea.scope.session_id == "s1"
    assert got["Ann moved to Lisbon"].event_time == datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)
    assert live(mem) == [("fact", "Ann moved to Lisbon", 1, None),
                         ("preference", "Ann drinks green tea every morning", 1, None),
                         ("preference", "Ann loves pastries", 1, None)]  # no episodes in LLM mode


def test_fact_event_time_from_the_model_and_uncited_facts_link_the_whole_batch(
        make_mem: Callable[..., MemOS]) -> None:
    llm = Script(json.dumps({"facts": [
        {"text": "Ann went to a support group", "turns": [], "event_time": "2023-05-07"},
        {"text": "Ann plans to study counseling", "event_time": "not a date"},
    ]}))
    mem = make_mem(llm)
    res = mem.add(ANN[:2], user_id="ann", timestamp="2023-05-08")
    got = {it.content: it for it in res.added}
    assert got["Ann went to a support group"].event_time == datetime(2023, 5, 7, tzinfo=timezone.utc)
    assert got["Ann plans to study counseling"].event_time == datetime(2023, 5, 8, tzinfo=timezone.utc)
    assert got["Ann plans to study counseling"].provenance.source_ids == ["s1:1", "s1:2"]
    assert "The user is ann." in llm.calls[0][1]["content"]


def test_nothing_worth_remembering_is_ok_and_stores_nothing(make_mem: Callable[..., MemOS]) -> None:
    mem = make_mem(Script('{"facts": []}'))
    res = mem.add("hi there!", user_id="ann")
    assert res.ok and res.added == [] and res.llm_calls == 1 and live(mem) == []


# ------------------------------------------------------------------------------------------------ decisions
def test_update_writes_a_new_version_and_keeps_history(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm)
    ids = seed(mem, llm, ("Ann likes pizza", "I like pizza"))
    llm.replies += [facts(("Ann likes margherita pizza best", ["T1"])),
                    decide(("F1", "UPDATE", "Ann likes pizza", {"text": "Ann likes pizza, margherita best"}))]
    res = mem.add([{"role": "Ann", "content": "Margherita is my favourite pizza", "id": "s2:1"}],
                  user_id="ann", timestamp="2023-06-01")
    assert res.ok and res.llm_calls == 2 and res.added == []
    (new,) = res.updated
    assert new.id == ids["Ann likes pizza"] and new.version == 2
    assert new.content == "Ann likes pizza, margherita best"
    assert new.provenance.source_ids == ["seed", "s2:1"]
    assert new.provenance.parent_versions == [f"{new.id}@1"]
    hist = mem.history(new.id)
    assert [(v.version, v.content) for v in hist] == [(1, "Ann likes pizza"), (2, "Ann likes pizza, margherita best")]
    assert hist[1].reason == "reader update from turns s2:1"
    assert live(mem) == [("fact", "Ann likes pizza, margherita best", 2, None)]
    # the decision prompt showed the existing memory and the new fact
    prompt = llm.calls[-1][1]["content"]
    assert "M1 [2023-05-01] Ann likes pizza" in prompt and "F1 [2023-06-01] Ann likes margherita pizza best" in prompt


def test_delete_is_a_tombstone_that_can_be_restored(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm)
    ids = seed(mem, llm, ("Ann has a cat named Tom", "My cat Tom"), ("Ann likes jazz", "jazz"))
    tom = ids["Ann has a cat named Tom"]
    llm.replies += [facts(("Ann never had a cat; Tom is her neighbour's cat", ["T1"])),
                    decide(("F1", "DELETE", "Ann has a cat named Tom"))]
    res = mem.add("Tom isn't my cat actually, he's my neighbour's.", user_id="ann", timestamp="2023-06-01")
    assert res.ok and res.deleted == [tom] and res.added == [] and res.updated == []
    with pytest.raises(NotFound):
        mem.get(tom)
    gone = mem.get(tom, include_deleted=True)
    assert gone.state == LifecycleState.DELETED and gone.content == "Ann has a cat named Tom"
    assert live(mem) == [("fact", "Ann likes jazz", 1, None)]
    assert all(h.item.id != tom for h in mem.search("cat Tom", user_id="ann"))
    mem.restore(tom)
    assert mem.get(tom).state == LifecycleState.ACTIVATED


def test_contradiction_ends_the_old_fact_instead_of_erasing_it(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm)
    ids = seed(mem, llm, ("Ann lives in Lisbon", "I live in Lisbon"))
    old = ids["Ann lives in Lisbon"]
    llm.replies += [facts(("Ann lives in Berlin", ["T1"]), event_time="2023-09-01"),
                    decide(("F1", "ADD", None, {"supersedes": ["Ann lives in Lisbon"]}))]
    res = mem.add("I moved to Berlin last week!", user_id="ann", timestamp="2023-09-05")
    assert res.ok and res.superseded == [old]
    (berlin,) = res.added
    (ended,) = res.updated
    assert ended.id == old and ended.version == 2 and ended.content == "Ann lives in Lisbon"
    assert ended.valid_until == datetime(2023, 9, 1, tzinfo=timezone.utc)
    assert ended.metadata == {"superseded_by": berlin.id}
    assert berlin.metadata == {"supersedes": [old]}
    assert live(mem) == [("fact", "Ann lives in Berlin", 1, None), ("fact", "Ann lives in Lisbon", 2, "2023-09-01")]
    ctx = mem.get_context("Where does Ann live?", user_id="ann")
    assert ctx == ("## Relevant memories\n"
                   "- [2023-05-01] Ann lives in Lisbon (no longer true since 2023-09-01)\n"
                   "- [2023-09-01] Ann lives in Berlin\n")
    # an ended fact is history: it is not offered for the next decision
    llm.replies += [facts(("Ann lives in Lisbon", ["T1"])),
                    decide(("F1", "ADD", None, {"supersedes": ["Ann lives in Berlin"]}))]
    res2 = mem.add("Back in Lisbon again!", user_id="ann", timestamp="2024-01-01")
    assert res2.ok and [a.content for a in res2.added] == ["Ann lives in Lisbon"] and res2.unchanged == []
    offered = llm.calls[-1][1]["content"]
    assert "M1 [2023-09-01] Ann lives in Berlin" in offered and "M2" not in offered
    assert live(mem) == [("fact", "Ann lives in Berlin", 2, "2024-01-01"), ("fact", "Ann lives in Lisbon", 1, None),
                         ("fact", "Ann lives in Lisbon", 2, "2023-09-01")]


def test_supersede_spelled_as_an_op_and_aliases(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm)
    ids = seed(mem, llm, ("Ann works at Acme", "Acme"), ("Ann drives a Fiat", "Fiat"))
    llm.replies += [facts(("Ann works at Globex", ["T1"]), ("Ann sold her Fiat", ["T1"])),
                    decide(("1", "contradict", "Ann works at Acme"), ("F2", "remove", "Ann drives a Fiat"))]
    res = mem.add("New job at Globex! Also sold the Fiat.", user_id="ann", timestamp="2023-07-01")
    assert res.ok, res.errors
    assert res.superseded == [ids["Ann works at Acme"]] and res.deleted == [ids["Ann drives a Fiat"]]
    assert live(mem) == [("fact", "Ann works at Acme", 2, "2023-07-01"), ("fact", "Ann works at Globex", 1, None)]


def test_noop_keeps_content_and_links_the_new_turn(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm)
    ids = seed(mem, llm, ("Ann likes hiking in the mountains", "hiking"))
    llm.replies += [facts(("Ann enjoys mountain hikes", ["T1"])), decide(("F1", "NOOP", "Ann likes hiking"))]
    res = mem.add([{"role": "Ann", "content": "Hiking again this weekend", "id": "s3:4"}], user_id="ann")
    hid = ids["Ann likes hiking in the mountains"]
    assert res.ok and res.unchanged == [hid] and res.added == [] and res.updated == []
    item = mem.get(hid)
    assert item.content == "Ann likes hiking in the mountains" and item.provenance.source_ids == ["seed", "s3:4"]
    assert live(mem) == [("fact", "Ann likes hiking in the mountains", 2, None)]


# ------------------------------------------------------------------------------------------------ dedup
def test_exact_duplicate_merges_without_a_decision_call(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm)
    ids = seed(mem, llm, ("Ann's favourite colour is blue.", "blue"))
    llm.replies += [facts(("ann's FAVOURITE colour is blue", ["T1"]))]
    res = mem.add([{"role": "Ann", "content": "Blue, always blue", "id": "s9:1"}], user_id="ann")
    fid = ids["Ann's favourite colour is blue."]
    assert res.ok and res.llm_calls == 1 and res.unchanged == [fid] and res.added == []
    assert mem.get(fid).provenance.source_ids == ["seed", "s9:1"]
    # the very same turn again: nothing to add to the provenance, so no new version
    llm.replies += [facts(("Ann's favourite colour is blue", ["T1"]))]
    res = mem.add([{"role": "Ann", "content": "Blue, always blue", "id": "s9:1"}], user_id="ann")
    assert res.unchanged == [fid] and mem.get(fid).version == 2


def test_near_duplicate_merges_but_a_different_fact_does_not(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm)
    ids = seed(mem, llm, ("Ann's favourite colour is blue", "blue"))
    llm.replies += [facts(("Ann's favorite color is blue", ["T1"]), ("Ann's favourite colour is green", ["T1"])),
                    decide(("F1", "ADD", None))]
    res = mem.add("favorite color: blue. Or green?", user_id="ann")
    assert res.ok and res.llm_calls == 2
    assert res.unchanged == [ids["Ann's favourite colour is blue"]]
    assert [a.content for a in res.added] == ["Ann's favourite colour is green"]
    # only the non-duplicate went to the model
    assert "F2" not in llm.calls[-1][1]["content"]


def test_duplicate_candidates_in_one_add_merge_their_turns(make_mem: Callable[..., MemOS]) -> None:
    mem = make_mem(Script(facts(("Ann drinks green tea", ["T1"]), ("Ann drinks green tea.", ["T3"]))))
    res = mem.add(ANN, user_id="ann")
    (tea,) = res.added
    assert tea.provenance.source_ids == ["s1:1", "s1:3"]


def test_scopes_never_mix_in_dedup_or_decisions(make_mem: Callable[..., MemOS]) -> None:
    llm = Script(facts(("Likes pizza", ["T1"])), facts(("Likes pizza", ["T1"])))
    mem = make_mem(llm)
    bob = mem.add("I like pizza", user_id="bob")
    ann = mem.add("I like pizza", user_id="ann")
    assert bob.ok and ann.ok and ann.unchanged == [] and ann.llm_calls == 1  # bob's fact is not ann's
    assert {a.scope.user_id for a in bob.added + ann.added} == {"ann", "bob"}


# ------------------------------------------------------------------------------------------------ robustness
def test_malformed_json_is_repaired_without_a_retry(make_mem: Callable[..., MemOS]) -> None:
    reply = ('<think>Ann moved.</think>Sure! Here are the memories:\n'
             '{"facts": [{"text": "Ann moved to Lisbon", "turns": ["T1",],},],}\nHope this helps!')
    llm = Script(reply)
    mem = make_mem(llm)
    res = mem.add(ANN, user_id="ann")
    assert res.ok and res.llm_calls == 1 and [a.content for a in res.added] == ["Ann moved to Lisbon"]


def test_truncated_output_keeps_the_complete_facts(make_mem: Callable[..., MemOS]) -> None:
    llm = Script('{"facts": [{"text": "Ann moved to Lisbon", "turns": ["T1"]}, {"text": "Ann drinks gr')
    mem = make_mem(llm)
    res = mem.add(ANN, user_id="ann")
    assert res.ok and res.llm_calls == 1 and [a.content for a in res.added] == ["Ann moved to Lisbon"]


@pytest.mark.parametrize("bad, error", [
    ("Sure! Ann moved to Lisbon and likes tea.", "the answer contains no JSON object"),
    ('{"result": "ok"}', "expected {\"facts\": [...]}, got an object with keys ['result']"),
    ('{"facts": "Ann moved"}', '"facts" must be a list, got str'),
    ('{"facts": [{"txt": "Ann moved"}]}', 'fact 0 has no usable "text"'),
    ("", "the answer was empty"),
    (RuntimeError("503 Service Unavailable"), "the model raised RuntimeError: 503 Service Unavailable"),
])
def test_unusable_reply_is_retried_with_the_error_shown(make_mem: Callable[..., MemOS], bad: Any,
                                                        error: str) -> None:
    llm = Script(bad, facts(("Ann moved to Lisbon", ["T1"])))
    mem = make_mem(llm)
    res = mem.add(ANN, user_id="ann")
    assert res.ok and res.llm_calls == 2 and [a.content for a in res.added] == ["Ann moved to Lisbon"]
    retry = llm.calls[1]
    if isinstance(bad, BaseException):
        assert retry == llm.calls[0]  # a raising model gets the same request again
    else:
        assert retry[:2] == llm.calls[0] and retry[2] == {"role": "assistant", "content": bad or "(empty)"}
        assert retry[3]["content"].startswith(f"Your reply could not be used: {error}.")


def test_failed_extraction_stores_the_turns_as_episodes_and_says_so(make_mem: Callable[..., MemOS]) -> None:
    llm = Script("no idea", '{"facts": [', RuntimeError("timeout"))
    mem = make_mem(llm, max_retries=2)
    res = mem.add(ANN, user_id="ann", session_id="s1", timestamp="2023-05-08")
    assert not res.ok and res.llm_calls == 3
    assert res.errors == ["extraction failed for 3 turn(s) (s1:1, s1:2, s1:3): no usable answer after 3 attempt(s) "
                          "(last error: the model raised RuntimeError: timeout); stored them as episodes instead"]
    assert [(a.kind.value, a.content, a.provenance.source_ids) for a in res.added] == [
        ("episode", "Ann: I just moved to Lisbon, I love it here!", ["s1:1"]),
        ("episode", "assistant: Congratulations! What do you like most?", ["s1:2"]),
        ("episode", "Ann: The pastries. And I drink green tea every morning.", ["s1:3"])]
    assert all(a.event_time == datetime(2023, 5, 8, tzinfo=timezone.utc) for a in res.added)
    assert len(live(mem)) == 3
    # retrying the add later does not store the episodes twice
    llm.replies += ["", "", ""]
    res = mem.add(ANN, user_id="ann", session_id="s1", timestamp="2023-05-08")
    assert not res.ok and res.added == [] and len(live(mem)) == 3


def test_failed_decision_adds_the_fact_and_touches_nothing_else(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm, max_retries=1)
    ids = seed(mem, llm, ("Ann lives in Lisbon", "Lisbon"))
    llm.replies += [facts(("Ann lives in Berlin", ["T1"])), '{"decisions": [{"fact": "F1", "op": "MAYBE"}]}',
                    '{"decisions": [{"fact": "F1", "op": "UPDATE", "target": "M7"}]}']
    res = mem.add("Berlin now", user_id="ann")
    assert not res.ok and res.llm_calls == 3
    assert res.errors == ["could not decide how 1 fact(s) relate to existing memories: no usable answer after 2 "
                          "attempt(s) (last error: decision 0: target 'M7' is not one of M1); added them as new "
                          "memories"]
    assert [a.content for a in res.added] == ["Ann lives in Berlin"]
    assert mem.get(ids["Ann lives in Lisbon"]).version == 1
    assert 'decision 0: "op" must be ADD, UPDATE, DELETE or NOOP' in llm.calls[3][3]["content"]


def test_llm_calls_per_add_are_bounded(make_mem: Callable[..., MemOS]) -> None:
    llm = Script(facts(("Ann moved to Lisbon", ["T1"])), "garbage")
    mem = make_mem(llm, batch_turns=1, max_llm_calls=2)
    res = mem.add(ANN, user_id="ann")
    assert res.llm_calls == 2 and len(llm.calls) == 2
    assert [(a.kind.value, a.content) for a in res.added] == [
        ("episode", "assistant: Congratulations! What do you like most?"),
        ("episode", "Ann: The pastries. And I drink green tea every morning."),
        ("fact", "Ann moved to Lisbon")]
    assert res.errors == [
        "extraction failed for 1 turn(s) (s1:2): the limit of 2 LLM calls per add was reached (last error: the "
        "answer contains no JSON object); stored them as episodes instead",
        "extraction failed for 1 turn(s) (s1:3): the limit of 2 LLM calls per add was reached; stored them as "
        "episodes instead"]


def test_turns_are_sent_in_batches_with_their_own_labels(make_mem: Callable[..., MemOS]) -> None:
    turns = [{"role": "Ann", "content": f"fact number {i}", "id": f"t{i}"} for i in range(5)]
    llm = Script(*[facts((f"Ann said {w}", ["T2"])) for w in ("hello", "goodbye", "nothing")])
    mem = make_mem(llm, batch_turns=2)
    res = mem.add(turns, user_id="ann")
    assert res.ok and res.llm_calls == 3
    assert [len(re.findall(r"^T\d+ ", c[1]["content"], re.M)) for c in llm.calls] == [2, 2, 1]
    # T2 of each batch is that batch's second turn (the last batch has none: the whole batch is linked)
    assert [a.provenance.source_ids for a in res.added] == [["t1"], ["t3"], ["t4"]]


def test_decisions_are_batched(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm, decide_batch=2)
    seed(mem, llm, ("Ann likes apples", "a"), ("Ann likes pears", "p"), ("Ann likes plums", "p"))
    llm.replies += [facts(("Ann likes red apples", ["T1"]), ("Ann likes green pears", ["T1"]),
                          ("Ann likes ripe plums", ["T1"])),
                    decide(("F1", "NOOP", "Ann likes apples"), ("F2", "NOOP", "Ann likes pears")),
                    decide(("F1", "NOOP", "Ann likes plums"))]
    res = mem.add("fruit talk", user_id="ann")
    assert res.ok and res.llm_calls == 3 and len(res.unchanged) == 3


def test_an_update_the_store_refuses_is_reported_and_the_rest_applies(make_mem: Callable[..., MemOS]) -> None:
    llm = Script()
    mem = make_mem(llm)
    ids = seed(mem, llm, ("Ann is allergic to nuts", "nuts"))
    mem.cubes["default"].transition(ids["Ann is allergic to nuts"], "frozen", reason="legal hold")
    llm.replies += [facts(("Ann is allergic to peanuts only", ["T1"]), ("Ann plays chess", ["T1"])),
                    decide(("F1", "UPDATE", "Ann is allergic to nuts", {"text": "Ann is allergic to peanuts"}),
                           ("F2", "ADD", None))]
    res = mem.add("Only peanuts, actually. Also: chess!", user_id="ann")
    assert not res.ok and len(res.errors) == 1 and "is frozen and cannot be updated" in res.errors[0]
    assert [a.content for a in res.added] == ["Ann plays chess"]
    assert mem.get(ids["Ann is allergic to nuts"]).content == "Ann is allergic to nuts"


def test_keep_episodes_stores_turns_too(make_mem: Callable[..., MemOS]) -> None:
    mem = make_mem(Script(facts(("Ann moved to Lisbon", ["T1"]))), keep_episodes=True)
    res = mem.add(ANN, user_id="ann")
    assert res.ok and sorted(a.kind.value for a in res.added) == ["episode"] * 3 + ["fact"]


def test_infer_switch(make_mem: Callable[..., MemOS], tmp_path: Path) -> None:
    llm = Script()
    mem = make_mem(llm)
    res = mem.add(ANN, user_id="ann", infer=False)
    assert res.mode == "offline" and res.llm_calls == 0 and len(res.added) == 3 and llm.calls == []
    with MemOS(tmp_path / "offline", embedder=embed) as off:
        with pytest.raises(ValidationError, match="infer=True needs an LLM"):
            off.add("hello", infer=True)


# ------------------------------------------------------------------------------------------------ model kinds
def test_langchain_generic_fake_chat_model_sync_and_async(make_mem: Callable[..., MemOS]) -> None:
    from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    llm = GenericFakeChatModel(messages=iter([
        AIMessage(content=facts(("Ann moved to Lisbon", ["T1"]))),
        AIMessage(content=[{"type": "text", "text": facts(("Ann drinks green tea", ["T3"]))}]),
    ]))
    mem = make_mem(llm)
    r1 = mem.add(ANN, user_id="ann")
    r2 = asyncio.run(mem.aadd(ANN, user_id="bob"))
    assert r1.ok and r2.ok and [a.content for a in r1.added + r2.added] == ["Ann moved to Lisbon",
                                                                             "Ann drinks green tea"]


def test_langchain_structured_output_is_used_when_the_model_supports_it(make_mem: Callable[..., MemOS]) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.runnables import RunnableLambda

    from memos_core.reader.llm import Extraction

    class Structured(FakeListChatModel):
        def with_structured_output(self, schema: Any, **kw: Any) -> Any:  # type: ignore[override]
            assert schema is Extraction
            return RunnableLambda(lambda _msgs: Extraction.model_validate(
                {"facts": [{"text": "Ann moved to Lisbon", "kind": "fact", "turns": ["T1"]}]}))

    mem = make_mem(Structured(responses=["never used"]))
    res = mem.add(ANN, user_id="ann")
    assert res.ok and [a.content for a in res.added] == ["Ann moved to Lisbon"]
    assert res.added[0].provenance.source_ids == ["s1:1"]


def test_structured_output_that_fails_falls_back_to_text_for_good(make_mem: Callable[..., MemOS]) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.runnables import RunnableLambda

    tried: list[int] = []

    class Rejecting(FakeListChatModel):
        def with_structured_output(self, schema: Any, **kw: Any) -> Any:  # type: ignore[override]
            def fail(_msgs: Any) -> Any:
                tried.append(1)
                raise ValueError("400: response_format json_schema is not supported by this model")
            return RunnableLambda(fail)

    mem = make_mem(Rejecting(responses=[facts(("Ann moved to Lisbon", ["T1"])), facts(("Bob runs", ["T1"]))]))
    r1 = mem.add(ANN, user_id="ann")
    r2 = mem.add("I run", user_id="bob")
    assert r1.ok and r1.llm_calls == 2 and r2.ok and r2.llm_calls == 1 and tried == [1]
    assert [a.content for a in r1.added + r2.added] == ["Ann moved to Lisbon", "Bob runs"]


def _scripted_llamaindex(replies: list[str]) -> Any:
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback

    class ScriptedLLM(CustomLLM):
        replies: list[str] = []
        prompts: list[str] = []

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="scripted")

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kw: Any) -> CompletionResponse:
            self.prompts.append(prompt)
            return CompletionResponse(text=self.replies.pop(0))

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kw: Any) -> Any:
            raise NotImplementedError

    return ScriptedLLM(replies=list(replies))


def test_llamaindex_custom_llm_sync_and_async(make_mem: Callable[..., MemOS]) -> None:
    llm = _scripted_llamaindex(["not json", facts(("Ann moved to Lisbon", ["T1"])),
                                facts(("Ann drinks green tea", ["T3"]))])
    mem = make_mem(llm)
    r1 = mem.add(ANN, user_id="ann")
    r2 = asyncio.run(mem.aadd(ANN, user_id="bob"))
    assert r1.ok and r1.llm_calls == 2 and r2.ok and r2.llm_calls == 1
    assert [a.content for a in r1.added + r2.added] == ["Ann moved to Lisbon", "Ann drinks green tea"]
    assert llm.prompts[0].startswith(prompts_system()) and "T1 [" in llm.prompts[0]
    assert "Your previous reply:\nnot json" in llm.prompts[1]


def prompts_system() -> str:
    from memos_core.reader.prompts import EXTRACT_SYSTEM

    return EXTRACT_SYSTEM


def test_llamaindex_mock_llm_echoing_the_prompt_stores_episodes_not_garbage(make_mem: Callable[..., MemOS]) -> None:
    from llama_index.core.llms import MockLLM

    mem = make_mem(MockLLM(), max_retries=1)
    res = mem.add(ANN[:1], user_id="ann")
    assert not res.ok and res.llm_calls == 2 and "has no usable \"text\"" in res.errors[0]
    assert [(a.kind.value, a.content) for a in res.added] == [("episode", "Ann: I just moved to Lisbon, I love it here!")]


def test_async_callable_model_is_awaited(make_mem: Callable[..., MemOS]) -> None:
    seen: list[int] = []

    async def model(messages: list[dict[str, str]]) -> dict[str, Any]:
        await asyncio.sleep(0)
        seen.append(len(messages))
        return {"facts": [{"text": "Ann moved to Lisbon", "turns": ["T1"]}]}  # already-parsed JSON is fine

    mem = make_mem(model)
    r_async = asyncio.run(mem.aadd(ANN, user_id="ann"))
    r_sync = mem.add(ANN, user_id="bob")  # the sync path runs the coroutine too
    assert r_async.ok and r_sync.ok and seen == [2, 2]
    assert [a.scope.user_id for a in r_async.added + r_sync.added] == ["ann", "bob"]


def test_a_bad_llm_object_is_rejected_up_front() -> None:
    with pytest.raises(ValidationError, match="expected a LangChain chat model"):
        LLMReader(object())
    with pytest.raises(ValidationError, match="max_retries"):
        LLMReader(lambda m: "", max_retries=-1)


def test_timestamps_default_to_the_clock(make_mem: Callable[..., MemOS], clock: Clock) -> None:
    clock.now = clock.now + timedelta(days=3)
    mem = make_mem(Script(facts(("Ann moved to Lisbon", ["T1"]))))
    res = mem.add("I moved to Lisbon", user_id="ann")
    assert res.added[0].event_time == clock.now
