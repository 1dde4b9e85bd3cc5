"""LlamaIndex LLM over a local transformers model with MemOS activation memory (KV-cache injection).

``MemOSLocalLLM`` is a ``CustomLLM`` that translates LlamaIndex chat messages to ``{"role", "content"}``
dicts and delegates to :class:`memos_core.activation.LocalLLM` (memory selection, KV cache lookup/build,
injection; see its docs for the guarantees). ``complete(prompt)`` sends ``prompt`` as one user message
through the model's chat template, so chat and completion calls share the same memory caches.

Example::

    from memos_llamaindex.local_llm import MemOSLocalLLM

    # the cube's memories, searched for the last user message, injected as a KV cache stored in the cube
    llm = MemOSLocalLLM.from_cube(cube, "path/to/model", k=5, user_id="ann", max_new_tokens=128)
    llm.chat([ChatMessage(role="user", content="Where does Ann live?")])

    # or wrap any LocalLLM: MemOSLocalLLM(llm=LocalLLM.from_pretrained("path/to/model", memories=my_items))
"""

from __future__ import annotations

from typing import Any, Sequence

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from pydantic import Field

from memos_core.activation.local_llm import LocalLLMWrapper

__all__ = ["MemOSLocalLLM"]

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}
_OPTIONS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "ignore_eos", "memories", "json_schema")


class MemOSLocalLLM(LocalLLMWrapper, CustomLLM):
    """A LlamaIndex ``CustomLLM`` (chat model) backed by a :class:`memos_core.activation.LocalLLM`.

    Call kwargs ``memories``, ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``, ``stop``
    override the defaults for one call. ``raw`` / ``additional_kwargs`` of responses report the KV cache used.

    ``structured_predict(output_cls, prompt, **prompt_args)`` (and ``astructured_predict``) decodes under the
    pydantic class's JSON Schema (constrained decoding, :mod:`memos_core.activation.constrained`; needs
    ``lm-format-enforcer``; strings capped at 200 characters and arrays at 16 items unless the schema says
    otherwise, every property written out) and returns an ``output_cls`` instance; a reply cut by ``max_new_tokens`` raises
    :class:`memos_core.errors.ValidationError`.

    ``MemOSLocalLLM.from_cube(cube, model_or_path, tokenizer=None, **kwargs)`` (shared with the LangChain
    wrapper, :class:`memos_core.activation.local_llm.LocalLLMWrapper`): keyword arguments naming this class's
    fields go to it, the others to :meth:`LocalLLM.from_cube`.
    """

    llm: Any = Field(description="the memos_core.activation.LocalLLM to delegate to", exclude=True)
    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    model_name: str = "memos-local-transformers"

    @classmethod
    def class_name(cls) -> str:
        return "MemOSLocalLLM"

    @property
    def metadata(self) -> LLMMetadata:
        config = self.llm.model.config
        window = getattr(config, "max_position_embeddings", None) or 4096
        return LLMMetadata(context_window=int(window), num_output=self.max_new_tokens, is_chat_model=True, model_name=self.model_name)

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        opts: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                                "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}
        opts.update({k: v for k, v in kwargs.items() if k in _OPTIONS})
        return opts

    @staticmethod
    def _conv(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        return [{"role": _ROLES.get(m.role, "user"), "content": m.content or ""} for m in messages]

    @staticmethod
    def _info(res: Any) -> dict[str, Any]:
        return {
            "finish_reason": res.finish_reason,
            "cache_id": res.cache_id,
            "cache_origin": res.cache_origin,
            "cache_exact": res.cache_exact,
            "cached_tokens": res.cached_tokens,
            "prefill_tokens": res.prefill_tokens,
            "prompt_tokens": res.prompt_tokens,
            "completion_tokens": len(res.token_ids),
            "memory_ids": list(res.memory_ids),
            "ttft_s": res.ttft_s,
            "notes": list(res.notes),
        }

    def structured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None,
                           **prompt_args: Any) -> Any:
        from pydantic import ValidationError as PydanticValidationError

        from memos_core.activation.constrained import bounded_schema
        from memos_core.errors import ValidationError

        messages = prompt.format_messages(llm=self, **prompt_args)
        opts = self._options(dict(llm_kwargs or {}))
        opts["json_schema"] = bounded_schema(output_cls.model_json_schema(), max_string_length=200, max_items=16,
                                             require_all=True)
        res = self.llm.chat(self._conv(messages), **opts)
        try:
            return output_cls.model_validate_json(res.text)
        except PydanticValidationError as exc:
            raise ValidationError(
                f"the reply is not a complete {output_cls.__name__} (generation ended by {res.finish_reason!r}; "
                f"raise max_new_tokens if it was 'length'): {exc.errors()[0].get('msg')}") from None

    async def astructured_predict(self, output_cls: Any, prompt: Any, llm_kwargs: dict[str, Any] | None = None,
                                  **prompt_args: Any) -> Any:
        import asyncio

        return await asyncio.to_thread(self.structured_predict, output_cls, prompt, llm_kwargs, **prompt_args)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        res = self.llm.chat(self._conv(messages), **self._options(kwargs))
        info = self._info(res)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=res.text), raw=info, additional_kwargs=info)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        s = self.llm.stream(self._conv(messages), **self._options(kwargs))

        def gen() -> ChatResponseGen:
            text = ""
            for piece in s:
                text += piece
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
            info = self._info(s.result)
            yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta="", raw=info, additional_kwargs=info)

        return gen()

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        res = self.llm.chat([{"role": "user", "content": prompt}], **self._options(kwargs))
        info = self._info(res)
        return CompletionResponse(text=res.text, raw=info, additional_kwargs=info)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        s = self.llm.stream([{"role": "user", "content": prompt}], **self._options(kwargs))

        def gen() -> CompletionResponseGen:
            text = ""
            for piece in s:
                text += piece
                yield CompletionResponse(text=text, delta=piece)
            info = self._info(s.result)
            yield CompletionResponse(text=text, delta="", raw=info, additional_kwargs=info)

        return gen()
