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


def test_benchmarks_share_one_ingest(tmp_path) -> None:
    """Retrieval and QA benchmarks ingest a conversation the same way (one function): one memory per non-blank
    turn, the turn id in provenance, the turn's own date else the session's as event time, in the user scope."""
    from memos_core.bench import qa as bench_qa
    from memos_core.cube import MemCube
    from memos_core.items import to_utc

    assert bench_qa.ingest_conversation is retrieval.ingest_conversation
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        turns = [retrieval.ingest_conversation(cube, conv, f"u{i}") for i, conv in enumerate(DATASET["conversations"])]
        assert [[t.id for t in ts] for ts in turns] == [
            ["D1:1", "D1:2", "D1:3", "D1:4", "D2:1", "D2:2", "D2:3"], ["E1:1", "E1:2", "E1:3"]]  # E1:4 is blank
        items = {it.provenance.source_ids[0]: it for it in cube.list(limit=100)}
        assert sorted(items) == sorted(t.id for ts in turns for t in ts)
        assert items["D1:1"].content == "Ann: I adopted a greyhound called Biscuit yesterday!"
        assert items["D1:2"].event_time == to_utc("2023-05-08 13:56")  # the session's date
        assert items["D2:3"].event_time == to_utc("2023-06-02 09:30")  # the turn's own date
        assert {it.provenance.session_id for it in items.values()} == {"s1", "s2"}
        hits = cube.search("greyhound", user_id="u1", k=10)  # each conversation went to its own scope only
        assert hits and {h.item.provenance.source_ids[0][0] for h in hits} == {"E"}
    path = tmp_path / "d.json"
    path.write_text(json.dumps(DATASET))
    assert retrieval.run(path, embedder=hashed_embed, modes=("lexical",))["turns"] == 10  # what was ingested


# ---------------------------------------------------------------------------------------------- memos bench qa
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from datetime import datetime  # noqa: E402

from memos_core.bench import qa  # noqa: E402
from memos_core.errors import ValidationError  # noqa: E402

QA_FILE = Path(__file__).resolve().parent / "data" / "qa_small.json"
_STOP = {"what", "which", "who", "is", "the", "of", "a", "does", "did", "to", "in", "name", "where", "now", "when",
         "on", "for", "ann's", "bob's", "dev's", "tom's", "priya's", "cleo's"}


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if w not in _STOP}


def _memory_echo_model():
    """A LangChain chat model that 'answers' with the memory or conversation line sharing most words with the
    question (the text after the date and speaker), or "I don't know": a stand-in for a model that reads its
    prompt, so the benchmark's retrieval, prompt building and scoring can be checked exactly."""
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    class MemoryEcho(BaseChatModel):
        calls: list = []

        @property
        def _llm_type(self) -> str:
            return "memory-echo"

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            system, question = messages[0].content, messages[-1].content
            self.calls.append((system, question))
            lines = [ln for ln in system.splitlines() if ln.startswith(("- [", "["))]
            best, overlap = "I don't know.", 0
            for ln in lines:
                n = len(_words(ln) & _words(question))
                if n > overlap:
                    best, overlap = re.sub(r"^(- )?\[[^\]]*\] [^:]+: ", "", ln), n
            words = len((system + " " + question).split())
            msg = AIMessage(content=best + "\nsecond line is not scored",
                            usage_metadata={"input_tokens": words, "output_tokens": 3, "total_tokens": words + 3})
            return ChatResult(generations=[ChatGeneration(message=msg)])

    return MemoryEcho()


def test_qa_scoring_is_squad_style() -> None:
    assert qa.normalize_answer("The  Lisbon marathon!") == "lisbon marathon"
    assert qa.token_f1("the cello", "cello") == 1.0
    assert qa.token_f1("Ann plays the cello on Thursdays", "cello") == pytest.approx(2 * (1 / 5) / (1 / 5 + 1))
    assert qa.token_f1("violin", "cello") == 0.0
    assert qa.exact_match("A paramedic.", "paramedic") == 1.0
    s = qa.score("She is in Glasgow now", ["York", "Glasgow"])
    assert s["em"] == 0.0 and s["contains"] == 1.0 and s["f1"] == pytest.approx(2 * 0.2 / 1.2)
    assert qa.score("Glasgowish", ["Glasgow"])["contains"] == 0.0  # whole words only
    assert qa.gold_answers({"answer": "x"}) == ["x"] and qa.gold_answers({}) is None
    for bad in ("", [], ["ok", 3], {"a": 1}):
        with pytest.raises(ValidationError):
            qa.gold_answers({"id": "q", "answer": bad})


