"""Constrained decoding: replies that are valid JSON of a given JSON Schema, token by token.

A small model asked for JSON often answers with prose, the wrong keys or a truncated object. With
``SamplingParams(json_schema=...)`` (also a :class:`~memos_core.activation.LocalLLM` chat option and the
structured-output path of the LangChain / LlamaIndex wrappers) every step of :mod:`.generation` may only pick a
token that keeps the text a prefix of a document the schema accepts, and the end-of-sequence token only once
the document is complete. The schema logic is `lm-format-enforcer <https://github.com/noamgat/lm-format-enforcer>`_
(MIT; ``pip install "memos-langchain-llamaindex[constrained]"``), used through its library-neutral
``TokenEnforcer`` (its ``transformers`` integration imports names transformers 5 no longer has).

What you can rely on:

* Greedy output under a schema is the highest-scoring *allowed* token at each step; logits of allowed tokens
  are not changed (only the others are masked), so sampling settings keep their meaning.
* If generation ends because it finished (end of sequence), the text parses as JSON and validates against the
  schema, for the subset of JSON Schema lm-format-enforcer supports (objects, arrays, strings, numbers,
  booleans, null, ``enum``/``Literal``, ``anyOf``/optional, ``$ref``/``$defs`` as pydantic writes them, ``required``).
  A reply cut by ``max_new_tokens`` (``finish_reason == "length"``) or a ``stop`` string can still be
  incomplete JSON: give it room.
* The tokenizer's vocabulary table is built once per tokenizer (a few seconds for a 50k vocabulary) and reused.
* Without ``json_schema`` nothing here runs: unconstrained generation is byte-for-byte the code path it was.
"""

from __future__ import annotations

import re
import threading
import weakref
from typing import Any, Mapping, Sequence

from ..errors import ValidationError
from .models import ModelNotInstalled

__all__ = ["JSONSchemaConstraint", "schema_dict", "bounded_schema", "INSTALL"]

INSTALL = 'pip install "lm-format-enforcer>=0.11,<0.12"  (or the extra: memos-langchain-llamaindex[constrained])'

_DATA: "weakref.WeakKeyDictionary[Any, dict[int, Any]]" = weakref.WeakKeyDictionary()
_DATA_BY_ID: dict[int, tuple[Any, dict[int, Any]]] = {}  # tokenizers that cannot be weak-referenced
_LOCK = threading.Lock()


def schema_dict(schema: Any) -> dict[str, Any]:
    """A JSON Schema as a dict from a dict, a pydantic model class or a JSON string; anything else raises
    :class:`ValidationError`."""
    import json

    if isinstance(schema, Mapping):
        return dict(schema)
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        return dict(schema.model_json_schema())
    if isinstance(schema, str):
        try:
            out = json.loads(schema)
        except ValueError as exc:
            raise ValidationError(f"json_schema is not valid JSON: {exc}") from None
        if isinstance(out, dict):
            return out
    raise ValidationError(f"json_schema must be a JSON Schema dict or a pydantic model class, got {type(schema).__name__}")


