"""The cached memory prefix ends at a token boundary the tokenizer agrees with (issue 17, item 4).

Tokenizers of four styles are trained here on a few KB of text with the ``tokenizers`` library: GPT-2
byte-level BPE, Llama-3 and Qwen2 byte-level BPE (their pre-tokenizer regexes join punctuation with the
newlines after it, so ``"):" + "\\n"`` is one token ``"):\\n"``) and SentencePiece-style BPE (Metaspace). For
each, a prompt with memories is answered through a KV cache and compared with a prefill of the *normally*
tokenized prompt (``tokenizer(rendered text)``, what ``apply_chat_template(tokenize=True)`` gives).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from memos_core.activation import LocalLLM, SamplingParams, build_cache, generate, render_layout  # noqa: E402
from memos_core.activation.testing import CHATML_TEMPLATE, tiny_config  # noqa: E402
from memos_core.items import MemoryItem  # noqa: E402

GREEDY = SamplingParams(max_new_tokens=8, ignore_eos=True)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FACTS = [
    "Ann's phone numbers (work and home):",
    "Call Bob back (urgent)!",
    "The demo moved to Thursday at 14:30 (room 4).",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Who should I call?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "When is the demo?"}],
    [{"role": "system", "content": "\nBe terse.)"}, {"role": "user", "content": "(What about Ann?)"}],
]
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _corpus() -> list[str]:
    memo = "Relevant memories (use them when they help answer):" + "".join(f"\n- {f}" for f in FACTS)
    lines = [
        memo,
        memo + "\n\nAnswer briefly.",
        "def f(x):\n    return g(x)\n\nclass A(B):\n    pass\n",
        "Note (see below):\n- first item.\n- second item!\n- third (last):\n",
        "Who should I call? When is the demo? What about Ann? Be terse.",
        "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 10 2024",
    ]
    return lines * 20


def _tokenizer(style: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if style == "sentencepiece":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>"] + SPECIALS, show_progress=False)
    else:
        tok = Tokenizer(models.BPE())
        if style == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            regex = QWEN2_REGEX if style == "qwen2" else LLAMA3_REGEX
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>" if style == "sentencepiece" else None)
    fast.chat_template = CHATML_TEMPLATE
    return fast


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module", params=["gpt2", "llama3", "qwen2", "sentencepiece"])
def world(request, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = _tokenizer(request.param)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("qwen2", len(tok)), dtype=torch.float32)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return request.param, AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _normal_ids(tok, conv):
    """The prompt as transformers would tokenize it: memory block in the system message, whole text at once."""
    user_system = conv[0]["content"] if conv[0]["role"] == "system" else None
    rest = conv[1:] if user_system is not None else conv
    block = "Relevant memories (use them when they help answer):" + "".join(f"\n- {f}" for f in FACTS)
    system = block + ("\n\n" + user_system if user_system else "")
    return tok.apply_chat_template([{"role": "system", "content": system}] + rest, tokenize=True,
                                   add_generation_prompt=True, return_dict=False)


def test_the_boundary_is_where_the_tokenizer_puts_it(world):
    style, model, tok = world
    if style == "qwen2":  # the case of the issue: the merged token exists in this vocabulary
        assert len(tok("):\n", add_special_tokens=False)["input_ids"]) == 1
    for conv in CONVERSATIONS:
        layout = render_layout(tok, conv, FACTS)
        normal = list(_normal_ids(tok, conv))
        assert layout.input_ids == normal == tok(layout.text, add_special_tokens=False)["input_ids"]
        # the cached part is decided by the memory text (and system prompt) alone, whatever the question
        other = conv[:-1] + [{"role": "user", "content": ")\n" + conv[-1]["content"][::-1]}]
        assert render_layout(tok, other, FACTS).prefix == layout.prefix


def test_injected_output_equals_prefill_of_the_normally_tokenized_prompt(world, tmp_path):
    style, model, tok = world
    items = [MemoryItem(content=f) for f in FACTS]
    llm = LocalLLM(model, tok, store=tmp_path / "kv", memory_order="given")
    for conv in CONVERSATIONS:
        ids = list(_normal_ids(tok, conv))
        ref = generate(model, tok, ids, None, GREEDY, keep_first_logits=True)
        cache, layout, _ = llm.cache_for(conv, items)
        assert ids[: len(cache)] == cache.token_ids and len(cache) > 0.8 * len(layout.prefix)
        res = generate(model, tok, ids, cache, GREEDY, keep_first_logits=True)
        assert res.token_ids == ref.token_ids and res.cached_tokens == len(cache)
        assert (ref.first_logits - res.first_logits).abs().max().item() < 1e-4
        out = llm.chat(conv, memories=items, max_new_tokens=8, ignore_eos=True)
        assert out.token_ids == ref.token_ids and out.cached_tokens > 0
    # build_cache's cache (built for a placeholder question) serves a real question exactly as well
    cache = build_cache(model, tok, items)
    ids = list(_normal_ids(tok, CONVERSATIONS[0]))
    assert ids[: len(cache)] == cache.token_ids
    res = generate(model, tok, ids, cache, GREEDY, keep_first_logits=True)
    ref = generate(model, tok, ids, None, GREEDY, keep_first_logits=True)
    assert res.token_ids == ref.token_ids and (ref.first_logits - res.first_logits).abs().max().item() < 1e-4
