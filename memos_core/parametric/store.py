"""Adapters on disk: one folder per adapter, safetensors + JSON only.

Layout under the store's root (in a cube: ``cube.path / "parametric"``)::

    <root>/<name>/adapter_model.safetensors   LoRA weights (peft's key layout, loadable by peft directly)
    <root>/<name>/adapter_config.json         peft's LoraConfig
    <root>/<name>/memos_adapter.json          AdapterRecord: fingerprint, sources, hyperparameters, loss, recall

What a user can rely on:

* A write is atomic: files are written and fsync'd in a hidden temporary folder next to the target, then renamed
  into place. A reader sees the old adapter or the new one, never a mix.
* Nothing is ever unpickled: weights are read with safetensors, metadata with ``json``.
* On read, the weights file's SHA-256 is checked against the record; a mismatch, a missing file or unreadable
  JSON raises :class:`~memos_core.errors.CorruptData`; an unknown adapter raises
  :class:`~memos_core.errors.NotFound`.
* Staleness is computed against the system of record each time it is asked (:meth:`AdapterStore.stale`), so
  updating or forgetting a memory marks every adapter built from it stale without touching the adapter.

torch is imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from pydantic import ValidationError as PydanticError

from ..artifacts import ArtifactStoreMixin, ItemLookup, SourceRef, stale_sources
from ..errors import CorruptData, NotFound, SchemaVersionError, ValidationError
from .schema import ADAPTER_FORMAT, AdapterRecord, validate_adapter_name

__all__ = ["AdapterStore", "WEIGHTS_FILE", "CONFIG_FILE", "RECORD_FILE"]

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
RECORD_FILE = "memos_adapter.json"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class AdapterStore(ArtifactStoreMixin):
    """A folder of adapters. ``AdapterStore(cube.path / "parametric")`` is the cube's parametric memory.

    Implements the :class:`~memos_core.artifacts.ArtifactStore` protocol (the same verbs as
    :class:`~memos_core.activation.KVCacheStore`; artefact ids are adapter names): ``artifact_ids``,
    ``artifact_sources``, ``remove``, ``built_from``, ``forget``, ``stale_artifacts``, ``drop_stale``.
    ``lookup`` (e.g. ``cube.lookup``) is their default for staleness.
    """

    kind = "lora_adapter"

    def __init__(self, root: str | os.PathLike[str], *, lookup: ItemLookup | None = None) -> None:
        self.root = Path(root)
        self.lookup = lookup

    def __repr__(self) -> str:
        return f"AdapterStore({str(self.root)!r})"

    # -- paths --------------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        """The folder of adapter ``name`` (it may not exist)."""
        return self.root / validate_adapter_name(name)

    def exists(self, name: str) -> bool:
        return (self.path(name) / RECORD_FILE).is_file()

    def names(self) -> list[str]:
        """Names of the stored adapters, sorted. Hidden temporary folders are skipped."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / RECORD_FILE).is_file())

    # -- read ---------------------------------------------------------------------------------------------
    def record(self, name: str) -> AdapterRecord:
        """The adapter's record. Raises NotFound, CorruptData or SchemaVersionError."""
        folder = self.path(name)
        path = folder / RECORD_FILE
        if not path.is_file():
            raise NotFound(f"no adapter {name!r} in {self.root}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptData(f"adapter {name!r}: {RECORD_FILE} is unreadable ({exc})") from None
        fmt = data.get("format") if isinstance(data, dict) else None
        if fmt != ADAPTER_FORMAT:
            if isinstance(fmt, str) and fmt.startswith("memos.parametric.adapter/"):
                raise SchemaVersionError(
                    f"adapter {name!r} uses format {fmt!r}; this MemOS reads {ADAPTER_FORMAT!r}. Upgrade MemOS."
                )
            raise CorruptData(f"adapter {name!r}: {RECORD_FILE} is not a MemOS adapter record")
        try:
            rec = AdapterRecord.model_validate(data)
        except PydanticError as exc:
            raise CorruptData(f"adapter {name!r}: invalid record: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
        if rec.name != name:
            raise CorruptData(f"adapter folder {name!r} holds a record named {rec.name!r}")
        return rec

    def records(self) -> list[AdapterRecord]:
        return [self.record(n) for n in self.names()]

    def verify(self, name: str) -> AdapterRecord:
        """Check the files of ``name`` against its record (presence, SHA-256, safetensors header). Returns it."""
        rec = self.record(name)
        folder = self.path(name)
        weights = folder / WEIGHTS_FILE
        if not weights.is_file() or not (folder / CONFIG_FILE).is_file():
            raise CorruptData(f"adapter {name!r} is missing {WEIGHTS_FILE} or {CONFIG_FILE}")
        if rec.adapter_sha256 and _sha256_file(weights) != rec.adapter_sha256:
            raise CorruptData(f"adapter {name!r}: {WEIGHTS_FILE} does not match the SHA-256 in its record")
        try:
            json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptData(f"adapter {name!r}: {CONFIG_FILE} is unreadable ({exc})") from None
        return rec

    def load_weights(self, name: str) -> tuple[AdapterRecord, dict[str, Any], dict[str, Any]]:
        """Verified ``(record, peft config dict, state dict)``; tensors are read with safetensors on CPU."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        rec = self.verify(name)
        folder = self.path(name)
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        try:
            tensors = load_file(str(folder / WEIGHTS_FILE), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CorruptData(f"adapter {name!r}: {WEIGHTS_FILE} is not a valid safetensors file ({exc})") from None
        return rec, config, tensors

    # -- ArtifactStore ------------------------------------------------------------------------------------
    def artifact_ids(self) -> list[str]:
        """Names of the stored adapters (the protocol's ids)."""
        return self.names()

    def artifact_sources(self, artifact_id: str) -> list[SourceRef]:
        return list(self.record(artifact_id).sources)

    def remove(self, artifact_id: str) -> bool:
        """Delete adapter ``artifact_id``; False when there is none (``delete`` raises NotFound instead)."""
        try:
            self.delete(artifact_id)
        except NotFound:
            return False
        return True

    def stale(self, name: str, lookup: ItemLookup) -> dict[str, str]:
        """Map memory id -> what happened to it, for every source of ``name`` that changed. Empty: fresh."""
        return stale_sources(self.record(name).sources, lookup)

    def status(self, lookup: ItemLookup) -> dict[str, dict[str, str]]:
        """``{adapter name: stale reasons}`` for every stored adapter (empty reasons: fresh)."""
        return {rec.name: stale_sources(rec.sources, lookup) for rec in self.records()}

    # -- write --------------------------------------------------------------------------------------------
    def save(
        self,
        record: AdapterRecord,
        tensors: dict[str, Any],
        peft_config: dict[str, Any],
        *,
        overwrite: bool = False,
    ) -> AdapterRecord:
        """Write an adapter atomically and return its record with ``adapter_sha256`` set.

        Raises :class:`~memos_core.errors.ValidationError` if the name is taken and ``overwrite`` is false.
        """
        from safetensors.torch import save_file

        name = validate_adapter_name(record.name)
        target = self.path(name)
        if target.exists() and not overwrite:
            raise ValidationError(f"adapter {name!r} already exists in {self.root}; pass overwrite=True to replace it")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            weights = tmp / WEIGHTS_FILE
            save_file(
                {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                str(weights),
                metadata={"format": "pt"},
            )
            record = record.model_copy(update={"adapter_sha256": _sha256_file(weights)})
            (tmp / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2, sort_keys=True, default=str), encoding="utf-8")
            (tmp / RECORD_FILE).write_text(record.model_dump_json(indent=2), encoding="utf-8")
            for f in (WEIGHTS_FILE, CONFIG_FILE, RECORD_FILE):
                _fsync_file(tmp / f)
            _fsync_dir(tmp)
            old = None
            if target.exists():
                old = self.root / f".old-{name}-{uuid.uuid4().hex[:8]}"
                os.replace(target, old)
            os.replace(tmp, target)
            _fsync_dir(self.root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return record

    def delete(self, name: str) -> None:
        """Remove adapter ``name`` (weights and record). Raises NotFound if it does not exist."""
        target = self.path(name)
        if not target.exists():
            raise NotFound(f"no adapter {name!r} in {self.root}")
        trash = self.root / f".del-{name}-{uuid.uuid4().hex[:8]}"
        os.replace(target, trash)
        _fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)

    def forget_items(self, item_ids: set[str] | list[str], *, delete: bool = False) -> list[str]:
        """Names of adapters trained from any of ``item_ids``; with ``delete=True`` they are removed as well.

        A forget of a memory makes its adapters stale automatically (the lookup no longer finds it); this is for
        callers who must also erase the derived weights, e.g. under a right-to-be-forgotten request.
        """
        return self.forget(item_ids) if delete else self.built_from(item_ids)


