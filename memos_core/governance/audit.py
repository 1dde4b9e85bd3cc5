"""Verification of the tamper-evident audit log.

Every operation on a cube (who, what, which items, when, outcome; refused and failed attempts too) is one
record in the ``events`` table of the cube's records database. Each record carries ``prev_hash``, the hash of the record
before it, and ``hash`` = sha256(prev_hash + canonical JSON of its own fields, including its sequence number).
Sequence numbers come from SQLite's AUTOINCREMENT counter, so they never repeat even after rows are deleted.

:func:`verify_rows` walks the chain and reports, by sequence number:

* an **edited** record (its fields no longer hash to its ``hash``);
* a **deleted** record (a gap in the sequence, a broken link, or a tail shorter than the counter says);
* an **inserted** record (a record whose link or hash does not fit where it stands);
* **reordered** records (a record that hashes correctly only under another sequence number).

Besides the chain itself, the cube holds **evidence** of how long its log is, checked without any anchor
(:class:`Evidence`):

* the records keep the sequence number and hash of the newest record (``meta.audit_head``, written in the
  same transaction as every record): a log that ends earlier, or whose record at that number has another
  hash, was truncated or rewritten;
* every memory's current version was recorded (``add`` / ``update`` records carry ``detail.version``): a
  memory at version *v* without a record of version *v* means the records of it were deleted -- e.g. a cube
  that holds memories but no audit records at all, or a log whose tail was cut and its counter fixed.

What a hash chain and this evidence cannot do on their own: someone who can write the file *and* rewrites
the log, the recorded head and the memories consistently (recomputing every hash) produces a cube that
verifies. Keep the head (``memos audit head``) somewhere else from time to time and pass it back as an
*anchor*: verification then also proves the chain up to the anchor is the one you saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ..errors import NotFound
from ..records.base import GENESIS_HASH, event_hash

__all__ = ["AuditProblem", "AuditReport", "Evidence", "verify_rows", "verify_file", "read_chain",
           "read_evidence", "check_evidence"]


class AuditProblem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(description="the sequence number where the problem shows")
    kind: str = Field(description="edited | deleted | inserted | reordered | anchor")
    message: str


class AuditReport(BaseModel):
    """The result of verifying an audit chain. ``ok`` is true only when no problem was found."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    records: int
    head_seq: int | None = None
    head_hash: str | None = None
    problems: list[AuditProblem] = Field(default_factory=list)

    @property
    def first_problem(self) -> AuditProblem | None:
        return self.problems[0] if self.problems else None

    def summary(self) -> str:
        if self.ok:
            return f"ok: {self.records} audit records, chain intact; head {self.head_seq}:{self.head_hash}"
        lines = [f"TAMPERED: {len(self.problems)} problem(s) in {self.records} audit records"]
        lines += [f"  seq {p.seq}: {p.kind}: {p.message}" for p in self.problems]
        return "\n".join(lines)


Row = Sequence[Any]  # (seq, at, actor, op, item_id, outcome, detail, prev_hash, hash)


def _self_hash(r: Row, seq: int | None = None) -> str:
    return event_hash(r[7], r[0] if seq is None else seq, r[1], r[2], r[3], r[4], r[5], r[6])


_WINDOW = 64


def _moved_from(r: Row, rows: Sequence[Row], by_hash: dict[str, int]) -> int | None:
    """The sequence number under which this record's hash *does* verify, if any (a moved record)."""
    seq = int(r[0])
    cands: list[int] = []
    j = by_hash.get(r[7])
    if r[7] == GENESIS_HASH:
        cands.append(1)
    elif j is not None:
        cands.append(int(rows[j][0]) + 1)
    cands += [s for d in range(1, _WINDOW + 1) for s in (seq - d, seq + d) if s >= 1]
    for cand in cands:
        if cand != seq and _self_hash(r, cand) == r[8]:
            return cand
    return None


