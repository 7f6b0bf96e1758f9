"""The ``string_check`` grader: eq / ne / like (contains) / ilike (contains, case-insensitive) → 1 or 0."""

from __future__ import annotations

from typing import Any

from tunery.graders.outcome import Outcome
from tunery.graders.specs import GraderStringCheck
from tunery.graders.templates import render


def grade_string_check(grader: GraderStringCheck, *, sample: dict[str, Any], item: dict[str, Any]) -> Outcome:
    text = render(grader.input, sample=sample, item=item, param="input")
    reference = render(grader.reference, sample=sample, item=item, param="reference")
    if grader.operation == "eq":
        passed = text == reference
    elif grader.operation == "ne":
        passed = text != reference
    elif grader.operation == "like":
        passed = reference in text
    else:
        passed = reference.casefold() in text.casefold()
    return Outcome(reward=1.0 if passed else 0.0)
