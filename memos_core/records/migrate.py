"""Opening a record store from a path or URL, and copying a cube's records between backends (``memos migrate``).

A copy moves everything the system of record holds -- items with their ids, states, versions, lifecycle
transitions, usage counters and stored embeddings; the audit chain verbatim (so it still verifies, with the
same head); the governance tables (principals, grants, policies, the redaction key, pending forgets); the cube
manifest -- in one transaction on the target, then reads both sides back and compares them. The vector index
is not copied: every indexed row arrives marked pending, and the cube fills its vector index (embedded Chroma or
a Chroma server) from the stored embeddings when it is opened, without re-embedding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import NotFound, ValidationError
from ..lifecycle import INDEXED
from .base import RecordStore

__all__ = ["is_store_url", "open_record_store", "copy_records", "verify_copy", "migrate_store", "MANIFEST_META_KEY"]

#: the meta key under which a cube without a folder (PostgreSQL) keeps its manifest (``cube.json`` otherwise)
MANIFEST_META_KEY = "cube_manifest"
_SKIP_META = {"records_schema", "events_counter"}


def is_store_url(target: Any) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_record_store(target: str | Path, *, create: bool = True) -> RecordStore:
    """A PostgreSQL URL (``postgresql://user@host/db?cube=NAME``), a cube folder, or a ``.sqlite3`` file."""
    if is_store_url(target):
        from .postgres import PostgresRecordStore

        return PostgresRecordStore(str(target))
    from .sqlite import SQLiteRecordStore

    p = Path(target)
    db = p / "records.sqlite3" if (p.is_dir() or not p.suffix) else p
    if not create and not db.exists():
        raise NotFound(f"no records database at {db}")
    db.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteRecordStore(db)


def _is_empty(store: RecordStore) -> bool:
    return store.count() == 0 and not store.has_events() and not store.grants()


def copy_records(src: RecordStore, dst: RecordStore, *, batch: int = 500, verify: bool = True) -> dict[str, Any]:
    """Copy every record of ``src`` into the empty ``dst`` in one transaction, then (``verify``) compare.

    Raises ValidationError when ``dst`` already holds records, or when ``src`` holds rows still waiting for their
    embedding (``embed_sync="deferred"``) and ``dst`` cannot hold them so; CorruptData when the comparison fails (the
    copy is committed by then: the message says what differs). Returns counts.
    """
    if not _is_empty(dst):
        raise ValidationError("the migration target already holds records; migrate into an empty cube")
    src.flush()
    if not dst.embeds_later:
        # A row committed without its embedding (embed_sync="deferred": its process still runs, or was killed)
        # would arrive unindexed here (this target cannot hold it waiting): a memory no search finds.
        waiting = len(src.waiting_embeddings())
        if waiting:
            raise ValidationError(
                f"{waiting} memories of the source are still waiting for their embedding (a process using the cube "
                "with embed_sync='deferred' is running or was killed); stop that process, or open the cube once "
                "with its embedder so that they are embedded (MemCube(path, embedder=...).close(); with the default "
                "embedder `memos reindex PATH`), then migrate again. Nothing was copied.")
    n_items = n_versions = 0
    with dst.transaction() as c:
        ids_batch: list[Any] = []

        def flush_batch() -> None:
            nonlocal n_items, n_versions
            if not ids_batch:
                return
            rowids = src.rowids_of([it.id for it in ids_batch])
            have, blobs = src.embeddings_of([rowids[it.id][0] for it in ids_batch])
            import numpy as np

            vecs = {r: np.frombuffer(b, dtype=np.float32) for r, b in zip(have, blobs)}
            topics = src.topic_vectors(have)  # copied beside their embeddings (schema 3)
            put: list[tuple[int, int, bytes]] = []
            for it in ids_batch:
                vec = vecs.get(rowids[it.id][0])
                versions = src.versions(it.id)
                # an indexed row still waiting for its embedding (embed_sync="deferred") stays indexed where the
                # target can hold it so (the target's first open embeds it); other targets were refused above
                new_rowid = dst.restore_item(c, it, versions, src.transitions(it.id), vec,
                                             it.state in INDEXED and (vec is not None or dst.embeds_later))
                topic = topics.get(rowids[it.id][0])
                if vec is not None and topic is not None:
                    put.append((int(new_rowid), it.version, topic))
                n_items += 1
                n_versions += len(versions)
            if put:
                dst.put_topics(c, put)
            ids_batch.clear()

        for item in src.iter_items(batch=batch):
            ids_batch.append(item)
            if len(ids_batch) >= batch:
                flush_batch()
        flush_batch()
        events = src.raw_events()
        dst.restore_events(c, events)
        for principal, kind, role, granted_by, granted_at in src.grants():
            dst.add_principal(c, principal, kind, granted_at, granted_by)
            dst.put_grant(c, principal, role, granted_by, granted_at)
        settings = src.governance_settings()
        if settings:
            dst.put_settings(c, settings)
        pending = src.forget_pending()
        if pending:
            dst.add_forget_pending(c, pending)
        manifest = src.get_meta(MANIFEST_META_KEY)
        if manifest is not None:
            dst.set_meta(c, MANIFEST_META_KEY, manifest)
    report = {"items": n_items, "versions": n_versions, "events": len(events), "grants": len(src.grants())}
    if verify:
        verify_copy(src, dst)
    return report


def verify_copy(src: RecordStore, dst: RecordStore) -> None:
    """Raise CorruptData unless ``dst`` holds the same records as ``src`` (items, versions, transitions,
    embeddings, audit chain, governance)."""
    from ..errors import CorruptData
    from ..governance.audit import verify_rows

    problems: list[str] = []
    if src.count_by_state() != dst.count_by_state():
        problems.append(f"items by state differ: {src.count_by_state()} vs {dst.count_by_state()}")
    a_items = {it.id: it for it in src.iter_items()}
    b_items = {it.id: it for it in dst.iter_items()}
    for item_id, a in a_items.items():
        b = b_items.get(item_id)
        if b is None:
            problems.append(f"item {item_id} missing")
            continue
        if a.model_dump() != b.model_dump():
            problems.append(f"item {item_id} differs")
        if [v.model_dump() for v in src.versions(item_id)] != [v.model_dump() for v in dst.versions(item_id)]:
            problems.append(f"versions of {item_id} differ")
        if [t.model_dump() for t in src.transitions(item_id)] != [t.model_dump() for t in dst.transitions(item_id)]:
            problems.append(f"transitions of {item_id} differ")
        if len(problems) > 20:
            break
    ea = sorted((i, v.tobytes()) for batch in src.all_embeddings() for _, i, v in batch)
    eb = sorted((i, v.tobytes()) for batch in dst.all_embeddings() for _, i, v in batch)
    if ea != eb:
        problems.append(f"stored embeddings differ ({len(ea)} vs {len(eb)})")
    ra, rb = src.raw_events(), dst.raw_events()
    if [tuple(r) for r in ra] != [tuple(r) for r in rb]:
        problems.append(f"audit chains differ ({len(ra)} vs {len(rb)} records)")
    if ra and not verify_rows(*dst.audit_chain()).ok:
        problems.append("the copied audit chain does not verify")
    if src.grants() != dst.grants() or src.governance_settings() != dst.governance_settings():
        problems.append("governance (grants or policies) differs")
    if problems:
        raise CorruptData("migration check failed: " + "; ".join(problems[:20]))



def _read_manifest(target: str | Path, store: RecordStore) -> dict[str, Any]:
    import json

    from ..errors import CorruptData

    if is_store_url(target):
        raw = store.get_meta(MANIFEST_META_KEY)
        if raw is None:
            raise NotFound(f"no cube at {target}")
        return json.loads(raw)
    path = Path(target) / "cube.json"
    if not path.is_file():
        raise NotFound(f"no cube at {target} (no cube.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorruptData(f"cube manifest {path} is unreadable: {exc}") from exc


def migrate_store(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Copy a cube's system of record from ``src`` to ``dst`` (a cube folder or a ``postgresql://...?cube=``
    URL, either way round), verified record by record (:func:`verify_copy`). ``dst`` must be new or empty.

    The manifest (cube id, embedder, dimension) goes along, so the target opens as the same cube; its vector
    index is filled from the copied embeddings the first time it is opened (``MemCube(dst, index=...)``),
    without re-embedding. Local artefacts (KV caches, adapters under the source folder) are not records:
    copy them with a bundle (``memos export`` / ``import``) when they are needed."""
    import json
    import os

    if not is_store_url(dst):
        d = Path(dst)
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            raise ValidationError(f"{dst} exists and is not an empty folder; migrate into a new folder")
    a = open_record_store(src, create=False)
    try:
        manifest = _read_manifest(src, a)
        b = open_record_store(dst)
        try:
            report = copy_records(a, b)
            if is_store_url(dst):
                if b.get_meta(MANIFEST_META_KEY) is None:
                    with b.transaction() as c:
                        b.set_meta(c, MANIFEST_META_KEY, json.dumps(manifest))
            else:
                path = Path(dst) / "cube.json"
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
        finally:
            b.close()
    finally:
        a.close()
    report["cube_id"] = manifest.get("cube_id")
    return report
