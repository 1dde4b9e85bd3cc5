"""Forget reaches derived text (issue 13, part 2).

Forgetting a memory must remove its content from everything derived from it: the next turn's index text
("(in reply to: user: ...)"), merged duplicates, facts an LLM reader extracted from it (and citations of it),
the lexical index, stored embeddings, the vector index and its files. Every test greps the raw bytes of every
file of the data folder (SQLite main file, WAL, Chroma's SQLite and segment files) for the text, and looks for
the erased float32 vectors in them too (scrubbed in place, without rebuilding the index: tests/test_forget_scale.py
forbids the rebuild). Children are killed with SIGKILL right after (or in the middle of) a
forget; their output is read through one path only (``readline`` on stdout, stderr to a file).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from conftest import TESTS_DIR

from memos_core import Conflict, LifecycleState, MemCube, MemOS
from memos_core.reader import LLMReader
from memos_core.reader.offline import OfflineReader, Turn

PIN = "Wkpq4417"
TEXT_TRACES = (PIN.encode(), PIN.lower().encode(), b"zorblaxian")


def dense_embed(texts: list[str]) -> np.ndarray:
    """Deterministic dense vectors (64 d): every erased vector is distinctive enough to look for in raw bytes."""
    out = []
    for t in texts:
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode("utf-8")).digest()[:8], "little"))
        out.append(rng.standard_normal(64).astype(np.float32))
    return np.stack(out)


def files_of(folder: Path) -> Iterator[Path]:
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            yield p


def text_traces(folder: Path, traces: tuple[bytes, ...] = TEXT_TRACES) -> list[tuple[str, bytes]]:
    return [(str(p.relative_to(folder)), t) for p in files_of(folder) for t in traces if t in p.read_bytes()]


def vector_traces(folder: Path, vecs: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """Files holding (up to float rounding: Chroma re-normalises) the first 16 components of any vector."""
    hits = []
    for p in files_of(folder):
        data = p.read_bytes()
        for name, v in vecs.items():
            head = np.asarray(v, dtype=np.float32)[:16]
            found = False
            for al in range(4):
                n = (len(data) - al) // 4
                if n < 16:
                    continue
                arr = np.frombuffer(data, dtype=np.float32, count=n, offset=al)
                with np.errstate(invalid="ignore"):
                    cand = np.nonzero(np.abs(arr[: n - 15] - head[0]) < 1e-5)[0]
                for i in cand[:10000]:
                    if np.allclose(arr[i:i + 16], head, atol=1e-5):
                        found = True
                        break
                if found:
                    break
            if found:
                hits.append((str(p.relative_to(folder)), name))
    return hits


def stored_vec(cube: MemCube, item_id: str) -> np.ndarray:
    cube._embed_waiting()  # MemOS embeds a turn right after its add, off the caller's thread (embed_sync)
    vec = cube.records.embedding(cube.records.rowid(item_id))  # type: ignore[arg-type]
    assert vec is not None
    return vec.copy()


@pytest.fixture(autouse=True)
def no_index_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every guarantee here holds without rebuilding the vector index (forget scrubs in place; a rebuild per
    forget cost minutes at 100k memories): any compaction fails the test."""
    from memos_core.plaintext.vector import ChromaVectorIndex

    def refuse(self: Any, batches: Any) -> int:
        raise AssertionError("forget rebuilt the vector index")

    monkeypatch.setattr(ChromaVectorIndex, "compact", refuse)


@pytest.fixture
def mem(tmp_path: Path) -> Iterator[MemOS]:
    m = MemOS(tmp_path / "mem", embedder=dense_embed)
    yield m
    m.close()


def _filler(mem: MemOS, n: int = 30) -> None:
    mem.add([{"role": "user", "content": f"filler turn {i} about tea and weather", "id": f"f{i}"}
             for i in range(n)], user_id="ann")


