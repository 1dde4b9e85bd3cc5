"""A real PostgreSQL server on loopback for tests: a temporary cluster (``initdb``), started and stopped by the
tests themselves.

PostgreSQL refuses to run as root: when the tests run as root the cluster belongs to the ``postgres`` system
user (``runuser -u postgres``); otherwise it runs as the current user. Binaries come from ``pg_config
--bindir``, ``/usr/lib/postgresql/*/bin`` or ``PATH``. When PostgreSQL is not installed the tests that need it
are skipped with the reason, unless ``MEMOS_REQUIRE_POSTGRES=1`` (CI), where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest


def _bindir() -> Path | None:
    env = os.environ.get("MEMOS_PG_BINDIR")
    cands = [Path(env)] if env else []
    cfg = shutil.which("pg_config")
    if cfg:
        try:
            cands.append(Path(subprocess.run([cfg, "--bindir"], capture_output=True, text=True, check=True).stdout.strip()))
        except (OSError, subprocess.CalledProcessError):
            pass
    cands += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    ctl = shutil.which("pg_ctl")
    if ctl:
        cands.append(Path(ctl).parent)
    for c in cands:
        if (c / "pg_ctl").exists() and (c / "initdb").exists():
            return c
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable(reason: str) -> None:
    """Skip (or fail, under MEMOS_REQUIRE_POSTGRES=1) a test that needs PostgreSQL."""
    if os.environ.get("MEMOS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (MEMOS_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(f"PostgreSQL tests skipped: {reason} (install postgresql and psycopg, or see .ci/run)")


class PgServer:
    """One temporary cluster. ``url(db)`` gives a libpq URL; ``restart()``/``stop()`` for outage tests."""

    def __init__(self, bindir: Path, root: Path) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self.user = "memos"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
            os.chmod(self.root, 0o700)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        opts = (f"-k {self.root} -h 127.0.0.1 -p {self.port} -c fsync=on -c max_connections=200 "
                "-c shared_buffers=64MB")
        res = self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "-t", "60",
                        "start", check=False)
        if res.returncode != 0:
            log = (self.root / "log").read_text(errors="replace")[-2000:] if (self.root / "log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {res.stderr or res.stdout}\n{log}")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self) -> None:
        self.stop("immediate")
        self.start()

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def create_db(self, name: str) -> str:
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return self.url(name)


def running_pg(name: str = "memos-pg") -> Iterator[PgServer]:
    """Start a temporary cluster for a fixture and remove it afterwards (``yield from`` this)."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        unavailable("psycopg / psycopg_pool are not installed (pip install -e '.[postgres]')")
    bindir = _bindir()
    if bindir is None:
        unavailable("no PostgreSQL server binaries (pg_ctl, initdb) found")
    assert bindir is not None
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        unavailable("running as root needs `runuser` to start PostgreSQL as the postgres user")
    root = Path(tempfile.mkdtemp(prefix=name + "-", dir="/tmp"))
    server = PgServer(bindir, root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop("immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)


def fresh_schema_name(prefix: str = "t") -> str:
    """A cube name (schema) no other test uses."""
    return f"{prefix}{os.getpid()}_{time.monotonic_ns() % 10**12}"


__all__ = ["PgServer", "running_pg", "unavailable", "fresh_schema_name"]
