"""Typed errors for grader definitions; a bad grader is a 400 naming the offending ``param`` path.

Only definition errors raise: a grader that fails while grading one sample is reported in
``GraderResult.metadata.errors`` instead (see ``result.py``).
"""

from __future__ import annotations

from tunery.domain.errors import InvalidRequest


class InvalidGrader(InvalidRequest):
    """The grader definition is invalid (unknown type or operation, bad template or formula...)."""

    default_code = "invalid_grader"


class TemplateVariableError(Exception):
    """A template names a variable absent from the item or sample (``invalid_variable_error``)."""

    def __init__(self, path: str, *, sample_parse: bool = False) -> None:
        super().__init__(f"The template variable '{path}' does not exist in this {path.split('.', 1)[0]}.")
        self.path = path
        self.sample_parse = sample_parse
