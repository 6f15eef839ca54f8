"""OpenAI-compatible request bodies for chat and text completions, plus ragkv extensions."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool", "developer"]


class ContentPart(BaseModel):
    """One part of a multi-part message; only text parts are served."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class FunctionCall(BaseModel):
    """The function of an assistant's tool call: name and JSON-encoded arguments."""

    name: str = Field(..., min_length=1, max_length=64)
    arguments: str = "{}"


class ToolCallIn(BaseModel):
    """A tool call in an assistant message of the conversation."""

    id: str = Field(..., min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    """A chat message: role plus text (a string or text parts); an assistant message may
    carry `tool_calls`, a `tool` message answers one by `tool_call_id`."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = Field(None, max_length=256)

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The message as chat templates take it (text joined, tool fields kept)."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump() for call in self.tool_calls]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.name:
            message["name"] = self.name
        return message

    def text(self) -> str:
        """The message's text with parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    """OpenAI stream options (usage is always sent on the last chunk)."""

    include_usage: bool = True


class RagkvOptions(BaseModel):
    """The `ragkv` extension object: cache controls for this request."""

    model_config = ConfigDict(extra="forbid")

    semantic_cache: bool | None = None
    category: str | None = Field(None, max_length=64)
    kv_reuse: Literal["auto", "full", "prefix", "naive", "cacheblend", "cachecraft", "lego"] = (
        "auto"
    )
    recompute_ratio: float | None = Field(None, ge=0.0, le=1.0)
    session_id: str | None = Field(None, max_length=256)
    pin_ttl_s: float | None = Field(None, gt=0, le=86400)


StopField = Annotated[str | list[str] | None, Field(None)]


class SamplingFields(BaseModel):
    """Sampling fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=1_000_000)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: StopField = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = Field(None, description="not supported: refused")
    user: str | None = None
    ignore_eos: bool = Field(False, description="vLLM extension: generate past end-of-text")
    ragkv: RagkvOptions = Field(default_factory=RagkvOptions)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return value

    def stop_list(self) -> tuple[str, ...]:
        """`stop` as a tuple of strings."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class DocumentIn(BaseModel):
    """An inline RAG document: its text becomes one or more chunks of context."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=256)
    text: str = Field(..., min_length=1)

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("document text is blank")
        return value


class RagQuery(BaseModel):
    """Server-side retrieval: the `top_k` chunks of `collection` closest to the question."""

    model_config = ConfigDict(extra="forbid")

    collection: str = Field(..., min_length=1, max_length=64)
    top_k: int = Field(4, ge=1, le=10000)


class FunctionDef(BaseModel):
    """A function tool: name, description, JSON-schema parameters."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = Field("", max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    """One entry of `tools` (function tools only)."""

    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(BaseModel):
    """`tool_choice` naming one function."""

    type: Literal["function"]
    function: dict[str, str]


class JsonSchemaFormat(BaseModel):
    """`response_format.json_schema`: a named schema."""

    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`response_format`: plain text, any JSON object, or JSON following a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format json_schema needs its json_schema object")
        return self


class ChatCompletionRequest(SamplingFields):
    """Body of `POST /v1/chat/completions` (with optional `documents` and `rag` context,
    `tools` for tool calling and `response_format` for structured output)."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    documents: list[DocumentIn] | None = Field(None, max_length=64)
    rag: RagQuery | None = None
    model_config = ConfigDict(extra="allow")  # unknown fields are refused by name (routes)

    tools: list[ToolDef] | None = Field(None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None


class RagChatRequest(BaseModel):
    """Body of `POST /v1/rag/chat`: a question answered from a collection, with sources."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., min_length=1, max_length=32_000)
    collection: str = Field(..., min_length=1, max_length=64)
    top_k: int = Field(4, ge=1, le=10000)
    stream: bool = False
    system: str | None = Field(None, max_length=32_000)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    model: str | None = Field(None, max_length=256)
    ragkv: RagkvOptions = Field(default_factory=RagkvOptions)


class CompletionRequest(SamplingFields):
    """Body of `POST /v1/completions` (a plain prompt, no chat template)."""

    prompt: str | list[str] | list[int] = Field(...)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and isinstance(value[0], str) and len(value) != 1:
            raise ValueError("one prompt per request (batch prompts are not supported)")
        if isinstance(value, list) and not value:
            raise ValueError("prompt is empty")
        return value


class ModelRuntimeInfo(BaseModel):
    """How the model runs here: ops backend (torch or triton), device, weight/KV dtype, and
    decode steps: `native` (one call a step, on CPU) or `torch`, on weights of `decode_dtype`."""

    backend: str
    device: str
    dtype: str
    decode: str
    decode_dtype: str


class ModelCard(BaseModel):
    """One model, OpenAI's shape plus the context length and how it runs (`ragkv`)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ragkv"
    context_length: int
    ragkv: ModelRuntimeInfo | None = None
