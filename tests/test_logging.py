"""The ``memos`` logger hierarchy and progress bars (memos_core.log): what a user sees when they turn them on."""

from __future__ import annotations

import logging

import pytest
from conftest import hashed_embed

from memos_core.cube import MemCube
from memos_core.errors import BackendUnavailable, PermissionDenied
from memos_core.log import get_logger, progress_enabled

SECRET = "Ann's door code is 4471 zebra"
QUERY = "what is the door code of the blue zebra"


def _memos_records(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("memos") and r.levelno >= level]


def test_loggers_form_one_hierarchy_and_print_nothing_by_default() -> None:
    assert get_logger("memos_core.cube").name == "memos.cube"
    assert get_logger("memos_core.records.sqlite").name == "memos.records"
    assert get_logger("memos_core.plaintext.vector").name == "memos.index"
    assert get_logger("memos_langchain.store").name == "memos.langchain"
    assert get_logger("somewhere.else").name == "somewhere.else"
    from memos_core import cube, os as memos_os
    from memos_core.governance import core as gov

    for mod in (cube, memos_os, gov):
        assert mod.log.name.startswith("memos.") and mod.log.parent.name == "memos"
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("memos").handlers)


def test_open_write_refuse_repair_rebuild_are_logged_without_content(tmp_path, caplog, monkeypatch) -> None:
    caplog.set_level(logging.INFO, logger="memos")
    path = tmp_path / "cube"
    cube = MemCube(path, embedder=hashed_embed)
    item = cube.add(SECRET, user_id="ann", metadata={"pin": "4471"})
    cube.search(QUERY, k=3)
    with pytest.raises(PermissionDenied):
        cube.add("mallory writes", actor="mallory")

    def down(*a, **kw):
        raise BackendUnavailable("simulated outage")

    monkeypatch.setattr(cube.index, "upsert", down)
    cube.add("written while the index is down")
    monkeypatch.undo()
    cube.close()
    cube = MemCube(path, embedder=hashed_embed)  # applies what was pending: a repair
    cube.reindex()
    cube.close()

    records = _memos_records(caplog)
    text = "\n".join(r.getMessage() for r in records)
    assert any(r.name == "memos.cube" and "opened cube" in r.getMessage() for r in records)
    assert any(r.name == "memos.cube" and "added 1 memories" in r.getMessage() and item.id in r.getMessage()
               for r in records)
    assert any(r.name == "memos.governance" and "refused add" in r.getMessage() and "mallory" in r.getMessage()
               for r in records)
    assert any(r.name == "memos.cube" and r.levelno == logging.WARNING and "vector index is unavailable" in
               r.getMessage() for r in records)
    assert any("repaired the vector index" in r.getMessage() and "1 pending applied" in r.getMessage()
               for r in records)
    assert any("rebuilt the vector index" in r.getMessage() and "2 vectors" in r.getMessage() for r in records)
    # ids and counts only: no memory content, metadata value or query text at INFO and above
    for needle in ("door code", "4471", "zebra", "mallory writes", "written while"):
        assert needle not in text, needle


def test_export_and_import_are_logged(tmp_path, caplog) -> None:
    from memos_core.bundle import export_cube, import_bundle

    caplog.set_level(logging.INFO, logger="memos")
    with MemCube(tmp_path / "a", embedder=hashed_embed) as cube:
        cube.add_many([f"note {i}" for i in range(3)])
        export_cube(cube, tmp_path / "a.zip", progress=False)
    import_bundle(tmp_path / "a.zip", tmp_path / "b", embedder=hashed_embed, progress=False).close()
    msgs = [r.getMessage() for r in _memos_records(caplog) if r.name == "memos.bundle"]
    assert any(m.startswith("exported cube") and "3 memories" in m for m in msgs)
    assert any(m.startswith("imported a bundle") and "3 memories" in m for m in msgs)


def test_progress_switches(monkeypatch) -> None:
    monkeypatch.delenv("MEMOS_PROGRESS", raising=False)
    assert progress_enabled(True) and not progress_enabled(False)
    # pytest captures stderr: not a terminal, so off unless asked
    assert not progress_enabled(None)
    monkeypatch.setenv("MEMOS_PROGRESS", "1")
    assert progress_enabled(None) and not progress_enabled(False)
    monkeypatch.setenv("MEMOS_PROGRESS", "0")
    assert not progress_enabled(None) and progress_enabled(True)


def test_bulk_ingest_shows_progress_only_when_asked(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MEMOS_PROGRESS", raising=False)
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        cube.add_many([f"memory {i}" for i in range(300)])
        assert "embedding memories" not in capsys.readouterr().err  # not a terminal: no bar
        items = cube.add_many([f"other memory {i}" for i in range(300)], progress=True)
        err = capsys.readouterr().err
        assert "embedding memories" in err and "/300" in err
        assert len(items) == 300 and cube.count() == 600
        cube.add_many([f"small batch {i}" for i in range(5)], progress=True)  # too small to bother
        assert "embedding memories" not in capsys.readouterr().err
        monkeypatch.setenv("MEMOS_PROGRESS", "1")
        cube.reindex(reembed=True, batch_size=100)
        assert "re-embedding" in capsys.readouterr().err
        monkeypatch.setenv("MEMOS_PROGRESS", "0")
        cube.reindex(reembed=True, batch_size=100)
        assert "re-embedding" not in capsys.readouterr().err


def test_bulk_ingest_bar_ends_full_in_one_batch(tmp_path, monkeypatch) -> None:
    """An ingest that fits one embedding batch (200-256 memories) used to show a bar stuck at 0/N."""
    from memos_core import log as memos_log

    advanced: list[int] = []
    real_update = memos_log.Progress.update

    def update(self, n: int = 1) -> None:
        if self.shown:
            advanced.append(n)
        real_update(self, n)

    monkeypatch.setattr(memos_log.Progress, "update", update)
    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        cube.add_many([f"memory {i}" for i in range(220)], progress=True)
    assert sum(advanced) >= 220, advanced
