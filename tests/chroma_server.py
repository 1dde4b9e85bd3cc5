"""A real Chroma server (``chroma run``) on loopback for tests: started and stopped by the tests themselves."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMA = shutil.which("chroma") or str(Path(sys.executable).parent / "chroma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChromaServer:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([CHROMA, "run", "--path", str(self.data), "--host", "127.0.0.1",
                                      "--port", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("chroma server exited on start")
                time.sleep(0.2)
        else:
            raise RuntimeError("chroma server did not start in 60 s")
        # the port accepts before the API is ready
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/api/v2/heartbeat", timeout=1).read()
                return
            except OSError:
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def running_server(tmp_path_factory: Any, name: str) -> Iterator[ChromaServer]:
    """Start a server on a fresh data folder for a fixture, stop it afterwards (``yield from`` this)."""
    if not Path(CHROMA).exists():
        pytest.fail("the `chroma` command (from the chromadb package) is required for these tests")
    server = ChromaServer(tmp_path_factory.mktemp(name))
    server.start()
    try:
        yield server
    finally:
        server.stop()