def test_qa_with_a_langchain_chat_model(tmp_path) -> None:
    model = _memory_echo_model()
    ans = qa.ChatAnswerer(model)
    rep = qa.run(QA_FILE, ans, k=3, embedder=hashed_embed, workdir=tmp_path, min_score=None)
    assert rep["modes"] == ["none", "text", "context"] and rep["questions"] == 18 and rep["scored"] == 18
    o = rep["overall"]
    assert o["none"]["f1"] == 0.0 and o["none"]["contains"] == 0.0  # "I don't know." every time
    # memories help: most answers now quote the turn that holds the gold answer
    assert o["text"]["contains"] >= 0.6 and o["text"]["f1"] > 0.15
    assert o["context"]["contains"] >= 0.6
    assert set(rep["by_category"]) == {"single-hop", "update", "temporal", "multi-hop"}
    assert rep["by_category"]["update"]["text"]["scored"] == 2
    for m in rep["modes"]:
        assert o[m]["answers"] == 18 and o[m]["ttft_s_p50"] is not None and o[m]["ttft_s_p50"] >= 0
    # prompt tokens come from the model's usage metadata; memories make the prompt longer
    assert o["none"]["prompt_tokens_mean"] < o["text"]["prompt_tokens_mean"] < o["context"]["prompt_tokens_mean"]
    row = next(r for r in rep["answers"] if r["conversation"] == "ann-bob" and r["id"] == "q3")
    assert row["gold"] == ["red"] and "red bicycle" in row["modes"]["text"]["answer"]
    assert "\n" not in row["modes"]["text"]["answer"]  # only the first line is scored
    assert "A2:2" in row["memory_sources"] and len(row["memory_sources"]) <= 3
    # the prompt: memory block (dated lines, oldest first), then the instruction; the question as user message
    system = next(s for s, q in model.calls if q == "What colour is Bob's bicycle?" and s.startswith(qa.MEMORY_PREAMBLE))
    dated = [ln for ln in system.splitlines() if ln.startswith("- [")]
    days = [datetime.strptime(ln[3:ln.index("]")], "%d %B %Y") for ln in dated]  # "- [2 June 2023] Bob: ..."
    assert len(dated) == row["memories"] == 3 and rep["memories_mean"] == 3.0 and rep["min_score"] is None
    assert days == sorted(days) and system.endswith(qa.DEFAULT_SYSTEM)
    # (d) without a window: the whole conversation, one dated line per turn
    full = next(s for s, q in model.calls if q == "What colour is Bob's bicycle?" and s.startswith(qa.CONTEXT_PREAMBLE))
    assert sum(1 for ln in full.splitlines() if re.match(r"\[\d{1,2} \w+ 2023\] ", ln)) == 13
    assert rep["f1_gain_vs_none"] == {"text": None, "context": None}  # no F1 without memory: no ratio


def test_qa_memory_order_time_or_best_hit_last(tmp_path) -> None:
    """order="time": oldest first; order="relevance": the search's order reversed (the best hit right before the
    instruction and the question). Both show the same memories; an unknown order is refused."""
    from memos_core.items import MemoryItem

    hits = [MemoryItem(content=f"Ann: fact {i}", event_time=datetime(2023, 5, d, 9)) for i, d in enumerate((3, 9, 1))]
    by_time = qa.memory_lines(hits)
    by_rel = qa.memory_lines(hits, "relevance")
    assert [it.id for it in by_time] == [hits[2].id, hits[0].id, hits[1].id]
    assert [it.id for it in by_rel] == [hits[2].id, hits[1].id, hits[0].id]  # best (hits[0]) last
    assert by_rel[-1].content == "[3 May 2023] Ann: fact 0"
    with pytest.raises(ValidationError, match="order"):
        qa.memory_lines(hits, "random")
    reps = {o: qa.run(QA_FILE, qa.ChatAnswerer(_memory_echo_model()), modes=["text"], k=3, embedder=hashed_embed,
                      limit_conversations=1, min_score=None, order=o) for o in ("time", "relevance")}
    assert reps["relevance"]["order"] == "relevance" and reps["time"]["topical_query"] == "topic"
    for a, b in zip(reps["time"]["answers"], reps["relevance"]["answers"]):
        assert sorted(a["memory_sources"]) == sorted(b["memory_sources"]) and len(a["memory_sources"]) == 3
    assert any(a["memory_sources"] != b["memory_sources"]
               for a, b in zip(reps["time"]["answers"], reps["relevance"]["answers"]))
    with pytest.raises(ValidationError, match="order"):
        qa.run(QA_FILE, qa.ChatAnswerer(_memory_echo_model()), order="random", embedder=hashed_embed)


