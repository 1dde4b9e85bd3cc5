"""The LLM reader's bulk ingest shows a progress bar (tqdm on stderr) over the turns read when an add needs
more than one extraction call; never for one call, never with progress=False / MEMOS_PROGRESS=0."""

from __future__ import annotations

import json
import re

import pytest

from memos_core import MemOS
from memos_core.reader import LLMReader

from test_reader_llm import embed  # noqa: E402 - the tests' deterministic embedder

TURNS = [{"role": "Ann", "content": c, "id": f"t{i}"} for i, c in enumerate(
    ["I own a red bike.", "My sister lives in Oslo.", "I teach chemistry.", "We adopted a cat.", "I play the cello."])]


def _extract(messages):
    first = re.search(r"^T1 .*?: (.*)$", messages[-1]["content"], re.M)
    return json.dumps({"facts": [{"text": first.group(1), "turns": ["T1"]}]})


def _add(tmp_path, name, turns, monkeypatch, env=None, **reader):
    if env is not None:
        monkeypatch.setenv("MEMOS_PROGRESS", env)
    calls = []

    def llm(messages):
        calls.append(messages)
        return _extract(messages)

    with MemOS(tmp_path / name, embedder=embed, llm=LLMReader(llm, batch_turns=2, **reader)) as mem:
        res = mem.add(turns, user_id="ann")
    return res, calls


def test_bar_over_turns_when_several_extraction_calls(tmp_path, capsys, monkeypatch):
    res, calls = _add(tmp_path, "a", TURNS, monkeypatch, progress=True)
    assert len(calls) == 3 and res.ok and len(res.added) == 3
    err = capsys.readouterr().err
    assert "reading turns (LLM)" in err and "/5" in err


def test_no_bar_for_one_call_or_when_switched_off(tmp_path, capsys, monkeypatch):
    _add(tmp_path, "b", TURNS[:2], monkeypatch, progress=True)  # one extraction call
    _add(tmp_path, "c", TURNS, monkeypatch, progress=False)
    _add(tmp_path, "d", TURNS, monkeypatch, env="0")  # the environment switch, progress left to it
    assert "reading turns" not in capsys.readouterr().err
    _add(tmp_path, "e", TURNS, monkeypatch, env="1")
    assert "reading turns (LLM)" in capsys.readouterr().err
