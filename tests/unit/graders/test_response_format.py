"""An RFT ``response_format``: which answers conform to its JSON schema, and the zero-reward result of one
that does not.

Run alone: ``.venv/bin/pytest tests/unit/graders/test_response_format.py``
"""

from __future__ import annotations

from typing import Any

import pytest

from tunery.graders import ResponseFormat, parse_failure, parse_grader, schema_error

SCHEMA = {
    "type": "object",
    "properties": {"solution": {"type": "string"}, "steps": {"type": "integer"}},
    "required": ["solution"],
    "additionalProperties": False,
}


def test_a_conforming_answer_has_no_violation() -> None:
    assert ResponseFormat(SCHEMA).violation('{"solution": "4", "steps": 2}') is None


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("The answer is 4", "not valid JSON (Expecting value at column 1)"),
        ('{"steps": 2}', "output_json: 'solution' is a required property"),
        ('{"solution": 4}', "output_json.solution: 4 is not of type 'string'"),
        ('{"solution": "4", "extra": 1}', "Additional properties are not allowed ('extra' was unexpected)"),
        ('["4"]', "output_json: ['4'] is not of type 'object'"),
    ],
)
def test_a_violation_says_what_is_wrong(answer: str, expected: str) -> None:
    why = ResponseFormat(SCHEMA).violation(answer)
    assert why is not None
    assert expected in why


def test_a_parse_failure_scores_zero_with_sample_parse_error() -> None:
    grader = parse_grader({"type": "string_check", "name": "exact", "input": "{{sample.output_json.solution}}",
                           "reference": "{{item.answer}}", "operation": "eq"})  # fmt: skip
    result = parse_failure(grader, "The answer is not valid JSON")
    assert result.reward == 0.0
    assert result.metadata.errors.sample_parse_error
    assert (result.metadata.name, result.metadata.type) == ("exact", "string_check")
    assert result.detail == "The answer is not valid JSON"


def test_schema_error_names_a_malformed_schema() -> None:
    assert schema_error(SCHEMA) is None
    assert "objekt" in (schema_error({"type": "objekt"}) or "")


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "'/$defs/missing' does not exist"),
        ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
        ({"allOf": [{"type": "string"}, {"type": "integer"}]}, "Unsatisfiable schema"),
    ],
)
def test_schema_error_names_a_schema_sampling_cannot_be_constrained_to(schema: dict[str, Any], expected: str) -> None:
    # Valid JSON Schema, but RFT samples inside the schema (training.constrained) and llguidance cannot compile it.
    why = schema_error(schema)
    assert why is not None
    assert why.startswith("sampling cannot be constrained to it")
    assert expected in why
    assert schema_error({"type": "object", "properties": {"e": {"type": "string", "format": "email"}}}) is None