def test_qa_min_score_leaves_weak_memories_out(tmp_path) -> None:
    """Only hits scoring at least min_score reach the prompt, the best one always; the dates are resolved."""
    kept = {}
    for ms in (None, 0.5, 1.0):
        rep = qa.run(QA_FILE, qa.ChatAnswerer(_memory_echo_model()), modes=["text"], k=3, embedder=hashed_embed,
                     limit_conversations=1, min_score=ms)
        kept[ms] = [r["memories"] for r in rep["answers"]]
    assert all(n == 3 for n in kept[None]) and all(n == 1 for n in kept[1.0])
    assert all(1 <= a <= b for a, b in zip(kept[0.5], kept[None]))
    with pytest.raises(ValidationError, match="min_score"):
        qa.run(QA_FILE, qa.ChatAnswerer(_memory_echo_model()), min_score=1.5, embedder=hashed_embed)
    line = qa._dated("Ann: I moved to Lisbon yesterday, last Monday I packed.", datetime(2023, 5, 10, 9))
    assert line == "[10 May 2023] Ann: I moved to Lisbon yesterday (9 May 2023), last Monday (8 May 2023) I packed."


def test_qa_chat_model_window_truncates_the_conversation(tmp_path) -> None:
    model = _memory_echo_model()
    rep = qa.run(QA_FILE, qa.ChatAnswerer(model, window=120), modes=["context"], embedder=hashed_embed,
                 limit_conversations=1, limit_queries=2)
    assert rep["questions"] == 2 and rep["overall"]["context"]["truncated"] == 2
    system = model.calls[-1][0]
    kept = [ln for ln in system.splitlines() if ln.startswith("[")]
    assert 0 < len(kept) < 13 and kept[-1].endswith("Tell Clara I said hi.")  # the most recent turns stay


def test_qa_judge_and_modes(tmp_path) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    judge_model = FakeListChatModel(responses=["CORRECT", "Wrong.", "maybe?"])
    judge = qa.Judge(judge_model)
    assert judge("q", ["a"], "a") == 1.0 and judge("q", ["a"], "b") == 0.0 and judge("q", ["a"], "c") is None
    with pytest.raises(ValidationError):
        qa.Judge(judge_model, prompt="no slots")
    with pytest.raises(ValidationError, match="local transformers model"):
        qa.run(QA_FILE, qa.ChatAnswerer(_memory_echo_model()), modes=["kv"], embedder=hashed_embed)
    with pytest.raises(ValidationError, match="unknown mode"):
        qa.run(QA_FILE, qa.ChatAnswerer(_memory_echo_model()), modes=["nope"], embedder=hashed_embed)
    # the judge sees the question, the gold answers and the answer; its verdicts are averaged per mode
    seen = []

    def verdict(question, golds, answer):
        seen.append((question, tuple(golds), answer))
        return None if "Cleo" in question else float(any(g.lower() in answer.lower() for g in golds))

    rep = qa.run(QA_FILE, qa.ChatAnswerer(_memory_echo_model()), modes=["none", "text"], judge=verdict,
                 embedder=hashed_embed, limit_conversations=2, min_score=None)
    assert len(seen) == 2 * 12
    assert rep["overall"]["none"]["judge"] == 0.0
    assert rep["overall"]["text"]["judge"] > 0.5 and rep["overall"]["text"]["judge_unparsed"] == 2


