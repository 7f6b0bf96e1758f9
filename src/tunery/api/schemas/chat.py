"""Chat completion wire objects: the request as the openai SDK sends it, and ``ChatCompletion`` /
``ChatCompletionChunk`` as it parses them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from tunery import __version__
from tunery.api.schemas.common import Int64, Loose, one_of
from tunery.services.chat import (
    MAX_CHOICES,
    MAX_MESSAGES,
    MAX_STOP_SEQUENCES,
    ROLES,
    ChatRequest,
    ChoiceDelta,
    Completion,
    Usage,
)

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
assert set(Role.__args__) == ROLES  # type: ignore[attr-defined]


def _content(value: Any) -> str | list[Any] | None:
    if value is None or isinstance(value, (str, list)):
        return value
    raise ValueError("must be a string or a list of content parts")


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and len(value) <= MAX_STOP_SEQUENCES and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise ValueError(f"must be a string or a list of up to {MAX_STOP_SEQUENCES} strings")


_CONTENT_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "array", "items": {}}, {"type": "null"}]}
_STOP_SCHEMA = {
    "anyOf": [
        {"type": "string"},
        {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP_SEQUENCES},
        {"type": "null"},
    ]
}


class ChatMessageIn(Loose):
    """One message; fields beyond these (``name``, ``tool_calls``, ...) are kept for the chat template."""

    role: Role
    content: Annotated[str | list[Any] | None, *one_of(_content, _CONTENT_SCHEMA)] = None


class StreamOptions(Loose):
    include_usage: bool = False


class ChatCompletionRequest(Loose):
    """``POST /chat/completions`` (OpenAI's ``CreateChatCompletionRequest``; unknown fields are accepted)."""

    model: str | None = Field(None, description="A deployment, fine-tuned model, checkpoint or base model name.")
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] | None = None
    stop: Annotated[tuple[str, ...], *one_of(_stop, _STOP_SCHEMA)] = ()
    seed: Int64 | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None

    def to_domain(self) -> ChatRequest:
        return ChatRequest(
            model=self.model,
            messages=[message.model_dump(exclude_unset=True) for message in self.messages],
            max_tokens=self.max_completion_tokens or self.max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            n=self.n or 1,
            stop=self.stop,
            seed=self.seed,
            stream=bool(self.stream),
            include_usage=bool(self.stream_options and self.stream_options.include_usage),
            tools=self.tools,
        )


SYSTEM_FINGERPRINT = f"fp_tunery_{__version__}"


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def from_domain(cls, usage: Usage) -> CompletionUsage:
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class Choice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str = SYSTEM_FINGERPRINT

    @classmethod
    def from_domain(cls, completion: Completion) -> ChatCompletion:
        return cls(
            id=completion.id,
            created=completion.created,
            model=completion.model,
            choices=[
                Choice(index=i, message=ChatCompletionMessage(content=text), finish_reason=reason)
                for i, (text, reason) in enumerate(zip(completion.texts, completion.finish_reasons, strict=True))
            ],
            usage=CompletionUsage.from_domain(completion.usage),
        )


def chunk(
    completion_id: str, created: int, model: str, choices: list[dict[str, Any]], usage: Usage | None = None
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` as a plain dict (it is serialised straight into an SSE line)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        body["usage"] = CompletionUsage.from_domain(usage).model_dump()
    return body


def delta_choice(delta: ChoiceDelta, *, first: bool) -> dict[str, Any]:
    content: dict[str, Any] = {"content": delta.text} if delta.text or not delta.finish_reason else {}
    if first:
        content = {"role": "assistant", **content}
    return {"index": delta.index, "delta": content, "finish_reason": delta.finish_reason, "logprobs": None}
