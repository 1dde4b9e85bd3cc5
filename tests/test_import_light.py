"""Importing the library loads no heavy dependency: torch, transformers, chromadb and the frameworks load only
when something needs them (a behaviour check in a fresh interpreter; timings belong to benchmarks)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

HEAVY = ("torch", "transformers", "sentence_transformers", "chromadb", "onnxruntime", "peft", "psycopg",
         "langchain", "langchain_core", "langgraph", "llama_index")


def _loaded_after(code: str) -> set[str]:
    """Top-level heavy packages in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = textwrap.dedent(code) + textwrap.dedent(f"""
        import json as _json, sys as _sys
        print(_json.dumps(sorted({{m.split('.')[0] for m in _sys.modules}} & set({list(HEAVY)!r}))))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_core_loads_nothing_heavy() -> None:
    assert _loaded_after("import memos_core\nfrom memos_core import MemOS, MemCube, RetrievalConfig") == set()


def test_core_conventions_load_no_framework(tmp_path) -> None:
    """A callable embedder and a callable chat model go through the core alone: no framework is imported to
    find out what they are."""
    loaded = _loaded_after(f"""
        from memos_core.embedding import resolve_embedder
        from memos_core.reader.llm import ChatModel
        emb = resolve_embedder(lambda texts: [[1.0, float(len(t))] for t in texts])
        assert emb.embed_documents(["abc"]).shape == (1, 2)
        assert ChatModel(lambda messages: "{{}}").kind == "callable"
    """)
    assert loaded == set()


def test_each_adapter_package_loads_only_its_own_framework() -> None:
    lc = _loaded_after("import memos_langchain")
    assert lc & {"torch", "transformers", "sentence_transformers", "chromadb", "llama_index"} == set()
    li = _loaded_after("import memos_llamaindex")
    assert li & {"torch", "transformers", "sentence_transformers", "chromadb", "langchain", "langchain_core"} == set()


def test_framework_conversions_load_on_first_use_only() -> None:
    loaded = _loaded_after("""
        import sys
        import memos_core
        from llama_index.core.embeddings import MockEmbedding
        assert "memos_llamaindex._convert" not in sys.modules
        from memos_core.embedding import resolve_embedder
        assert resolve_embedder(MockEmbedding(embed_dim=4)).embed_query("q").shape == (4,)
        assert "memos_llamaindex._convert" in sys.modules and "memos_langchain" not in sys.modules
    """)
    assert "llama_index" in loaded and not loaded & {"langchain", "langchain_core", "torch", "chromadb"}


def test_opening_a_cube_leaves_the_vector_index_closed_until_needed(tmp_path) -> None:
    """Open and a scoped search on a small cube never touch Chroma (exact scan of stored embeddings); the first
    search that needs the ANN index opens it and checks it against the records."""
    from conftest import TESTS_DIR, hashed_embed

    from memos_core.cube import MemCube

    with MemCube(tmp_path / "c", embedder=hashed_embed) as cube:
        cube.add_many([f"Ann note {i} about sailing" for i in range(5)], user_id="ann")
    loaded = _loaded_after(f"""
        import os, sys
        os.environ["MEMOS_PRELOAD"] = "0"
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from conftest import hashed_embed
        from memos_core.cube import MemCube
        assert "chromadb" not in sys.modules
        cube = MemCube({str(tmp_path / "c")!r}, embedder=hashed_embed, vector_sync="deferred")
        assert len(cube.search("sailing", user_id="ann", k=3)) == 3
        cube.add("Ann note 5 about sailing", user_id="ann")  # deferred: durable, the index not needed yet
        assert "chromadb" not in sys.modules
        assert len(cube.search("sailing", k=3, mode="dense")) == 3  # unscoped: the ANN index
        assert "chromadb" in sys.modules and cube.index.count() == 6
        cube.close()
    """)
    assert "chromadb" in loaded


def test_framework_conversions_load_no_adapter_classes() -> None:
    """The core's lazy conversion registry imports ``memos_langchain._convert`` / ``memos_llamaindex._convert``;
    the packages' ``__init__`` loads its classes on first access (PEP 562), so converting a framework embedder
    pulls in neither ``langchain.agents`` / ``langgraph`` nor any adapter module besides the conversions
    (``llama_index.core`` itself loads its own engines; that is the framework's share)."""
    probe = textwrap.dedent("""
        import json, sys
        from langchain_core.embeddings import FakeEmbeddings
        from llama_index.core.embeddings import MockEmbedding
        from memos_core.embedding import resolve_embedder
        assert resolve_embedder(FakeEmbeddings(size=4)).embed_query("q").shape == (4,)
        assert resolve_embedder(MockEmbedding(embed_dim=3)).embed_query("q").shape == (3,)
        converted = sorted(m for m in ("memos_langchain._convert", "memos_llamaindex._convert") if m in sys.modules)
        heavy = sorted(m for m in sys.modules if m == "langchain.agents" or m.split(".")[0] == "langgraph"
                       or m.split(".")[0] in ("memos_langchain", "memos_llamaindex") and "." in m
                       and m.split(".")[1] != "_convert")
        import memos_langchain, memos_llamaindex
        names = [n for pkg in (memos_langchain, memos_llamaindex) for n in pkg.__all__ if n not in dir(pkg)]
        print(json.dumps([converted, heavy, names]))
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    converted, heavy, missing_from_dir = json.loads(out.stdout.strip().splitlines()[-1])
    assert converted == ["memos_langchain._convert", "memos_llamaindex._convert"]
    assert heavy == []
    assert missing_from_dir == []


def test_adapter_packages_expose_every_public_name_on_access() -> None:
    loaded = _loaded_after("""
        import memos_langchain, memos_llamaindex
        from memos_langchain import *  # noqa: F403
        from memos_llamaindex import *  # noqa: F403
        for pkg in (memos_langchain, memos_llamaindex):
            for name in pkg.__all__:
                value = getattr(pkg, name)
                assert name == "DEFAULT_SCOPE_TEMPLATES" or value.__module__.startswith(pkg.__name__ + ".")
            try:
                pkg.no_such_name
            except AttributeError:
                pass
            else:
                raise AssertionError("unknown attribute did not raise")
        assert MemOSStore is memos_langchain.store.MemOSStore and MemOSMemory is memos_llamaindex.memory.MemOSMemory
    """)
    assert {"langchain_core", "llama_index"} <= loaded
