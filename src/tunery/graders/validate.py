"""Checks a parsed grader beyond its schema: templates, formula, python source, metric availability.

Raises ``InvalidGrader`` naming the offending ``param`` path (e.g. ``grader.graders.a.reference``).
Runs no user code and calls no model.
"""

from __future__ import annotations

from tunery.graders.errors import InvalidGrader
from tunery.graders.formula import FormulaError, parse_formula
from tunery.graders.python_grader import check_source
from tunery.graders.specs import (
    EvalItem,
    Grader,
    GraderLabelModel,
    GraderMulti,
    GraderPython,
    GraderScoreModel,
    GraderStringCheck,
    GraderTextSimilarity,
    InputImage,
    InputText,
)
from tunery.graders.templates import check
from tunery.graders.text_similarity import COSINE_UNAVAILABLE


def validate_grader(grader: Grader, *, item_fields: set[str] | None = None, param: str = "grader") -> None:
    """Raise ``InvalidGrader`` (a 400) for the first problem; ``item_fields`` enables item-name checks."""
    if isinstance(grader, GraderStringCheck | GraderTextSimilarity):
        check(grader.input, param=f"{param}.input", item_fields=item_fields)
        check(grader.reference, param=f"{param}.reference", item_fields=item_fields)
        if isinstance(grader, GraderTextSimilarity) and grader.evaluation_metric == "cosine":
            raise InvalidGrader(COSINE_UNAVAILABLE, param=f"{param}.evaluation_metric")
    elif isinstance(grader, GraderPython):
        check_source(grader, param=param)
    elif isinstance(grader, GraderScoreModel | GraderLabelModel):
        for index, message in enumerate(grader.input):
            _check_message(message, param=f"{param}.input[{index}].content", item_fields=item_fields)
    elif isinstance(grader, GraderMulti):
        children = grader.children()
        for key, child in children.items():
            validate_grader(child, item_fields=item_fields, param=f"{param}.graders.{key}")
        try:
            parse_formula(grader.calculate_output, set(children))
        except FormulaError as exc:
            raise InvalidGrader(str(exc), param=f"{param}.calculate_output") from None


def _check_message(message: EvalItem, *, param: str, item_fields: set[str] | None) -> None:
    parts = message.content if isinstance(message.content, list) else [message.content]
    for part in parts:
        if isinstance(part, str):
            check(part, param=param, item_fields=item_fields)
        elif isinstance(part, InputText):
            check(part.text, param=param, item_fields=item_fields)
        elif isinstance(part, InputImage):
            check(part.image_url, param=param, item_fields=item_fields)
