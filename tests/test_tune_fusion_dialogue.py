"""benchmarks/tune_fusion.py's pasted-dialogue variants (issue 15, session 8) change dialogue queries only, do what
their README rows say, and the per-query oracle is an upper bound of the shipped fusion."""

from __future__ import annotations

from conftest import load_benchmark

DIALOGUE = ('<Bart>: "My mom said we cannot go to the zoo." <Assistant>: "Oh no, that is a pity! What happened?" '
            '<Bart>: "It rained all day and mom was sad too."')


def _tune_fusion():
    return load_benchmark("tune_fusion")


def _cand(key: int, text: str, dense: float, lexical: float | None, hit: bool = False) -> dict:
    return {"key": key, "text": text, "dense": dense, "lexical": lexical, "dr": None, "lr": None, "topical": None,
            "topical_q": None, "meta": {"speaker": "memory"}, "hit": hit}


def _row(query: str, cands: list[dict]) -> dict:
    for rank, c in enumerate(sorted(cands, key=lambda c: -c["dense"]), 1):
        c["dr"] = rank
    lex = [c for c in cands if c["lexical"] is not None]
    for rank, c in enumerate(sorted(lex, key=lambda c: -c["lexical"]), 1):
        c["lr"] = rank
    return {"query": query, "cands": cands, "lexical_complete": True, "category": "test", "turns": [0, 0],
            "turn_speakers": []}


def _memories(hit_key: int) -> list[dict]:
    texts = ["memory: Bart went to the zoo and saw the red pandas.", "memory: Bart played chess with his mom.",
             "memory: Bart's trip to the beach was cancelled by a storm.", "memory: Lisa painted a giraffe.",
             "memory: Bart ate ice cream at the zoo."]
    dense = [0.62, 0.50, 0.55, 0.30, 0.58]
    lexical = [6.0, 2.0, None, None, 4.0]
    return [_cand(i, t, d, x, hit=i == hit_key) for i, (t, d, x) in enumerate(zip(texts, dense, lexical))]


def test_user_and_assistant_turns_are_split_by_speaker() -> None:
    tf = _tune_fusion()
    plan = tf.analyze_query(DIALOGUE)
    assert [s for s, _ in tf._user_turns(plan)] == ["Bart", "Bart"]
    assert [s for s, _ in tf._assistant_turns(plan)] == ["Assistant"]
    assert tf._roles("My Mom and my classmates; Grandpa too") == {"mom", "classmate", "grandpa"}


def test_role_overlap_lifts_the_memory_naming_the_users_people_and_leaves_questions_alone() -> None:
    tf = _tune_fusion()
    row = _row(DIALOGUE, _memories(hit_key=1))
    shipped = tf._shipped(row)
    lifted = tf.role_overlap(2.0)(row)
    assert lifted.index(1) < shipped.index(1)  # "played chess with his mom": the user's mom, twice
    question = _row("What did Bart see at the zoo?", _memories(hit_key=1))
    assert tf.role_overlap(2.0)(question) == tf._shipped(question)


def test_the_oracle_is_never_worse_than_the_shipped_fusion() -> None:
    tf = _tune_fusion()
    oracle = tf.oracle_dialogue_lexical()
    for hit in range(5):
        row = _row(DIALOGUE, _memories(hit_key=hit))
        assert oracle(row).index(hit) <= tf._shipped(row).index(hit)


def test_misses_are_printed_with_each_legs_rank(capsys) -> None:
    tf = _tune_fusion()
    rows = [_row(DIALOGUE, _memories(hit_key=3))]
    tf.show_misses(rows, k=1)
    out = capsys.readouterr().out
    assert "EVIDENCE: memory: Lisa painted a giraffe." in out
    assert "dense 5, BM25 None" in out
    tf.show_misses([_row(DIALOGUE, _memories(hit_key=tf._shipped(rows[0])[0]))], k=1)
    assert capsys.readouterr().out == ""  # a hit at 1 is not a miss
