"""Where memory sits in the prompt, token by token.

The memory block is placed at the very start of the conversation, inside the chat template's **system
message**. With memories ``m1 … mn`` and a conversation whose own system prompt is ``S`` (optional), the model
sees exactly what the tokenizer's chat template renders for::

    [{"role": "system", "content": PREAMBLE + "\\n- m1" + … + "\\n- mn" + ("\\n\\n" + S if S else "")},
     *the rest of the conversation*]

and the prompt's token ids are **the normal tokenization of that rendered text** (``tokenizer(text,
add_special_tokens=False)``, what ``apply_chat_template(..., tokenize=True)`` gives), cut into consecutive
pieces::

    head      template tokens before the system content (BOS, "<|im_start|>system\n", a date header, …)
    preamble  the memory block's first line (``MemoryFormat.preamble``)
    items     one piece per memory, ``MemoryFormat.item_template`` filled with the memory's content
    rest      the end of the system message (S, end-of-turn), the conversation, the assistant header

``head + preamble + items`` is the **memory prefix**: it is what a KV cache holds. ``rest`` is computed at
query time. Because the text is tokenized as a whole, a token may straddle two pieces' texts (Qwen2's and
Llama-3's pre-tokenizers join punctuation with the newlines after it: ``"):"`` + ``"\n"`` is one token
``"):\n"``); each cut is placed at a **token boundary the tokenizer agrees with**: piece ``j`` ends where
the tokenization of the text up to piece ``j`` stops agreeing with the tokenization of the whole prompt,
and the memory prefix ends where the tokenizations of the memory text followed by *several* continuations
(this prompt's rest, and the rests of other conversations with the same system prompt) all agree. When the
memory block is followed by a special token (the end-of-turn marker, with no system prompt of yours) that
is its very end; otherwise a straddling token is left to ``rest``, so a cache never holds a token that
another prompt would tokenize differently, and injecting it gives exactly the prefill of the normally
tokenized prompt.

Templates that reject a system message (some Gemma and Mistral templates) get the memory block at the start
of the first user message instead (``placement == "first_user"``). A tokenizer without a chat template uses
:data:`FALLBACK_CHAT_TEMPLATE` (ChatML markup written as plain text).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, field_validator

from ..errors import ValidationError

__all__ = ["MemoryFormat", "PromptLayout", "render_layout", "normalise_messages", "FALLBACK_CHAT_TEMPLATE"]

_SLOT = "\u27e6memos-memory-slot-7d1f\u27e7"

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_ROLES = {"system", "user", "assistant", "tool"}


class MemoryFormat(BaseModel):
    """How memory items are written into the system message. Part of a cache's identity (its token ids)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preamble: str = "Relevant memories (use them when they help answer):"
    item_template: str = "\n- {content}"
    separator: str = "\n\n"

    @field_validator("item_template")
    @classmethod
    def _one_slot(cls, v: str) -> str:
        if v.count("{content}") != 1 or v.replace("{content}", "").count("{") or v.replace("{content}", "").count("}"):
            raise ValueError("item_template must contain '{content}' exactly once and no other braces")
        return v

    def item_text(self, content: str) -> str:
        return self.item_template.replace("{content}", content)


@dataclass(frozen=True)
class PromptLayout:
    """The prompt's token ids, cut into head / preamble / one piece per memory / rest (see module docs)."""

    head: list[int]
    preamble: list[int]
    items: list[list[int]]
    rest: list[int]
    placement: str = "system"
    text: str = field(default="", repr=False)

    @property
    def shared_len(self) -> int:
        """Tokens every cache built with this template and format starts with (head + preamble)."""
        return len(self.head) + len(self.preamble)

    @property
    def prefix(self) -> list[int]:
        """The memory prefix: what a KV cache of these memories holds."""
        out = self.head + self.preamble
        for piece in self.items:
            out = out + piece
        return out

    @property
    def input_ids(self) -> list[int]:
        """The whole prompt: ``prefix + rest``."""
        return self.prefix + self.rest

    @property
    def segments(self) -> list[tuple[int, int]]:
        """``(start, end)`` token offsets of each memory item's piece within :attr:`prefix`."""
        out, pos = [], self.shared_len
        for piece in self.items:
            out.append((pos, pos + len(piece)))
            pos += len(piece)
        return out


