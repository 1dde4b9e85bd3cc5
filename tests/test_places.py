"""A cube's place (folder path or store URL) is checked before anything is created (memos_core/places.py).

The mistakes a new user makes first: a path of the wrong type, an empty path, a store URL with a typo (which used
to become a local folder named after the URL, so the app ran on an empty local cube), a Chroma server URL given as
the place of the records. Each is a typed error saying what to pass, from the core and from every adapter, and no
folder is created.
"""

from __future__ import annotations

import pathlib

import pytest

from memos_core import MemCube, MemOS
from memos_core.errors import MemOSError, ValidationError
from memos_core.places import PlaceTypeError, check_place

TYPOS = ["postgresq://u@db/memos?cube=x", "postgresql:/u@db/memos?cube=x", "http://localhost:8000",
         "sqlite:///memos.db", "https://chroma:8000"]


@pytest.mark.parametrize("bad", [123, None, b"./x", "", "   ", 1.5, ["./x"]])
@pytest.mark.parametrize("opener", [MemCube, MemOS])
def test_wrong_type_or_empty_path_is_typed(tmp_path, monkeypatch, opener, bad):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PlaceTypeError) as ei:
        opener(bad)
    assert isinstance(ei.value, ValidationError) and isinstance(ei.value, TypeError)
    assert "folder" in str(ei.value) and "postgresql://" in str(ei.value)
    assert list(tmp_path.iterdir()) == []  # nothing created (an empty path used to be the current folder)


@pytest.mark.parametrize("url", TYPOS)
@pytest.mark.parametrize("opener", [MemCube, MemOS])
def test_url_that_is_not_a_store_url_is_refused(tmp_path, monkeypatch, opener, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValidationError) as ei:
        opener(url)
    msg = str(ei.value)
    assert "not a store URL" in msg and "postgresql://user@host/db?cube=NAME" in msg
    assert list(tmp_path.iterdir()) == []  # no folder named after the URL


def test_messages_name_the_likely_fix():
    with pytest.raises(ValidationError, match="two slashes"):
        check_place("postgresql:/u@db/memos?cube=x")
    with pytest.raises(ValidationError, match="index="):
        check_place("http://chroma:8000")


def test_folder_paths_still_open(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for ok in ("C:/data", "C:\\data", "./http:/x", "plain", pathlib.Path("p/q"), "postgresql://u@h/db?cube=x"):
        check_place(ok)  # a Windows drive, a folder spelled with ./, a Path, a real store URL
    cube = MemCube(pathlib.Path("cube"))
    try:
        cube.add("Ann lives in Lisbon", user_id="ann")
        assert cube.count() == 1
    finally:
        cube.close()
    with MemOS("./http:/x") as mem:  # a folder whose name starts with a scheme, given with ./
        assert mem.path == pathlib.Path("http:/x")
    assert (tmp_path / "http:" / "x").is_dir()


@pytest.mark.parametrize("url", TYPOS[:2])
def test_adapters_refuse_a_mistyped_url_when_built(tmp_path, monkeypatch, url):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from memos_langchain import MemOSRetriever, MemOSStore
    from memos_llamaindex import MemOSMemory, MemOSMemoryBlock
    from memos_llamaindex import MemOSRetriever as LIRetriever

    monkeypatch.chdir(tmp_path)
    builders = [lambda: MemOSRetriever(memory=url), lambda: MemOSStore(url), lambda: LIRetriever(url, user_id="a"),
                lambda: MemOSMemory.from_defaults(url, user_id="a"),
                lambda: MemOSMemoryBlock.from_defaults(url, user_id="a")]
    for build in builders:
        with pytest.raises(ValidationError, match="not a store URL"):
            build()
    assert list(tmp_path.iterdir()) == []


def test_llamaindex_from_defaults_follows_the_constructor_rule(tmp_path):
    pytest.importorskip("llama_index.core")
    from memos_llamaindex import MemOSMemory

    with pytest.raises(PlaceTypeError):
        MemOSMemory.from_defaults(123, user_id="ann")  # was a bare TypeError from pathlib
    mem = MemOS(tmp_path / "m")
    try:
        memory = MemOSMemory.from_defaults(mem, user_id="ann")  # a MemOS works as in every adapter class
        assert memory.memos is mem
        assert MemOSMemory.from_defaults(mem.for_user("bob")).user_id == "bob"
        with pytest.raises(MemOSError, match="already configured"):
            MemOSMemory.from_defaults(mem, user_id="ann", principal="bob")
    finally:
        mem.close()