class Evidence(BaseModel):
    """What the cube itself says about its log (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    head: tuple[int, str] | None = Field(default=None, description="(seq, hash) the records recorded last")
    items: list[tuple[str, int]] = Field(default_factory=list, description="(id, current version) of every memory")


def _recorded_versions(rows: Sequence[Row]) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for r in rows:
        if r[4] is None or r[5] != "ok":
            continue
        try:
            detail = json.loads(r[6])
        except (TypeError, ValueError):
            continue
        v = detail.get("version") if isinstance(detail, dict) else None
        if isinstance(v, int) and not isinstance(v, bool):
            out.add((r[4], v))
    return out


def check_evidence(rows: Sequence[Row], evidence: Evidence) -> list[AuditProblem]:
    """Problems the cube's own evidence shows in a chain (truncation, a rewritten tail)."""
    problems: list[AuditProblem] = []
    last = int(rows[-1][0]) if rows else 0
    if evidence.head is not None:
        h_seq, h_hash = evidence.head
        found = next((r for r in rows if int(r[0]) == h_seq), None)
        if found is None:
            problems.append(AuditProblem(seq=h_seq, kind="deleted",
                                         message=f"the records say record {h_seq} was written last, but the log "
                                                 f"{'is empty' if not rows else f'ends at seq {last}'}: "
                                                 "records were deleted"))
        elif found[8] != h_hash:
            problems.append(AuditProblem(seq=h_seq, kind="edited",
                                         message=f"record {h_seq} does not carry the hash the records saved for "
                                                 "it: the log was rewritten"))
    have = _recorded_versions(rows)
    missing = [(i, v) for i, v in evidence.items if (i, v) not in have]
    if missing:
        shown = ", ".join(f"{i}@{v}" for i, v in missing[:5]) + (f" and {len(missing) - 5} more"
                                                               if len(missing) > 5 else "")
        problems.append(AuditProblem(seq=last + 1, kind="deleted",
                                     message=f"{len(missing)} memory version(s) have no audit record ({shown}): "
                                             "records of them were deleted (the log was truncated)"))
    return problems


def verify_rows(rows: Sequence[Row], counter: int | None = None,
                anchor: tuple[int, str] | None = None, evidence: Evidence | None = None) -> AuditReport:
    """Verify a chain given its rows in storage order (``ORDER BY seq``).

    ``counter`` is the AUTOINCREMENT high-water mark (``sqlite_sequence``): a tail deletion shows as
    ``counter > last seq``. ``anchor`` is a ``(seq, hash)`` pair saved earlier (``head_seq``/``head_hash`` of
    a report): the record at that seq must still carry that hash. ``evidence`` is what the cube itself
    recorded (:func:`check_evidence`).
    """
    problems: list[AuditProblem] = [] if evidence is None else check_evidence(rows, evidence)
    by_hash = {r[8]: i for i, r in enumerate(rows)}
    n = len(rows)
    # 1. each record on its own: intact, edited, or intact but under another sequence number (moved)
    moved: list[int | None] = [None] * n
    edited: list[bool] = [False] * n
    for i, r in enumerate(rows):
        if _self_hash(r) != r[8]:
            m = _moved_from(r, rows, by_hash)
            if m is None:
                edited[i] = True
            else:
                moved[i] = m
    # 2. moved records: a shift that runs to the end is an insertion / deletion with renumbering
    i = 0
    while i < n:
        m = moved[i]
        if m is None:
            if edited[i]:
                problems.append(AuditProblem(seq=int(rows[i][0]), kind="edited",
                                             message="its fields do not match its hash (the record was altered, "
                                                     "or inserted with a made-up hash)"))
            i += 1
            continue
        seq = int(rows[i][0])
        delta = m - seq
        j = i
        while j < n and moved[j] is not None and moved[j] - int(rows[j][0]) == delta:  # type: ignore[operator]
            j += 1
        if j == n and delta < 0:
            # the inserted record(s) themselves usually fail their own hash too: one finding, not two
            problems = [p for p in problems if not (p.kind == "edited" and seq + delta <= p.seq < seq)]
            problems.append(AuditProblem(
                seq=seq + delta, kind="inserted",
                message=f"{-delta} record(s) were inserted before record {m}, which now sits at seq {seq}"))
            i = n
        elif j == n and delta > 0:
            problems.append(AuditProblem(
                seq=seq, kind="deleted",
                message=f"{delta} record(s) were deleted before record {m} (now at seq {seq}) and the rest "
                        "renumbered"))
            i = n
        else:
            problems.append(AuditProblem(seq=seq, kind="reordered",
                                         message=f"the record stored at seq {seq} is record {m}, moved"))
            i += 1
    # 3. links between neighbours: gaps (deletions) and records that do not link to their predecessor
    prev_seq = 0
    prev_hash = GENESIS_HASH
    for i, r in enumerate(rows):
        seq = int(r[0])
        if seq > prev_seq + 1:
            missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
            problems.append(AuditProblem(seq=seq, kind="deleted",
                                         message=f"record(s) {missing} are missing before seq {seq}"))
        elif r[7] != prev_hash and not edited[i] and moved[i] is None and (i == 0 or moved[i - 1] is None):
            problems.append(AuditProblem(seq=seq, kind="inserted",
                                         message=f"it does not link to record {prev_seq}: a record was inserted "
                                                 "or replaced here"))
        prev_seq = seq
        prev_hash = r[8]
    if counter is not None and counter > prev_seq:
        missing = f"{prev_seq + 1}" if counter == prev_seq + 1 else f"{prev_seq + 1}..{counter}"
        problems.append(AuditProblem(seq=prev_seq + 1, kind="deleted",
                                     message=f"the log ends at seq {prev_seq} but {counter} records were written: "
                                             f"record(s) {missing} were deleted from the end"))
    if anchor is not None:
        a_seq, a_hash = anchor
        found = next((r for r in rows if int(r[0]) == a_seq), None)
        if found is None:
            problems.append(AuditProblem(seq=a_seq, kind="anchor",
                                         message=f"the anchored record {a_seq} is gone"))
        elif found[8] != a_hash:
            problems.append(AuditProblem(seq=a_seq, kind="anchor",
                                         message=f"record {a_seq} no longer has the anchored hash: the chain up "
                                                 "to it was rewritten"))
    problems.sort(key=lambda p: p.seq)
    last = rows[-1] if rows else None
    return AuditReport(ok=not problems, records=n, head_seq=None if last is None else int(last[0]),
                       head_hash=None if last is None else last[8], problems=problems)


