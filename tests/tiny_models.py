"""Tiny causal language models for tests, built offline and loaded the way users load real checkpoints.

Nothing here downloads anything. A byte-level BPE tokenizer is trained on a small corpus in memory (so it can
encode any text), a model is built from a config with a few layers and a small hidden size, both are written
with ``save_pretrained`` into a folder, and tests load them back with ``AutoTokenizer.from_pretrained`` /
``AutoModelForCausalLM.from_pretrained`` -- the same code path a user runs against a hub checkpoint.

Typical use in a test::

    path = save_tiny_model(tmp_path / "tiny", arch="llama", seed=0)
    model, tokenizer = load_tiny_model(path)

``arch`` is ``"llama"`` or ``"qwen2"``. Models are float32 and in eval mode after loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

__all__ = ["DEFAULT_CORPUS", "build_tokenizer", "build_model", "save_tiny_model", "load_tiny_model"]

DEFAULT_CORPUS: list[str] = [
    "The quick brown fox jumps over the lazy dog.",
    "Ann lives in Lisbon and works as a nurse at the city hospital.",
    "Bob's favourite food is ramen; he eats it every Friday evening.",
    "Question: Where does Ann live? Answer: Ann lives in Lisbon.",
    "Remember that the meeting with the design team moved to Thursday at 3 pm.",
    "My sister Carla has a cat called Pixel and a dog called Rex.",
    "The project deadline is the 14th of March, 2024.",
    "I am allergic to peanuts and prefer vegetarian restaurants.",
    "Dr. Okafor recommended running three times a week.",
    "The password manager is set up on the laptop, not on the phone.",
    "What do you know about the user? The user likes hiking in the Alps.",
    "As far as I recall, the train to Porto leaves at 08:15 from platform 4.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 2023 2024 2025 January February March April May June July",
    "August September October November December Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
]

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def build_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 600) -> Any:
    """Train a byte-level BPE tokenizer on ``corpus`` (plus :data:`DEFAULT_CORPUS`) and wrap it for transformers.

    Byte-level means every string is encodable (no unknown tokens). Training is deterministic for a given corpus.
    Like Llama tokenizers, encodings start with ``<s>`` (id 0) when ``add_special_tokens`` is true. Returns a ``PreTrainedTokenizerFast`` with ``<s>``, ``</s>``, ``<pad>`` and ``<unk>`` special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(DEFAULT_CORPUS) + list(corpus or [])
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Like Llama tokenizers: every encoding starts with <s>.
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_model(
    arch: str = "llama",
    *,
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    seed: int = 0,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    **overrides: Any,
) -> Any:
    """A randomly initialised causal LM of the given architecture (float32, eval mode), seeded with ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    if arch == "llama":
        config = LlamaConfig(**common)
    elif arch == "qwen2":
        config = Qwen2Config(**common)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}; use 'llama' or 'qwen2'")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def save_tiny_model(
    path: str | Path,
    arch: str = "llama",
    *,
    seed: int = 0,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 600,
    **model_kwargs: Any,
) -> Path:
    """Build a tokenizer and a tiny model and ``save_pretrained`` both into ``path``. Returns the folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus, vocab_size=vocab_size)
    model = build_model(
        arch,
        vocab_size=len(tokenizer),
        seed=seed,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **model_kwargs,
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_tiny_model(path: str | Path) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a folder with the user-facing ``from_pretrained`` entry points."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval(), tokenizer
