"""Parametric memory: LoRA adapters trained from plaintext memories, stored in the cube, switched at run time.

Stable, often-used knowledge can move from plaintext into weights as a small adapter (the MemOS paper's
"Mem-training"). This package:

* builds a training set from chosen memories (statements + templated question/answer and paraphrase forms, or
  LLM-written variants from any ``prompt -> str`` callable) and trains a LoRA adapter with peft
  (:meth:`AdapterManager.train`, :func:`train_adapter`);
* stores it as safetensors + JSON with the base-model fingerprint, the source memory versions, hyperparameters,
  the loss curve and a recall probe (:class:`AdapterStore`, :class:`AdapterRecord`);
* loads / unloads / switches / combines adapters on one base model, refusing another base model
  (:class:`BaseModelMismatch`) and stale adapters (:class:`StaleAdapter`) (:class:`AdapterManager`);
* measures recall: log-likelihood of each fact on held-out phrasings, before and after (:func:`recall_probe`).

Importing this package does not import torch, transformers or peft; they are imported when a model is touched
(install the ``lora`` extra).

Quick start::

    from memos_core.parametric import AdapterManager, TrainingConfig

    manager = AdapterManager(model, tokenizer, store=cube.path / "parametric", lookup=cube.lookup)
    record = manager.train(memories, "user-facts", config=TrainingConfig(max_steps=100))
    print(record.evaluation.gain)          # > 0: facts more likely on held-out phrasings
    manager.model.generate(...)             # runs with the adapter
    manager.deactivate()                    # exactly the base model again
"""

from __future__ import annotations

from .dataset import Example, probe_examples, split_statement, training_examples
from .errors import BaseModelMismatch, StaleAdapter
from .fingerprint import ModelFingerprint, fingerprint_differences, model_fingerprint
from .manager import AdapterManager, train_adapter
from .probe import complete_report, recall_probe
from .schema import (
    ADAPTER_FORMAT,
    AdapterRecord,
    Combination,
    ItemRecall,
    RecallReport,
    TrainingConfig,
    TrainingSummary,
)
from .store import AdapterStore
from .training import default_target_modules

__all__ = [
    "ADAPTER_FORMAT",
    "AdapterManager",
    "AdapterRecord",
    "AdapterStore",
    "BaseModelMismatch",
    "Combination",
    "Example",
    "ItemRecall",
    "ModelFingerprint",
    "RecallReport",
    "StaleAdapter",
    "TrainingConfig",
    "TrainingSummary",
    "complete_report",
    "default_target_modules",
    "fingerprint_differences",
    "model_fingerprint",
    "probe_examples",
    "recall_probe",
    "split_statement",
    "train_adapter",
    "training_examples",
]
