"""Checks a sampled answer against a ``response_format`` JSON schema, before any grader sees it.

Reinforcement fine-tuning with ``method.reinforcement.response_format`` (evals-graders-rft.md §3.2): an answer
that is not JSON, or JSON that does not match the schema, is a ``sample_parse_error`` ("not valid JSON or not
matching ``response_format``", §1.11) and scores 0 without calling the grader; a conforming answer is graded
with ``sample.output_json`` filled. The trainer samples inside the schema (``training.constrained``), so this
is the safety net: an answer cut off at ``max_new_tokens``, or one breaking a keyword the sampler's grammar
could not express. The schema checks use ``jsonschema`` (Draft 2020-12); ``schema_error`` (at job create)
also refuses a schema llguidance cannot compile, since sampling could not be constrained to it.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import llguidance

from tunery.graders.result import GraderErrors, GraderMetadata, GraderResult
from tunery.graders.specs import Grader

MAX_DETAIL_CHARS = 300
# How RFT sampling writes JSON under a schema (``training.constrained``, llguidance's JSON compiler options):
# compact, ``json.dumps``'s separators, no other whitespace; keywords llguidance does not implement are ignored
# (this check still applies them). A schema's own "x-guidance" options override these.
SAMPLING_JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "lenient": True,
}


class ResponseFormat:
    """One job's ``response_format`` schema, compiled once; ``violation`` says why an answer fails it."""

    def __init__(self, schema: dict[str, Any]) -> None:
        jsonschema.Draft202012Validator.check_schema(schema)  # raises SchemaError for a malformed schema
        self._validator = jsonschema.Draft202012Validator(schema)

    def violation(self, text: str) -> str | None:
        """Why ``text`` does not conform (not JSON, or the first schema error); ``None`` when it does."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            return f"The answer is not valid JSON ({exc.msg} at column {exc.colno}), as response_format requires."
        except RecursionError:
            return "The answer is JSON nested too deeply to read."
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        if error is None:
            return None
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        return f"The answer does not match response_format's schema: output_json{where}: {error.message}"[
            :MAX_DETAIL_CHARS
        ]


def schema_error(schema: dict[str, Any]) -> str | None:
    """Why ``schema`` is not a usable JSON schema, or one RFT sampling cannot be constrained to (a dangling
    ``$ref``, a look-around ``pattern``, an unsatisfiable schema...); ``None`` when it is usable."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return str(exc.message)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults=SAMPLING_JSON_OPTIONS)  # type: ignore[arg-type]
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        return f"sampling cannot be constrained to it ({'; '.join(messages)})"[:MAX_DETAIL_CHARS]
    return None


def parse_failure(grader: Grader, detail: str) -> GraderResult:
    """The result of an answer that failed ``response_format``: reward 0, ``sample_parse_error`` set."""
    return GraderResult(
        reward=0.0,
        metadata=GraderMetadata(name=grader.name, type=grader.type, errors=GraderErrors(sample_parse_error=True)),
        detail=detail,
    )
