"""KV caches on disk: safetensors for the tensors, JSON for the metadata, a byte budget per folder.

Layout of a store folder (for a cube: ``cube.path / "activation"``)::

    <cache_id>.safetensors   keys/values, tensors "layers.<i>.keys" / "layers.<i>.values", [1, heads, tokens, dim]
    <cache_id>.json          {"meta": KVCacheMeta, "file": {"size": …, "sha256": …}, "meta_sha256": …}

What you can rely on:

* **Nothing is pickled.** Tensors are safetensors, metadata is JSON; loading never executes stored code.
* **Atomic writes.** The tensor file is written to a temporary name, fsync'd and renamed; the JSON is written
  last the same way and is the commit marker. A crash leaves either a complete cache or none (a stray
  ``.tmp`` file is removed by :meth:`KVCacheStore.cleanup`).
* **Loads are memory-mapped** (copy-on-write): tensors are read from the page cache on first touch, and
  nothing done to a loaded tensor can change the file.
* **Loads are checked, never silently empty.** Missing id: :class:`NotFound`. Unreadable JSON, metadata that
  does not match its checksum (``meta_sha256``, a SHA-256 of the canonical JSON of the metadata, also written
  into the tensor file's header) or whose cache id is not the one its fingerprint, token ids, sources and
  exactness give, wrong size (truncated), tensor checksum mismatch (``verify="full"``, the default),
  unreadable safetensors header or tensors that disagree with the metadata: :class:`CorruptData`. Editing a
  single token id in the JSON is refused. Caches written by format 1 (no metadata checksum) are refused the
  same way: rebuild them (``LocalLLM`` does so automatically). Another model/tokenizer/dtype/adapter:
  :class:`FingerprintMismatch`. A source memory updated, deleted or forgotten since the build:
  :class:`StaleArtifact`.
* **Budget.** ``budget_bytes`` bounds the folder's cache bytes (JSON + tensors). :meth:`put` raises
  :class:`BudgetExceeded` rather than exceed it unless ``make_room=True``, which evicts least-recently-used
  caches first. Nothing is evicted except on request (:meth:`evict`, :meth:`delete`, ``make_room``).
  Last use is the JSON file's modification time, updated by every :meth:`load`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from pydantic import BaseModel, ConfigDict

from ..artifacts import ArtifactStoreMixin, ItemLookup, SourceRef, stale_sources
from ..errors import CorruptData, NotFound, ValidationError
from .errors import BudgetExceeded, FingerprintMismatch, StaleArtifact
from .fingerprint import ModelFingerprint
from .kvcache import FORMAT_VERSION, KVCache, KVCacheMeta, cache_id_for

__all__ = ["KVCacheStore", "CacheInfo"]

_ID = re.compile(r"^[0-9a-f]{32}$")
_FORMAT = "memos-kv"


class CacheInfo(BaseModel):
    """A stored cache's metadata and file facts (no tensors loaded)."""

    model_config = ConfigDict(extra="forbid")

    meta: KVCacheMeta
    tensor_bytes: int
    json_bytes: int
    sha256: str
    meta_sha256: str = ""
    last_used: datetime

    @property
    def cache_id(self) -> str:
        return self.meta.cache_id

    @property
    def total_bytes(self) -> int:
        return self.tensor_bytes + self.json_bytes


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _when(mtime_ns: int) -> datetime:
    return datetime.fromtimestamp(mtime_ns // 1000 / 1e6, timezone.utc)


def meta_digest(meta: Any) -> str:
    """SHA-256 of a cache's metadata as canonical JSON (sorted keys, no whitespace). ``meta`` is the JSON
    dict as stored (or a :class:`KVCacheMeta`)."""
    if isinstance(meta, KVCacheMeta):
        meta = meta.model_dump(mode="json")
    blob = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(8 << 20)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


class KVCacheStore(ArtifactStoreMixin):
    """A folder of KV caches with integrity checks and a byte budget.

    ``lookup`` (item id -> current :class:`MemoryItem` or ``None``, e.g. ``cube.lookup``) is used to refuse
    stale caches on :meth:`load`; pass ``lookup=None`` there explicitly to skip the check.

    Implements the :class:`~memos_core.artifacts.ArtifactStore` protocol (the same verbs as
    :class:`~memos_core.parametric.AdapterStore`; artefact ids are cache ids): ``artifact_ids``,
    ``artifact_sources``, ``remove``, ``built_from``, ``forget``, ``stale_artifacts``, ``drop_stale``.
    ``delete_for_items``, ``stale`` and ``delete_stale`` are older names of ``forget``, ``stale_artifacts`` and
    ``drop_stale``.
    """

    kind = "kv_cache"

    def __init__(self, folder: str | os.PathLike[str], *, budget_bytes: int | None = None, lookup: ItemLookup | None = None) -> None:
        if budget_bytes is not None and budget_bytes < 0:
            raise ValidationError("budget_bytes must be >= 0 (or None for no budget)")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.budget_bytes = budget_bytes
        self.lookup = lookup
        self._lock = threading.RLock()
        self._last_touch = 0
        self._meta: dict[str, tuple[tuple[int, int], CacheInfo]] = {}

    # ----------------------------------------------------------------------------------------------- paths
    def _paths(self, cache_id: str) -> tuple[Path, Path]:
        if not isinstance(cache_id, str) or not _ID.match(cache_id):
            raise ValidationError(f"not a cache id: {cache_id!r} (32 lowercase hex digits)")
        return self.folder / f"{cache_id}.safetensors", self.folder / f"{cache_id}.json"

    def _ids(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json") if _ID.match(p.stem))

    # ----------------------------------------------------------------------------------------------- write
    def put(self, cache: KVCache, *, make_room: bool = False) -> CacheInfo:
        """Store ``cache`` (idempotent: an id already stored is only marked used). Returns its info."""
        from safetensors.torch import save

        with self._lock:
            tpath, jpath = self._paths(cache.cache_id)
            if jpath.exists():
                try:
                    info = self.info(cache.cache_id)
                    self._touch(cache.cache_id, info)
                    return self.info(cache.cache_id)
                except CorruptData:
                    self.delete(cache.cache_id)
            tensors: dict[str, Any] = {}
            for i, (k, v) in enumerate(cache.layers):
                tensors[f"layers.{i}.keys"] = k.detach().contiguous().cpu()
                tensors[f"layers.{i}.values"] = v.detach().contiguous().cpu()
            if cache.cache_id != cache_id_for(cache.meta.fingerprint, cache.token_ids, cache.meta.sources, cache.meta.exact):
                raise ValidationError(f"cache {cache.cache_id}: its id does not match its fingerprint, tokens and sources")
            meta_json = cache.meta.model_dump(mode="json")
            msha = meta_digest(meta_json)
            blob = save(
                tensors,
                metadata={"format": _FORMAT, "format_version": str(FORMAT_VERSION), "cache_id": cache.cache_id,
                          "fingerprint_key": cache.meta.fingerprint.key, "meta_sha256": msha},
            )
            sha = hashlib.sha256(blob).hexdigest()
            record = {"meta": meta_json, "file": {"size": len(blob), "sha256": sha}, "meta_sha256": msha}
            jblob = json.dumps(record, separators=(",", ":")).encode("utf-8")
            need = len(blob) + len(jblob)
            if self.budget_bytes is not None:
                if need > self.budget_bytes:
                    raise BudgetExceeded(
                        f"cache {cache.cache_id} needs {need} bytes, more than the whole budget of {self.budget_bytes} bytes"
                    )
                over = self.total_bytes() + need - self.budget_bytes
                if over > 0:
                    if not make_room:
                        raise BudgetExceeded(
                            f"storing cache {cache.cache_id} ({need} bytes) would exceed the budget of "
                            f"{self.budget_bytes} bytes by {over}; call evict({over}) or put(..., make_room=True)"
                        )
                    self.evict(over)
            _write_atomic(tpath, blob)
            _write_atomic(jpath, jblob)
            _fsync_dir(self.folder)
            self._touch(cache.cache_id, self.info(cache.cache_id))
            return self.info(cache.cache_id)

    def put_many(self, caches: Iterable[KVCache], *, make_room: bool = False,
                 progress: bool | None = None) -> list[CacheInfo]:
        """Store several caches with a progress bar (in a terminal, unless ``progress=False`` or
        ``MEMOS_PROGRESS=0``)."""
        from tqdm.auto import tqdm

        from ..log import progress_enabled

        caches = list(caches)
        return [self.put(c, make_room=make_room)
                for c in tqdm(caches, desc="storing KV caches", unit="cache", disable=not progress_enabled(progress))]

    # ----------------------------------------------------------------------------------------------- read
    def info(self, cache_id: str) -> CacheInfo:
        """Metadata of one cache. Raises NotFound, or CorruptData when the JSON is unreadable."""
        tpath, jpath = self._paths(cache_id)
        with self._lock:
            try:
                st = jpath.stat()
            except FileNotFoundError:
                raise NotFound(f"no KV cache {cache_id} in {self.folder}") from None
            stamp = (st.st_size, st.st_mtime_ns)
            cached = self._meta.get(cache_id)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            try:
                record = json.loads(jpath.read_bytes())
                version = int(record["meta"].get("format_version", 1))
            except Exception as exc:
                raise CorruptData(f"KV cache {cache_id}: metadata file {jpath.name} is unreadable ({exc}); delete it") from None
            if version < 2:
                raise CorruptData(
                    f"KV cache {cache_id} was written by an older MemOS (format {version}, metadata not checksummed); "
                    "delete it and rebuild (LocalLLM does so automatically)"
                )
            if version > FORMAT_VERSION:
                raise CorruptData(f"KV cache {cache_id} uses format {version}; this MemOS reads up to {FORMAT_VERSION}")
            try:
                msha = str(record["meta_sha256"])
                if meta_digest(record["meta"]) != msha:
                    raise CorruptData("metadata does not match its checksum (edited or corrupt)")
                meta = KVCacheMeta.model_validate(record["meta"])
                size, sha = int(record["file"]["size"]), str(record["file"]["sha256"])
            except CorruptData as exc:
                raise CorruptData(f"KV cache {cache_id}: {exc}; delete it and rebuild") from None
            except Exception as exc:
                raise CorruptData(f"KV cache {cache_id}: metadata file {jpath.name} is unreadable ({exc}); delete it") from None
            if meta.cache_id != cache_id:
                raise CorruptData(f"KV cache {cache_id}: metadata names another cache ({meta.cache_id}); delete it")
            if cache_id_for(meta.fingerprint, meta.token_ids, meta.sources, meta.exact) != cache_id:
                raise CorruptData(
                    f"KV cache {cache_id}: its token ids, sources or fingerprint do not give its id (edited); delete it"
                )
            info = CacheInfo(meta=meta, tensor_bytes=size, json_bytes=st.st_size, sha256=sha, meta_sha256=msha,
                             last_used=_when(st.st_mtime_ns))
            self._meta[cache_id] = (stamp, info)
            return info

    def list(self, fingerprint: ModelFingerprint | str | None = None) -> list[CacheInfo]:
        """Stored caches, most recently used first; only those of ``fingerprint`` (or its key) when given.

        A cache whose metadata is unreadable is left out with a warning (it still counts in
        :meth:`total_bytes`; :meth:`problems` lists it and :meth:`delete` removes it)."""
        key = fingerprint.key if isinstance(fingerprint, ModelFingerprint) else fingerprint
        out = []
        for cid in self._ids():
            try:
                info = self.info(cid)
            except CorruptData as exc:
                warnings.warn(str(exc), stacklevel=2)
                continue
            except NotFound:
                continue
            if key is None or info.meta.fingerprint.key == key:
                out.append(info)
        out.sort(key=lambda i: (i.last_used, i.cache_id), reverse=True)
        return out

    def __contains__(self, cache_id: object) -> bool:
        return isinstance(cache_id, str) and bool(_ID.match(cache_id)) and self._paths(cache_id)[1].exists()

    def __len__(self) -> int:
        return len(self._ids())

    def total_bytes(self) -> int:
        """Bytes used by every cache file in the folder (tensors + JSON, including unreadable ones)."""
        total = 0
        for p in self.folder.iterdir():
            if p.suffix in (".json", ".safetensors") and _ID.match(p.stem):
                try:
                    total += p.stat().st_size
                except FileNotFoundError:
                    pass
        return total

    def load(
        self,
        cache_id: str,
        *,
        fingerprint: ModelFingerprint | None = None,
        lookup: ItemLookup | None | Literal["default"] = "default",
        verify: Literal["full", "size"] = "full",
        device: Any = None,
    ) -> KVCache:
        """Load a cache memory-mapped, after every check in the module docs.

        ``fingerprint``: the current model's; a different one raises :class:`FingerprintMismatch`.
        ``lookup``: defaults to the store's; ``None`` skips the staleness check.
        ``verify="full"`` hashes the tensor file (sha256) before use; ``"size"`` checks only its size, the
        safetensors header and the tensor shapes (faster for very large caches on trusted disks).
        """
        from safetensors import safe_open

        tpath, jpath = self._paths(cache_id)
        info = self.info(cache_id)
        meta = info.meta
        if fingerprint is not None and meta.fingerprint != fingerprint:
            raise FingerprintMismatch(
                f"KV cache {cache_id} was built by another model: {meta.fingerprint.describe_differences(fingerprint)}. "
                "Rebuild it for this model (LocalLLM does so automatically) or delete it.",
                meta.fingerprint.differences(fingerprint),
            )
        look = self.lookup if lookup == "default" else lookup
        if look is not None:
            reasons = stale_sources(meta.sources, look)
            if reasons:
                detail = ", ".join(f"{k}: {v}" for k, v in reasons.items())
                raise StaleArtifact(f"KV cache {cache_id} is stale ({detail}); rebuild it and delete this one", reasons)
        try:
            size = tpath.stat().st_size
        except FileNotFoundError:
            raise CorruptData(f"KV cache {cache_id}: tensor file {tpath.name} is missing; delete the cache and rebuild") from None
        if size != info.tensor_bytes:
            raise CorruptData(
                f"KV cache {cache_id}: tensor file is {size} bytes, expected {info.tensor_bytes} (truncated or altered); "
                "delete the cache and rebuild"
            )
        if verify == "full":
            if _sha256_file(tpath) != info.sha256:
                raise CorruptData(f"KV cache {cache_id}: tensor file checksum mismatch (corrupt); delete the cache and rebuild")
        elif verify != "size":
            raise ValidationError("verify must be 'full' or 'size'")
        try:
            with safe_open(str(tpath), framework="pt") as f:
                header = f.metadata() or {}
                names = set(f.keys())
                expected = {f"layers.{i}.{kv}" for i in range(meta.num_layers) for kv in ("keys", "values")}
                if (header.get("cache_id") != cache_id or header.get("format") != _FORMAT or names != expected
                        or header.get("meta_sha256") != info.meta_sha256):
                    raise CorruptData("tensor file does not belong to this metadata")
                layers = [(f.get_tensor(f"layers.{i}.keys"), f.get_tensor(f"layers.{i}.values")) for i in range(meta.num_layers)]
            cache = KVCache(meta, layers)
        except CorruptData as exc:
            raise CorruptData(f"KV cache {cache_id}: {exc}; delete the cache and rebuild") from None
        except Exception as exc:
            raise CorruptData(f"KV cache {cache_id}: unreadable tensor file ({type(exc).__name__}: {exc}); delete the cache and rebuild") from None
        if str(layers[0][0].dtype).replace("torch.", "") != meta.dtype:
            raise CorruptData(f"KV cache {cache_id}: tensors are {layers[0][0].dtype}, metadata says {meta.dtype}")
        self._touch(cache_id, info)
        return cache.to(device) if device is not None else cache

    def _touch(self, cache_id: str, info: CacheInfo) -> None:
        jpath = self._paths(cache_id)[1]
        with self._lock:
            try:
                # explicit nanosecond stamps, strictly increasing within the process: the kernel's own
                # "now" can be coarse (milliseconds), which would make recent uses tie
                now = max(time.time_ns(), self._last_touch + 1000)
                self._last_touch = now
                os.utime(jpath, ns=(now, now))
                st = jpath.stat()
            except OSError:
                return
            when = _when(st.st_mtime_ns)
            self._meta[cache_id] = ((st.st_size, st.st_mtime_ns), info.model_copy(update={"last_used": when}))

    # ----------------------------------------------------------------------------------------------- delete
    def delete(self, cache_id: str) -> bool:
        """Remove a cache's files. True when something was removed."""
        tpath, jpath = self._paths(cache_id)
        removed = False
        with self._lock:
            for p in (jpath, tpath):  # JSON first: without it the cache no longer exists
                try:
                    p.unlink()
                    removed = True
                except FileNotFoundError:
                    pass
            self._meta.pop(cache_id, None)
        return removed

    def evict(self, bytes_to_free: int, *, protect: Sequence[str] = ()) -> list[str]:
        """Delete least-recently-used caches until at least ``bytes_to_free`` bytes are freed (or none is left
        but ``protect``ed ones). Returns the deleted ids, oldest first."""
        freed, out = 0, []
        with self._lock:
            for info in reversed(self.list()):
                if freed >= bytes_to_free:
                    break
                if info.cache_id in protect:
                    continue
                if self.delete(info.cache_id):
                    freed += info.total_bytes
                    out.append(info.cache_id)
        return out

    # ----------------------------------------------------------------------------------------------- ArtifactStore
    def artifact_ids(self) -> list[str]:
        """Ids of the stored caches (including ones whose metadata is unreadable)."""
        return self._ids()

    def artifact_sources(self, artifact_id: str) -> list[SourceRef]:
        return list(self.info(artifact_id).meta.sources)

    def remove(self, artifact_id: str) -> bool:
        return self.delete(artifact_id)

    def stale(self, lookup: ItemLookup | None = None) -> dict[str, dict[str, str]]:
        """cache id -> {source item id: reason} for every stale cache (= :meth:`stale_artifacts`)."""
        return self.stale_artifacts(lookup)

    def delete_stale(self, lookup: ItemLookup | None = None) -> list[str]:
        """Delete every stale cache; returns their ids (= :meth:`drop_stale`)."""
        return self.drop_stale(lookup)

    def delete_for_items(self, item_ids: Iterable[str]) -> list[str]:
        """Delete every cache built from any of ``item_ids`` (= :meth:`forget`)."""
        return self.forget(item_ids)

    def problems(self) -> dict[str, str]:
        """cache id -> problem, for caches whose metadata is unreadable or whose tensor file is missing or of
        the wrong size (checksums are verified on load, not here)."""
        out = {}
        for cid in self._ids():
            try:
                info = self.info(cid)
            except (CorruptData, NotFound) as exc:
                out[cid] = str(exc)
                continue
            tpath = self._paths(cid)[0]
            if not tpath.exists():
                out[cid] = "tensor file missing"
            elif tpath.stat().st_size != info.tensor_bytes:
                out[cid] = "tensor file has the wrong size"
        return out

    def cleanup(self) -> list[str]:
        """Remove leftovers of interrupted writes (``*.tmp`` and tensor files without metadata)."""
        removed = []
        with self._lock:
            for p in self.folder.iterdir():
                orphan = p.suffix == ".safetensors" and _ID.match(p.stem) and not p.with_suffix(".json").exists()
                if p.name.endswith(".tmp") or orphan:
                    p.unlink(missing_ok=True)
                    removed.append(p.name)
        return removed
