"""Small pure helpers the chat pipeline needs around the semantic cache."""

from __future__ import annotations

import hashlib
import re

_SPACES = re.compile(r"\s+")
NO_TEMPLATE = "none"


def normalize_query(text: str) -> str:
    """Collapse whitespace and case: the single-flight key of a query (not used for matching)."""
    return _SPACES.sub(" ", text).strip().casefold()


def template_hash(system_prompt: str | None, template: str | None = None) -> str:
    """Short stable hash of the system prompt and prompt template that shape an answer.

    Answers made under different system prompts or templates never share a partition.
    """
    if not system_prompt and not template:
        return NO_TEMPLATE
    digest = hashlib.sha256()
    digest.update((system_prompt or "").encode())
    digest.update(b"\x00")
    digest.update((template or "").encode())
    return digest.hexdigest()[:16]


def is_cacheable(temperature: float | None, requested: bool | None) -> bool:
    """Whether a chat request may read from and write to the semantic cache.

    An explicit `requested` (the request's `ragkv.semantic_cache`) decides; otherwise only
    deterministic requests are cached: `temperature == 0`. A missing temperature means the
    OpenAI default of 1, so it is not cached.
    """
    if requested is not None:
        return bool(requested)
    return temperature is not None and float(temperature) == 0.0
