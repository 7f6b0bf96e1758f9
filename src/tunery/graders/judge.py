"""The ``Judge`` seam: how model graders reach a model Tunery serves, without knowing the engine.

The service layer adapts the chat service to this Protocol (``services/graders.py``); tests use a fake.
A judge raises any exception when the model cannot answer (unknown model, engine down); the grader
reports it as ``model_grader_server_error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class JudgeSampling:
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    max_tokens: int = 128


@dataclass(frozen=True, slots=True)
class JudgeUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class JudgeReply:
    text: str
    usage: JudgeUsage = field(default_factory=JudgeUsage)
    finish_reason: str = "stop"
    model: str | None = None


class Judge(Protocol):
    def complete(self, model: str, messages: list[ChatMessage], sampling: JudgeSampling) -> JudgeReply:
        """One answer of ``model`` to ``messages``."""
        ...
