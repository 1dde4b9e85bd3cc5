"""MemOS demo: offline, embedded defaults, no API key, no download.

Creates a cube in ./demo_memory, ingests a short two-session conversation turn by turn (each turn keeps its
date and id), searches it, then edits a memory, shows its version history and rolls it back.

Run:  make demo     (or: python examples/demo.py [FOLDER])
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from memos_core import MemCube
from memos_core.reader import OfflineReader, Turn

SESSIONS = [
    ("2023-05-08 13:56", [
        ("D1:1", "Caroline", "Hey Mel! I went to an LGBTQ support group yesterday and it was so powerful."),
        ("D1:2", "Melanie", "That's wonderful, Caroline. What did you take away from it?"),
        ("D1:3", "Caroline", "The transgender stories were inspiring. I'm thinking about studying counseling."),
        ("D1:4", "Melanie", "You'd be great at it. I've been busy painting a lake sunrise for my art class."),
    ]),
    ("2023-06-27 10:12", [
        ("D2:1", "Melanie", "We finally took the kids camping at the beach last weekend!"),
        ("D2:2", "Caroline", "Sounds lovely. I started an adoption application this week, fingers crossed."),
        ("D2:3", "Melanie", "That's huge news! My daughter Luna still talks about the pottery workshop."),
        ("D2:4", "Caroline", "Give Luna a hug from me. Also, I'm moving to Sweden next spring."),
    ]),
]

QUERIES = [
    "When did Caroline go to the support group?",
    "What career is Caroline considering?",
    "What did Melanie paint?",
    "Where is Caroline going to live?",
]


def main(folder: str = "demo_memory") -> None:
    path = Path(folder)
    if path.exists():
        shutil.rmtree(path)
    print(f"== creating a cube in {path} (embedded Chroma + SQLite, all-MiniLM-L6-v2 offline)")
    cube = MemCube(path, name="demo")
    reader = OfflineReader()
    history: list[Turn] = []
    for session_no, (date, turns) in enumerate(SESSIONS, 1):
        batch = [Turn(text=t, speaker=s, id=tid, time=date, session_id=f"s{session_no}") for tid, s, t in turns]
        cube.add_many(reader.read(batch, history=history), user_id="caroline-and-melanie")
        history += batch
        print(f"   session {session_no} ({date}): {len(batch)} turns stored as episodic memories")

    print("\n== search (hybrid: dense + BM25, fused)")
    for q in QUERIES:
        hits = cube.search(q, k=2, user_id="caroline-and-melanie")
        print(f"Q: {q}")
        for h in hits:
            when = h.item.event_time.date().isoformat() if h.item.event_time else "-"
            found_by = ", ".join(f"{name} #{rank}" for name, rank in sorted(h.ranks.items()))
            print(f"   {h.score:.4f}  [{when}] {h.item.content}   (turn {h.item.provenance.source_ids[0]}; {found_by})")

    print("\n== versions: a fact changes, history keeps both, rollback restores")
    fact = cube.add("Caroline plans to move to Sweden next spring.", kind="fact", user_id="caroline-and-melanie",
                    provenance={"source": "conversation", "source_ids": ["D2:4"]})
    cube.update(fact.id, "Caroline plans to move to Norway next spring.", reason="she changed her mind")
    for v in cube.history(fact.id):
        print(f"   v{v.version} ({v.reason}): {v.content}")
    restored = cube.rollback(fact.id, 1, reason="the Norway note was a mistake")
    print(f"   after rollback -> v{restored.version}: {restored.content}")
    print(f"   search 'Where will Caroline move?' -> "
          f"{cube.search('Where will Caroline move?', k=1, filter={'kinds': ['fact']})[0].item.content}")

    print("\n== delete is a tombstone")
    cube.delete(fact.id, reason="demo")
    print(f"   searchable: {any(h.item.id == fact.id for h in cube.search('move to Sweden', k=10))};"
          f" still in history: {len(cube.history(fact.id))} versions, state={cube.get(fact.id, include_deleted=True).state.value}")
    stats = cube.stats()
    cube.close()
    print(f"\n== done: {stats['by_state']} in {path}/ (reopen it with MemCube('{path}'))")


if __name__ == "__main__":
    main(*sys.argv[1:2])
