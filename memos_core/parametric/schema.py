"""The JSON-serialisable records of parametric memory: training settings, training summary, recall report and the
adapter record stored next to the weights (``memos_adapter.json``).

Everything here is pydantic v2 and torch-free. The on-disk format is versioned by :data:`ADAPTER_FORMAT`; a
reader refuses records with an unknown format rather than guessing.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..artifacts import SourceRef
from ..items import utcnow
from .fingerprint import ModelFingerprint

__all__ = [
    "ADAPTER_FORMAT",
    "TrainingConfig",
    "TrainingSummary",
    "ItemRecall",
    "RecallReport",
    "Combination",
    "AdapterRecord",
    "validate_adapter_name",
]

ADAPTER_FORMAT = "memos.parametric.adapter/1"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def validate_adapter_name(name: Any) -> str:
    """Adapter names: 1-64 characters, letters, digits, ``_`` and ``-``, starting with a letter or digit.

    They are folder names in the cube and module keys inside peft (which forbids dots). Names that are part of
    peft's parameter prefix ``lora_`` (such as ``"a"`` or ``"ora"``) are refused because peft would confuse them
    with its own parameters. Raises :class:`~memos_core.errors.ValidationError`.
    """
    from ..errors import ValidationError

    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValidationError(
            f"adapter name {name!r}: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"
        )
    if name in "lora_":
        raise ValidationError(f"adapter name {name!r} is part of peft's 'lora_' prefix; choose a longer name")
    return name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)


class TrainingConfig(_Model):
    """How an adapter is trained. Every field has a default meant for "a handful to a few hundred facts".

    The same config, seed, memories, base model and library versions give the same adapter on the same hardware
    (CPU runs are bit-for-bit repeatable; GPU kernels may differ in the last bits).
    """

    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r")
    alpha: float = Field(32.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout (0 keeps training deterministic and simple)")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="module names to adapt; None picks attention + MLP projections for the architecture "
        "(see memos_core.parametric.training.default_target_modules)",
    )
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    batch_size: int = Field(8, ge=1)
    max_steps: int = Field(200, ge=1, description="optimizer steps; training stops at whichever budget ends first")
    max_seconds: float | None = Field(None, gt=0, description="wall-clock budget for the training loop")
    max_length: int = Field(256, ge=8, description="examples longer than this many tokens are truncated")
    seed: int = 0
    paraphrases: bool = Field(True, description="add templated paraphrase and question/answer forms")
    generated_per_memory: int = Field(4, ge=0, description="variants to ask the generator callable for, per memory")
    probes_per_memory: int = Field(3, ge=1, le=4, description="held-out phrasings used by the recall probe")
    evaluate: bool = Field(True, description="run the recall probe before and after training")
    progress: bool | None = Field(None, description="show a tqdm progress bar (None: in a terminal, unless "
                                                  "MEMOS_PROGRESS=0)")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v or not all(isinstance(x, str) and x for x in v):
                raise ValueError("target_modules must be a non-empty list of module names, 'all-linear' or None")
            return sorted(set(v))
        return v


class TrainingSummary(_Model):
    """What happened during training."""

    steps: int
    stopped_by: Literal["max_steps", "max_seconds"]
    seconds: float
    examples: int
    examples_by_form: dict[str, int]
    tokens_trained: int = Field(description="target tokens seen, summed over all steps")
    loss_curve: list[float] = Field(description="training loss per optimizer step")
    final_loss: float
    target_modules: list[str] | Literal["all-linear"]
    trainable_parameters: int
    generator_used: bool = False
    generated_examples: int = 0


class ItemRecall(_Model):
    item_id: str
    version: int | None = None
    probes: int
    logprob_before: float = Field(description="mean per-token log-likelihood of the fact on held-out phrasings")
    logprob_after: float | None = None
    accuracy_before: float = Field(description="share of fact tokens that are the model's greedy choice")
    accuracy_after: float | None = None

    @property
    def gain(self) -> float | None:
        return None if self.logprob_after is None else self.logprob_after - self.logprob_before


class RecallReport(_Model):
    """Recall probe result: per memory and averaged. ``before`` is the bare base model (no adapter active);
    ``after`` is the model with the adapter (and only it) active.

    ``gain`` > 0 means the trained facts became more likely on phrasings never used in training. ``control_*``
    is the mean per-token log-likelihood of fixed generic sentences, to show collateral drift of the model's
    general language (a large drop means the adapter over-wrote more than the facts).
    """

    template_set: str
    probes_per_memory: int
    items: list[ItemRecall]
    mean_logprob_before: float
    mean_logprob_after: float | None = None
    gain: float | None = None
    mean_accuracy_before: float
    mean_accuracy_after: float | None = None
    control_logprob_before: float
    control_logprob_after: float | None = None


class Combination(_Model):
    """How a combined adapter was made from others (see :meth:`AdapterManager.combine`)."""

    method: Literal["cat", "linear", "svd"]
    adapters: list[str]
    weights: list[float]
    adapter_sha256: list[str | None]
    svd_rank: int | None = None


class AdapterRecord(_Model):
    """Everything stored about an adapter besides its weights. Written as ``memos_adapter.json``."""

    format: str = ADAPTER_FORMAT
    name: str
    created_at: datetime = Field(default_factory=utcnow)
    description: str | None = None
    base_model: ModelFingerprint
    base_model_name_or_path: str | None = None
    sources: list[SourceRef]
    hyperparameters: TrainingConfig | None = Field(None, description="None for combined adapters")
    lora: dict[str, Any] = Field(description="r, lora_alpha, target_modules of the stored adapter")
    training: TrainingSummary | None = None
    evaluation: RecallReport | None = None
    combination: Combination | None = None
    adapter_sha256: str | None = Field(None, description="sha256 of adapter_model.safetensors, set on save")
    versions: dict[str, str] = Field(default_factory=dict, description="peft / torch / transformers versions")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_adapter_name(v)

    @property
    def source_ids(self) -> list[str]:
        return [s.item_id for s in self.sources]
