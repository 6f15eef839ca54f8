"""RAG prompt assembly at token level: template head + labelled chunks + question + tail.

Chunk token ids are used exactly as stored (never re-tokenized inside the joined string), so
a chunk's KV cache entry matches wherever the chunk lands. The labels and separators between
chunks are ragkv's own tokens (computed fresh every time), so users never hand-make them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ragkv.engine.sequence import ChunkSpan
from ragkv.errors import InvalidRequest

_SENTINEL = "\u0000RAGKV-QUESTION\u0000"
DEFAULT_INSTRUCTION = (
    "Answer the question using the documents below. If they do not contain the answer, say so.\n\n"
)


class ChatTokenizer(Protocol):
    """What assembly needs from the serving model's tokenizer."""

    def encode(self, text: str) -> list[int]: ...

    def render_chat(self, messages: list[dict[str, Any]]) -> str: ...


@dataclass(frozen=True)
class ContextChunk:
    """A piece of context: its stored token ids and an optional title for the label."""

    token_ids: list[int]
    title: str | None = None


@dataclass(frozen=True)
class RagPrompt:
    """Token ids of the whole prompt and where each chunk sits in it."""

    token_ids: list[int]
    spans: list[ChunkSpan]

    @property
    def num_chunk_tokens(self) -> int:
        """Tokens that come from chunks."""
        return sum(span.length for span in self.spans)


def rag_head(tokenizer: ChatTokenizer, instruction: str = DEFAULT_INSTRUCTION) -> list[int]:
    """Token ids every single-turn RAG prompt without a system message starts with: the
    template head (with the template's default system prompt, if any) and the instruction.
    Chunk KV computed after it (`chunk_cache.context_variant`) sees a real attention sink
    and the instruction, as it does inside a prompt."""
    head, _, _ = _split(tokenizer, [{"role": "user", "content": ""}])
    return tokenizer.encode(head) + tokenizer.encode(instruction)


def assemble_rag_prompt(
    tokenizer: ChatTokenizer,
    messages: list[dict[str, Any]],
    chunks: list[ContextChunk],
    instruction: str = DEFAULT_INSTRUCTION,
) -> RagPrompt:
    """`messages` rendered with the chat template, the chunks placed inside the last user
    message before its text. Raises `InvalidRequest` if there is no user message."""
    head, question, tail = _split(tokenizer, messages)
    token_ids = tokenizer.encode(head) + tokenizer.encode(instruction)
    spans: list[ChunkSpan] = []
    for number, chunk in enumerate(chunks, start=1):
        label = f"[{number}] {chunk.title}\n" if chunk.title else f"[{number}]\n"
        token_ids += tokenizer.encode(label)
        spans.append(ChunkSpan(len(token_ids), len(chunk.token_ids)))
        token_ids += chunk.token_ids
        token_ids += tokenizer.encode("\n\n")
    token_ids += tokenizer.encode(f"Question: {question}") + tokenizer.encode(tail)
    return RagPrompt(token_ids, [s for s in spans if s.length > 0])


def _split(tokenizer: ChatTokenizer, messages: list[dict[str, Any]]) -> tuple[str, str, str]:
    """The rendered chat split around the last user message's text: (head, text, tail)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    if last_user < 0:
        raise InvalidRequest("documents need a user message to answer", param="messages")
    question = str(messages[last_user].get("content") or "")
    rendered = [dict(m) for m in messages]
    rendered[last_user]["content"] = _SENTINEL
    head, _, tail = tokenizer.render_chat(rendered).partition(_SENTINEL)
    return head, question, tail
