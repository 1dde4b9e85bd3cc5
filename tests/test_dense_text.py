"""Which text a memory's dense vector is embedded from (issue 18 item 8).

:func:`memos_core.reader.offline.dense_text` is the one rule: the memory's index text with a cheap cut applied to
what the offline reader added (the quoted previous turn, the date head); BM25 keeps the whole index text. Every
path that embeds or re-embeds a memory must use it, so that vectors agree whichever path wrote them: the inline
add, the deferred (background) embedder, update, rollback, restore, ``reindex(reembed=True)`` and forget's
re-derived neighbours; bundles and migration carry the stored vectors. The path tests set a distinctive cut (no
quote, no date) whatever cut ships, so they pin the wiring, not the choice; one test pins the shipped choice.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import hashed_embed

import memos_core.reader.offline as offline
from memos_core import MemCube, MemOS
from memos_core.reader.offline import OfflineReader, Turn, dense_text, dense_variant, split_index_text

T0 = datetime(2023, 5, 8, 13, 0, tzinfo=timezone.utc)
TURNS = [Turn("Have you been to Lisbon? It is lovely in May.", "Bob", "t1", T0, "s1"),
         Turn("Yes, twice! I went again yesterday.", "Ann", "t2", T0.replace(minute=5), "s1"),
         Turn("I adopted a beagle called Biscuit.", "Ann", "t3", T0.replace(minute=9), "s1")]


def specs() -> list[dict[str, Any]]:
    return OfflineReader().read(TURNS)


@pytest.fixture
def cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut that changes every reader-built text (no quoted turn, no date head), whatever ships."""
    for name in ("DENSE_QUOTE", "DENSE_DATE", "UNTAGGED_QUOTE", "UNTAGGED_DATE"):
        monkeypatch.setattr(offline, name, "none")


def stored(cube: MemCube, item_id: str) -> np.ndarray:
    cube._embed_waiting()
    rowid = cube.records.rowid(item_id)
    assert rowid is not None
    vec = cube.records.embedding(rowid)
    assert vec is not None
    return np.asarray(vec, dtype=np.float32)


def embedded_from(cube: MemCube, item_id: str) -> str:
    """The text among the memory's candidates whose embedding is the stored vector."""
    it = cube.get(item_id)
    vec = stored(cube, item_id)
    want = dense_text(it.index_text or it.content, it.content, it.provenance.speaker)
    cands = {"dense": want, "index": it.index_text or it.content}
    found = [name for name, t in cands.items() if np.allclose(cube._embed([t])[0], vec, atol=1e-6)]
    assert found, "the stored vector is the embedding of neither text"
    return found[0]


# ------------------------------------------------------------------------------------------ the rule itself
def test_uncut_variant_is_the_index_text_and_the_parts_are_found() -> None:
    first, reply, _ = specs()
    for s in specs():
        assert dense_variant(s["index_text"], s["content"]) == s["index_text"]
    assert split_index_text(reply["index_text"], reply["content"]) == (
        "[Monday 8 May 2023 (2023-05-08)]",
        "Ann: Yes, twice! I went again yesterday. (yesterday = Sunday 7 May 2023 (2023-05-07))",
        ["Bob: Have you been to Lisbon? It is lovely in May."])
    assert split_index_text(first["index_text"], first["content"])[2] == []  # type: ignore[index]
    # an index text the reader did not build (a caller's own, a redacted one) is used as it is
    assert split_index_text("my own words", "Ann: something else") is None
    assert dense_variant("[x] my own words (in reply to: q)", "Ann: other", quote="none", date="none") \
        == "[x] my own words (in reply to: q)"


@pytest.mark.parametrize("text,content", [
    ("", ""), ("x", "x"), ("[a] x", "x"), ("[a] x (in reply to: )", "x"), ("x (in reply to: a) (in reply to: b)", "x"),
    ("x (in reply to: a (in reply to: b))", "x"), ("[Monday 8 May 2023 (2023-05-08)]  x", " x"), ("x (in reply to: y", "x"),
    ("[] x (rel) (in reply to: Bob: a) b)", "x")])
def test_uncut_variant_is_always_the_index_text(text: str, content: str) -> None:
    assert dense_variant(text, content) == text


