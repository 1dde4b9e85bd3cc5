"""LangChain chat model over a local transformers model with MemOS activation memory (KV-cache injection).

``MemOSLocalChatModel`` translates LangChain messages to ``{"role", "content"}`` dicts and delegates to
:class:`memos_core.activation.LocalLLM`, which selects the memories, finds or builds their KV cache and
generates with it injected. Everything a user can rely on about caches (exactness, fingerprints, staleness)
is documented there.

Example::

    from memos_langchain.local_chat_model import MemOSLocalChatModel

    # the cube's memories, searched for the last user message, injected as a KV cache stored in the cube
    chat = MemOSLocalChatModel.from_cube(cube, "path/to/Qwen2.5-0.5B-Instruct", k=5, user_id="ann",
                                         max_new_tokens=128)
    chat.invoke("Where does Ann live?")
    chat.bind(memories=other_items).invoke(...)   # per-call memories instead of the search

    # or wrap any LocalLLM: MemOSLocalChatModel(llm=LocalLLM.from_cube(cube, model, tokenizer))
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Iterator

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from pydantic import BaseModel, ConfigDict, Field

from memos_core.activation.local_llm import LocalLLMWrapper
from memos_core.errors import ValidationError

__all__ = ["MemOSLocalChatModel"]

_OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos", "json_schema")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            raise ValidationError("MemOSLocalChatModel accepts text content only")
    return "".join(parts)


def _role(message: BaseMessage) -> str:
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, ToolMessage):
        return "tool"
    if isinstance(message, ChatMessage):
        return {"human": "user", "ai": "assistant"}.get(message.role, message.role)
    raise ValidationError(f"unsupported message type {type(message).__name__}")


class MemOSLocalChatModel(LocalLLMWrapper, BaseChatModel):
    """A LangChain ``BaseChatModel`` backed by a :class:`memos_core.activation.LocalLLM`.

    Generation options set here (``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``) apply
    to every call unless overridden by call kwargs; ``stop`` comes from LangChain as usual. Pass
    ``memories=[MemoryItem, ...]`` as a call kwarg (or through ``.bind``) to choose the memories of one call;
    otherwise the ``LocalLLM``'s own memory source is used. ``response_metadata`` reports the KV cache used
    (``cache_id``, ``cache_origin``, ``cached_tokens``, ``ttft_s``) and ``usage_metadata`` the token counts.

    ``with_structured_output(schema)`` (a pydantic class or a JSON Schema dict) decodes under the schema
    (constrained decoding, :mod:`memos_core.activation.constrained`; needs ``lm-format-enforcer``): a reply that
    ends by itself is valid JSON of the schema, parsed into the pydantic class (or a dict). Strings are capped at
    ``max_string_length`` characters and arrays at ``max_items`` unless the schema says otherwise, so a small
    model that repeats itself still closes its JSON, and every property is written out (``null`` / ``[]`` for
    the optional ones), so it cannot answer ``{}`` at once. ``json_schema=...`` as a call kwarg (or ``.bind``) gives
    the constrained text without parsing.

    ``MemOSLocalChatModel.from_cube(cube, model_or_path, tokenizer=None, **kwargs)`` (shared with the
    LlamaIndex wrapper, :class:`memos_core.activation.local_llm.LocalLLMWrapper`): keyword arguments naming
    this class's fields go to it, the others to :meth:`LocalLLM.from_cube`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Any = Field(description="the memos_core.activation.LocalLLM to delegate to")
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None

    @property
    def _llm_type(self) -> str:
        return "memos-local-transformers"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_type": getattr(self.llm.model.config, "model_type", None), "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature}

    def _call_args(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[list[dict[str, str]], dict[str, Any]]:
        conv = [{"role": _role(m), "content": _text(m.content)} for m in messages]
        opts: dict[str, Any] = {k: getattr(self, k, None) for k in _OPTIONS}
        for k, v in kwargs.items():
            if k in _OPTIONS or k == "memories":
                opts[k] = v
        opts["stop"] = list(stop) if stop else None
        return conv, opts

    @staticmethod
    def _metadata(res: Any) -> tuple[dict[str, Any], UsageMetadata]:
        meta = {
            "finish_reason": res.finish_reason,
            "cache_id": res.cache_id,
            "cache_origin": res.cache_origin,
            "cache_exact": res.cache_exact,
            "cached_tokens": res.cached_tokens,
            "prefill_tokens": res.prefill_tokens,
            "memory_ids": list(res.memory_ids),
            "ttft_s": res.ttft_s,
            "notes": list(res.notes),
        }
        out = len(res.token_ids)
        usage = UsageMetadata(input_tokens=res.prompt_tokens, output_tokens=out, total_tokens=res.prompt_tokens + out)
        return meta, usage

    def with_structured_output(self, schema: dict[str, Any] | type, *, include_raw: bool = False,
                               max_string_length: int | None = 200, max_items: int | None = 16,
                               **kwargs: Any) -> Runnable:
        """Replies decoded under ``schema`` and parsed (see the class docs); ``include_raw=True`` returns
        ``{"raw", "parsed", "parsing_error"}`` as LangChain's own implementation does."""
        from memos_core.activation.constrained import bounded_schema, schema_dict

        kwargs.pop("method", None)
        kwargs.pop("strict", None)
        if kwargs:
            raise ValidationError(f"with_structured_output: unsupported arguments {sorted(kwargs)}")
        wanted = bounded_schema(schema_dict(schema), max_string_length=max_string_length, max_items=max_items,
                                require_all=True)
        bound = self.bind(json_schema=wanted)
        parser: Any
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            parser = PydanticOutputParser(pydantic_object=schema)
        else:
            parser = JsonOutputParser()
        if include_raw:
            parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
            failed = RunnablePassthrough.assign(parsed=lambda _: None)
            return RunnableMap(raw=bound) | parsed.with_fallbacks([failed], exception_key="parsing_error")
        return bound | parser

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        conv, opts = self._call_args(messages, stop, kwargs)
        res = self.llm.chat(conv, **opts)
        meta, usage = self._metadata(res)
        msg = AIMessage(content=res.text, response_metadata=meta, usage_metadata=usage)
        return ChatResult(generations=[ChatGeneration(message=msg, generation_info={"finish_reason": res.finish_reason})])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        conv, opts = self._call_args(messages, stop, kwargs)
        s = self.llm.stream(conv, **opts)
        for piece in s:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        meta, usage = self._metadata(s.result)
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", response_metadata=meta, usage_metadata=usage),
            generation_info={"finish_reason": s.result.finish_reason},
        )
