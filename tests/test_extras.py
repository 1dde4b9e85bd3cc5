"""A missing optional dependency is a MissingExtra naming the pip extra (memos_core/extras.py), not a bare
ModuleNotFoundError from deep inside a call. Each case runs in a fresh interpreter where one package cannot be
imported (a meta-path finder raises ModuleNotFoundError for it, as Python does for an absent package)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from memos_core.errors import MemOSError, MissingExtra
from memos_core.extras import missing_extra, require

BLOCK = textwrap.dedent("""
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == {mod!r} or name.startswith({mod!r} + "."):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Block())
    from memos_core.errors import MissingExtra
    try:
    {code}
    except MissingExtra as exc:
        assert isinstance(exc, ImportError), type(exc).__mro__
        print("MISSING-EXTRA:", exc)
    else:
        print("NO ERROR")
""")

CASES = [
    ("langgraph", "from memos_langchain import MemOSStore", "[langchain]"),
    ("langchain_core", "from memos_langchain import MemOSRetriever", "[langchain]"),
    ("llama_index", "from memos_llamaindex import MemOSMemory", "[llamaindex]"),
    ("transformers", "from memos_core.activation import LocalLLM; LocalLLM.from_pretrained('./no-model')", "[kv]"),
    ("peft", "from memos_core.parametric import AdapterManager; AdapterManager(object(), object())", "[lora]"),
]


@pytest.mark.parametrize("mod,code,extra", CASES, ids=[c[0] for c in CASES])
def test_missing_extra_names_the_pip_extra(tmp_path, mod, code, extra):
    script = BLOCK.format(mod=mod, code=textwrap.indent(code, " " * 8))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("MISSING-EXTRA:"), r.stdout + r.stderr[-2000:]
    assert f'pip install "memos-langchain-llamaindex{extra}"' in line and repr(mod) in line


def test_require_and_missing_extra():
    assert require("json", "x").dumps([]) == "[]"
    with pytest.raises(ModuleNotFoundError) as ei:  # not an optional dependency: unchanged
        require("no_such_module_memos_test", "x")
    assert not isinstance(ei.value, MemOSError)
    exc = ModuleNotFoundError("No module named 'peft'", name="peft")
    err = missing_extra(exc, "train")
    assert isinstance(err, MissingExtra) and isinstance(err, ImportError) and "[lora]" in str(err)
    assert missing_extra(ImportError("broken install", name="peft"), "train") is None  # only an absent package
