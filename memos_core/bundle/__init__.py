"""MemStore bundles: export a cube to one file, verify and import it elsewhere, migrate between backends.

A bundle is a ``.tar.gz`` or ``.zip`` holding::

    manifest.json               format, schema versions, the cube manifest, counts, the audit head hash,
                                ids of purged (forgotten) memories, and sha256 + size of every other file
    signature.json              optional: HMAC-SHA256 of manifest.json under a shared key
    records/items.jsonl         current items (one MemoryItem JSON per line)
    records/versions.jsonl      every version snapshot
    records/transitions.jsonl   every lifecycle transition
    records/events.jsonl        the hash-chained event log, verbatim
    records/embeddings.npy      float32 (n, dim) matrix, loaded with allow_pickle=False
    records/embedding_ids.json  the item id of each row of the matrix
    artifacts/...               KV caches (activation/) and LoRA adapters (parametric/) as stored in the cube

Importing verifies *everything before writing anything*: member names (no absolute paths, no ``..``, no
links or devices), file count and size limits (zip bombs), the manifest schema, the signature when a key is
given, and the sha256 and size of every file (streamed, stopping as soon as a file exceeds its declared size).
Records are validated with the pydantic models. The cube is built in a temporary folder and renamed into
place only when complete, so a bad bundle is a clear error and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import re
import shutil
import socket
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Iterator

import numpy as np

from .. import lifecycle
from ..cube import CUBE_SCHEMA_VERSION, MemCube
from ..errors import Conflict, CorruptData, PermissionDenied, SchemaVersionError, ValidationError
from ..items import LifecycleState, MemoryItem, MemoryVersion, Transition, utcnow
from ..log import Progress, get_logger

__all__ = ["export_cube", "import_bundle", "verify_bundle", "migrate_cube", "clean_stale_imports", "BUNDLE_SCHEMA_VERSION",
           "Limits"]

BUNDLE_FORMAT = "memos-bundle"
BUNDLE_SCHEMA_VERSION = 1
_CHUNK = 1 << 20


class Limits:
    """Safety limits applied when reading a bundle."""

    def __init__(self, max_files: int = 20_000, max_total_bytes: int = 8 << 30, max_file_bytes: int = 4 << 30,
                 max_manifest_bytes: int = 64 << 20) -> None:
        self.max_files = max_files
        self.max_total_bytes = max_total_bytes
        self.max_file_bytes = max_file_bytes
        self.max_manifest_bytes = max_manifest_bytes


log = get_logger(__name__)


# ---------------------------------------------------------------------------------------------- export
def _jsonl(rows: Iterator[str]) -> bytes:
    return "".join(r + "\n" for r in rows).encode("utf-8")


def export_cube(cube: MemCube, file: str | os.PathLike[str], *, hmac_key: bytes | None = None,
                include_artifacts: bool = True, actor: str | None = None,
                progress: bool | None = None) -> dict[str, Any]:
    """Write ``cube`` to a bundle at ``file`` (``.zip`` or ``.tar.gz``/``.tgz``); returns the manifest.

    A bundle carries every memory, its history and the audit log, so exporting needs the *administer* right
    on the cube (checked and audited as ``actor``, default the cube's principal). Access lists and policies
    are not exported: whoever imports a bundle owns the copy. The file is written to a temporary name and
    renamed when complete.
    """
    from ..governance.roles import Right

    out = Path(file)
    kind = _kind(out)
    cube._authorize(actor, Right.ADMINISTER, "export")
    cube.records.flush()
    for attempt in range(EXPORT_READ_TRIES):
        # The records are read in several queries; another worker (its own handle on the cube, e.g. on
        # PostgreSQL) may commit between them, which would pair an item with a later version's history (a
        # bundle import refuses). Every write appends its audit record in its own transaction, so an audit head
        # that did not move while we read means that no write landed in between: otherwise read again.
        head = cube.records.audit_head()
        # rows committed without their embedding yet (embed_sync="deferred", by any worker, up to the head just
        # read) get it first: a bundle must carry the embedding of every indexed item
        cube._embed_waiting()
        items, files, events, ids, vecs = _read_records(cube, progress)
        if cube.records.audit_head() == head:
            break
        log.info("export of cube %s: a write landed while reading (try %d); reading again", cube.cube_id,
                 attempt + 1)
    else:
        raise Conflict(f"cube {cube.name!r} kept changing while it was exported ({EXPORT_READ_TRIES} tries); "
                       "export again when writes pause")
    unembedded = sorted({it.id for it in items if it.state in lifecycle.INDEXED} - set(ids))
    if unembedded:  # still waiting: the embedder refused their text (logged); an import would refuse the bundle
        raise ValidationError(
            f"{len(unembedded)} memories have no embedding yet because the embedder refused their text (see the "
            f"log), and a bundle must carry every indexed memory's embedding: update or delete them "
            f"({', '.join(unembedded[:5])}{' ...' if len(unembedded) > 5 else ''}), then export again")
    dim = int(cube.manifest["embedder"]["dim"])
    mat = np.stack(vecs).astype(np.float32) if vecs else np.zeros((0, dim), dtype=np.float32)
    buf = io.BytesIO()
    np.save(buf, mat, allow_pickle=False)
    files["records/embeddings.npy"] = buf.getvalue()
    files["records/embedding_ids.json"] = json.dumps(ids).encode()
    artifact_paths: dict[str, Path] = {}
    if include_artifacts:
        for sub in ("activation", "parametric"):
            base = cube.path / sub
            if base.is_dir():
                for p in sorted(base.rglob("*")):
                    if p.is_symlink():
                        continue
                    if p.is_file():
                        artifact_paths[f"artifacts/{sub}/{p.relative_to(base).as_posix()}"] = p
    file_meta: dict[str, dict[str, Any]] = {}
    for name, data in files.items():
        file_meta[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    for name, p in artifact_paths.items():
        file_meta[name] = {"sha256": _sha256_file(p), "size": p.stat().st_size}
    by_state: dict[str, int] = {}
    for it in items:
        by_state[it.state.value] = by_state.get(it.state.value, 0) + 1
    manifest = {
        "format": BUNDLE_FORMAT,
        "bundle_schema": BUNDLE_SCHEMA_VERSION,
        "created_at": utcnow().isoformat(),
        "cube": cube.manifest,
        "counts": {"items": len(items), "by_state": by_state, "embeddings": len(ids), "events": len(events)},
        "audit_head": events[-1][8] if events else None,
        "audit_head_seq": int(events[-1][0]) if events else None,
        "audit_counter": cube.records.event_counter(),
        "purged_ids": sorted(it.id for it in items if it.state == LifecycleState.PURGED),
        "files": dict(sorted(file_meta.items())),
    }
    mbytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    extra: dict[str, bytes] = {"manifest.json": mbytes}
    if hmac_key is not None:
        sig = hmac.new(hmac_key, mbytes, hashlib.sha256).hexdigest()
        extra["signature.json"] = json.dumps({"alg": "hmac-sha256", "value": sig}).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        if kind == "zip":
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for name, data in {**extra, **files}.items():
                    zf.writestr(name, data)
                for name, p in artifact_paths.items():
                    zf.write(p, name)
        else:
            with tarfile.open(tmp, "w:gz") as tf:
                for name, data in {**extra, **files}.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mtime = int(time.time())
                    tf.addfile(info, io.BytesIO(data))
                for name, p in artifact_paths.items():
                    tf.add(str(p), arcname=name, recursive=False)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    log.info("exported cube %s (%s) to %s: %d memories, %d embeddings, %d artefact files", cube.name, cube.cube_id,
             out, len(items), len(ids), len(artifact_paths))
    return manifest


#: how often :func:`export_cube` reads the records again when another writer committed during its reads
EXPORT_READ_TRIES = 5


def _read_records(cube: MemCube, progress: bool | None
                  ) -> tuple[list[MemoryItem], dict[str, bytes], list[Any], list[str], list[np.ndarray]]:
    """Every item, version, transition, audit event and stored embedding of ``cube`` (see :func:`export_cube`)."""
    items = list(cube.records.iter_items())
    files: dict[str, bytes] = {}
    files["records/items.jsonl"] = _jsonl(it.model_dump_json() for it in items)
    with Progress(2 * len(items), "exporting", unit="memory", progress=progress) as bar:  # two passes below
        files["records/versions.jsonl"] = _jsonl(
            v.model_dump_json() for it in items if bar.update(1) is None for v in cube.records.versions(it.id))
        files["records/transitions.jsonl"] = _jsonl(
            t.model_dump_json() for it in items if bar.update(1) is None for t in cube.records.transitions(it.id))
    events = cube.records.raw_events()
    files["records/events.jsonl"] = _jsonl(json.dumps(list(r)) for r in events)
    ids: list[str] = []
    vecs: list[np.ndarray] = []
    for batch in cube.records.all_embeddings():
        for _, item_id, vec in batch:
            ids.append(item_id)
            vecs.append(vec)
    return items, files, events, ids, vecs


def _sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _kind(p: Path) -> str:
    name = p.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar"
    raise ValidationError(f"bundle file {p} must end in .zip, .tar.gz or .tgz")


# ---------------------------------------------------------------------------------------------- reading safely
class _Reader:
    """Uniform, checked access to the members of a zip or tar.gz bundle."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path = path
        self.limits = limits
        kind = _kind(path)
        if not path.is_file():
            raise ValidationError(f"no bundle file at {path}")
        self.members: dict[str, Any] = {}
        try:
            if kind == "zip":
                self._zip: zipfile.ZipFile | None = zipfile.ZipFile(path)
                self._tar: tarfile.TarFile | None = None
                entries = [(i.filename, i, i.file_size, i.is_dir(), _zip_is_link(i)) for i in self._zip.infolist()]
            else:
                self._zip = None
                self._tar = tarfile.open(path, "r:gz")
                entries = []
                for m in self._tar.getmembers():
                    if not (m.isfile() or m.isdir()):
                        raise CorruptData(f"bundle member {m.name!r} is a link or special file; refused")
                    entries.append((m.name, m, m.size, m.isdir(), False))
        except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
            raise CorruptData(f"{path} is not a readable bundle: {exc}") from exc
        if len(entries) > limits.max_files:
            raise CorruptData(f"bundle has {len(entries)} members; the limit is {limits.max_files}")
        total = 0
        for name, info, size, is_dir, is_link in entries:
            _check_name(name)
            if is_link:
                raise CorruptData(f"bundle member {name!r} is a symbolic link; refused")
            if is_dir:
                continue
            if name in self.members:
                raise CorruptData(f"bundle member {name!r} appears twice")
            if size > limits.max_file_bytes:
                raise CorruptData(f"bundle member {name!r} declares {size} bytes; the limit is {limits.max_file_bytes}")
            total += size
            if total > limits.max_total_bytes:
                raise CorruptData(f"bundle expands to more than {limits.max_total_bytes} bytes; refused")
            self.members[name] = (info, size)

    def open(self, name: str) -> IO[bytes]:
        info, _ = self.members[name]
        if self._zip is not None:
            return self._zip.open(info)
        assert self._tar is not None
        fh = self._tar.extractfile(info)
        if fh is None:
            raise CorruptData(f"bundle member {name!r} is not a regular file")
        return fh

    def read(self, name: str, limit: int) -> bytes:
        with self.open(name) as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise CorruptData(f"bundle member {name!r} exceeds {limit} bytes")
        return data

    def verify_stream(self, name: str, sha256: str, size: int, sink: Callable[[bytes], None] | None = None) -> None:
        h = hashlib.sha256()
        n = 0
        with self.open(name) as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                n += len(chunk)
                if n > size:
                    raise CorruptData(f"bundle member {name!r} is larger than its manifest says ({size} bytes)")
                h.update(chunk)
                if sink is not None:
                    sink(chunk)
        if n != size or h.hexdigest() != sha256:
            raise CorruptData(f"bundle member {name!r} fails its checksum (tampered or truncated)")

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    mode = (info.external_attr >> 16) & 0o170000
    return mode == 0o120000


def _check_name(name: str) -> None:
    if not name or "\x00" in name or "\\" in name:
        raise CorruptData(f"bundle member name {name!r} is not allowed")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or any(part in ("..", "") for part in p.parts if part != "."):
        raise CorruptData(f"bundle member {name!r} has an absolute or parent-relative path; refused")
    if len(p.parts) > 16:
        raise CorruptData(f"bundle member {name!r} is nested too deeply")


def _load_manifest(r: _Reader, hmac_key: bytes | None, require_signature: bool) -> dict[str, Any]:
    if "manifest.json" not in r.members:
        raise CorruptData(f"{r.path} has no manifest.json; not a MemOS bundle")
    mbytes = r.read("manifest.json", r.limits.max_manifest_bytes)
    try:
        manifest = json.loads(mbytes)
    except ValueError as exc:
        raise CorruptData(f"bundle manifest is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise CorruptData("bundle manifest does not describe a MemOS bundle")
    schema = manifest.get("bundle_schema")
    if not isinstance(schema, int) or schema > BUNDLE_SCHEMA_VERSION:
        raise SchemaVersionError(f"bundle schema {schema!r} is newer than this MemOS understands "
                                 f"({BUNDLE_SCHEMA_VERSION}); upgrade to import it")
    cube_schema = (manifest.get("cube") or {}).get("schema_version")
    if not isinstance(cube_schema, int) or cube_schema > CUBE_SCHEMA_VERSION:
        raise SchemaVersionError(f"bundle holds a cube of schema {cube_schema!r}; this MemOS understands up to "
                                 f"{CUBE_SCHEMA_VERSION}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise CorruptData("bundle manifest has no file list")
    if hmac_key is not None or require_signature:
        if "signature.json" not in r.members:
            raise PermissionDenied("bundle is not signed but a signature is required")
        try:
            sig = json.loads(r.read("signature.json", 4096))
        except ValueError as exc:
            raise CorruptData(f"bundle signature is not valid JSON: {exc}") from exc
        if hmac_key is None:
            raise PermissionDenied("bundle is signed; pass the HMAC key to verify it")
        want = hmac.new(hmac_key, mbytes, hashlib.sha256).hexdigest()
        if sig.get("alg") != "hmac-sha256" or not hmac.compare_digest(str(sig.get("value", "")), want):
            raise PermissionDenied("bundle signature does not match: wrong key or tampered manifest")
    listed = set(files)
    present = set(r.members) - {"manifest.json", "signature.json"}
    if listed != present:
        extra = sorted(present - listed)[:5]
        missing = sorted(listed - present)[:5]
        raise CorruptData(f"bundle contents differ from its manifest (unlisted: {extra}, missing: {missing})")
    for name, meta in files.items():
        _check_name(name)
        if not (name.startswith("records/") or name.startswith("artifacts/activation/")
                or name.startswith("artifacts/parametric/")):
            raise CorruptData(f"bundle member {name!r} is outside the known layout")
        if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("size"), int):
            raise CorruptData(f"bundle manifest entry for {name!r} lacks sha256/size")
        if meta["size"] != r.members[name][1]:
            raise CorruptData(f"bundle member {name!r} has size {r.members[name][1]}, manifest says {meta['size']}")
    return manifest


def verify_bundle(file: str | os.PathLike[str], *, hmac_key: bytes | None = None, require_signature: bool = False,
                  limits: Limits | None = None) -> dict[str, Any]:
    """Check a bundle completely without importing it; returns its manifest or raises."""
    r = _Reader(Path(file), limits or Limits())
    try:
        manifest = _load_manifest(r, hmac_key, require_signature)
        for name, meta in manifest["files"].items():
            r.verify_stream(name, meta["sha256"], meta["size"])
        return manifest
    finally:
        r.close()


# ---------------------------------------------------------------------------------------------- import
def _parse_jsonl(data: bytes, model: Any, what: str) -> list[Any]:
    from pydantic import ValidationError as PydanticError

    out = []
    for i, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(model.model_validate_json(line))
        except PydanticError as exc:
            raise CorruptData(f"bundle {what} line {i} is invalid: {exc.errors()[0]['msg']}") from None
    return out


def import_bundle(file: str | os.PathLike[str], dest: str | os.PathLike[str], *, embedder: Any = None,
                  chroma_url: str | None = None, hmac_key: bytes | None = None, require_signature: bool = False,
                  limits: Limits | None = None, actor: str = "local", progress: bool | None = None) -> MemCube:
    """Verify a bundle, then create a new cube at ``dest`` from it and return it (open).

    ``dest`` must not exist (or be an empty folder). The embedder must have the bundle's dimension (stored
    embeddings are reused; nothing is re-embedded). Raises :class:`CorruptData`, :class:`PermissionDenied`
    (signature), :class:`SchemaVersionError` or :class:`ValidationError`; on any error nothing is created.

    ``actor`` (a principal id) owns the new cube and is the returned handle's principal: access lists are not
    part of a bundle. The cube is built in a hidden sibling folder (``.DEST.importing-*``) and renamed into
    place when complete; staging folders left by an import that was killed are removed by the next import into
    the same parent folder or the next open of ``dest`` (see :func:`clean_stale_imports`).
    """
    from ..governance.roles import check_principal_id
    from ..records.migrate import is_store_url

    check_principal_id(actor, "actor")
    if is_store_url(dest):
        return _import_into_store(file, str(dest), embedder=embedder, chroma_url=chroma_url, hmac_key=hmac_key,
                                  require_signature=require_signature, limits=limits, actor=actor, progress=progress)
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValidationError(f"import target {dest} exists and is not empty")
    r = _Reader(Path(file), limits or Limits())
    try:
        manifest = _load_manifest(r, hmac_key, require_signature)
        files = manifest["files"]
        blobs: dict[str, bytes] = {}
        for name in ("records/items.jsonl", "records/versions.jsonl", "records/transitions.jsonl",
                     "records/events.jsonl", "records/embeddings.npy", "records/embedding_ids.json"):
            if name not in files:
                raise CorruptData(f"bundle lacks {name}")
            parts: list[bytes] = []
            r.verify_stream(name, files[name]["sha256"], files[name]["size"], parts.append)
            blobs[name] = b"".join(parts)
        for name, meta in files.items():  # artifacts: verify before anything is written
            if name.startswith("artifacts/"):
                r.verify_stream(name, meta["sha256"], meta["size"])
        items = _parse_jsonl(blobs["records/items.jsonl"], MemoryItem, "items")
        versions = _parse_jsonl(blobs["records/versions.jsonl"], MemoryVersion, "versions")
        transitions = _parse_jsonl(blobs["records/transitions.jsonl"], Transition, "transitions")
        try:
            events = [json.loads(line) for line in blobs["records/events.jsonl"].decode().splitlines() if line.strip()]
            ids = json.loads(blobs["records/embedding_ids.json"])
            mat = np.load(io.BytesIO(blobs["records/embeddings.npy"]), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise CorruptData(f"bundle records are unreadable: {exc}") from exc
        dim = int(manifest["cube"]["embedder"]["dim"])
        if not isinstance(ids, list) or mat.dtype != np.float32 or mat.ndim != 2 or mat.shape != (len(ids), dim):
            raise CorruptData("bundle embeddings do not match their ids or the cube's dimension")
        if any(not isinstance(e, list) or len(e) != 9 for e in events):
            raise CorruptData("bundle event log rows are malformed")
        vec_by_id = {i: mat[n] for n, i in enumerate(ids)}
        vers_by_id: dict[str, list[MemoryVersion]] = {}
        for v in versions:
            vers_by_id.setdefault(v.item_id, []).append(v)
        trans_by_id: dict[str, list[Transition]] = {}
        for t in transitions:
            trans_by_id.setdefault(t.item_id, []).append(t)
        if len(items) != manifest.get("counts", {}).get("items", len(items)):
            raise CorruptData("bundle item count differs from its manifest")
        _check_history(manifest, items, versions, transitions, events)

        dest.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_imports(dest.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_staging_prefix(dest), dir=dest.parent))
        cube: MemCube | None = None
        try:
            shutil.rmtree(tmp)
            cube = MemCube(tmp, embedder=embedder, cube_id=manifest["cube"].get("cube_id"),
                           name=manifest["cube"].get("name"), chroma_url=chroma_url, actor=actor)
            # keep the source cube's identity and embedder record
            cube.manifest.update({k: manifest["cube"][k] for k in ("cube_id", "name", "created_at", "embedder")
                                  if k in manifest["cube"]})
            from ..cube import MANIFEST, _atomic_write

            _atomic_write(tmp / MANIFEST, json.dumps(cube.manifest, indent=2))
            with cube.records.transaction() as c:
                for it in _advancing(items, Progress(len(items), "importing", unit="memory", progress=progress)):
                    indexed = it.state in lifecycle.INDEXED
                    vec = vec_by_id.get(it.id)
                    if indexed and vec is None:
                        raise CorruptData(f"bundle lacks the embedding of indexed item {it.id!r}")
                    cube.records.restore_item(c, it, sorted(vers_by_id.get(it.id, []), key=lambda v: v.version),
                                              trans_by_id.get(it.id, []), vec, indexed)
                copied = cube.records.restore_events(c, events)
                cube.records.append_event(c, time.time(), actor, "import", None, outcome="ok", detail={
                    "source_cube_id": manifest["cube"].get("cube_id"), "source_audit_head": manifest.get("audit_head"),
                    "items": len(items), "events_copied": copied})
            cube.repair_index()
            cube._fill_topics()  # topic vectors are rebuilt, not exported (see RecordStore.put_topics)
            for name in files:
                if name.startswith("artifacts/"):
                    target = tmp / name[len("artifacts/"):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb") as out:
                        r.verify_stream(name, files[name]["sha256"], files[name]["size"], out.write)
            cube.close()
            cube = None
            if dest.exists():
                dest.rmdir()
            os.replace(tmp, dest)
        except BaseException:
            if cube is not None:
                cube.close()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        r.close()
    log.info("imported a bundle of cube %s into %s: %d memories", manifest["cube"].get("cube_id"), dest, len(items))
    return MemCube(dest, embedder=embedder, create=False, chroma_url=chroma_url, actor=actor)


def _import_into_store(file: str | os.PathLike[str], url: str, *, chroma_url: str | None, **kw: Any) -> MemCube:
    """A bundle into a new cube on PostgreSQL (``dest="postgresql://...?cube=NAME"``): verified and built in a
    temporary folder exactly as for a folder target, then its records copied into the empty store cube and
    verified (:func:`memos_core.records.migrate.migrate_store`); KV caches and adapters go to the cube's local
    folder. ``chroma_url`` names the Chroma server the workers share (``"embedded"`` for one process)."""
    from ..records.migrate import migrate_store

    if chroma_url is None:
        raise ValidationError("importing into PostgreSQL needs the shared vector index: pass chroma_url='http://host:"
                              "port' (a Chroma server), or 'embedded' for a single process")
    with tempfile.TemporaryDirectory(prefix="memos-import-") as tmpd:
        staged = Path(tmpd) / "cube"
        import_bundle(file, staged, **kw).close()
        migrate_store(staged, url)
        cube = MemCube(url, embedder=kw.get("embedder"), create=False, index=chroma_url, actor=kw["actor"])
        try:
            for sub in ("activation", "parametric"):
                if (staged / sub).is_dir():
                    shutil.copytree(staged / sub, cube.path / sub, dirs_exist_ok=True)
        except BaseException:
            cube.close()
            raise
    return cube


def _advancing(items: list[Any], bar: Progress) -> Iterator[Any]:
    with bar:
        for it in items:
            yield it
            bar.update(1)


# ---------------------------------------------------------------------------------------------- staging folders
#: How long a staging folder whose owner cannot be checked (another host, or written by an older MemOS) is
#: kept before it counts as abandoned.
STALE_IMPORT_AFTER_S = 24 * 3600.0
_STAGING = re.compile(r"\.importing-([0-9a-f]{8})-(\d+)-")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]


def _staging_prefix(dest: Path) -> str:
    """``.DEST.importing-HOST-PID-``: who is building the folder, so that another process can tell whether
    that import is still running."""
    return f".{dest.name}.importing-{_host_tag()}-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's process) or cannot be checked: keep
    return True


def clean_stale_imports(parent: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove staging folders of imports that died (``kill -9``, power loss) in ``parent`` and return them.

    A folder is stale when the process that created it on this host no longer runs; a folder made on another
    host (shared storage) or by an older MemOS, whose owner cannot be checked, when it has not changed for
    :data:`STALE_IMPORT_AFTER_S`. A running import's folder is never touched. ``name`` limits the sweep to the
    staging folders of ``parent / name``.
    """
    removed: list[Path] = []
    prefix = "." if name is None else f".{name}.importing-"
    here = _host_tag()
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(prefix) and ".importing-" in e.name]
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            m = _STAGING.search(entry.name)
            if m is not None and m.group(1) == here:
                stale = not _pid_alive(int(m.group(2)))
            else:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > STALE_IMPORT_AFTER_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            if not os.path.exists(entry.path):
                removed.append(Path(entry.path))
    return removed


def _check_history(manifest: dict[str, Any], items: list[MemoryItem], versions: list[MemoryVersion],
                   transitions: list[Transition], events: list[Any]) -> None:
    """Refuse (CorruptData, before anything is written) a bundle whose history does not hold together.

    * versions: every item has exactly versions 1..its version, its newest snapshot has its content, and no
      version or transition belongs to an item the bundle does not hold (a removed version row is refused);
    * the event chain verifies on its own (an altered, removed, inserted or reordered row is refused), against
      the manifest's audit head (hash and seq) and counter, and every item's current version has its record.
    """
    from ..governance.audit import Evidence, verify_rows

    ids = {it.id for it in items}
    if len(ids) != len(items):
        raise CorruptData("bundle lists an item twice")
    by_item: dict[str, dict[int, MemoryVersion]] = {}
    for v in versions:
        if v.item_id not in ids:
            raise CorruptData(f"bundle holds versions of item {v.item_id!r}, which it does not hold")
        if v.version in by_item.setdefault(v.item_id, {}):
            raise CorruptData(f"bundle holds version {v.version} of item {v.item_id!r} twice")
        by_item[v.item_id][v.version] = v
    for t in transitions:
        if t.item_id not in ids:
            raise CorruptData(f"bundle holds transitions of item {t.item_id!r}, which it does not hold")
    for it in items:
        have = by_item.get(it.id, {})
        if sorted(have) != list(range(1, it.version + 1)):
            gaps = sorted(set(range(1, it.version + 1)) - set(have))[:5]
            raise CorruptData(f"bundle item {it.id!r} is at version {it.version} but its history lacks version(s) "
                              f"{gaps or sorted(set(have) - set(range(1, it.version + 1)))[:5]}: refused")
        if have[it.version].content != it.content:
            raise CorruptData(f"bundle item {it.id!r} differs from its newest version snapshot: refused")
    try:
        rows = [(int(e[0]), float(e[1]), e[2], e[3], e[4], e[5], e[6], e[7], e[8]) for e in events]
    except (TypeError, ValueError) as exc:
        raise CorruptData(f"bundle event log rows are malformed: {exc}") from None
    counter = manifest.get("audit_counter")
    rep = verify_rows(rows, counter if isinstance(counter, int) and not isinstance(counter, bool) else None,
                      None, Evidence(items=[(it.id, it.version) for it in items]))
    if not rep.ok:
        p = rep.problems[0]
        raise CorruptData(f"bundle audit log does not verify ({len(rep.problems)} problem(s); seq {p.seq}: "
                          f"{p.kind}: {p.message}): refused")
    head = manifest.get("audit_head")
    if head != (rows[-1][8] if rows else None):
        raise CorruptData("bundle audit log does not end at the manifest's audit head: refused")
    seq = manifest.get("audit_head_seq")
    if seq is not None and (not rows or rows[-1][0] != seq):
        raise CorruptData("bundle audit log does not end at the manifest's audit head seq: refused")


# ---------------------------------------------------------------------------------------------- migrate
def migrate_cube(src: MemCube, dest: str | os.PathLike[str], *, chroma_url: str | None = None,
                 embedder: Any = None) -> dict[str, Any]:
    """Copy a cube to ``dest`` (optionally with its vector index on a Chroma server) and verify it.

    Verification compares every item's id, version, state and content, every version count, and the vector
    index size. Returns a report; raises :class:`CorruptData` if anything differs (and removes ``dest``).
    """
    with tempfile.TemporaryDirectory(prefix="memos-migrate-") as td:
        bundle = Path(td) / "cube.tar.gz"
        export_cube(src, bundle)
        new = import_bundle(bundle, dest, embedder=embedder if embedder is not None else src.embedder,
                            chroma_url=chroma_url, actor=src.actor)
    try:
        report = compare_cubes(src, new)
    except CorruptData:
        new.close()
        shutil.rmtree(dest, ignore_errors=True)
        raise
    report["dest"] = str(dest)
    report["vector_backend"] = chroma_url or "embedded"
    new.close()
    return report


def compare_cubes(a: MemCube, b: MemCube) -> dict[str, Any]:
    """Raise :class:`CorruptData` unless both cubes hold the same items, versions and index size."""
    ia = {it.id: it for it in a.records.iter_items()}
    ib = {it.id: it for it in b.records.iter_items()}
    if set(ia) != set(ib):
        raise CorruptData(f"migration lost or invented items ({len(ia)} vs {len(ib)})")
    for k, x in ia.items():
        y = ib[k]
        if (x.content, x.version, x.state, x.scope, x.metadata) != (y.content, y.version, y.state, y.scope, y.metadata):
            raise CorruptData(f"migrated item {k!r} differs")
        if len(a.records.versions(k)) != len(b.records.versions(k)):
            raise CorruptData(f"migrated item {k!r} lost versions")
    na, nb = a.index.count(), b.index.count()
    if na != nb:
        raise CorruptData(f"vector index sizes differ after migration ({na} vs {nb})")
    return {"items": len(ia), "indexed": nb}