@pytest.mark.parametrize("quote,date,want", [
    ("none", "full", "[Monday 8 May 2023 (2023-05-08)] Ann: Yes, twice! I went again yesterday. "
                     "(yesterday = Sunday 7 May 2023 (2023-05-07))"),
    ("full", "none", "Ann: Yes, twice! I went again yesterday. (yesterday = Sunday 7 May 2023 (2023-05-07)) "
                     "(in reply to: Bob: Have you been to Lisbon? It is lovely in May.)"),
    ("full", "dmy", "[8 May 2023] Ann: Yes, twice! I went again yesterday. (yesterday = Sunday 7 May 2023 "
                    "(2023-05-07)) (in reply to: Bob: Have you been to Lisbon? It is lovely in May.)"),
    ("asked", "iso", "[2023-05-08] Ann: Yes, twice! I went again yesterday. (yesterday = Sunday 7 May 2023 "
                     "(2023-05-07)) (in reply to: Bob: Have you been to Lisbon?)"),
    ("words:3", "wdmy", "[Monday 8 May 2023] Ann: Yes, twice! I went again yesterday. (yesterday = Sunday 7 May "
                        "2023 (2023-05-07)) (in reply to: lovely in May.)"),
    ("last_sentence", "none", "Ann: Yes, twice! I went again yesterday. (yesterday = Sunday 7 May 2023 "
                              "(2023-05-07)) (in reply to: It is lovely in May.)"),
])
def test_cuts(quote: str, date: str, want: str) -> None:
    reply = specs()[1]
    assert dense_variant(reply["index_text"], reply["content"], quote=quote, date=date) == want


def test_question_cut_keeps_only_quoted_questions() -> None:
    a = OfflineReader().read([Turn("I love tea.", "Bob", "a", T0), Turn("Me too.", "Ann", "b", T0)])[1]
    q = specs()[1]
    assert "in reply to" not in dense_variant(a["index_text"], a["content"], quote="question")
    assert dense_variant(q["index_text"], q["content"], quote="question") == q["index_text"]


# ------------------------------------------------------------------------------------------ every path agrees
def test_inline_add_update_rollback_restore_and_reindex_embed_the_dense_text(cut: None, tmp_path: Path) -> None:
    with MemCube(tmp_path / "c", embedder=hashed_embed, embed_sync="immediate") as cube:
        items = cube.add_many(specs())
        assert all(embedded_from(cube, it.id) == "dense" for it in items)
        reply = items[1]
        assert dense_text(reply.index_text, reply.content, "Ann") != reply.index_text  # the cut is in force
        cube.update(reply.id, content="Ann: Yes, three times! I went again yesterday.")
        assert "three times" in (cube.get(reply.id).index_text or "")  # the index text was re-derived
        assert embedded_from(cube, reply.id) == "dense"
        cube.rollback(reply.id, 1)
        assert embedded_from(cube, reply.id) == "dense"
        cube.delete(reply.id)
        cube.restore(reply.id)
        assert embedded_from(cube, reply.id) == "dense"
        cube.reindex(reembed=True)
        assert all(embedded_from(cube, it.id) == "dense" for it in items)


def test_deferred_embedder_embeds_the_dense_text(cut: None, tmp_path: Path) -> None:
    with MemCube(tmp_path / "c", embedder=hashed_embed, embed_sync="deferred", vector_sync="deferred") as cube:
        if not cube.records.embeds_later:
            pytest.skip("this backend embeds before the commit")
        cube._embed_in_background = lambda: None  # type: ignore[method-assign]
        items = cube.add_many(specs())
        rowid = cube.records.rowid(items[1].id)
        assert rowid is not None and cube.records.embedding(rowid) is None  # still waiting
        assert all(embedded_from(cube, it.id) == "dense" for it in items)  # embedded by the waiting caller


def test_memos_add_and_forget_rederived_neighbour_embed_the_dense_text(cut: None, tmp_path: Path) -> None:
    with MemOS(tmp_path / "m", embedder=hashed_embed) as mem:
        r = mem.add([{"role": "user", "content": "Will you remember that my PIN is 4417?", "id": "q"},
                     {"role": "assistant", "content": "Noted, I will.", "id": "a"}], user_id="ann")
        q, a = r.added
        cube = mem.cubes["default"]
        assert "in reply to" in (mem.get(a.id).index_text or "")
        assert embedded_from(cube, a.id) == "dense" and embedded_from(cube, q.id) == "dense"
        mem.forget(q.id)
        after = mem.get(a.id)
        assert "in reply to" not in (after.index_text or "")  # re-derived, then re-embedded by forget
        assert embedded_from(cube, a.id) == "dense"