# ---------------------------------------------------------------------------------------------- MemOS, offline
def test_forgetting_a_turn_removes_it_from_the_reply_neighbour_and_every_file(mem: MemOS, tmp_path: Path) -> None:
    _filler(mem)
    r = mem.add([{"role": "user", "content": f"Will you remember that my PIN is {PIN}?", "id": "t1"},
                 {"role": "assistant", "content": "Noted.", "id": "t2"}], user_id="ann")
    pin, reply = r.added
    cube = mem.cubes["default"]
    # a reply carries the question it answers in its index text: derived text (issue 13's reproduction)
    assert PIN in (mem.get(reply.id).index_text or "")
    old = {"pin": stored_vec(cube, pin.id), "reply-before": stored_vec(cube, reply.id)}
    assert text_traces(tmp_path / "mem") and vector_traces(tmp_path / "mem", old)
    assert mem.forget(pin.id) == [pin.id]
    after = mem.get(reply.id)
    assert after.content == "assistant: Noted." and PIN not in (after.index_text or "")
    assert after.index_text is not None and "in reply to" not in after.index_text
    assert all(PIN not in (v.index_text or "") for v in mem.history(reply.id))
    assert mem.search(PIN, user_id="ann", mode="lexical") == []
    assert cube.search(PIN.lower(), mode="lexical") == []
    assert not np.allclose(stored_vec(cube, reply.id), old["reply-before"])  # re-embedded
    assert reply.id in cube.index.ids() and pin.id not in cube.index.ids()
    assert text_traces(tmp_path / "mem") == []
    assert vector_traces(tmp_path / "mem", old) == []
    ev = cube.records.events()[-1]
    assert (ev["op"], ev["detail"]["ids"], ev["detail"]["rederived"]) == ("forget", [pin.id], [reply.id])
    assert cube.governance.verify().ok
    # the next turn in the same scope must not get the forgotten turn back as its reply context
    mem.add([{"role": "user", "content": f"Remember {PIN}?", "id": "t0"}], user_id="ann", session_id="s9")
    nxt = mem.add([{"role": "assistant", "content": "Yes.", "id": "t3"}], user_id="ann", session_id="s9")
    first = mem.search("Remember", user_id="ann", mode="lexical")[0].item
    mem.forget(first.id)
    mem.add([{"role": "user", "content": "And now?", "id": "t4"}], user_id="ann", session_id="s9")
    assert text_traces(tmp_path / "mem", (PIN.encode(), PIN.lower().encode())) == []
    assert PIN not in (mem.get(nxt.added[0].id).index_text or "")
    mem.close()
    assert text_traces(tmp_path / "mem") == [] and vector_traces(tmp_path / "mem", old) == []


def test_purge_also_rederives_the_neighbour(mem: MemOS, tmp_path: Path) -> None:
    _filler(mem, 10)
    r = mem.add([{"role": "user", "content": f"Will you remember that my PIN is {PIN}?", "id": "t1"},
                 {"role": "assistant", "content": "Noted.", "id": "t2"}], user_id="ann")
    pin, reply = r.added
    cube = mem.cubes["default"]
    mem.delete(pin.id)
    cube.purge(pin.id)
    assert PIN not in (mem.get(reply.id).index_text or "")
    assert cube.records.events()[-1]["detail"]["rederived"] == [reply.id]
    assert text_traces(tmp_path / "mem") == []


def test_a_neighbour_under_legal_hold_blocks_the_forget(mem: MemOS) -> None:
    r = mem.add([{"role": "user", "content": f"Will you remember that my PIN is {PIN}?", "id": "t1"},
                 {"role": "assistant", "content": "Noted.", "id": "t2"}], user_id="ann")
    cube = mem.cubes["default"]
    cube.legal_hold(r.added[1].id)
    with pytest.raises(Conflict, match="legal hold"):
        mem.forget(r.added[0].id)
    assert PIN in mem.get(r.added[0].id).content  # nothing changed
    assert PIN in (mem.get(r.added[1].id).index_text or "")


# ---------------------------------------------------------------------------------------------- MemCube
def test_memcube_forget_reaches_merged_duplicates_derived_memories_and_other_users_stay(tmp_path: Path) -> None:
    folder = tmp_path / "cube"
    cube = MemCube(folder, embedder=dense_embed)
    specs = OfflineReader().read([Turn(f"is my zorblaxian PIN {PIN}?", "user", "u1"),
                                  Turn("Got it.", "assistant", "u2")])
    ep, reply = cube.add_many(specs, user_id="ann")
    bob = cube.add_many(OfflineReader().read([Turn(f"is my zorblaxian PIN {PIN}?", "user", "u1"),
                                              Turn("Got it.", "assistant", "u2")]), user_id="bob")
    cube.add_many([f"filler memory {i}" for i in range(20)], user_id="ann")
    dup = cube.add(f"Ann's PIN is {PIN}", kind="fact", user_id="ann")
    keep = cube.add(f"Ann's PIN is {PIN}.", kind="fact", user_id="ann",
                    provenance={"parent_ids": [dup.id]})  # dedup's survivor names what was merged into it
    cube.transition(dup.id, LifecycleState.MERGED, reason=f"merged into {keep.id}")
    summary = cube.add("summary of the zorblaxian matter", provenance={"parent_versions": [f"{keep.id}@1"]},
                       user_id="ann")
    vecs = {k: stored_vec(cube, i) for k, i in (("ep", ep.id), ("keep", keep.id), ("summary", summary.id),
                                                ("reply", reply.id))}
    erased = cube.forget(keep.id)
    assert erased == [keep.id, summary.id, dup.id]  # derived summary and the duplicate folded into it
    cube.forget(ep.id)
    assert PIN not in (cube.get(reply.id).index_text or "")
    # Bob's copy of the same words is his own memory: untouched
    assert PIN in bob[0].content and PIN in (cube.get(bob[1].id).index_text or "")
    cube.forget(bob[0].id)
    assert text_traces(folder) == []
    assert vector_traces(folder, vecs) == []
    cube.close()
    assert text_traces(folder) == [] and vector_traces(folder, vecs) == []
    with MemCube(folder, embedder=dense_embed) as again:
        assert again.get(reply.id).index_text and again.governance.verify().ok


