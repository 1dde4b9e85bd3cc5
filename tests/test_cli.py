"""The ``memos`` command: a round trip through every core subcommand, errors as one line with status 2."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from memos_core.cli import main
from memos_core.cube import MemCube


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _ids(search_json: str) -> list[str]:
    return [h["item"]["id"] for h in json.loads(search_json)]


def _quiet(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def built_cube(tmp_path_factory, minilm):
    """A cube made with `memos init` and `memos add` (built once; tests get their own copy)."""
    d = str(tmp_path_factory.mktemp("cli") / "cube")
    rc, out, _ = _quiet("init", d, "--name", "notes")
    assert rc == 0 and out.startswith("created cube ")
    ids = {}
    for key, text, extra in [
        ("lisbon", "Ann lives in Lisbon and works as a nurse", ["--user", "ann", "--tag", "home"]),
        ("ramen", "Bob's favourite food is ramen", ["--user", "bob", "--kind", "preference"]),
        ("cat", "Ann has a cat called Pixel", ["--user", "ann", "--event-time", "2023-05-08T13:56:00Z"]),
    ]:
        rc, out, err = _quiet("add", d, text, *extra)
        assert rc == 0, err
        ids[key] = out.strip()
        assert len(ids[key]) == 32
    return d, ids


@pytest.fixture
def cli_cube(built_cube, tmp_path):
    src, ids = built_cube
    d = tmp_path / "cube"
    shutil.copytree(src, d)
    return str(d), ids


def test_init_add_search_show(cli_cube, capsys) -> None:
    d, ids = cli_cube
    rc, out, _ = run(capsys, "search", d, "Which city does Ann live in?", "--user", "ann", "--json")
    assert rc == 0
    hits = json.loads(out)
    assert hits[0]["item"]["id"] == ids["lisbon"]
    assert {h["item"]["id"] for h in hits} <= {ids["lisbon"], ids["cat"]}  # bob's memory never shows for ann
    assert hits[0]["score"] > 0 and set(hits[0]["ranks"]) <= {"dense", "lexical"} and hits[0]["retrievers"]
    rc, out, _ = run(capsys, "search", d, "ramen", "-k", "1", "--mode", "lexical")
    assert rc == 0 and "Bob's favourite food is ramen" in out and f"id={ids['ramen']}" in out
    assert "lexical#1" in out and len(out.strip().splitlines()) == 1
    rc, out, _ = run(capsys, "search", d, "zzqx", "--mode", "lexical")
    assert rc == 0 and out.strip() == "(no results)"
    rc, out, _ = run(capsys, "show", d, ids["cat"])
    shown = json.loads(out)
    assert shown["content"] == "Ann has a cat called Pixel" and shown["version"] == 1
    assert shown["scope"]["user_id"] == "ann" and shown["event_time"].startswith("2023-05-08T13:56")
    rc, out, _ = run(capsys, "show", d, ids["ramen"])
    assert json.loads(out)["kind"] == "preference"
    rc, out, _ = run(capsys, "show", d, ids["lisbon"])
    assert json.loads(out)["tags"] == ["home"]


def test_history_and_rollback(cli_cube, capsys, minilm) -> None:
    d, ids = cli_cube
    with MemCube(d, embedder=minilm) as cube:
        cube.update(ids["lisbon"], "Ann lives in Porto and works as a nurse", reason="moved")
    rc, out, _ = run(capsys, "rollback", d, ids["lisbon"], "1", "--reason", "wrong city")
    assert rc == 0 and "is now v3" in out and "Lisbon" in out
    rc, out, _ = run(capsys, "history", d, ids["lisbon"])
    lines = out.strip().splitlines()
    assert [ln.split()[0] for ln in lines[:3]] == ["v1", "v2", "v3"]
    assert "(moved)" in lines[1] and "Porto" in lines[1]
    assert "(wrong city)" in lines[2] and "Lisbon" in lines[2]
    assert lines[3].startswith("state ∅ -> activated")
    rc, out, _ = run(capsys, "show", d, ids["lisbon"])
    assert json.loads(out)["version"] == 3 and "Lisbon" in json.loads(out)["content"]


def test_reindex_rebuilds_the_index(cli_cube, capsys) -> None:
    d, ids = cli_cube
    queries = ["Which city does Ann live in?", "pets", "what food does Bob like"]
    before = [run(capsys, "search", d, q, "--json")[1] for q in queries]
    shutil.rmtree(Path(d) / "chroma")
    rc, out, _ = run(capsys, "reindex", d, "--quiet")
    assert rc == 0 and json.loads(out.strip().splitlines()[-1]) == {"indexed": 3}
    assert (Path(d) / "chroma").is_dir()
    after = [run(capsys, "search", d, q, "--json")[1] for q in queries]
    assert [_ids(x) for x in after] == [_ids(x) for x in before]
    for b, a in zip(before, after):
        assert [round(h["score"], 6) for h in json.loads(a)] == [round(h["score"], 6) for h in json.loads(b)]


@pytest.mark.parametrize(
    "argv",
    [
        ["init", "{d}"],                                   # already a cube there
        ["add", "{missing}", "text"],                      # no cube
        ["add", "{d}", "   "],                            # empty content
        ["add", "{d}", "x", "--kind", "rumour"],
        ["add", "{d}", "x", "--event-time", "soonish"],
        ["search", "{d}", ""],
        ["search", "{d}", "x", "-k", "0"],
        ["show", "{d}", "no-such-id"],
        ["history", "{d}", "no-such-id"],
        ["rollback", "{d}", "{lisbon}", "9"],
        ["rollback", "{d}", "no-such-id", "1"],
        ["reindex", "{missing}"],
        ["bench", "retrieval", "{missing}.json", "--json"],
    ],
)
def test_errors_exit_2_with_one_line(cli_cube, capsys, tmp_path, argv) -> None:
    d, ids = cli_cube
    argv = [a.format(d=d, missing=str(tmp_path / "absent"), lisbon=ids["lisbon"]) for a in argv]
    with MemCube(d) as cube:
        count = cube.count(include_deleted=True)
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) > len("error: ") + 5
    assert out == ""
    with MemCube(d) as cube:
        assert cube.count(include_deleted=True) == count  # nothing half-written
        assert cube.get(ids["lisbon"]).version == 1
    assert not (tmp_path / "absent").exists()


def test_usage_errors_exit_2(capsys) -> None:
    for argv in ([], ["search"], ["frobnicate"], ["rollback", "d", "id", "notanumber"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        capsys.readouterr()


def test_installed_console_script(cli_cube, capsys) -> None:
    d, ids = cli_cube
    exe = shutil.which("memos", path=str(Path(sys.executable).parent)) or shutil.which("memos")
    assert exe, "the memos console script is not installed"
    proc = subprocess.run([exe, "search", d, "Which city does Ann live in?", "--user", "ann", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["item"]["id"] == ids["lisbon"]
    proc = subprocess.run([exe, "show", d, "no-such-id"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


# ---------------------------------------------------------------------------------------------- issue 13 part 4
def test_init_on_an_existing_regular_file_is_one_line_error(tmp_path, capsys) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for target in (f, f / "cube"):
        rc, out, err = run(capsys, "init", str(target))
        assert rc == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert f.read_text() == "mine"


@pytest.mark.parametrize("how", ["--as", "env"])
@pytest.mark.parametrize("principal", ["", " ", "bad principal", "a/b"])
def test_empty_or_malformed_principal_is_refused(cli_cube, capsys, monkeypatch, how, principal) -> None:
    d, ids = cli_cube
    if how == "--as":
        argv = ["--as", principal, "show", d, ids["lisbon"]]
    else:
        monkeypatch.setenv("MEMOS_PRINCIPAL", principal)
        argv = ["show", d, ids["lisbon"]]
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == "" and err.startswith("error: ") and "principal" in err.lower()
    # never a fallback to the owner `local`: the same refusal for commands that write
    rc, out, err = run(capsys, *argv[:-3], "add", d, "written by nobody")
    assert rc == 2 and out == ""
    with MemCube(d) as cube:
        assert cube.count() == 3


def test_audit_log_limit_must_not_be_negative(cli_cube, capsys) -> None:
    d, _ = cli_cube
    for bad in ("-5", "-1", "two", "1.5"):
        with pytest.raises(SystemExit) as info:
            main(["audit", "log", d, "--limit", bad])
        assert info.value.code == 2
        assert "--limit" in capsys.readouterr().err
    rc, out, _ = run(capsys, "audit", "log", d, "--limit", "2", "--json")
    assert rc == 0 and len(json.loads(out)) == 2
    rc, out, _ = run(capsys, "audit", "log", d, "--limit", "0", "--json")
    assert rc == 0 and json.loads(out) == []


def _bundle(d: str, tmp_path: Path, capsys) -> Path:
    f = tmp_path / "cube.tar.gz"
    rc, _, err = run(capsys, "export", d, str(f))
    assert rc == 0, err
    return f


def test_import_is_owned_by_the_importing_principal(cli_cube, capsys, tmp_path) -> None:
    d, ids = cli_cube
    f = _bundle(d, tmp_path, capsys)
    rc, out, err = run(capsys, "--as", "ann", "import", str(f), str(tmp_path / "copy"))
    assert rc == 0, err
    with MemCube(tmp_path / "copy", actor="ann") as copy:
        assert copy.governance.role_of("ann").value == "owner"
        assert copy.governance.role_of("local") is None
        assert copy.get(ids["lisbon"]).content.startswith("Ann lives in Lisbon")
        assert [e["actor"] for e in copy.events()][-1] == "ann"  # the import record names who imported
    rc, _, err = run(capsys, "show", str(tmp_path / "copy"), ids["lisbon"])  # as local: no role on the copy
    assert rc == 2 and err.startswith("error: ")
    rc, _, err = run(capsys, "--as", "bad principal", "import", str(f), str(tmp_path / "copy2"))
    assert rc == 2 and not (tmp_path / "copy2").exists()


_KILLED_IMPORT = r"""
import sys, time
from pathlib import Path
from memos_core.bundle import import_bundle

