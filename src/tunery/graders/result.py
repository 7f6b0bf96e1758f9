"""What a grader returns: a reward plus metadata shaped like OpenAI's ``RunGraderResponse``.

A failure while grading one sample (a raising python grader, an unreachable judge, an unknown template
variable) is not an exception: it sets a flag in ``metadata.errors`` and the reward falls to 0 (or the
multi grader's ``invalid_grade``).
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class GraderErrors(BaseModel):
    """Error flags of one grading (``RunGraderResponse.metadata.errors``)."""

    formula_parse_error: bool = False
    sample_parse_error: bool = False
    truncated_observation_error: bool = False
    unresponsive_reward_error: bool = False
    invalid_variable_error: bool = False
    other_error: bool = False
    python_grader_server_error: bool = False
    python_grader_server_error_type: str | None = None
    python_grader_runtime_error: bool = False
    python_grader_runtime_error_details: str | None = None
    model_grader_server_error: bool = False
    model_grader_refusal_error: bool = False
    model_grader_parse_error: bool = False
    model_grader_server_error_details: str | None = None

    def any(self) -> bool:
        return any(value is True for value in self.model_dump().values())

    def merge(self, other: GraderErrors) -> None:
        """OR the flags of ``other`` into these (a multi grader reports its children's errors)."""
        for key, value in other.model_dump().items():
            if value is True:
                setattr(self, key, True)
            elif isinstance(value, str) and not getattr(self, key):
                setattr(self, key, value)


# The error flags (``sample_parse_error``, ``invalid_variable_error`` ...): RFT metric events count each (rft §3.5).
ERROR_KINDS = tuple(name for name, info in GraderErrors.model_fields.items() if info.annotation is bool)


class TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0

    def add(self, other: TokenUsage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.cached_tokens += other.cached_tokens


class GraderMetadata(BaseModel):
    name: str
    type: str
    errors: GraderErrors = Field(default_factory=GraderErrors)
    execution_time: float = 0.0
    scores: dict[str, float] = Field(default_factory=dict)
    token_usage: int | None = None
    sampled_model_name: str | None = None


class GraderResult(BaseModel):
    """One grading: ``reward`` and its metadata; ``sub_rewards`` holds a multi grader's children."""

    reward: float
    metadata: GraderMetadata
    sub_rewards: dict[str, float] = Field(default_factory=dict)
    model_grader_token_usage_per_model: dict[str, TokenUsage] = Field(default_factory=dict)
    # Why grading failed, in words (e.g. "The template variable 'item.answer' does not exist in this
    # item."), for eval output items; not part of RunGraderResponse, so never serialized.
    detail: str | None = Field(default=None, exclude=True)

    @property
    def errored(self) -> bool:
        return self.metadata.errors.any()