def read_chain(conn: Any) -> tuple[list[Row], int | None]:
    """Rows in storage order and the sequence high-water mark, read on an open SQLite connection (the SQL
    lives in the records layer: :func:`memos_core.records.sqlite.chain_rows`)."""
    from ..records.sqlite import chain_rows

    return chain_rows(conn)


def read_evidence(conn: Any) -> Evidence:
    """The evidence a records database holds about its log (head recorded in ``meta``, item versions)."""
    from ..records.sqlite import evidence_rows

    head, items = evidence_rows(conn)
    return Evidence(head=parse_head(head), items=items)


def parse_head(raw: str | None) -> tuple[int, str] | None:
    """``"SEQ:HASH"`` as the records store it (``None`` when absent or unreadable: no evidence)."""
    if not raw:
        return None
    seq, _, h = raw.partition(":")
    return (int(seq), h) if seq.isdigit() and len(h) == 64 else None


def parse_anchor(text: str | None) -> tuple[int, str] | None:
    """``"SEQ:HASH"`` -> ``(SEQ, HASH)``."""
    if not text:
        return None
    seq, _, h = text.partition(":")
    from ..errors import ValidationError

    if not seq.isdigit() or len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise ValidationError(f"anchor {text!r}: expected SEQ:HASH as printed by `memos audit head`")
    return int(seq), h


def verify_file(path: str | Path, anchor: tuple[int, str] | None = None) -> AuditReport:
    """Verify the audit chain of a cube folder (or its ``records.sqlite3``) without opening the cube.

    Opens the database read-only; needs no principal (whoever can read the file can read the log).
    """
    from ..records.migrate import is_store_url

    if is_store_url(path):  # a cube in PostgreSQL: one snapshot of chain and evidence
        from ..records.postgres import PostgresRecordStore

        store = PostgresRecordStore(str(path))
        try:
            with store.read_snapshot():
                evidence = Evidence(head=parse_head(store.get_meta("audit_head")),
                                    items=[(it.id, it.version) for it in store.iter_items()])
                rows, counter = store.audit_chain()
        finally:
            store.close()
        return verify_rows(rows, counter, anchor, evidence)
    from ..records.sqlite import read_audit_file

    p = Path(path)
    db = p / "records.sqlite3" if p.is_dir() else p
    if not db.exists():
        raise NotFound(f"no records database at {db}")
    rows, counter, head, items = read_audit_file(db)  # read-only, one snapshot, the evidence first
    return verify_rows(rows, counter, anchor, Evidence(head=parse_head(head), items=items))