def test_a_cube_with_vectors_of_the_whole_index_text_keeps_them_until_reembedded(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("DENSE_QUOTE", "DENSE_DATE", "UNTAGGED_QUOTE", "UNTAGGED_DATE"):
        monkeypatch.setattr(offline, name, "full")
    with MemCube(tmp_path / "c", embedder=hashed_embed, embed_sync="immediate") as cube:
        items = cube.add_many(specs())
    for name in ("DENSE_QUOTE", "DENSE_DATE", "UNTAGGED_QUOTE", "UNTAGGED_DATE"):
        monkeypatch.setattr(offline, name, "none")
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        # an existing cube's vectors stay valid (and are searched) as they are
        assert embedded_from(cube, items[1].id) == "index"
        assert cube.search("Lisbon", k=3, mode="dense")
        cube.reindex(reembed=True)
        assert all(embedded_from(cube, it.id) == "dense" for it in items)


def test_bundles_carry_the_stored_vectors(cut: None, tmp_path: Path) -> None:
    from memos_core.bundle import export_cube, import_bundle

    with MemCube(tmp_path / "c", embedder=hashed_embed, embed_sync="immediate") as cube:
        items = cube.add_many(specs())
        want = {it.id: stored(cube, it.id) for it in items}
        export_cube(cube, tmp_path / "b.zip")
    with import_bundle(tmp_path / "b.zip", tmp_path / "imported", embedder=hashed_embed) as new:
        for i, v in want.items():
            assert np.allclose(stored(new, i), v, atol=1e-6)
            assert embedded_from(new, i) == "dense"


def test_own_words_that_are_the_dense_text_are_embedded_once(cut: None, tmp_path: Path) -> None:
    seen: list[str] = []

    def recording(texts: list[str]) -> np.ndarray:
        seen.extend(texts)
        return hashed_embed(texts)

    spec = {"content": "I adopted a beagle.", "index_text": "[Monday 8 May 2023 (2023-05-08)] I adopted a beagle. "
                                                            "(in reply to: Bob: got a pet?)"}
    with MemCube(tmp_path / "c", embedder=recording, embed_sync="immediate") as cube:
        seen.clear()
        item = cube.add_many([spec])[0]
        assert seen == ["I adopted a beagle."]  # the dense text is the own words: one text, not two
        rowid = cube.records.rowid(item.id)
        assert rowid is not None and cube.records.topic_vectors([rowid])[rowid] == b""
        assert embedded_from(cube, item.id) == "dense"
        # a stored embedding without a topic vector (a cube from before them) may come from the whole index text:
        # its topic vector is then embedded from the own words, never taken to be that embedding
        with cube.records.derived_transaction() as c:
            c.execute("UPDATE embeddings SET topic=NULL")  # SQLite records (the default backend)
        assert cube.records.missing_topics() == [(rowid, 1)]
        assert cube._fill_topics() == 1
        assert cube.records.topic_vectors([rowid])[rowid] == np.asarray(
            cube._embed(["I adopted a beagle."])[0], dtype=np.float32).tobytes()


def test_a_turn_tagged_with_its_speaker_and_an_untagged_memory_get_their_own_cuts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline, "DENSE_QUOTE", "full")
    monkeypatch.setattr(offline, "DENSE_DATE", "full")
    monkeypatch.setattr(offline, "UNTAGGED_QUOTE", "question")
    monkeypatch.setattr(offline, "UNTAGGED_DATE", "none")
    turns = [Turn("I love tea.", None, "a", T0), Turn("Me too, green tea.", None, "b", T0)]
    untagged = OfflineReader().read(turns)[1]
    tagged = OfflineReader().read([Turn("I love tea.", "Bob", "a", T0), Turn("Me too, green tea.", "Ann", "b", T0)])[1]
    assert dense_text(tagged["index_text"], tagged["content"], "Ann") == tagged["index_text"]
    assert dense_text(untagged["index_text"], untagged["content"], None) == "Me too, green tea."
    # a speaker named in provenance but not tagging the content: untagged
    assert dense_text(untagged["index_text"], untagged["content"], "Ann") == "Me too, green tea."


def test_the_shipped_cut() -> None:
    """Issue 18 item 8 (README "One memory per call"): a turn tagged with its speaker embeds its whole index text; a
    memory without a tag (a bare ``MemOS.add(text)``) drops a quoted previous memory unless it asks something, and
    keeps its date; its topic vector stays its own words."""
    assert (offline.DENSE_QUOTE, offline.DENSE_DATE) == ("full", "full")
    assert (offline.UNTAGGED_QUOTE, offline.UNTAGGED_DATE) == ("question", "full")
    for s in specs():
        assert dense_text(s["index_text"], s["content"], s["provenance"]["speaker"]) == s["index_text"]
    notes = OfflineReader().read([Turn("I love tea.", None, "a", T0), Turn("Me too, green tea.", None, "b", T0),
                                  Turn("Which tea do you like?", None, "c", T0), Turn("Sencha.", None, "d", T0)])
    assert [dense_text(n["index_text"], n["content"]) for n in notes] == [
        "[Monday 8 May 2023 (2023-05-08)] I love tea.", "[Monday 8 May 2023 (2023-05-08)] Me too, green tea.",
        "[Monday 8 May 2023 (2023-05-08)] Which tea do you like?",
        "[Monday 8 May 2023 (2023-05-08)] Sencha. (in reply to: Which tea do you like?)"]
