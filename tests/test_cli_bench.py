"""`memos bench retrieval FILE --json` on a tiny dataset in the shared format (DESIGN.md)."""

from __future__ import annotations

import json

import pytest
from conftest import hashed_embed

from memos_core.bench import retrieval
from memos_core.cli import main

KS = (1, 5, 10, 20)
METRICS = [f"{m}@{k}" for m in ("any", "frac") for k in KS]

DATASET = {
    "name": "tiny-test",
    "license": "CC0",
    "conversations": [
        {
            "id": "c1",
            "sessions": [
                {"id": "s1", "date": "2023-05-08 13:56", "turns": [
                    {"id": "D1:1", "speaker": "Ann", "text": "I adopted a greyhound called Biscuit yesterday!"},
                    {"id": "D1:2", "speaker": "Bob", "text": "Congratulations! How old is the dog?"},
                    {"id": "D1:3", "speaker": "Ann", "text": "Three years old, a retired racer from Porto."},
                    {"id": "D1:4", "speaker": "Bob", "text": "I am baking sourdough bread this weekend."},
                ]},
                {"id": "s2", "date": "2023-06-02 09:10", "turns": [
                    {"id": "D2:1", "speaker": "Ann", "text": "My cello lesson moved to Thursday evenings."},
                    {"id": "D2:2", "speaker": "Bob", "text": "My sourdough starter finally works, the loaf rose."},
                    {"id": "D2:3", "speaker": "Ann", "date": "2023-06-02 09:30",
                     "text": "Biscuit loves the beach at Cascais."},
                ]},
            ],
            "queries": [
                {"id": "q1", "text": "When did Ann adopt the greyhound?", "evidence": ["D1:1"],
                 "category": "temporal"},
                {"id": "q2", "text": "Who is baking bread?", "evidence": ["D1:4", "D2:2"], "category": "multi-hop"},
                {"id": "q3", "text": "Which instrument does Ann study?", "evidence": ["D2:1"],
                 "category": "single-hop"},
                {"id": "q4", "text": "no evidence listed, must be skipped", "evidence": [], "category": "skip"},
            ],
        },
        {
            "id": "c2",
            "sessions": [
                {"id": "s1", "date": "2023-07-01 18:00", "turns": [
                    {"id": "E1:1", "speaker": "Cleo", "text": "We booked a sailing trip to Crete in August."},
                    {"id": "E1:2", "speaker": "Dev", "text": "Crete sounds great, is Mira coming along?"},
                    {"id": "E1:3", "speaker": "Cleo", "text": "Yes, my sister Mira joins us with her kayak."},
                    {"id": "E1:4", "speaker": "Dev", "text": "   "},
                ]},
            ],
            "queries": [
                {"id": "q1", "text": "Where is Cleo sailing in August?", "evidence": ["E1:1"],
                 "category": "single-hop"},
                {"id": "q2", "text": "Who brings a kayak on the trip?", "evidence": ["E1:3"],
                 "category": "single-hop"},
            ],
        },
    ],
}


def _check_block(r: dict) -> None:
    for m in METRICS:
        assert 0.0 <= r[m] <= 1.0, m
    for a, b in zip(KS, KS[1:]):
        assert r[f"any@{a}"] <= r[f"any@{b}"] and r[f"frac@{a}"] <= r[f"frac@{b}"]
    for k in KS:
        assert r[f"frac@{k}"] <= r[f"any@{k}"]
    assert 0 <= r["search_p50_ms"] <= r["search_p95_ms"]


def test_bench_retrieval_json(tmp_path, capsys, minilm) -> None:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(DATASET))
    assert main(["bench", "retrieval", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    last = out.strip().splitlines()[-1]
    rep = json.loads(last)
    assert isinstance(rep, dict)
    for key in METRICS + ["by_category", "search_p50_ms", "search_p95_ms", "ingest_per_s", "ablations"]:
        assert key in rep, key
    assert set(rep["ablations"]) == {"dense", "lexical"}
    _check_block(rep)
    for name, r in rep["ablations"].items():
        _check_block(r)
        assert set(r["by_category"]) == set(rep["by_category"])
    assert rep["queries"] == 5 and rep["turns"] == 10  # empty turns and queries without evidence are skipped
    assert set(rep["by_category"]) == {"temporal", "multi-hop", "single-hop"}
    assert rep["by_category"]["single-hop"]["queries"] == 3
    assert rep["ingest_per_s"] > 0
    # every conversation is its own scope and has fewer than 20 turns: @20 sees all of them
    assert rep["any@20"] == 1.0 and rep["frac@20"] == 1.0
    # these queries are easy: hybrid retrieval gets every one into the top 5
    assert rep["any@5"] == 1.0
    assert err  # the human-readable table goes to stderr


def test_bench_metrics_are_computed_per_query(tmp_path) -> None:
    """With the lexical retriever the ranking is predictable, so the metrics can be checked exactly."""
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(DATASET))
    rep = retrieval.run(path, embedder=hashed_embed, modes=("lexical",))
    by = rep["by_category"]
    assert by["temporal"]["any@1"] == 1.0  # "greyhound" only occurs in D1:1
    # "baking bread" matches D1:4 (and D2:1, which quotes it as context) but never D2:2: frac@20 = 1/2
    assert by["multi-hop"]["any@20"] == 1.0 and by["multi-hop"]["frac@20"] == 0.5
    assert rep["ablations"] == {}


def test_bench_rejects_bad_files(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    for text in ("{not json", json.dumps({"conversations": "nope"}), json.dumps({"conversations": [{"id": 1}]})):
        bad.write_text(text)
        assert main(["bench", "retrieval", str(bad), "--json"]) == 2
        _, err = capsys.readouterr()
        assert err.startswith("error: ") and err.strip().count("\n") == 0


def test_bench_runs_on_the_shared_dataset_format(tmp_path) -> None:
    from pathlib import Path

    # a slice of MADial-Bench (MIT licence, tests/data/LICENSE.madial); the full file is ../shared/data/madial
    src = Path(__file__).resolve().parent / "data" / "madial_slice.json"
    rep = retrieval.run(src, embedder=hashed_embed, limit_conversations=2, modes=("hybrid", "lexical"))
    assert rep["queries"] > 0 and rep["turns"] > 0
    _check_block(rep)
