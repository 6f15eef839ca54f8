"""The token-encoder protocol the chunker needs, and a loader for the serving model's tokenizer.

Retrieval never imports the engine: whoever owns the model passes its tokenizer in. Until the
engine does, `LazyTokenizer(load_model_tokenizer, path)` loads the same tokenizer from the
model file on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ragkv.assets import load_hf_tokenizer


@runtime_checkable
class TokenEncoder(Protocol):
    """Anything with `encode(text) -> list[int]` (no special tokens added)."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        ...


EncoderLike = TokenEncoder | Callable[[str], list[int]]


class _CallableEncoder:
    def __init__(self, fn: Callable[[str], list[int]]) -> None:
        self._fn = fn

    def encode(self, text: str) -> list[int]:
        return list(self._fn(text))


def as_encoder(tokenizer: EncoderLike) -> TokenEncoder:
    """Accept an object with `encode` or a plain callable `text -> ids`."""
    if hasattr(tokenizer, "encode"):
        return tokenizer  # type: ignore[return-value]
    if callable(tokenizer):
        return _CallableEncoder(tokenizer)
    raise TypeError("tokenizer must have encode(text) -> list[int] or be a callable")


class HFTokenizer:
    """A Hugging Face tokenizer behind the small protocol: `encode` / `decode`, no specials."""

    def __init__(self, tokenizer: Any, name: str) -> None:
        self._tokenizer = tokenizer
        self.name = name

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without BOS/EOS."""
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`."""
        return str(self._tokenizer.decode(ids))


def load_model_tokenizer(model_path: Path) -> HFTokenizer:
    """The tokenizer of a GGUF file or a Hugging Face folder, loaded offline (takes seconds)."""
    return HFTokenizer(load_hf_tokenizer(model_path), Path(model_path).name)


class LazyTokenizer:
    """Loads a tokenizer on first `encode`, once, thread-safely; then delegates to it."""

    def __init__(self, loader: Callable[..., TokenEncoder], *args: Any) -> None:
        self._loader = loader
        self._args = args
        self._lock = threading.Lock()
        self._tokenizer: TokenEncoder | None = None

    def get(self) -> TokenEncoder:
        """The loaded tokenizer (loads it now if needed)."""
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = self._loader(*self._args)
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        return self.get().encode(text)
