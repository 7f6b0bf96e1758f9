"""Chat completion wire objects: ``ChatCompletion`` and ``ChatCompletionChunk`` as the openai SDK parses them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from tunery import __version__
from tunery.services.chat import ChoiceDelta, Completion, Usage

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
