"""Workload and quality measures of `bench_rag.py`.

A pool of Wikipedia lead chunks (the first 256-token chunk of long leads), RAG requests that
draw a few of them in new orders and mixes with a question naming one chunk's title, and the
measures: KL(full || mode), top-1 agreement, Rouge-L (LCS F1 over token ids).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import torch

from ragkv.pipeline.prompt import ContextChunk, RagPrompt, assemble_rag_prompt
from ragkv.retrieval.chunker import Chunker
from ragkv.retrieval.loaders import wikipedia_sample_path

QUESTIONS = (
    "What is {} known for?",
    "What do the documents say about {}?",
    "Why is {} notable?",
    "Give two facts about {}.",
)


@dataclass(frozen=True)
class Passage:
    """One pooled chunk: its lead's title and the chunk's token ids."""

    title: str
    token_ids: list[int]


@dataclass(frozen=True)
class RagCase:
    """One RAG request of the workload."""

    number: int
    question: str
    picks: list[int]
    prompt: RagPrompt


def chunk_pool(
    tokenizer, size: int, min_tokens: int, chunk_tokens: int, seed: int
) -> list[Passage]:
    """`size` first chunks (at least `min_tokens` tokens) of long Wikipedia leads, seeded."""
    data = json.loads(wikipedia_sample_path().read_text(encoding="utf-8"))
    leads = sorted(
        (str(entry.get("title") or title), str(entry["extract"]))
        for title, entry in data.items()
        if len(str(entry.get("extract") or "")) > 4 * min_tokens
    )
    random.Random(seed).shuffle(leads)
    chunker = Chunker(tokenizer, chunk_tokens)
    pool: list[Passage] = []
    for title, text in leads:
        chunks = chunker.chunk(text)
        if chunks and chunks[0].num_tokens >= min_tokens:
            pool.append(Passage(title, list(chunks[0].token_ids)))
        if len(pool) == size:
            return pool
    raise SystemExit(f"only {len(pool)} leads have a first chunk of >= {min_tokens} tokens")


def rag_cases(tokenizer, pool: list[Passage], count: int, per_request: int, seed: int):
    """`count` requests of `per_request` pooled chunks each; the question names one title."""
    rng = random.Random(seed + 1)
    cases = []
    for number in range(count):
        picks = rng.sample(range(len(pool)), per_request)
        question = rng.choice(QUESTIONS).format(pool[rng.choice(picks)].title)
        chunks = [ContextChunk(pool[i].token_ids, pool[i].title) for i in picks]
        messages = [{"role": "user", "content": question}]
        cases.append(
            RagCase(number, question, picks, assemble_rag_prompt(tokenizer, messages, chunks))
        )
    return cases


def head_prompt(tokenizer) -> list[int]:
    """A different, tiny RAG prompt (no documents): it shares only the template head."""
    messages = [{"role": "user", "content": "Which documents are these?"}]
    return assemble_rag_prompt(tokenizer, messages, []).token_ids


def kl_rows(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """KL(reference || other) per row of logits `[n, vocab]`."""
    p, q = reference.float().log_softmax(-1), other.float().log_softmax(-1)
    return (p.exp() * (p - q)).sum(-1)


def rouge_l(candidate: list[int], reference: list[int]) -> float:
    """Rouge-L F1: longest common subsequence of token ids over both lengths."""
    if not candidate or not reference:
        return 0.0
    previous = [0] * (len(reference) + 1)
    for token in candidate:
        current = [0]
        for j, ref in enumerate(reference):
            current.append(previous[j] + 1 if token == ref else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)
