"""``Outcome``: what one grader function returns before ``run_grader`` adds name, type and timing."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunery.graders.result import GraderErrors, TokenUsage


@dataclass(slots=True)
class Outcome:
    reward: float
    errors: GraderErrors = field(default_factory=GraderErrors)
    scores: dict[str, float] = field(default_factory=dict)
    usage: dict[str, TokenUsage] = field(default_factory=dict)
    sampled_model_name: str | None = None
    detail: str | None = None  # a human-readable reason when an error flag is set
