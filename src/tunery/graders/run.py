"""``run_grader``: grade one sample with any grader type and wrap the outcome as a ``GraderResult``.

Dispatches to one function per grader type; turns per-sample failures (an unknown template variable, a
judge error, a formula that cannot be evaluated) into ``metadata.errors`` flags. Definition errors are
``validate_grader``'s job and raise ``InvalidGrader``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from tunery.graders.errors import InvalidGrader, TemplateVariableError
from tunery.graders.formula import FormulaError, parse_formula
from tunery.graders.judge import Judge
from tunery.graders.model_graders import grade_label_model, grade_score_model
from tunery.graders.outcome import Outcome
from tunery.graders.python_grader import grade_python
from tunery.graders.result import GraderMetadata, GraderResult, TokenUsage
from tunery.graders.sandbox import PythonSandbox
from tunery.graders.specs import (
    Grader,
    GraderLabelModel,
    GraderMulti,
    GraderPython,
    GraderScoreModel,
    GraderStringCheck,
    GraderTextSimilarity,
)
from tunery.graders.string_check import grade_string_check
from tunery.graders.text_similarity import grade_text_similarity

log = logging.getLogger(__name__)


def run_grader(
    grader: Grader,
    *,
    sample: dict[str, Any],
    item: dict[str, Any] | None = None,
    judge: Judge | None = None,
    sandbox: PythonSandbox | None = None,
) -> GraderResult:
    """Grade ``sample`` against ``item``; never raises for a failure of this one sample."""
    started = time.perf_counter()
    outcome = _outcome(grader, sample=sample, item=item or {}, judge=judge, sandbox=sandbox)
    usage_total = sum(u.total_tokens for u in outcome.usage.values()) if outcome.usage else None
    return GraderResult(
        reward=outcome.reward,
        metadata=GraderMetadata(
            name=grader.name,
            type=grader.type,
            errors=outcome.errors,
            execution_time=time.perf_counter() - started,
            scores=outcome.scores,
            token_usage=usage_total
            if usage_total is not None
            else (0 if isinstance(grader, GraderScoreModel | GraderLabelModel) else None),
            sampled_model_name=outcome.sampled_model_name,
        ),
        sub_rewards=dict(outcome.scores),
        model_grader_token_usage_per_model=outcome.usage,
        detail=outcome.detail,
    )


def _outcome(
    grader: Grader, *, sample: dict[str, Any], item: dict[str, Any], judge: Judge | None, sandbox: PythonSandbox | None
) -> Outcome:
    try:
        if isinstance(grader, GraderStringCheck):
            return grade_string_check(grader, sample=sample, item=item)
        if isinstance(grader, GraderTextSimilarity):
            return grade_text_similarity(grader, sample=sample, item=item)
        if isinstance(grader, GraderPython):
            return grade_python(grader, sample=sample, item=item, sandbox=sandbox)
        if isinstance(grader, GraderScoreModel):
            return grade_score_model(grader, sample=sample, item=item, judge=judge)
        if isinstance(grader, GraderLabelModel):
            return grade_label_model(grader, sample=sample, item=item, judge=judge)
        return _grade_multi(grader, sample=sample, item=item, judge=judge, sandbox=sandbox)
    except TemplateVariableError as exc:
        outcome = Outcome(reward=0.0, detail=str(exc))
        outcome.errors.invalid_variable_error = True
        outcome.errors.sample_parse_error = exc.sample_parse
        return outcome
    except InvalidGrader:
        raise  # a definition error (e.g. cosine without an embedding model): the caller's 400
    except Exception as exc:  # a metric library failing on odd input: this sample's error, not a crash
        log.exception("grader %r (%s) failed", grader.name, grader.type)
        outcome = Outcome(reward=0.0, detail=f"The {grader.type} grader failed: {exc!r}")
        outcome.errors.other_error = True
        return outcome


def _grade_multi(
    grader: GraderMulti,
    *,
    sample: dict[str, Any],
    item: dict[str, Any],
    judge: Judge | None,
    sandbox: PythonSandbox | None,
) -> Outcome:
    invalid = grader.invalid_grade if grader.invalid_grade is not None else 0.0
    outcome = Outcome(reward=invalid)
    children = grader.children()
    try:
        formula = parse_formula(grader.calculate_output, set(children))
    except FormulaError as exc:
        outcome.errors.formula_parse_error = True
        outcome.detail = str(exc)
        return outcome
    for key, child in children.items():
        result = _outcome(child, sample=sample, item=item, judge=judge, sandbox=sandbox)
        outcome.scores[key] = result.reward
        outcome.errors.merge(result.errors)
        for model, usage in result.usage.items():
            outcome.usage.setdefault(model, TokenUsage()).add(usage)
        outcome.sampled_model_name = outcome.sampled_model_name or result.sampled_model_name
        if result.detail and not outcome.detail:
            outcome.detail = f"{key}: {result.detail}"
    try:
        value = formula.evaluate(outcome.scores)
    except (ArithmeticError, ValueError) as exc:
        outcome.errors.other_error = True
        outcome.detail = f"calculate_output could not be evaluated: {exc}"
        return outcome
    if not math.isfinite(value):
        outcome.errors.other_error = True
        outcome.detail = f"calculate_output gave {value}"
        return outcome
    outcome.reward = value
    return outcome
