"""Erasure that reaches derived text: what ``forget`` and ``purge`` remove besides the memory itself.

Erasure belongs to the cube: :class:`Erasure` (``cube``'s private ``_erasure``) runs
:meth:`MemCube.forget <memos_core.cube.MemCube.forget>`, the re-derivation inside
:meth:`MemCube.purge <memos_core.cube.MemCube.purge>`, and the work after their commit. Governance
(:mod:`memos_core.governance`) only decides who may erase and records it in the audit chain; it holds no cube.

A memory's text travels into other places, and erasing it means finding every one of them:

* **neighbours' index text.** The offline reader indexes each turn with the turn it replies to
  (``"(in reply to: user: My PIN is ...)"``, :func:`memos_core.reader.offline.reply_context`). Every memory of
  the same user/agent scope whose index text (now, or in any stored version) holds that fragment for any
  version of the erased memory is **re-derived**: the fragment is removed from its index text and from its
  version snapshots, and it is re-embedded and re-indexed (lexical and vector). Its content is its own and
  stays.
* **derived memories** (with ``cascade``): memories whose provenance names the erased one as a parent
  (``parent_ids`` / ``parent_versions``: summaries, the survivor of a dedup merge), the duplicates that were
  merged into it (state ``merged``, listed in its ``parent_ids``), and, when the erased memory is a turn
  (kind ``episode``), the facts an LLM reader extracted from that turn (same user/agent scope, the turn id in
  ``source_ids``). A fact whose content came from the turn (it cited the turn from its first version, or its
  content changed after it started citing it) is erased with all its versions; a fact that only gained the
  turn as one more citation (a duplicate statement, NOOP) keeps its content and loses the turn id from its
  provenance, in every version. Erasure is transitive.
* **indexes and files**: the lexical index (FTS5 rows deleted with their original text, then the segments
  merged), stored embeddings, the SQLite WAL (checkpointed and truncated; ``secure_delete`` overwrites freed
  pages), KV caches and LoRA adapters stored in the cube: the **text** is gone from every file when forget
  returns. The vector index (which holds vectors, never text): erased rows are overwritten with noise and
  deleted, re-derived rows re-upserted (in place), then Chroma is made to persist and the free pages of its
  SQLite file are zeroed (:func:`scrub_vectors`), so with the embedded Chroma this release was verified with no
  erased **vector** is left in its files either, in time independent of the cube's size. Vectors an earlier
  plain delete left in Chroma's files (cubes written before this, another Chroma release) need a compaction,
  a rebuild of the whole index: it runs at once in a cube of at most :data:`SYNC_COMPACT_MAX` vectors,
  otherwise it is recorded as pending and runs at ``MemCube.compact_index()`` / ``memos compact``.

The bookkeeping after the commit (vector scrub, lexical merge, checkpoint) is resumed on the next open if the
process died before it finished: a marker written in the erasing transaction says what is left to do.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from . import lifecycle
from .errors import BackendUnavailable, Conflict, ValidationError
from .governance.roles import Right
from .items import LifecycleState, MemoryItem, MemoryKind, MemoryVersion
from .log import get_logger

if TYPE_CHECKING:  # pragma: no cover
    from .cube import MemCube
    from .records.base import RecordStore, Txn

__all__ = ["Erasure", "ErasurePlan", "plan_erasure", "fragments_of", "strip_fragments", "revised", "check_not_held",
           "scrub_vectors", "flush_forgets", "request_compaction", "compaction_pending", "PENDING_KEY", "VECTOR_COMPACTION_KEY",
           "VECTOR_SCRUBBED_KEY", "SYNC_COMPACT_MAX"]

#: erasure logs where memos_core.log documents it: ``memos.governance`` (refusals, erasure)
log = get_logger("memos.governance")

_S = LifecycleState
#: records meta key: JSON ``{"ids": [...], "artifacts": bool}`` while an erasure's after-commit work is unfinished
PENDING_KEY = "erasure_pending"
#: records meta key: JSON ``{"ids": n}`` while n erased ids' vectors may remain in the vector index's files until a
#: compaction (``MemCube.compact_index()``); absent or empty: none
VECTOR_COMPACTION_KEY = "vector_compaction_pending"
#: records meta key: ``"1"`` while every vector removed from the (embedded) index since its creation or last
#: compaction was overwritten first (so an id no longer in the index left no vector in its files)
VECTOR_SCRUBBED_KEY = "vector_deletes_scrubbed"
#: a compaction runs inside forget/purge (or on open) only for a cube of at most this many stored vectors
#: (measured: about 1-2 s per 1,000); above, it waits for an explicit ``MemCube.compact_index()``
SYNC_COMPACT_MAX = 2000


@dataclass
class ErasurePlan:
    """What one erasure changes. ``erase``: ids removed entirely (root first). ``rederive``: id -> fragments
    to remove from its index text. ``unlink``: id -> turn ids to remove from its provenance."""

    erase: list[str]
    rederive: dict[str, list[str]] = field(default_factory=dict)
    unlink: dict[str, list[str]] = field(default_factory=dict)

    def key(self) -> tuple[Any, ...]:
        return (tuple(self.erase), tuple(sorted((k, tuple(v)) for k, v in self.rederive.items())),
                tuple(sorted((k, tuple(v)) for k, v in self.unlink.items())))


def fragments_of(item: MemoryItem, versions: Sequence[MemoryVersion]) -> list[str]:
    """The reply-context fragments other memories' index texts may hold for ``item`` (one per distinct
    content it ever had)."""
    from .reader.offline import reply_context

    contents = [item.content] + [v.content for v in versions]
    out: list[str] = []
    for text in contents:
        if text and text.strip():
            frag = reply_context(text)
            if frag not in out:
                out.append(frag)
    return out


def strip_fragments(text: str | None, fragments: Iterable[str]) -> str | None:
    """``text`` without any of ``fragments`` (and the space before each); ``None`` when nothing is left."""
    if text is None:
        return None
    for frag in fragments:
        text = text.replace(" " + frag, "").replace(frag, "")
    text = text.strip()
    return text or None


def _same_scope(a: MemoryItem, b: MemoryItem) -> bool:
    return a.scope.user_id == b.scope.user_id and a.scope.agent_id == b.scope.agent_id


class _Scan:
    """Reads for one plan (versions loaded once per item)."""

    def __init__(self, records: "RecordStore", c: "Txn | None") -> None:
        self.records = records
        self.c = c
        self._versions: dict[str, list[MemoryVersion]] = {}

    def versions(self, item_id: str) -> list[MemoryVersion]:
        got = self._versions.get(item_id)
        if got is None:
            got = self._versions[item_id] = self.records.versions(item_id)
        return got

    def candidates(self, item: MemoryItem, frags: Sequence[str]) -> list[MemoryItem]:
        """The items of ``item``'s user/agent scope whose index text may hold one of ``frags`` (now, or in a
        version): found by the records (SQL), not by loading the scope, so a forget does not cost the scope."""
        rowids = self.records.erasure_candidates(self.c, item.scope.user_id, item.scope.agent_id, frags)
        items: list[MemoryItem] = []
        for s in range(0, len(rowids), 500):
            items += self.records.get_many_by_rowid(rowids[s:s + 500]).values()
        return [it for it in items if _same_scope(it, item)]

    def get(self, item_id: str) -> MemoryItem | None:
        return self.records.get(item_id)


def _contributed(item: MemoryItem, versions: Sequence[MemoryVersion], turn_id: str) -> bool:
    """Whether ``item``'s content came (possibly) from ``turn_id``: it cited the turn from its first version,
    or its content changed at or after the version that started citing it. Unknown history: yes."""
    vs = sorted(versions, key=lambda v: v.version)
    first = next((i for i, v in enumerate(vs) if turn_id in v.provenance.source_ids), None)
    if first is None or first == 0:
        return True
    if vs[-1].content != item.content:
        return True
    return any(vs[j].content != vs[j - 1].content for j in range(first, len(vs)))


def plan_erasure(records: "RecordStore", root: MemoryItem, *, cascade: bool, c: "Txn | None" = None,
                 erase_root: bool = True) -> ErasurePlan:
    """Everything an erasure of ``root`` changes (see the module docstring). ``erase_root=False`` plans a
    purge: the root stays (its content is blanked by the caller), nothing cascades, neighbours are re-derived.
    """
    scan = _Scan(records, c)
    erase: list[str] = [root.id] if erase_root else []
    seen = {root.id}
    rederive: dict[str, list[str]] = {}
    unlink: dict[str, list[str]] = {}
    frontier: list[MemoryItem] = [root]
    while frontier:
        node = frontier.pop(0)
        frags = fragments_of(node, scan.versions(node.id))
        for other in (scan.candidates(node, frags) if frags else []):
            if other.id in seen or not frags:
                continue
            texts = [other.index_text] + ([v.index_text for v in scan.versions(other.id)] if other.version > 1
                                          else [])
            hit = [f for f in frags if any(t and f in t for t in texts)]
            if hit:
                rederive.setdefault(other.id, [])
                rederive[other.id] += [f for f in hit if f not in rederive[other.id]]
        if not cascade:
            continue
        found: list[MemoryItem] = []
        for iid, prov in records.items_citing(c, node.id):
            if iid in seen:
                continue
            p = json.loads(prov)
            if node.id in p.get("parent_ids", []) or any(
                    str(v).startswith(node.id + "@") for v in p.get("parent_versions", [])):
                it = scan.get(iid)
                if it is not None:
                    found.append(it)
        for pid in node.provenance.parent_ids:  # duplicates folded into this memory (dedup merges)
            it = scan.get(pid) if pid not in seen else None
            if it is not None and it.state == _S.MERGED:
                found.append(it)
        if node.kind == MemoryKind.EPISODE:  # facts extracted from the turn(s) this episode records
            for tid in node.provenance.source_ids:
                for iid, _ in records.items_citing(c, tid):
                    if iid in seen:
                        continue
                    it = scan.get(iid)
                    if it is None or not _same_scope(it, node) or tid not in it.provenance.source_ids:
                        continue
                    if _contributed(it, scan.versions(iid), tid):
                        found.append(it)
                    else:
                        unlink.setdefault(iid, [])
                        if tid not in unlink[iid]:
                            unlink[iid].append(tid)
        for it in found:
            if it.id not in seen:
                seen.add(it.id)
                erase.append(it.id)
                frontier.append(it)
    gone = set(erase) | ({root.id} if not erase_root else set())
    return ErasurePlan(erase=erase, rederive={k: v for k, v in rederive.items() if k not in gone},
                       unlink={k: v for k, v in unlink.items() if k not in gone})


def revised(item: MemoryItem, versions: Sequence[MemoryVersion], frags: Sequence[str],
            turns: Sequence[str]) -> tuple[MemoryItem, list[MemoryVersion]]:
    """``item`` and its versions with ``frags`` removed from index texts and ``turns`` from provenance."""
    def prov(p: Any) -> Any:
        if not turns:
            return p
        return p.model_copy(update={"source_ids": [s for s in p.source_ids if s not in turns]})

    new = item.model_copy(update={"index_text": strip_fragments(item.index_text, frags),
                                  "provenance": prov(item.provenance)})
    vs = [v.model_copy(update={"index_text": strip_fragments(v.index_text, frags), "provenance": prov(v.provenance)})
          for v in versions]
    return new, vs


def check_not_held(records: "RecordStore", plan: ErasurePlan, root_id: str, c: "Txn | None" = None) -> None:
    """A memory under legal hold is never changed by an erasure: :class:`Conflict`, nothing happens."""
    ids = list(dict.fromkeys([*plan.erase, *plan.rederive, *plan.unlink]))
    rows = records.rowids_of(ids, c)
    for iid in ids:
        if iid in rows and rows[iid][1] == _S.FROZEN.value:
            what = "it" if iid == root_id else (
                "what it was derived from" if iid in plan.erase else "a memory whose index or provenance holds it")
            raise Conflict(f"memory {iid!r} is under legal hold (frozen); lift the hold before forgetting {what}")


# ---------------------------------------------------------------------------------------------- vector index
def scrub_vectors(cube: "MemCube", ids: Sequence[str]) -> int:
    """Remove the vectors of an erasure from the vector index and from its files, as far as that is cheap.

    ``ids``: the memories erased (forget) or purged. Their rows are overwritten and deleted
    (:meth:`~memos_core.plaintext.vector.ChromaVectorIndex.erase`); the re-derived neighbours are pushed (an upsert
    overwrites a vector in place); then, for an embedded index where this is verified
    (:attr:`~memos_core.plaintext.vector.ChromaVectorIndex.scrubs_in_place`), Chroma is made to persist and its
    freed pages are zeroed (:meth:`~memos_core.plaintext.vector.ChromaVectorIndex.scrub_files`): no erased vector
    stays in its files, in time that does not grow with the cube. A vector an earlier plain delete left behind
    (a cube written before this, an unverified Chroma) can only go with a compaction (a rebuild of the whole
    index): it runs now when the cube holds at most :data:`SYNC_COMPACT_MAX` vectors, otherwise it is recorded as
    pending (:data:`VECTOR_COMPACTION_KEY`), logged with the number of ids, and runs at
    ``MemCube.compact_index()`` / ``memos compact`` (or on an open that finds it small enough). Returns the
    number of ids whose vector bytes may remain until then (0: none). Raises :class:`BackendUnavailable` when
    the index cannot be reached (the caller keeps the erasure pending).
    """
    from .plaintext.vector import erase_rows

    idx = cube.index
    missing = erase_rows(idx, list(ids))  # before flush_forgets deletes them plainly
    flush_forgets(cube)
    cube._apply_pending()  # re-derived neighbours: their new vector overwrites the old one in place
    if getattr(idx, "path", None) is None:  # a Chroma server (its disk is the server's: README); no files
        return 0
    in_place = idx.scrubs_in_place
    if in_place:
        idx.scrub_files()
    clean = in_place and cube.records.get_meta(VECTOR_SCRUBBED_KEY) == "1"
    if not in_place:
        _set_meta(cube, VECTOR_SCRUBBED_KEY, "")
    left = len(missing) if in_place else len(ids) or 1
    if (missing and not clean) or not in_place:
        return request_compaction(cube, left)
    return 0


def flush_forgets(cube: "MemCube") -> int:
    """Remove forgotten ids from the vector index (after a forget; again on open if the index was down).
    Each is overwritten before it is deleted (:meth:`ChromaVectorIndex.erase`). Returns how many."""
    ids = cube.records.forget_pending()
    if not ids:
        return 0
    try:
        from .plaintext.vector import erase_rows

        erase_rows(cube.index, ids)
    except BackendUnavailable:
        cube.index_degraded = True
        return 0
    cube.records.clear_forget_pending(ids)
    return len(ids)


def request_compaction(cube: "MemCube", n_ids: int) -> int:
    """Compact the vector index now if that is cheap (at most :data:`SYNC_COMPACT_MAX` vectors), else record
    it as pending and log a warning; returns the number of ids still waiting for it (0 when it ran)."""
    total = cube.records.embedding_count()
    prev = compaction_pending(cube)
    if total <= SYNC_COMPACT_MAX:
        cube._compact_index()
        return 0
    waiting = prev + max(n_ids, 1)
    _set_meta(cube, VECTOR_COMPACTION_KEY, json.dumps({"ids": waiting}))
    log.warning("vector index of cube %s: the vectors of %d erased memories may remain in the files of its "
                "Chroma folder until it is compacted (text is gone everywhere); run MemCube.compact_index() or "
                "`memos compact DIR` (a rebuild of %d vectors)", cube.name, waiting, total)
    return waiting


def compaction_pending(cube: "MemCube") -> int:
    """How many erased ids wait for a vector-index compaction (0: none)."""
    raw = cube.records.get_meta(VECTOR_COMPACTION_KEY)
    if not raw:
        return 0
    try:
        return max(int(json.loads(raw).get("ids", 1)), 1)
    except (ValueError, TypeError, AttributeError):
        return 1


def _set_meta(cube: "MemCube", key: str, value: str) -> None:
    if (cube.records.get_meta(key) or "") == value:
        return
    with cube.records.transaction() as c:
        cube.records.set_meta(c, key, value)


# ---------------------------------------------------------------------------------------------- the cube's erasure
class _Deferred:
    """The context manager behind :meth:`Erasure.deferred`."""

    __slots__ = ("erasure", "outer")

    def __init__(self, erasure: "Erasure") -> None:
        self.erasure = erasure
        self.outer = False

    def __enter__(self) -> None:
        self.outer = getattr(self.erasure._tls, "defer", False)
        self.erasure._tls.defer = True

    def __exit__(self, *exc: Any) -> bool:
        self.erasure._tls.defer = self.outer
        if not self.outer:
            self.erasure.finish()
        return False


class Erasure:
    """The erasure of one cube (its private ``cube._erasure``): :meth:`forget`, the neighbours' re-derivation of
    a purge (:meth:`plan_purge`), and the work after their commit (:meth:`finish`), resumed on open
    (:meth:`resume`). Who may erase is the cube's governance (``cube._authorize``); what was erased is recorded
    in the audit chain in the erasing transaction. The audit record keeps ids, who and when, never content.
    """

    def __init__(self, cube: "MemCube") -> None:
        self.cube = cube
        self.records = cube.records
        self._tls = threading.local()  # whether this thread defers the after-commit work (:meth:`deferred`)

    # ------------------------------------------------------------------ forget
    def forget(self, item_id: str, *, actor: str | None = None, reason: str | None = None,
               cascade: bool = True, drop_artifacts: bool = True) -> list[str]:
        """Erase ``item_id`` and what was derived from it (see :meth:`MemCube.forget
        <memos_core.cube.MemCube.forget>`, which is this). Returns the ids erased."""
        cube = self.cube
        with cube._lock:
            with cube.governance.attempt(actor, "forget", item_id, {"cascade": bool(cascade)}):
                if reason is not None and (not isinstance(reason, str) or len(reason) > 500):
                    raise ValidationError("reason must be a string of at most 500 characters")
                actor = cube._authorize(actor, Right.ADMINISTER, "forget", item_id)
                cube._load(item_id)
                now = cube._now().timestamp()
                with self.records.transaction() as c:
                    root = self.records.get(item_id)
                    if root is None:
                        raise cube._missing(item_id)
                    plan = plan_erasure(self.records, root, cascade=cascade, c=c)
                    check_not_held(self.records, plan, item_id, c)
                    self._apply_plan(c, plan)
                    self.records.add_forget_pending(c, plan.erase)
                    self._mark_pending(c, plan.erase, drop_artifacts)
                    self.records.append_event(c, now, actor, "forget", item_id,
                                              detail={"ids": plan.erase, "cascade": cascade, "reason": reason,
                                                      "rederived": sorted(plan.rederive),
                                                      "unlinked": sorted(plan.unlink)})
            self.finish_unless_deferred()
        return plan.erase

    def plan_purge(self, c: "Txn", item: MemoryItem) -> ErasurePlan:
        """Inside the purge transaction, before the content is blanked: re-derive the neighbours whose index
        text quotes ``item``; returns the plan (its ``rederive`` ids). :class:`Conflict` if one is held."""
        plan = plan_erasure(self.records, item, cascade=False, c=c, erase_root=False)
        check_not_held(self.records, plan, item.id, c)
        self._apply_plan(c, plan)
        # the purged text also leaves the lexical index, the WAL and the vector index's files (its vector was
        # deleted from the index when it was tombstoned, but Chroma keeps deleted vectors in its files)
        self._mark_pending(c, [item.id], False)
        return plan

    def _apply_plan(self, c: "Txn", plan: ErasurePlan) -> None:
        """Inside a transaction: erase ``plan.erase``; rewrite the memories whose index text or provenance held
        erased text (current row and every version; re-embedded when their index text changed)."""
        rows = self.records.rowids_of([*plan.erase, *plan.rederive, *plan.unlink], c)
        for iid in plan.erase:
            if iid in rows:
                self.records.erase_item(c, rows[iid][0], iid)
        changed = [i for i in dict.fromkeys([*plan.rederive, *plan.unlink]) if i in rows]
        work = []
        kept_topics: dict[str, bytes] = {}  # a kept embedding keeps its topic vector (made by the same rule)
        for iid in changed:
            item = self.records.get(iid)
            if item is None:  # pragma: no cover - read inside the same transaction
                continue
            new, versions = revised(item, self.records.versions(iid), plan.rederive.get(iid, []),
                                    plan.unlink.get(iid, []))
            indexed = item.state in lifecycle.INDEXED
            vec = None
            if indexed and iid not in plan.rederive:
                vec = self.records.embedding(rows[iid][0])
                blob = self.records.topic_vectors([rows[iid][0]]).get(rows[iid][0]) if vec is not None else None
                if blob is not None:
                    kept_topics[iid] = blob
            work.append((rows[iid][0], new, versions, self.records.transitions(iid), indexed, vec))
        todo = [n for n, w in enumerate(work) if w[4] and w[5] is None]
        if todo:
            from .cube import _dense_texts  # the one rule for the text a dense vector is embedded from

            vecs = self.cube._embed(_dense_texts([work[n][1] for n in todo]))
            for n, vec in zip(todo, vecs):
                work[n] = (*work[n][:5], vec)
        restored: list[tuple[int, MemoryItem]] = []
        for rowid, new, versions, transitions, indexed, vec in work:
            self.records.erase_item(c, rowid, new.id)
            r = self.records.restore_item(c, new, versions, transitions, vec, indexed)
            if indexed and vec is not None:
                restored.append((r, new))
        if restored:  # their topic vectors (the memory's own words: no erased context) go with the embeddings
            fresh = [it for _, it in restored if it.id not in kept_topics]
            # b"" only where the own words are the whole index text: right whichever text a kept embedding came from
            made = dict(zip((it.id for it in fresh), self.cube._topic_blobs(fresh, [it.index_text or it.content
                                                                                      for it in fresh]) if fresh else []))
            self.records.put_topics(c, [(r, it.version, kept_topics[it.id] if it.id in kept_topics else made[it.id])
                                        for r, it in restored])

    def _mark_pending(self, c: "Txn", ids: Sequence[str], drop_artifacts: bool) -> None:
        """Record (in the erasing transaction) the after-commit work :meth:`finish` still has to do."""
        raw = self.records.get_meta(PENDING_KEY)
        try:
            cur = json.loads(raw) if raw else {}
        except ValueError:
            cur = {}
        old = [i for i in cur.get("ids", []) if isinstance(i, str)]
        self.records.set_meta(c, PENDING_KEY, json.dumps({
            "ids": list(dict.fromkeys([*old, *ids])), "artifacts": bool(cur.get("artifacts")) or drop_artifacts}))

    # ------------------------------------------------------------------ after the commit
    def deferred(self) -> _Deferred:
        """``with erasure.deferred(): ...`` runs several forgets and purges, then the after-commit work
        (vector-index scrub, lexical merge, checkpoint) once at the end (``MemCube.deferred_erasure``)."""
        return _Deferred(self)

    def finish_unless_deferred(self) -> None:
        """:meth:`finish` now, unless this thread is inside :meth:`deferred` (which finishes at its end)."""
        if not getattr(self._tls, "defer", False):
            self.finish()

    def finish(self) -> bool:
        """Finish erasures whose records are committed: overwrite and delete the erased rows in the vector index,
        push the re-derived ones, make the index's files keep no erased vector (in place when that is verified;
        otherwise by a compaction, now if the cube is small, else recorded as pending: see
        :func:`scrub_vectors`), merge the lexical index, checkpoint and truncate the WAL, delete stored
        artefacts. Runs after every forget/purge and on open when a previous process died first. True when
        nothing is left to do (a pending compaction aside: :meth:`MemCube.compact_index`)."""
        raw = self.records.get_meta(PENDING_KEY)
        if not raw:
            return True
        try:
            pending = json.loads(raw)
        except ValueError:
            pending = {"ids": [], "artifacts": True}
        ids = [i for i in pending.get("ids", []) if isinstance(i, str)]
        # in-process copies of stored vectors (the scoped-search cache) drop the erased rows now
        from .plaintext import scope_cache
        scope_cache.sync(self.records)
        vectors_done = True
        try:
            scrub_vectors(self.cube, ids)
        except BackendUnavailable as exc:
            vectors_done = False
            self.cube.index_degraded = True
            log.warning("vector index unavailable after an erasure (%s); its rows are removed on the next open", exc)
        self.records.compact_erased()
        if pending.get("artifacts"):
            self._drop_artifacts(ids)
        if not vectors_done:
            return False
        with self.records.transaction() as c:
            self.records.set_meta(c, PENDING_KEY, "")
        self.records.checkpoint()
        return True

    def resume(self) -> None:
        """On open: a forget/purge whose process died before its after-commit work (first: it overwrites the
        erased rows before they are deleted); then forgotten ids a down index missed, and a small pending
        compaction."""
        self.finish()
        flush_forgets(self.cube)
        self.compact_on_open()

    def compact_on_open(self) -> bool:
        """Run a pending vector-index compaction when the cube is small enough for it to be quick (at most
        :data:`SYNC_COMPACT_MAX` vectors); True when none is pending afterwards."""
        if not compaction_pending(self.cube):
            return True
        if self.records.embedding_count() > SYNC_COMPACT_MAX:
            return False
        try:
            self.cube._compact_index()
        except BackendUnavailable as exc:
            log.warning("pending vector-index compaction could not run on open: %s", exc)
            return False
        return True

    def _drop_artifacts(self, ids: list[str]) -> None:
        """Delete the cube's stored KV caches and LoRA adapters built from any of ``ids``."""
        from .activation.store import KVCacheStore
        from .parametric.store import AdapterStore

        root = Path(self.cube.path)
        dropped: dict[str, list[str]] = {}
        if (root / "activation").is_dir():
            dropped["kv_caches"] = KVCacheStore(root / "activation").delete_for_items(ids)
        if (root / "parametric").is_dir():
            dropped["adapters"] = AdapterStore(root / "parametric").forget_items(ids, delete=True)
        if any(dropped.values()):
            log.info("forget deleted derived artefacts: %s", {k: len(v) for k, v in dropped.items()})
