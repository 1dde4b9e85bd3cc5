"""Tiny, offline causal LMs for tests, examples and benchmarks (no download).

:func:`tiny_tokenizer` trains a byte-level BPE tokenizer on a built-in corpus (well under a second) and gives
it a real chat template; :func:`save_tiny_model` saves a randomly initialised Llama- or Qwen2-family model
with that tokenizer into a folder, so that it can be loaded back with the same
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` calls users make with real
checkpoints. The two families use different chat templates (Llama-3 headers vs ChatML) and different RoPE
settings (Llama: ``llama3`` frequency scaling; Qwen2: default RoPE, tied embeddings, QKV bias).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

__all__ = ["tiny_tokenizer", "tiny_config", "save_tiny_model", "CHATML_TEMPLATE", "LLAMA3_TEMPLATE", "CORPUS"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CORPUS = [
    "Ann moved to Lisbon in May 2023 and works as a marine biologist.",
    "Bob prefers green tea over coffee and runs every Sunday morning.",
    "The project deadline is the fifteenth of March; the demo is on Friday.",
    "Carla's daughter is allergic to peanuts, so the party food must be nut free.",
    "Remember that the user likes short answers with concrete numbers.",
    "Relevant memories (use them when they help answer):",
    "What did Ann study at university? Where does Bob run on Sundays?",
    "You are a helpful assistant. Answer the question using the memories.",
    "The meeting was moved from Tuesday at 10:00 to Thursday at 14:30.",
    "Dan has two cats named Miso and Tofu and a vegetable garden.",
    "0 1 2 3 4 5 6 7 8 9 10 100 2024 - : , . ; ! ? ( ) ' \" / \n",
]

_SPECIALS = {
    "chatml": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}


def tiny_tokenizer(style: Literal["chatml", "llama3"] = "chatml", vocab_size: int = 512) -> Any:
    """A trained byte-level BPE tokenizer (a transformers fast tokenizer) with a ChatML or Llama-3 template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = _SPECIALS[style]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if style == "chatml":
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
        fast.chat_template = CHATML_TEMPLATE
    else:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|end_of_text|>"
        )
        fast.chat_template = LLAMA3_TEMPLATE
    return fast


def tiny_config(
    family: Literal["llama", "qwen2"],
    vocab_size: int,
    *,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_positions: int = 8192,
    initializer_range: float = 0.2,
    **extra: Any,
) -> Any:
    """A small config of the given family. ``initializer_range`` is large so that random logits are well
    separated (greedy decoding is then not decided by float noise)."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        initializer_range=initializer_range,
    )
    common.update(extra)
    if family == "llama":
        common.setdefault(
            "rope_parameters",
            {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
             "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
        )
        return LlamaConfig(tie_word_embeddings=False, **common)
    if family == "qwen2":
        return Qwen2Config(tie_word_embeddings=True, use_sliding_window=False, **common)
    raise ValueError(f"unknown family {family!r}")


def save_tiny_model(folder: str | Path, family: Literal["llama", "qwen2"] = "qwen2", *, seed: int = 0, **config: Any) -> Path:
    """Save a random tiny model of ``family`` and its tokenizer into ``folder``; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tok = tiny_tokenizer("llama3" if family == "llama" else "chatml")
    cfg = tiny_config(family, len(tok), **config)
    cfg.eos_token_id = tok.eos_token_id
    cfg.bos_token_id = tok.bos_token_id
    cfg.pad_token_id = tok.pad_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
