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
