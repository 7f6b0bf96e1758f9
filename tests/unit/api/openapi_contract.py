"""Validates response bodies against OpenAI's published OpenAPI schemas.

The document (MIT-licensed, see ``tests/spec/openai-openapi.LICENSE``) is kept in the repository, a copy of
``shared/spec/openai-openapi.yaml``: a contract check that skipped when the file was missing could never fail.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

SPEC = Path(__file__).resolve().parents[2] / "spec" / "openai-openapi.yaml"


@cache
def _validators() -> tuple[Any, dict[str, Any]]:
    import jsonschema
    import yaml
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    if not SPEC.is_file():
        raise FileNotFoundError(f"{SPEC} is missing: the OpenAPI contract tests need OpenAI's document there")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    document = _honour_nullable(yaml.load(SPEC.read_text(), Loader=loader))
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    registry = Registry().with_resource("openapi.yaml", resource)
    return jsonschema, {"registry": registry, "document": document}


def _honour_nullable(node: Any) -> Any:
    """The document says OpenAPI 3.1 but still marks many fields with 3.0's ``nullable: true`` (e.g. a
    stream chunk's ``finish_reason``); JSON Schema ignores that keyword, so spell it the 3.1 way."""
    if isinstance(node, list):
        return [_honour_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _honour_nullable(value) for key, value in node.items()}
    if converted.pop("nullable", False) is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def assert_matches(schema_name: str, body: Any) -> None:
    """Fail with the validator's message when ``body`` does not match ``#/components/schemas/<name>``."""
    jsonschema, ctx = _validators()
    schema = {"$ref": f"openapi.yaml#/components/schemas/{schema_name}"}
    validator = jsonschema.Draft202012Validator(schema, registry=ctx["registry"])
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{schema_name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
