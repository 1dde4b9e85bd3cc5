"""Erasure that reaches derived text: what ``forget`` and ``purge`` remove besides the memory itself.

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
  merged), stored embeddings, the vector index (rows deleted, then rebuilt from the records so that no file
  of the embedded Chroma folder keeps an erased vector: its log and freed pages are vacuumed and the old
  HNSW segment folders removed), the SQLite WAL (checkpointed and truncated; ``secure_delete`` overwrites
  freed pages), KV caches and LoRA adapters stored in the cube.

The bookkeeping after the commit (index rebuild, vacuum, checkpoint) is resumed on the next open if the process
died before it finished: a marker written in the erasing transaction says what is left to do.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from ..log import get_logger
from ..errors import BackendUnavailable, Conflict
from ..items import LifecycleState, MemoryItem, MemoryKind, MemoryVersion, SearchFilter

if TYPE_CHECKING:  # pragma: no cover
    from ..cube import MemCube
    from ..records.base import RecordStore, Txn

__all__ = ["ErasurePlan", "plan_erasure", "fragments_of", "strip_fragments", "rebuild_vector_index",
           "PENDING_KEY"]

log = get_logger(__name__)

_S = LifecycleState
#: records meta key: JSON ``{"ids": [...], "artifacts": bool}`` while an erasure's after-commit work is unfinished
PENDING_KEY = "erasure_pending"


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
    from ..reader.offline import reply_context

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
    """Reads for one plan, with the items of each user/agent scope loaded once."""

    def __init__(self, records: "RecordStore", c: "Txn | None") -> None:
        self.records = records
        self.c = c
        self._scopes: dict[tuple[str | None, str | None], list[MemoryItem]] = {}
        self._versions: dict[str, list[MemoryVersion]] = {}

    def versions(self, item_id: str) -> list[MemoryVersion]:
        got = self._versions.get(item_id)
        if got is None:
            got = self._versions[item_id] = self.records.versions(item_id)
        return got

    def scope(self, item: MemoryItem) -> list[MemoryItem]:
        key = (item.scope.user_id, item.scope.agent_id)
        got = self._scopes.get(key)
        if got is None:
            cf = self.records.compile_filter(SearchFilter(user_id=key[0], agent_id=key[1]), list(_S),
                                             float("-inf"))
            rowids = self.records.list_rowids(cf, "created", 1 << 62, 0)
            items: list[MemoryItem] = []
            for s in range(0, len(rowids), 500):
                items += self.records.get_many_by_rowid(rowids[s:s + 500]).values()
            got = self._scopes[key] = [it for it in items if _same_scope(it, item)]
        return got

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
        for other in scan.scope(node):
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
def rebuild_vector_index(cube: "MemCube") -> None:
    """Rebuild the vector index from the records so no erased vector is left in its files.

    Deleting rows from Chroma leaves their vectors in its log (``embeddings_queue`` in ``chroma.sqlite3``,
    until the next flush, then in freed pages) and in the HNSW segment files (deletes only mark). So the
    collection is dropped and refilled from the stored embeddings; for the embedded folder the old segment
    folders are removed and ``chroma.sqlite3`` is vacuumed. Raises :class:`BackendUnavailable` (the caller
    keeps the work pending) when the index cannot be reached.
    """
    idx = cube.index
    idx.reset()
    for batch in cube.records.all_embeddings():
        rows = {r.rowid: r for r in cube.records.index_rows([b[0] for b in batch])}
        keep = [b for b in batch if b[0] in rows]
        if keep:
            metas = []
            for b in keep:  # what the vector index pre-filters on, as MemCube._chroma_meta
                r = rows[b[0]]
                meta: dict[str, Any] = {"state": r.state, "kind": r.kind}
                for axis, val in (("user_id", r.user_id), ("agent_id", r.agent_id), ("session_id", r.session_id)):
                    if val is not None:
                        meta[axis] = val
                metas.append(meta)
            idx.upsert([b[1] for b in keep], np.stack([b[2] for b in keep]), metas)
    cube.records.mark_vectors_applied(cube.records.pending_vectors())
    cube.records.flush()
    if idx.path is not None:
        _compact_chroma_folder(Path(idx.path))


def _compact_chroma_folder(folder: Path) -> None:
    """Remove segment folders Chroma no longer uses and vacuum its SQLite file (freed pages kept vectors)."""
    db = folder / "chroma.sqlite3"
    if not db.exists():
        return
    try:
        conn = sqlite3.connect(str(db), timeout=30.0)
        try:
            live = {r[0] for r in conn.execute("SELECT id FROM segments")}
            conn.execute("VACUUM")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackendUnavailable(f"could not compact the vector index folder {folder}: {exc}") from exc
    for sub in folder.iterdir():
        if sub.is_dir() and not sub.is_symlink() and len(sub.name) == 36 and sub.name.count("-") == 4 \
                and sub.name not in live:
            shutil.rmtree(sub, ignore_errors=True)
