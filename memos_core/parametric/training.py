"""The LoRA training loop and per-architecture defaults. torch is imported inside functions only.

The loop is deliberately small: AdamW on the new adapter's LoRA matrices only, linear warm-up then linear decay,
gradient clipping, a fixed example order drawn from ``random.Random(seed)``, loss on target tokens only (the
fact, never the framing prompt). It stops at ``max_steps`` or ``max_seconds``, whichever comes first.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any, Sequence

from .dataset import Example
from .probe import _model_device, _pad_id, encode_example
from .schema import TrainingConfig

__all__ = ["default_target_modules", "resolve_target_modules", "train_loop"]

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: model_type -> module names adapted by default (attention + MLP: facts live largely in the MLPs).
DEFAULT_TARGETS: dict[str, list[str]] = {
    **{
        t: _LLAMA_LIKE
        for t in (
            "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2",
            "granite", "smollm3", "cohere", "helium", "glm", "ministral", "exaone4", "seed_oss",
        )
    },
    "mixtral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2_moe": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen3_moe": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "phi": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "gpt_bigcode": ["c_attn", "c_proj", "c_fc"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "starcoder2": ["q_proj", "k_proj", "v_proj", "o_proj", "c_fc", "c_proj"],
}


def default_target_modules(model: Any) -> list[str] | str:
    """Module names to adapt on ``model`` by default.

    Known architectures get their attention and MLP projections (:data:`DEFAULT_TARGETS`), restricted to the
    names that actually exist in the model; anything else gets peft's ``"all-linear"`` (every linear layer except
    the output head).
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", "") or "")
    wanted = DEFAULT_TARGETS.get(model_type)
    if not wanted:
        return "all-linear"
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    present = [w for w in wanted if w in leaves]
    return present or "all-linear"


def resolve_target_modules(model: Any, cfg: TrainingConfig) -> list[str] | str:
    """The target modules a config resolves to on ``model`` (explicit names are checked to exist)."""
    from ..errors import ValidationError

    if cfg.target_modules is None:
        return default_target_modules(model)
    if cfg.target_modules == "all-linear":
        return "all-linear"
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in leaves]
    if missing:
        raise ValidationError(
            f"target_modules {missing} do not exist in {type(model).__name__}; "
            f"leave target_modules=None for the default of this architecture"
        )
    return list(cfg.target_modules)


def train_loop(
    model: Any, tokenizer: Any, examples: Sequence[Example], cfg: TrainingConfig, *, desc: str = "training"
) -> dict[str, Any]:
    """Train the parameters of ``model`` that have ``requires_grad`` on ``examples``.

    Returns ``{"steps", "stopped_by", "seconds", "tokens_trained", "loss_curve"}``. The caller sets up which
    parameters are trainable and seeds/forks the RNG; this function draws its example order from
    ``random.Random(cfg.seed)``.
    """
    import torch
    from tqdm.auto import tqdm

    from ..errors import ValidationError

    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValidationError("nothing to train: the model has no trainable parameters")
    encoded = [
        encode_example(tokenizer, ex.prompt, ex.target, max_length=cfg.max_length, add_eos=True) for ex in examples
    ]
    encoded = [(ids, mask) for ids, mask in encoded if any(mask[1:])]
    if not encoded:
        raise ValidationError("no training example has a target token within max_length")
    device = _model_device(model)
    pad = _pad_id(tokenizer)
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.max_steps * cfg.warmup_ratio)

    def lr_factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        remaining = max(cfg.max_steps - warmup, 1)
        return max(0.0, 1.0 - (step - warmup) / remaining) * 0.9 + 0.1

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    order: list[int] = []
    losses: list[float] = []
    tokens = 0
    stopped_by = "max_steps"
    was_training = model.training
    model.train()
    started = time.perf_counter()
    from ..log import progress_enabled

    bar = tqdm(total=cfg.max_steps, desc=desc, disable=not progress_enabled(cfg.progress), leave=False)
    try:
        for step in range(cfg.max_steps):
            if cfg.max_seconds is not None and time.perf_counter() - started >= cfg.max_seconds:
                stopped_by = "max_seconds"
                break
            batch = []
            while len(batch) < min(cfg.batch_size, len(encoded)):
                if not order:
                    order = list(range(len(encoded)))
                    rng.shuffle(order)
                batch.append(encoded[order.pop()])
            width = max(len(ids) for ids, _ in batch)
            ids_t = torch.full((len(batch), width), pad, dtype=torch.long)
            att = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, (ids, mask) in enumerate(batch):
                t = torch.tensor(ids)
                ids_t[row, : len(ids)] = t
                att[row, : len(ids)] = 1
                m = torch.tensor(mask)
                labels[row, : len(ids)] = torch.where(m, t, torch.full_like(t, -100))
            labels[:, 0] = -100
            out = model(input_ids=ids_t.to(device), attention_mask=att.to(device), labels=labels.to(device))
            loss = out.loss
            if not torch.isfinite(loss):
                raise ValidationError(
                    f"training diverged at step {step} (loss {float(loss)}); lower learning_rate"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            losses.append(round(value, 6) if math.isfinite(value) else value)
            tokens += int((labels[:, 1:] != -100).sum())
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    return {
        "steps": len(losses),
        "stopped_by": stopped_by,
        "seconds": time.perf_counter() - started,
        "tokens_trained": tokens,
        "loss_curve": losses,
    }
