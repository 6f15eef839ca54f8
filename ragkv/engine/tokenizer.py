"""Tokenizer and chat template taken from the model file (GGUF or HF folder)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragkv.assets import load_hf_tokenizer
from ragkv.errors import InvalidRequest


class Tokenizer:
    """Text <-> token ids, the model's chat template and its stop tokens."""

    def __init__(self, model_path: Path) -> None:
        self._hf = load_hf_tokenizer(model_path)
        self.vocab_size = len(self._hf)
        self.bos_token_id: int | None = self._hf.bos_token_id
        self.eos_token_id: int | None = self._hf.eos_token_id
        stop = {self.eos_token_id} if self.eos_token_id is not None else set()
        for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"):
            token_id = self._hf.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self._hf.unk_token_id:
                stop.add(token_id)
        self.stop_token_ids: frozenset[int] = frozenset(stop)

    @property
    def hf(self) -> Any:
        """The underlying Hugging Face tokenizer (for libraries that need one, e.g. xgrammar)."""
        return self._hf

    @property
    def has_chat_template(self) -> bool:
        """Whether the model ships a chat template."""
        return bool(getattr(self._hf, "chat_template", None))

    @property
    def chat_template(self) -> str | None:
        """The chat template's source (None: the model has none)."""
        template = getattr(self._hf, "chat_template", None)
        return template if isinstance(template, str) else None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens added."""
        return list(self._hf.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of `token_ids`."""
        return self._hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Text of a chat rendered with the model's template (`tools`: OpenAI tool objects,
        for templates that render them)."""
        if not self.has_chat_template:
            raise InvalidRequest("this model has no chat template; use /v1/completions")
        try:
            return self._hf.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                tools=tools or None,
            )
        except Exception as exc:  # jinja raises its own errors for odd message lists
            raise InvalidRequest(f"cannot render the chat template: {exc}") from exc

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of a chat rendered with the model's template (see `render_chat`)."""
        return self.encode(self.render_chat(messages, add_generation_prompt, tools))

    def serialization(self) -> str:
        """The tokenizer's full JSON (for fingerprints)."""
        backend = getattr(self._hf, "backend_tokenizer", None)
        return backend.to_str() if backend is not None else str(self._hf.get_vocab())