# ---------------------------------------------------------------------------------------------- LLM reader
def test_llm_reader_facts_from_a_forgotten_turn_are_erased_and_citations_unlinked(tmp_path: Path) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    first = json.dumps({"facts": [
        {"text": f"Ann's bank PIN is {PIN}", "kind": "fact", "turns": ["T1"]},
        {"text": "Ann likes green tea", "kind": "preference", "turns": ["T3"]}]})
    second = json.dumps({"facts": [{"text": "Ann likes green tea", "kind": "preference", "turns": ["T1"]}]})
    llm = FakeListChatModel(responses=[first, second])
    folder = tmp_path / "llm"
    mem = MemOS(folder, embedder=dense_embed, llm=LLMReader(llm, keep_episodes=True))
    try:
        r1 = mem.add([{"role": "Ann", "content": f"My bank PIN is {PIN}, keep it safe", "id": "s1:1"},
                      {"role": "assistant", "content": "I will.", "id": "s1:2"},
                      {"role": "Ann", "content": "I like green tea", "id": "s1:3"}], user_id="ann")
        assert r1.ok, r1.errors
        r2 = mem.add([{"role": "Ann", "content": f"Did I say I like green tea? PIN {PIN} again", "id": "s2:1"}],
                     user_id="ann")
        assert r2.ok, r2.errors
        cube = mem.cubes["default"]
        items = {it.content: it for it in cube.list({"states": ["activated"]}, limit=100)}
        fact = items[f"Ann's bank PIN is {PIN}"]
        tea = items["Ann likes green tea"]
        assert tea.provenance.source_ids == ["s1:3", "s2:1"]  # a NOOP: the second turn only cited
        ep1 = next(it for it in items.values() if it.kind.value == "episode" and it.provenance.source_ids == ["s1:1"])
        ep2 = next(it for it in items.values() if it.kind.value == "episode" and it.provenance.source_ids == ["s2:1"])
        vecs = {"fact": stored_vec(cube, fact.id), "ep1": stored_vec(cube, ep1.id)}
        erased = mem.forget(ep1.id)
        assert set(erased) == {ep1.id, fact.id}  # the fact extracted from that turn goes with it
        assert cube.lookup(tea.id) is not None and cube.get(tea.id).provenance.source_ids == ["s1:3", "s2:1"]
        erased2 = mem.forget(ep2.id)  # the tea fact only gained this turn as a citation: it stays, unlinked
        assert erased2 == [ep2.id]
        got = cube.get(tea.id)
        assert got.content == "Ann likes green tea" and got.provenance.source_ids == ["s1:3"]
        assert all("s2:1" not in v.provenance.source_ids for v in cube.history(tea.id))
        assert cube.records.events()[-1]["detail"]["unlinked"] == [tea.id]
        assert text_traces(folder) == []
        assert vector_traces(folder, vecs) == []
        assert cube.governance.verify().ok
    finally:
        mem.close()