def bounded_schema(schema: Mapping[str, Any], *, max_string_length: int | None = None,
                   max_items: int | None = None, require_all: bool = False) -> dict[str, Any]:
    """A copy of ``schema`` where every string without a ``maxLength`` gets ``max_string_length`` and every array
    without ``maxItems`` gets ``max_items`` (``None`` leaves them alone). Under constrained decoding this bounds the
    reply, so a model that repeats itself inside a string still closes its JSON within its token budget.
    ``require_all`` makes every property of every object required (optional ones are then written out, e.g. as
    ``null`` or ``[]``): a small model can otherwise close ``{}`` at once, which a schema of defaults accepts."""
    for name, v in (("max_string_length", max_string_length), ("max_items", max_items)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValidationError(f"{name} must be a positive integer or None")

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            out = {k: walk(v) for k, v in node.items()}
            types = out.get("type")
            types = types if isinstance(types, list) else [types]
            if max_string_length is not None and "string" in types and "enum" not in out and "const" not in out:
                out.setdefault("maxLength", max_string_length)
            if max_items is not None and "array" in types:
                out.setdefault("maxItems", max_items)
            if require_all and isinstance(out.get("properties"), Mapping) and "object" in types:
                out["required"] = list(out["properties"])
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(dict(schema))


def _lmfe() -> Any:
    try:
        import lmformatenforcer  # noqa: F401
        from lmformatenforcer import JsonSchemaParser, TokenEnforcer, TokenEnforcerTokenizerData
    except ImportError:
        raise ModelNotInstalled(f"constrained JSON decoding needs lm-format-enforcer: {INSTALL}") from None
    return JsonSchemaParser, TokenEnforcer, TokenEnforcerTokenizerData


def _regular_tokens(tokenizer: Any, vocab_size: int) -> list[tuple[int, str, bool]]:
    """``(id, text, starts_a_word)`` for every non-special token below ``vocab_size`` (the same table
    lm-format-enforcer's transformers integration builds: a token decoded after ``"0"`` shows its leading space)."""
    token_0 = tokenizer.encode("0", add_special_tokens=False)[-1]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for idx in range(min(vocab_size, len(tokenizer))):
        if idx in special:
            continue
        after_0 = tokenizer.decode([token_0, idx])[1:]
        alone = tokenizer.decode([idx])
        if _UNUSABLE.search(after_0):
            continue
        out.append((idx, after_0, len(after_0) > len(alone)))
    return out


#: tokens never offered under a schema: part of a UTF-8 character (decoded alone as U+FFFD), or holding a control
#: character JSON forbids inside strings (tabs and the like; line breaks stay usable as whitespace between
#: elements, the string parser refuses them inside strings)
_UNUSABLE = re.compile("[\ufffd\x00-\x09\x0b\x0c\x0e-\x1f\x7f]")


def _tokenizer_data(tokenizer: Any, vocab_size: int, eos: Sequence[int]) -> Any:
    _, _, TokenEnforcerTokenizerData = _lmfe()
    with _LOCK:
        try:
            per = _DATA.setdefault(tokenizer, {})
        except TypeError:
            per = _DATA_BY_ID.setdefault(id(tokenizer), (tokenizer, {}))[1]
        key = (vocab_size, tuple(sorted(eos)))
        data = per.get(key)  # type: ignore[call-overload]
        if data is None:
            def decode(ids: list[int]) -> str:
                return tokenizer.decode(ids).rstrip("\ufffd")

            data = TokenEnforcerTokenizerData(_regular_tokens(tokenizer, vocab_size), decode, sorted(eos), False,
                                              vocab_size)
            per[key] = data  # type: ignore[index]
        return data


_STRICT: Any = None


def _strict_json_parser() -> Any:
    """A CharacterLevelParser wrapping lm-format-enforcer's JSON parser that refuses ``}`` / ``]`` right after a
    comma -- the library (0.11) lets an object close after ``,`` once its required keys are present, which is not
    JSON (``{"a": 1,}``) -- and exponents in numbers (it accepts ``-653E11020`` for an ``integer``, which no
    integer type holds). Everything else is delegated."""
    global _STRICT
    if _STRICT is not None:
        return _STRICT
    from lmformatenforcer.characterlevelparser import CharacterLevelParser

    class StrictJSON(CharacterLevelParser):
        def __init__(self, inner: Any, in_string: bool = False, escaped: bool = False,
                     after_comma: bool = False, in_number: bool = False) -> None:
            self.inner, self.in_string, self.escaped, self.after_comma = inner, in_string, escaped, after_comma
            self.in_number = in_number

        @property  # type: ignore[override]
        def config(self) -> Any:
            return self.inner.config

        @config.setter
        def config(self, value: Any) -> None:
            self.inner.config = value

        def add_character(self, c: str) -> Any:
            inner = self.inner.add_character(c)
            in_string, escaped, after_comma = self.in_string, self.escaped, self.after_comma
            in_number = not in_string and (c.isdigit() or (self.in_number and c in ".-+"))
            if in_string:
                if escaped:
                    escaped = False
                elif c == "\\":
                    escaped = True
                elif c == '"':
                    in_string = False
            elif c == '"':
                in_string, after_comma = True, False
            elif c == ",":
                after_comma = True
            elif not c.isspace():
                after_comma = False
            return StrictJSON(inner, in_string, escaped, after_comma, in_number)

        def get_allowed_characters(self) -> str:
            chars = self.inner.get_allowed_characters()
            if self.after_comma and not self.in_string:
                chars = chars.replace("}", "").replace("]", "")
            if self.in_number:
                chars = chars.replace("e", "").replace("E", "")
            return chars

        def can_end(self) -> bool:
            return bool(self.inner.can_end())

        def shortcut_key(self) -> Any:
            return self.inner.shortcut_key()

        def cache_key(self) -> Any:
            key = self.inner.cache_key()
            return None if key is None else (key, self.after_comma, self.in_number)

    _STRICT = StrictJSON
    return _STRICT


class JSONSchemaConstraint:
    """The tokens allowed after each generated prefix so the reply becomes a JSON document of ``schema``.

    ``allowed(generated)`` takes the ids generated so far (not the prompt) and returns the allowed next ids
    (end-of-sequence ids among them once the document is complete). One instance serves one generation.
    """

    def __init__(self, tokenizer: Any, schema: Any, *, vocab_size: int, eos_ids: Sequence[int],
                 max_whitespace: int = 2) -> None:
        if not eos_ids:
            raise ValidationError("constrained decoding needs an end-of-sequence token (and ignore_eos=False)")
        JsonSchemaParser, TokenEnforcer, _ = _lmfe()
        self.schema = schema_dict(schema)
        try:
            parser = _strict_json_parser()(JsonSchemaParser(self.schema))
        except Exception as exc:  # noqa: BLE001 - the library's own schema errors, in one typed error
            raise ValidationError(f"json_schema cannot be enforced: {type(exc).__name__}: {exc}") from None
        self.enforcer = TokenEnforcer(_tokenizer_data(tokenizer, vocab_size, eos_ids), parser)
        parser.config.max_consecutive_whitespaces = max_whitespace  # small models otherwise pad with blanks
        # characters allowed inside strings: the vocabulary's, less the control characters JSON forbids there
        parser.config.alphabet = "".join(c for c in parser.config.alphabet if c >= " " and c not in "\x7f\ufffd")
        self.eos_ids = set(eos_ids)

    def allowed(self, generated: Sequence[int]) -> list[int]:
        tokens = self.enforcer.get_allowed_tokens(list(generated)).allowed_tokens
        return list(tokens)

    def mask(self, logits: Any, generated: Sequence[int]) -> Any:
        """``logits`` (``[1, vocab]``) with every disallowed token set to ``-inf`` (a new tensor)."""
        import torch

        allowed = [i for i in self.allowed(generated) if i < logits.shape[-1]]
        out = torch.full_like(logits, float("-inf"))
        idx = torch.tensor(allowed, dtype=torch.long, device=logits.device)
        out[..., idx] = logits[..., idx]
        return out