def _write_answer_module(tmp_path, monkeypatch) -> None:
    (tmp_path / "qa_fake_models.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from test_cli_bench import _memory_echo_model\n"
        "def echo():\n    return _memory_echo_model()\n"
        "from langchain_core.language_models.fake_chat_models import FakeListChatModel\n"
        "def always_correct():\n    return FakeListChatModel(responses=['CORRECT'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_cli_bench_qa_json(tmp_path, capsys, monkeypatch) -> None:
    _write_answer_module(tmp_path, monkeypatch)
    monkeypatch.setattr("memos_core.bench.qa.MemCube", _hashed_cube)
    rc = main(["bench", "qa", str(QA_FILE), "--model", "qa_fake_models:echo", "--judge", "qa_fake_models:always_correct",
               "--k", "2", "--limit", "2", "--limit-queries", "3", "--modes", "none,text", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    rep = json.loads(out.strip().splitlines()[-1])
    assert rep["questions"] == 6 and rep["k"] == 2 and rep["modes"] == ["none", "text"]
    assert rep["overall"]["text"]["judge"] == 1.0 and rep["overall"]["text"]["f1"] > rep["overall"]["none"]["f1"]
    assert all(len(r["memory_sources"]) <= 2 for r in rep["answers"])
    assert "(b) top-k memories as text" in err  # the table goes to stderr


def _hashed_cube(*args, **kwargs):
    from memos_core.cube import MemCube

    kwargs["embedder"] = hashed_embed
    return MemCube(*args, **kwargs)


def test_cli_bench_qa_errors(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.json"
    data = json.loads(QA_FILE.read_text())
    data["conversations"][1]["queries"][0]["answer"] = 42
    bad.write_text(json.dumps(data))
    for argv in (["bench", "qa", str(QA_FILE), "--model", "no_such_thing"],
                 ["bench", "qa", str(QA_FILE), "--model", "no_such_module_xyz:model"],
                 ["bench", "qa", str(QA_FILE), "--model", "json:dumps"],
                 ["bench", "qa", str(tmp_path / "missing.json"), "--model", "no_such_thing"]):
        assert main(argv) == 2, argv
        _, err = capsys.readouterr()
        assert err.startswith("error: ") and err.strip().count("\n") == 0
    with pytest.raises(ValidationError, match="'answer'"):
        qa.run(bad, qa.ChatAnswerer(_memory_echo_model()), embedder=hashed_embed)


def test_qa_local_model_all_modes(tmp_path) -> None:
    """A tiny random local model: (c) must give the same tokens as (b) and the cached conversation of (d) the
    same as a full prefill; (d) fits the window."""
    pytest.importorskip("transformers")
    from memos_core.activation.testing import save_tiny_model

    folder = save_tiny_model(tmp_path / "tiny", "qwen2", max_positions=600)
    ans = qa.load_answerer(str(folder), max_new_tokens=6)
    assert isinstance(ans, qa.LocalAnswerer) and ans.window == 600
    rep = qa.run(QA_FILE, ans, k=3, embedder=hashed_embed, limit_conversations=2, limit_queries=3)
    assert rep["modes"] == list(qa.MODES) and rep["questions"] == 6
    assert rep["kv_identical"] == 1.0 and rep["kv_identical_count"] == "6/6"
    assert rep["context_identical_count"] == "2/2"
    o = rep["overall"]
    assert o["kv"]["cached_tokens_mean"] > 0 and o["kv"]["cache_build_s_mean"] > 0
    assert o["context"]["truncated"] == 3  # the first conversation does not fit in 600 tokens, the second does
    for r in rep["answers"]:
        assert r["modes"]["kv"]["answer"] == r["modes"]["text"]["answer"]
        assert r["modes"]["kv"]["prompt_tokens"] == r["modes"]["text"]["prompt_tokens"]
        assert r["modes"]["context"]["prompt_tokens"] <= 600 - 6
        assert r["modes"]["none"]["prompt_tokens"] < r["modes"]["text"]["prompt_tokens"]
        for m in qa.MODES:
            assert 0.0 <= r["modes"][m]["f1"] <= 1.0
