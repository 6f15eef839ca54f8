"""One request's way through ragkv: prompt assembly -> engine (prefix reuse) -> outputs.

The server calls this; it calls the engine. Semantic-cache lookup/store-back and retrieval
plug in here, in front of and behind the engine.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from ragkv.engine.async_engine import AsyncEngine
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import Request, RequestOutput
from ragkv.errors import InvalidRequest


@dataclass(frozen=True)
class PromptSpec:
    """What to generate from: token ids plus how and for whom."""

    prompt_ids: list[int]
    params: SamplingParams
    tenant: str
    kv_reuse: str = "auto"
    pin_ttl_s: float | None = None
    session_id: str | None = None


class Pipeline:
    """Builds engine requests from chat messages or prompts, and streams their outputs."""

    def __init__(self, engine: AsyncEngine, default_max_tokens: int) -> None:
        self.engine = engine
        self.tokenizer = engine.engine.tokenizer
        self.default_max_tokens = default_max_tokens

    def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of messages rendered with the model's chat template."""
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def text_prompt_ids(self, prompt: str | list[str] | list[int]) -> list[int]:
        """Token ids of a plain prompt (text, one-element text list, or token ids)."""
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt)
        if prompt and isinstance(prompt[0], str):
            return self.tokenizer.encode(str(prompt[0]))
        if not all(isinstance(t, int) for t in prompt):
            raise InvalidRequest("prompt must be text or a list of token ids", param="prompt")
        return [int(t) for t in prompt]

    def max_tokens(self, requested: int | None, num_prompt: int) -> int:
        """Requested max_tokens, else the default clipped to the context left."""
        if requested is not None:
            return requested
        room = self.engine.engine.config.context_length - num_prompt
        return max(1, min(self.default_max_tokens, room))

    async def generate(
        self, spec: PromptSpec, is_disconnected: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Stream the engine's outputs for `spec`; `full` reuses no cached KV at all."""
        request = Request(
            request_id=uuid.uuid4().hex,
            prompt_ids=spec.prompt_ids,
            params=spec.params,
            tenant=spec.tenant,
            use_prefix_cache=spec.kv_reuse != "full",
            pin_ttl_s=spec.pin_ttl_s,
            session_id=spec.session_id,
        )
        async for output in self.engine.stream(request, is_disconnected):
            yield output