# ---------------------------------------------------------------------------------------------- kill -9
CHILD = textwrap.dedent(
    f"""
    import os, signal, sys, time
    sys.path.insert(0, {str(TESTS_DIR)!r})
    from test_forget_derived import dense_embed, PIN
    from memos_core import MemOS
    from memos_core.erasure import Erasure
    path, mode = sys.argv[1], sys.argv[2]
    mem = MemOS(path, embedder=dense_embed)
    mem.add([{{"role": "user", "content": f"filler turn {{i}} about tea", "id": f"f{{i}}"}} for i in range(20)],
            user_id="ann")
    r = mem.add([{{"role": "user", "content": f"Will you remember that my PIN is {{PIN}}?", "id": "t1"}},
                 {{"role": "assistant", "content": "Noted.", "id": "t2"}}], user_id="ann")
    print("IDS", r.added[0].id, r.added[1].id, flush=True)
    if mode == "die-after-commit":
        # the records commit, then the process dies before the index rebuild / compaction
        def die(self):
            os.kill(os.getpid(), signal.SIGKILL)
        Erasure.finish = die
    mem.forget(r.added[0].id)
    print("FORGOT", flush=True)
    time.sleep(120)
    """
)


def _child(tmp_path: Path, mode: str) -> tuple[Path, list[str], subprocess.Popen[str]]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    folder = tmp_path / "kill"
    err = open(tmp_path / "child.err", "w")
    proc = subprocess.Popen([sys.executable, str(script), str(folder), mode], stdout=subprocess.PIPE, stderr=err,
                            text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    err.close()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the one path the child's output is read through
            lines.append(line.strip())
            if line.startswith("FORGOT"):
                break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.stdout is not None
        proc.stdout.close()
    if not any(ln.startswith("IDS") for ln in lines):
        raise AssertionError(f"child failed: {lines} {(tmp_path / 'child.err').read_text()[-2000:]}")
    return folder / "default", lines, proc


def test_forget_then_kill9_leaves_no_trace_on_disk(tmp_path: Path) -> None:
    folder, lines, proc = _child(tmp_path, "normal")
    assert "FORGOT" in lines and proc.returncode == -signal.SIGKILL
    assert text_traces(folder) == []  # read before anything opens the cube again
    pin_id, reply_id = next(ln for ln in lines if ln.startswith("IDS")).split()[1:]
    with MemCube(folder, embedder=dense_embed) as cube:
        assert cube.lookup(pin_id) is None and PIN not in (cube.get(reply_id).index_text or "")
        assert cube.governance.verify().ok


def test_kill9_between_commit_and_compaction_is_finished_on_open(tmp_path: Path) -> None:
    folder, lines, proc = _child(tmp_path, "die-after-commit")
    assert "FORGOT" not in lines and proc.returncode == -signal.SIGKILL
    pin_id, reply_id = next(ln for ln in lines if ln.startswith("IDS")).split()[1:]
    with MemCube(folder, embedder=dense_embed) as cube:  # opening resumes the unfinished erasure
        assert cube.lookup(pin_id) is None and PIN not in (cube.get(reply_id).index_text or "")
        assert pin_id not in cube.index.ids() and cube.search(PIN, mode="lexical") == []
        assert text_traces(folder) == []
        assert not cube.records.get_meta("erasure_pending")
    assert text_traces(folder) == []


# ---------------------------------------------------------------------------------------------- Chroma server
def test_forget_with_a_chroma_server_erases_the_remote_rows(tmp_path: Path, chroma_server: Any) -> None:
    folder = tmp_path / "remote"
    cube = MemCube(folder, embedder=dense_embed, chroma_url=chroma_server.url)
    try:
        specs = OfflineReader().read([Turn(f"will you keep my PIN {PIN}?", "user", "r1"),
                                      Turn("Noted.", "assistant", "r2")])
        pin, reply = cube.add_many(specs, user_id="ann")
        others = cube.add_many([f"filler {i}" for i in range(10)], user_id="ann")
        cube.forget(pin.id)
        assert cube.index.ids() == {reply.id, *(o.id for o in others)}
        assert cube.index.query(stored_vec(cube, reply.id), 1)[0][0] == reply.id  # the re-embedded vector
        assert PIN not in (cube.get(reply.id).index_text or "")
        assert text_traces(folder) == []  # the records folder; the server's own disk is the server's (README)
    finally:
        cube.close()


def test_purge_leaves_no_vector_or_text_of_the_purged_memory(tmp_path: Path) -> None:
    folder = tmp_path / "purge"
    with MemCube(folder, embedder=dense_embed) as cube:
        cube.add_many([f"filler memory {i}" for i in range(20)])
        it = cube.add("the zorblaxian secret")
        vec = {"secret": stored_vec(cube, it.id)}
        cube.delete(it.id)
        assert vector_traces(folder, vec)  # a tombstone's vector left the index, not Chroma's files
        cube.purge(it.id)
        assert text_traces(folder) == [] and vector_traces(folder, vec) == []
        assert cube.lookup(it.id).state == LifecycleState.PURGED  # type: ignore[union-attr]
