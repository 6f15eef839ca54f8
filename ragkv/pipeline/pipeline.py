"""`Pipeline`: one request's way through ragkv.

    chat:     semantic probe (single-flight) -> context (inline documents or retrieval)
              -> prompt assembly with chunk boundaries -> engine (prefix hit / chunk blend /
              prefill) -> stream out -> store-back
    complete: prompt ids -> engine -> stream out

Routes parse, call `chat` or `complete`, and format the `Answer` as JSON or SSE; nothing
else orchestrates a request.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from ragkv.cache.semantic.single_flight import Flight
from ragkv.engine.async_engine import AsyncEngine
from ragkv.engine.sampling import SamplingParams
from ragkv.engine.sequence import ChunkSpan, Request, RequestOutput
from ragkv.engine.tokenizer import Tokenizer
from ragkv.errors import ModelError
from ragkv.pipeline.agents import ToolLatency
from ragkv.pipeline.answer import Answer, CacheReport, Delta, ToolCall, Usage
from ragkv.pipeline.context import Context, ContextBuilder, Source
from ragkv.pipeline.metrics import KVMetrics
from ragkv.pipeline.prompt import assemble_rag_prompt, rag_head
from ragkv.pipeline.request import CacheOptions, ChatRequest, CompletionRequest
from ragkv.pipeline.semantic import SemanticProbe, SemanticStep, SharedAnswer, replay_pieces
from ragkv.pipeline.tools import chat_inputs, with_tool_calls

Disconnected = Callable[[], Awaitable[bool]]


class Pipeline:
    """Runs chat and completion requests through the caches and the engine.

    `semantic` None: the semantic cache is off. `context_variant`: chunk KV is computed after
    the default RAG head (`chunk_cache.context_variant`), else after nothing.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        context: ContextBuilder,
        default_max_tokens: int,
        semantic: SemanticStep | None = None,
        metrics: KVMetrics | None = None,
        context_variant: bool = False,
        agents: ToolLatency | None = None,
    ) -> None:
        self.engine = engine
        self.tokenizer: Tokenizer = engine.tokenizer
        self.context = context
        self.default_max_tokens = default_max_tokens
        self.semantic = semantic
        self.metrics = metrics
        self.chunk_context = tuple(rag_head(self.tokenizer)) if context_variant else ()
        self.agents = agents

    async def chat(self, request: ChatRequest, disconnected: Disconnected | None = None) -> Answer:
        """Answer a chat request: from the semantic cache, from an identical request in
        flight, or from the engine (with its context's chunk KV blended). Errors before the
        first token raise here; later ones surface from iterating the answer."""
        if self.agents is not None:
            self.agents.returned(request.tenant, request.messages)  # tool round trips end
        messages, tools = chat_inputs(request.messages, request.tools, self.tokenizer.chat_template)
        chat_ids = self.tokenizer.apply_chat_template(messages, tools=tools)
        kv_reuse = request.cache.kv_reuse.value
        # Retrieval first: a RAG answer is keyed by the chunks it is built from, so a replaced
        # or deleted document's answers stop matching (retrieval is cheap next to generation).
        context = await self._context(request) if request.rag is not None else None
        retrieved = tuple(source.chunk_id for source in context.sources) if context else ()
        probe, flight = None, None
        if self.semantic is not None and not request.params.logprobs:
            probe = await self.semantic.probe(request, self.engine.load, retrieved)
        if probe is not None:
            probe, shared = await self.semantic.join(probe)
            if probe.served:
                text = probe.hit.response if probe.hit is not None else shared.text
                sources = tuple(context.sources) if context is not None else None
                answer = self._semantic_answer(probe, text, len(chat_ids), kv_reuse, sources)
                return self._with_tools(answer, request, None)
            flight = self.semantic.lead(probe)
        try:
            prompt_ids, spans, sources = chat_ids, (), None
            if request.has_context:
                context = context or await self._context(request)
                prompt_ids, spans, sources = self._with_context(messages, chat_ids, context)
            engine_request = self._engine_request(
                request.cache.owner(request.tenant),
                prompt_ids,
                request.params,
                request.max_tokens_set,
                request.cache,
            )
            engine_request = replace(
                engine_request,
                chunk_spans=spans,
                chunk_context=self.chunk_context if spans else (),
                constraint=request.tools.constraint(),
            )
            answer = await self._generate(
                engine_request, kv_reuse, disconnected, probe, sources, flight
            )
            return self._with_tools(answer, request, engine_request.prompt_ids)
        except BaseException:
            if flight is not None:
                flight.resolve(None)  # the identical requests waiting run on their own
            raise

    async def complete(
        self, request: CompletionRequest, disconnected: Disconnected | None = None
    ) -> Answer:
        """Answer a plain-prompt completion from the engine (prefix cache only)."""
        engine_request = self._engine_request(
            request.cache.owner(request.tenant), request.prompt_ids, request.params,
            request.max_tokens_set, request.cache,
        )  # fmt: skip
        return await self._generate(engine_request, request.cache.kv_reuse.value, disconnected)

    async def _context(self, request: ChatRequest) -> Context:
        """The request's inline documents, chunked, then what retrieval finds."""
        rag = request.rag
        return await self.context.build(
            request.tenant,
            request.question,
            [(document.id, document.text) for document in request.documents],
            rag.collection if rag is not None else None,
            rag.top_k if rag is not None else 4,
        )

    def _with_tools(
        self, answer: Answer, request: ChatRequest, prompt_ids: list[int] | None
    ) -> Answer:
        """The answer with its tool calls parsed out, when the request offers tools. A turn
        ending in calls pins its conversation's KV (`prompt_ids`) until the agent is back."""
        if not request.tools.calls_possible:
            return answer
        agents = self.agents

        async def on_calls(calls: list[ToolCall]) -> None:
            if agents is None:
                return
            agents.issued(request.tenant, calls)
            if prompt_ids is not None and request.cache.kv_reuse.uses_prefix_cache:
                names = [call.name for call in calls]
                ttl_s = agents.ttl(request.tenant, names)
                due_s = agents.due(request.tenant, names)  # None: not predicted yet
                owner = request.cache.owner(request.tenant)
                await self.engine.pin_tool_turn(owner, prompt_ids, ttl_s, due_s)

        return with_tool_calls(answer, request.tools, on_calls)

    def _with_context(
        self, messages: list[dict[str, Any]], chat_ids: list[int], context: Context
    ) -> tuple[list[int], tuple[ChunkSpan, ...], tuple[Source, ...]]:
        """The prompt with the context chunks placed before the question, and their spans."""
        sources = tuple(context.sources)
        if not context.chunks:
            return chat_ids, (), sources
        prompt = assemble_rag_prompt(self.tokenizer, messages, context.chunks)
        return prompt.token_ids, tuple(prompt.spans), sources

    def _engine_request(
        self,
        tenant: str,
        prompt_ids: list[int],
        params: SamplingParams,
        max_tokens_set: bool,
        cache: CacheOptions,
    ) -> Request:
        """The engine request; an unset max_tokens is the default clipped to the room left."""
        if not max_tokens_set:
            room = self.engine.context_length - len(prompt_ids)
            params = replace(params, max_tokens=max(1, min(self.default_max_tokens, room)))
        return Request(
            request_id=uuid.uuid4().hex,
            prompt_ids=prompt_ids,
            params=params,
            tenant=tenant,
            kv_reuse=cache.kv_reuse,
            pin_ttl_s=cache.pin_ttl_s,
            session_id=cache.session_id,
            recompute_ratio=cache.recompute_ratio,
        )

    async def _generate(
        self,
        request: Request,
        kv_reuse: str,
        disconnected: Disconnected | None,
        probe: SemanticProbe | None = None,
        sources: tuple[Source, ...] | None = None,
        flight: Flight[SharedAnswer] | None = None,
    ) -> Answer:
        outputs = self.engine.stream(request, disconnected)
        try:
            first = await anext(outputs)  # errors before the first token are plain errors
        except StopAsyncIteration:
            raise ModelError("the engine finished without output") from None
        status = "kv-hit" if first.cached_tokens > 0 or first.chunk_tokens_reused > 0 else "miss"

        async def deltas(answer: Answer) -> AsyncGenerator[Delta, None]:
            text: list[str] = []
            output = first
            try:
                while True:
                    text.append(output.text)
                    yield Delta(output.text, output.logprobs, output.finish_reason)
                    if output.finished:
                        break
                    received_s = time.perf_counter()
                    output = await anext(outputs)
                    if self.metrics is not None:
                        self.metrics.observe_token_gap(time.perf_counter() - received_s)
                shared = None
                if probe is not None and self.semantic is not None:
                    shared = await self.semantic.store(probe, "".join(text), output.finish_reason)
                self._finish(answer, output, kv_reuse, probe, sources)
                if flight is not None:
                    flight.resolve(shared)
            except StopAsyncIteration:
                return  # the client went away; the engine request is aborted
            finally:
                if flight is not None:
                    flight.resolve(None)
                await outputs.aclose()

        return Answer(status, deltas)

    def _finish(
        self,
        answer: Answer,
        final: RequestOutput,
        kv_reuse: str,
        probe: SemanticProbe | None,
        sources: tuple[Source, ...] | None,
    ) -> None:
        semantic = probe.info() if probe is not None else None
        report = CacheReport.of_engine(final, kv_reuse, semantic, sources)
        if self.metrics is not None:
            self.metrics.observe(final, kv_reuse, report.tokens_recomputed)
        usage = Usage(final.prompt_tokens, final.completion_tokens, final.cached_tokens)
        answer.finish(usage, report, final.finish_reason)

    def _semantic_answer(
        self,
        probe: SemanticProbe,
        text: str,
        num_prompt: int,
        kv_reuse: str,
        sources: tuple[Source, ...] | None = None,
    ) -> Answer:
        """An answer served without the engine, replayed as a few-word stream (`sources`:
        the retrieved chunks it was keyed by, for a RAG request)."""
        usage = Usage(num_prompt, len(self.tokenizer.encode(text)))
        report = CacheReport(kv_reuse=kv_reuse, semantic=probe.info(), sources=sources)

        async def deltas(answer: Answer) -> AsyncGenerator[Delta, None]:
            pieces = list(replay_pieces(text)) or [""]
            for index, piece in enumerate(pieces):
                last = index == len(pieces) - 1
                if last:
                    answer.finish(usage, report, "stop")
                yield Delta(piece, [], "stop" if last else None)

        return Answer("semantic-hit", deltas)