def normalise_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Validate chat messages: dicts with a ``role`` in system/user/assistant/tool and a string ``content``."""
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise ValidationError(f"message {i}: expected a dict with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in _ROLES:
            raise ValidationError(f"message {i}: role {role!r} is not one of {sorted(_ROLES)}")
        if not isinstance(content, str):
            raise ValidationError(f"message {i}: content must be a string (multi-part content is not supported)")
        if _SLOT in content:
            raise ValidationError(f"message {i}: content contains the reserved memory-slot marker")
        out.append({"role": role, "content": content})
    return out


def _encode(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool, template_kwargs: Mapping[str, Any]) -> str:
    kwargs = dict(template_kwargs)
    if getattr(tokenizer, "chat_template", None) is None and "chat_template" not in kwargs:
        kwargs["chat_template"] = FALLBACK_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)
    if not isinstance(text, str):
        raise ValidationError("the chat template did not render to a string")
    return text


def render_layout(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    contents: Sequence[str],
    fmt: MemoryFormat | None = None,
    *,
    add_generation_prompt: bool = True,
    template_kwargs: Mapping[str, Any] | None = None,
) -> PromptLayout:
    """Render ``messages`` with the memory block of ``contents`` and cut the token ids into pieces.

    With no contents the conversation is rendered unchanged (everything is ``rest``). Raises
    :class:`ValidationError` for malformed messages or a template that loses the memory block.
    """
    fmt = fmt or MemoryFormat()
    tk = dict(template_kwargs or {})
    conv = normalise_messages(messages)
    if not contents:
        text = _render(tokenizer, conv, add_generation_prompt, tk)
        return PromptLayout(head=[], preamble=[], items=[], rest=_encode(tokenizer, text), placement="none", text=text)
    for c in contents:
        if not isinstance(c, str) or _SLOT in c:
            raise ValidationError("memory contents must be strings without the reserved memory-slot marker")
    user_system = None
    if conv and conv[0]["role"] == "system":
        user_system, conv = conv[0]["content"], conv[1:]
    tail = (fmt.separator + user_system) if user_system else ""
    placement = "system"
    try:
        text = _render(tokenizer, [{"role": "system", "content": _SLOT + tail}] + conv, add_generation_prompt, tk)
    except Exception as exc:  # the template rejects a system message: fall back to the first user turn
        users = [i for i, m in enumerate(conv) if m["role"] == "user"]
        if not users:
            raise ValidationError(
                f"the chat template rejected a system message ({exc}) and the conversation has no user message "
                "to carry the memory block"
            ) from None
        first = users[0]
        conv = [dict(m) for m in conv]
        conv[first]["content"] = _SLOT + tail + fmt.separator + conv[first]["content"]
        placement = "first_user"
        text = _render(tokenizer, conv, add_generation_prompt, tk)
    if text.count(_SLOT) != 1:
        raise ValidationError("the chat template dropped or duplicated the memory block; pass template_kwargs or a custom chat_template")
    head_text, rest_text = text.split(_SLOT)
    mem = [fmt.preamble] + [fmt.item_text(c) for c in contents]
    probes = [rest_text]
    for alt in ([{"role": "user", "content": "?"}], [{"role": "user", "content": "Hello there, what do you know?"}]):
        alt_rest = _alt_rest(tokenizer, fmt, user_system, alt, placement, add_generation_prompt, tk)
        if alt_rest is not None:
            probes.append(alt_rest)
    return _cut(tokenizer, head_text, mem, rest_text, probes, placement)


def _alt_rest(tokenizer: Any, fmt: MemoryFormat, user_system: str | None, conv: list[dict[str, str]], placement: str,
              add_generation_prompt: bool, tk: Mapping[str, Any]) -> str | None:
    """What follows the memory block when the conversation is ``conv`` (same system prompt and placement)."""
    tail = (fmt.separator + user_system) if user_system else ""
    try:
        if placement == "system":
            text = _render(tokenizer, [{"role": "system", "content": _SLOT + tail}] + conv, add_generation_prompt, tk)
        else:
            conv = [dict(m) for m in conv]
            conv[0]["content"] = _SLOT + tail + fmt.separator + conv[0]["content"]
            text = _render(tokenizer, conv, add_generation_prompt, tk)
    except Exception:
        return None
    return text.split(_SLOT)[1] if text.count(_SLOT) == 1 else None


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


#: per tokenizer (weakly held): memory-prefix analyses, keyed by (head text, memory pieces, other continuations)
_PREFIXES: "weakref.WeakKeyDictionary[Any, OrderedDict[tuple, tuple[list[int], int, list[list[int]]]]]" = (
    weakref.WeakKeyDictionary())


def _prefix_analysis(tokenizer: Any, head_text: str, mem: list[str], others: list[str]) -> tuple[list[int], int, list[list[int]]]:
    """(ids of head + memory text alone, tokens of it that the other continuations agree with, ids of each
    progressively longer prefix text). Independent of the conversation's own rest, so cached per tokenizer."""
    key = (len(tokenizer), head_text, tuple(mem), tuple(others))  # added tokens change the analysis
    try:
        table = _PREFIXES.setdefault(tokenizer, OrderedDict())
    except TypeError:
        table = OrderedDict()
    hit = table.get(key)
    if hit is not None:
        table.move_to_end(key)
        return hit
    prefix_text = head_text + "".join(mem)
    alone = _encode(tokenizer, prefix_text)
    safe = min([len(alone)] + [_common(alone, _encode(tokenizer, prefix_text + r)) for r in others])
    steps = [_encode(tokenizer, head_text)]
    acc = head_text
    for piece in mem:
        acc += piece
        steps.append(_encode(tokenizer, acc))
    table[key] = (alone, safe, steps)
    while len(table) > 64:
        table.popitem(last=False)
    return alone, safe, steps


def _cut(tokenizer: Any, head_text: str, mem: list[str], rest_text: str, probes: list[str], placement: str) -> PromptLayout:
    """Tokenize ``head + mem + rest`` as one text and cut it at boundaries the tokenizer agrees with."""
    text = head_text + "".join(mem) + rest_text
    ids = _encode(tokenizer, text)
    alone, safe, steps = _prefix_analysis(tokenizer, head_text, mem, [r for r in probes if r != rest_text])
    # the memory prefix: tokens of the memory text that every continuation (this one too) tokenizes the same way
    safe = min(safe, _common(alone, ids))
    cuts = [_common(step, ids) for step in steps]
    bounds = []
    last = 0
    for c in cuts:
        last = min(max(last, c), safe)
        bounds.append(last)
    bounds[-1] = safe
    head = ids[: bounds[0]]
    preamble = ids[bounds[0] : bounds[1]]
    items = [ids[bounds[j] : bounds[j + 1]] for j in range(1, len(bounds) - 1)]
    return PromptLayout(head=head, preamble=preamble, items=items, rest=ids[safe:], placement=placement, text=text)
