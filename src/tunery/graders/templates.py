"""``{{item.*}}`` / ``{{sample.*}}`` templates: find the variables in a string and render them.

Paths are dotted keys with list indices (``{{ sample.output_tools[0].function.name }}``). A string value
is inserted as is; anything else as compact JSON (spec §1.2). A path that does not resolve raises
``TemplateVariableError``; a bad namespace or path syntax raises ``InvalidGrader`` (a definition error).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from tunery.graders.errors import InvalidGrader, TemplateVariableError

_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}")
_STEP = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_\-]*)|\[(\d+)\]")
NAMESPACES = ("item", "sample")
SAMPLE_FIELDS = ("output_text", "output_json", "output_tools", "choices", "output_audio")


@dataclass(frozen=True, slots=True)
class Variable:
    """A parsed placeholder: its namespace and the keys / indices that follow."""

    text: str
    namespace: str
    steps: tuple[str | int, ...]


def variables(template: str, *, param: str) -> list[Variable]:
    """Every placeholder in ``template``; ``InvalidGrader`` naming ``param`` for a malformed one."""
    found = []
    for match in _PLACEHOLDER.finditer(template):
        found.append(_parse(match.group(1).strip(), param))
    return found


def _parse(text: str, param: str) -> Variable:
    namespace, _, _rest = text.partition(".")
    if namespace not in NAMESPACES:
        raise InvalidGrader(
            f"Invalid template variable '{{{{{text}}}}}' in '{param}': the namespace must be 'item' or 'sample'.",
            param=param,
        )
    steps: list[str | int] = []
    position = len(namespace)
    while position < len(text):
        match = _STEP.match(text, position)
        if match is None or match.end() == position:
            raise InvalidGrader(f"Invalid template variable '{{{{{text}}}}}' in '{param}'.", param=param)
        steps.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        position = match.end()
    if not steps or not isinstance(steps[0], str):
        raise InvalidGrader(
            f"Invalid template variable '{{{{{text}}}}}' in '{param}': name a variable, "
            f"e.g. '{{{{{namespace}.field}}}}'.",
            param=param,
        )
    if namespace == "sample" and steps[0] not in SAMPLE_FIELDS:
        raise InvalidGrader(
            f"Unknown sample variable '{{{{{text}}}}}' in '{param}'; the sample has {', '.join(SAMPLE_FIELDS)}.",
            param=param,
        )
    return Variable(text=text, namespace=namespace, steps=tuple(steps))


def check(template: str, *, param: str, item_fields: set[str] | None) -> None:
    """Raise ``InvalidGrader`` for a malformed placeholder or one naming an item field not in ``item_fields``."""
    for variable in variables(template, param=param):
        if variable.namespace == "item" and item_fields is not None and variable.steps[0] not in item_fields:
            raise InvalidGrader(
                f"The template '{{{{{variable.text}}}}}' in '{param}' names the item field "
                f"'{variable.steps[0]}', which the item schema does not have.",
                param=param,
            )


def render(template: str, *, sample: dict[str, Any], item: dict[str, Any], param: str = "template") -> str:
    """``template`` with every placeholder replaced by its value."""

    def value(match: re.Match[str]) -> str:
        variable = _parse(match.group(1).strip(), param)
        found = resolve(variable, sample=sample, item=item)
        return found if isinstance(found, str) else json.dumps(found, separators=(",", ":"), ensure_ascii=False)

    return _PLACEHOLDER.sub(value, template)


def resolve(variable: Variable, *, sample: dict[str, Any], item: dict[str, Any]) -> Any:
    node: Any = item if variable.namespace == "item" else sample
    for step in variable.steps:
        if (isinstance(step, int) and isinstance(node, list) and -len(node) <= step < len(node)) or (
            isinstance(step, str) and isinstance(node, dict) and step in node
        ):
            node = node[step]
        else:
            parse_error = variable.namespace == "sample" and variable.steps[0] == "output_json"
            raise TemplateVariableError(f"{variable.namespace}.{_join(variable.steps)}", sample_parse=parse_error)
    return node


def _join(steps: tuple[str | int, ...]) -> str:
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out
