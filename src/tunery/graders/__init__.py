"""Graders: score a model's answer (a *sample*) for one dataset row (an *item*); no web, no torch.

Reused by the grader endpoints, the Evals runner and (later) reinforcement fine-tuning. Shapes follow
OpenAI's ``Grader*`` / ``RunGraderResponse`` schemas; behaviour follows ``evals-graders-rft.md`` §1.

Public API (stable):

* ``parse_grader(raw, *, param="grader", allowed=GRADER_TYPES) -> Grader`` — a JSON object to a typed
  grader (discriminated union on ``type``: ``GraderStringCheck``, ``GraderTextSimilarity``,
  ``GraderPython``, ``GraderScoreModel``, ``GraderLabelModel``, ``GraderMulti``); raises ``InvalidGrader``
  (an ``InvalidRequest``, so a 400) whose ``param`` is the path of the bad field, e.g. ``grader.operation``.
  The grader endpoints pass ``allowed=RUN_GRADER_TYPES`` (no top-level ``label_model``); evals pass the
  five eval types (no ``multi``).
* ``validate_grader(grader, *, item_fields=None, param="grader")`` — deeper checks (template namespaces
  and, when ``item_fields`` is given, that every ``{{item.x}}`` names a field; python source defines
  ``grade(sample, item)``; multi formula parses and names only its keys; ``cosine`` needs an embedding
  model, which Tunery has none of) → ``InvalidGrader`` naming ``param``.
* ``run_grader(grader, *, sample, item=None, judge=None, sandbox=None) -> GraderResult`` — ``reward``
  plus ``metadata`` {name, type, errors{...flags}, execution_time, scores, token_usage,
  sampled_model_name}, ``sub_rewards`` and ``model_grader_token_usage_per_model``. A failure of this one
  sample never raises: it sets a flag in ``metadata.errors`` and the reward is 0 (multi: ``invalid_grade``);
  ``result.detail`` then says why in words (not serialized: RunGraderResponse has no such field).
  It raises ``InvalidGrader`` only for a definition problem ``validate_grader`` would have caught.
  ``judge`` (a ``Judge``) is needed by score_model / label_model; ``sandbox`` (a ``PythonSandbox``)
  runs python graders (default: a shared pool with default ``SandboxLimits``).
* ``sample_from_text(text, *, parse_json=True, ...)`` — the ``sample`` namespace for one answer.
* ``passes(grader, reward)`` — an eval's pass/fail for a reward (spec §1.9).
* ``ResponseFormat(schema).violation(text)``, ``parse_failure(grader, detail)``, ``schema_error(schema)`` —
  an RFT ``response_format``: why an answer does not conform, and its zero-reward ``sample_parse_error`` result.
* ``Judge`` Protocol: ``complete(model, messages: list[ChatMessage], sampling: JudgeSampling) ->
  JudgeReply(text, usage: JudgeUsage, finish_reason, model)``.
"""

from __future__ import annotations

from tunery.graders.errors import InvalidGrader
from tunery.graders.judge import ChatMessage, Judge, JudgeReply, JudgeSampling, JudgeUsage
from tunery.graders.response_format import ResponseFormat, parse_failure, schema_error
from tunery.graders.result import GraderErrors, GraderMetadata, GraderResult, TokenUsage
from tunery.graders.run import run_grader
from tunery.graders.sample import sample_from_text
from tunery.graders.sandbox import PythonSandbox, SandboxLimits
from tunery.graders.specs import (
    GRADER_TYPES,
    EvalItem,
    Grader,
    GraderLabelModel,
    GraderMulti,
    GraderPython,
    GraderScoreModel,
    GraderStringCheck,
    GraderTextSimilarity,
    parse_grader,
)
from tunery.graders.validate import validate_grader

RUN_GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "multi")
EVAL_GRADER_TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model")


def passes(grader: Grader, reward: float) -> bool:
    """Whether ``reward`` passes in an eval: string_check / label_model at 1; others at ``pass_threshold``
    (``≥``), by default the middle of the score range (0.5 for [0, 1])."""
    if isinstance(grader, GraderStringCheck | GraderLabelModel):
        return reward >= 1.0
    threshold = getattr(grader, "pass_threshold", None)
    if threshold is None:
        low, high = grader.bounds if isinstance(grader, GraderScoreModel) else (0.0, 1.0)
        threshold = (low + high) / 2
    return reward >= threshold


__all__ = [
    "EVAL_GRADER_TYPES",
    "GRADER_TYPES",
    "RUN_GRADER_TYPES",
    "ChatMessage",
    "EvalItem",
    "Grader",
    "GraderErrors",
    "GraderLabelModel",
    "GraderMetadata",
    "GraderMulti",
    "GraderPython",
    "GraderResult",
    "GraderScoreModel",
    "GraderStringCheck",
    "GraderTextSimilarity",
    "InvalidGrader",
    "Judge",
    "JudgeReply",
    "JudgeSampling",
    "JudgeUsage",
    "PythonSandbox",
    "ResponseFormat",
    "SandboxLimits",
    "TokenUsage",
    "parse_failure",
    "parse_grader",
    "passes",
    "run_grader",
    "sample_from_text",
    "schema_error",
    "validate_grader",
]