def embed(texts):
    Path(sys.argv[3]).write_text("building")  # the staging folder exists by now: the cube is being created in it
    time.sleep(600)

import_bundle(sys.argv[1], sys.argv[2], embedder=embed)
"""


def _staging(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".importing-" in p.name)


def test_killed_import_leaves_nothing_for_long(cli_cube, capsys, tmp_path) -> None:
    """`kill -9` during an import leaves its hidden staging folder; the next import into the same folder (or
    the next open of the cube) removes it, and never the folder of an import that is still running."""
    import os
    import signal
    import time

    d, ids = cli_cube
    f = _bundle(d, tmp_path, capsys)
    parent = tmp_path / "cubes"
    parent.mkdir()
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", _KILLED_IMPORT, str(f), str(parent / "copy"), str(ready)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not ready.exists():
            assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
            assert time.monotonic() < deadline, "the child import never reached its embedder"
            time.sleep(0.05)
        running = _staging(parent)
        assert len(running) == 1 and running[0].startswith(".copy.importing-")
        # another import into the same parent folder while it runs leaves the running import's folder alone
        rc, _, err = run(capsys, "import", str(f), str(parent / "other"))
        assert rc == 0, err
        assert _staging(parent) == running
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        if child.stderr:
            child.stderr.close()
    assert _staging(parent) == running  # what a killed import leaves behind
    rc, _, err = run(capsys, "import", str(f), str(parent / "copy"))  # the next import cleans it up
    assert rc == 0, err
    assert _staging(parent) == []
    with MemCube(parent / "copy") as copy:
        assert copy.get(ids["lisbon"]).version == 1


def test_stale_staging_folders_are_removed_on_open(cli_cube, tmp_path) -> None:
    import os
    import time

    from memos_core import bundle

    d, _ = cli_cube
    parent = Path(d).parent
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    here = bundle._host_tag()
    name = Path(d).name
    folders = {
        "dead": parent / f".{name}.importing-{here}-{int(dead.stdout)}-abc",  # its process is gone: stale
        "alive": parent / f".{name}.importing-{here}-{os.getpid()}-def",  # this process: an import in progress
        "foreign old": parent / f".{name}.importing-00000000-1-ghi",  # another host, untouched for two days
        "foreign new": parent / f".{name}.importing-00000000-2-jkl",  # another host, recent: maybe running
        "old format": parent / f".{name}.importing-mno",  # an older MemOS, untouched for two days
        "other cube": parent / f".sibling.importing-{here}-{int(dead.stdout)}-pqr",  # not this cube's
    }
    for p in folders.values():
        (p / "chroma").mkdir(parents=True)
        (p / "records.sqlite3").write_text("partial")
    two_days_ago = time.time() - 2 * 86400
    for key in ("foreign old", "old format"):
        os.utime(folders[key], (two_days_ago, two_days_ago))
    MemCube(d).close()
    left = {k for k, p in folders.items() if p.exists()}
    assert left == {"alive", "foreign new", "other cube"}


# ---------------------------------------------------------------------------------------------- issue 18 (first hour)
@pytest.mark.parametrize("place", ["postgresq://memos@db/memos?cube=x", "postgresql:/memos@db/memos?cube=x"])
def test_mistyped_store_url_is_one_line_error(tmp_path, capsys, monkeypatch, place) -> None:
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "init", place)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and "not a store URL" in err and err.strip().count("\n") == 0
    assert list(tmp_path.iterdir()) == []  # no local folder named after the URL


def test_closed_pipe_is_not_a_traceback(cli_cube) -> None:
    """`memos access DIR | head -0`: the reader is gone before the command prints; no traceback, exit 1."""
    d, _ = cli_cube
    proc = subprocess.Popen([sys.executable, "-m", "memos_core.cli", "access", d], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has even started: every write of the command fails
    _, err = proc.communicate(timeout=300)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()[-2000:]
    assert proc.returncode == 1
