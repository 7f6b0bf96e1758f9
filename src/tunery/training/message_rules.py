"""The rules for one chat message, and for tool and function definitions, over parsed JSON.

Pure functions; no I/O, no line numbers, and nothing about whole examples (``training.example_rules``
decides which messages an example needs and calls these). Each rule appends ``Issue``s to an ``out`` list
instead of raising, so one line can report several problems; a message names the field path, e.g.
``messages[2].role 'robot' is not one of ...``. Shapes follow spec §5.2 (messages, ``weight``) and
§5.3 (``tool_calls``, ``tools``, legacy ``function_call``/``functions``).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

ROLES = ("system", "user", "assistant", "tool", "function", "developer")
MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "function_call", "weight", "tool_calls", "tool_call_id", "refusal"}
)
# Keys that only make sense on one role; "weight" on another role is an invalid_weight problem instead.
_ROLE_ONLY_KEYS = {
    "tool_calls": "assistant",
    "function_call": "assistant",
    "refusal": "assistant",
    "tool_call_id": "tool",
}
# What each role may carry ("weight" included everywhere: it has its own check and code).
_ROLE_KEYS = {role: MESSAGE_KEYS - {key for key, only in _ROLE_ONLY_KEYS.items() if only != role} for role in ROLES}
_PART_ROLES = frozenset({"system", "user", "developer"})  # roles whose content may be a list of parts
_UNSUPPORTED_PART_TYPES = frozenset({"image_url", "input_audio", "file"})
_PREVIEW_CHARS = 40


class Issue(NamedTuple):
    """One problem with one example: a stable snake_case code and a message that names the field path."""

    code: str
    message: str


def check_messages(messages: Any, path: str, out: list[Issue]) -> bool:
    """Check a list of messages; True when the list and every message in it are valid."""
    if not isinstance(messages, list) or not messages:
        what = "an empty list" if isinstance(messages, list) else json_kind(messages)
        out.append(Issue("missing_messages_list", f"{path} must be a non-empty list of message objects; got {what}"))
        return False
    before = len(out)
    for index, message in enumerate(messages):
        check_message(message, f"{path}[{index}]", out)
    return len(out) == before


# --------------------------------------------------------------------------------------- messages
def check_message(message: Any, path: str, out: list[Issue], *, weight_allowed: bool = True) -> None:
    """Append the problems of one message at ``path`` (e.g. ``messages[2]``) to ``out``."""
    if not isinstance(message, dict):
        out.append(
            Issue(
                "invalid_message",
                f'{path} must be an object like {{"role": "user", "content": "..."}}; got {json_kind(message)}',
            )
        )
        return
    if "role" not in message:
        out.append(Issue("message_missing_key", f"{path} has no 'role' (one of {', '.join(ROLES)})"))
        return
    role = message["role"]
    if role not in ROLES:
        out.append(Issue("unrecognized_role", f"{path}.role {_preview(role)} is not one of {', '.join(ROLES)}"))
        return
    if not message.keys() <= _ROLE_KEYS[role]:
        _check_message_keys(message, role, path, out)
    _check_content(message, role, path, out)
    if "weight" in message:
        _check_weight(message["weight"], role, path, weight_allowed, out)
    if "name" in message:
        _check_name(message["name"], path, out)
    if role == "assistant":
        if "tool_calls" in message or "function_call" in message:
            _check_assistant_calls(message, path, out)
    elif role == "tool":
        _check_tool_call_id(message, path, out)
    elif role == "function" and "name" not in message:
        out.append(Issue("message_missing_key", f"{path} (function) has no 'name': the function whose result it is"))


def _check_message_keys(message: dict[str, Any], role: str, path: str, out: list[Issue]) -> None:
    unknown = sorted(message.keys() - MESSAGE_KEYS)
    if unknown:
        out.append(
            Issue(
                "message_unrecognized_key",
                f"{path} has unrecognized key(s) {', '.join(repr(k) for k in unknown)}; a message may only "
                "have role, content, name, function_call, weight, tool_calls, tool_call_id, refusal",
            )
        )
    for key, only_role in _ROLE_ONLY_KEYS.items():
        if key in message and role != only_role:
            out.append(Issue("message_unrecognized_key", f"{path}.{key} is only allowed on {only_role} messages"))


def _has_calls(message: dict[str, Any]) -> bool:
    return bool(message.get("tool_calls") or message.get("function_call"))


def _check_content(message: dict[str, Any], role: str, path: str, out: list[Issue]) -> None:
    content = message.get("content")
    if type(content) is str and content and not content.isspace():
        return
    if role == "assistant" and _has_calls(message) and (content is None or content == ""):
        return  # a reply that only calls tools needs no text
    if "content" not in message:
        need = "content, tool_calls or function_call" if role == "assistant" else "content"
        out.append(Issue("message_missing_key", f"{path} ({role}) has no 'content'; it needs {need}"))
    elif content is None:
        out.append(Issue("missing_content", f"{path}.content is null; it must be non-empty text"))
    elif isinstance(content, str):
        empty = "only whitespace" if content else "empty"
        out.append(Issue("missing_content", f"{path}.content is {empty}; it must be non-empty text"))
    elif isinstance(content, list) and role in _PART_ROLES:
        _check_content_parts(content, f"{path}.content", out)
    else:
        allowed = "a string or a list of text parts" if role in _PART_ROLES else "a string"
        out.append(
            Issue("invalid_content", f"{path}.content must be {allowed} for {role} messages; got {json_kind(content)}")
        )


def _check_content_parts(parts: list[Any], path: str, out: list[Issue]) -> None:
    if not parts:
        out.append(Issue("missing_content", f"{path} is an empty list; it must hold at least one text part"))
    for index, part in enumerate(parts):
        where = f"{path}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                out.append(Issue("invalid_content", f"{where}.text must be a string; got {json_kind(text)}"))
            elif not text or text.isspace():
                out.append(Issue("missing_content", f"{where}.text is empty; it must be non-empty text"))
        elif isinstance(kind, str) and kind in _UNSUPPORTED_PART_TYPES:
            out.append(
                Issue(
                    "unsupported_content",
                    f"{where} is an {kind} part; Tunery's base models are text-only, "
                    "so content parts must have type 'text'",
                )
            )
        elif isinstance(part, dict):
            out.append(Issue("invalid_content", f"{where}.type {_preview(kind)} is not supported; use 'text'"))
        else:
            out.append(
                Issue(
                    "invalid_content",
                    f'{where} must be an object like {{"type": "text", "text": "..."}}; got {json_kind(part)}',
                )
            )


def _check_weight(weight: Any, role: str, path: str, allowed: bool, out: list[Issue]) -> None:
    if not allowed:
        out.append(Issue("invalid_weight", f"{path}.weight is not used in preference examples; remove it"))
    elif role != "assistant":
        out.append(
            Issue(
                "invalid_weight",
                f"{path}.weight is set on a {role} message; weight is only allowed on assistant messages",
            )
        )
    elif type(weight) is not int or weight not in (0, 1):  # bool is a subclass of int: reject true/false
        out.append(
            Issue(
                "invalid_weight",
                f"{path}.weight is {_preview(weight)}; it must be the number 0 (do not train on this "
                "message) or 1 (train on it)",
            )
        )


def _check_name(name: Any, path: str, out: list[Issue]) -> None:
    if not isinstance(name, str) or not name:
        out.append(Issue("invalid_name", f"{path}.name must be a non-empty string; got {json_kind(name)}"))


def _check_tool_call_id(message: dict[str, Any], path: str, out: list[Issue]) -> None:
    if "tool_call_id" not in message:
        out.append(
            Issue(
                "message_missing_key",
                f"{path} (tool) has no 'tool_call_id'; a tool message must name the tool call it answers "
                "(the id in the assistant's tool_calls)",
            )
        )
    elif not isinstance(message["tool_call_id"], str) or not message["tool_call_id"]:
        out.append(
            Issue(
                "invalid_tool_call_id",
                f"{path}.tool_call_id must be a non-empty string; got {json_kind(message['tool_call_id'])}",
            )
        )


def _check_assistant_calls(message: dict[str, Any], path: str, out: list[Issue]) -> None:
    if "tool_calls" in message:
        _check_tool_calls(message["tool_calls"], f"{path}.tool_calls", out)
    if "function_call" in message:
        problem = _function_problem(message["function_call"], require_arguments=True)
        if problem:
            out.append(Issue("invalid_function_call", f"{path}.function_call{problem}"))


def _check_tool_calls(calls: Any, path: str, out: list[Issue]) -> None:
    if not isinstance(calls, list) or not calls:
        what = "an empty list" if isinstance(calls, list) else json_kind(calls)
        out.append(
            Issue(
                "invalid_tool_calls",
                f'{path} must be a non-empty list of {{"id": ..., "type": "function", "function": '
                f'{{"name": ..., "arguments": "..."}}}}; got {what}',
            )
        )
        return
    for index, call in enumerate(calls):
        problem = _tool_call_problem(call)
        if problem:
            out.append(Issue("invalid_tool_calls", f"{path}[{index}]{problem}"))


def _tool_call_problem(call: Any) -> str | None:
    """What is wrong with one tool call, as a suffix of its path; ``None`` when it is valid."""
    if not isinstance(call, dict):
        return f" must be an object with id, type and function; got {json_kind(call)}"
    if "id" not in call:
        return " has no 'id'"
    if not isinstance(call["id"], str) or not call["id"]:
        return f".id must be a non-empty string; got {json_kind(call['id'])}"
    if call.get("type") != "function":
        return f".type must be 'function'; got {_field(call, 'type')}"
    if "function" not in call:
        return " has no 'function'"
    problem = _function_problem(call["function"], require_arguments=True)
    return f".function{problem}" if problem else None


def _function_problem(function: Any, *, require_arguments: bool) -> str | None:
    """What is wrong with ``{"name", "arguments"}`` (a call) or ``{"name", ...}`` (a definition)."""
    if not isinstance(function, dict):
        return f" must be an object with name and arguments; got {json_kind(function)}"
    if not isinstance(function.get("name"), str) or not function["name"]:
        return f".name must be a non-empty string; got {_field(function, 'name')}"
    if require_arguments and not isinstance(function.get("arguments"), str):
        return (
            '.arguments must be a string holding JSON, e.g. "{\\"city\\": \\"Paris\\"}"; '
            f"got {_field(function, 'arguments')}"
        )
    return None


# ------------------------------------------------------------------------------ tool definitions
def check_tool_fields(holder: dict[str, Any], prefix: str, out: list[Issue]) -> None:
    """Check ``tools`` and ``parallel_tool_calls`` of a chat example or a preference ``input``."""
    if "tools" in holder:
        _check_tools(holder["tools"], f"{prefix}tools", out)
    if "parallel_tool_calls" in holder and not isinstance(holder["parallel_tool_calls"], bool):
        out.append(
            Issue(
                "invalid_parallel_tool_calls",
                f"{prefix}parallel_tool_calls must be true or false; got {json_kind(holder['parallel_tool_calls'])}",
            )
        )


def _check_tools(tools: Any, path: str, out: list[Issue]) -> None:
    if not isinstance(tools, list):
        out.append(
            Issue(
                "invalid_tools",
                f'{path} must be a list of {{"type": "function", "function": {{"name": ..., '
                f'"description": ..., "parameters": {{...}}}}}}; got {json_kind(tools)}',
            )
        )
        return
    for index, tool in enumerate(tools):
        where = f"{path}[{index}]"
        if not isinstance(tool, dict):
            problem: str | None = f" must be an object; got {json_kind(tool)}"
        elif tool.get("type") != "function":
            problem = f".type must be 'function'; got {_field(tool, 'type')}"
        elif "function" not in tool:
            problem = " has no 'function' (its name, description and parameters)"
        else:
            definition = _definition_problem(tool["function"])
            problem = f".function{definition}" if definition else None
        if problem:
            out.append(Issue("invalid_tools", f"{where}{problem}"))


def check_functions(functions: Any, out: list[Issue]) -> None:
    if not isinstance(functions, list):
        out.append(
            Issue(
                "invalid_functions",
                f'functions must be a list of {{"name": ..., "parameters": {{...}}}}; got {json_kind(functions)}',
            )
        )
        return
    for index, function in enumerate(functions):
        problem = _definition_problem(function)
        if problem:
            out.append(Issue("invalid_functions", f"functions[{index}]{problem}"))


def _definition_problem(function: Any) -> str | None:
    problem = _function_problem(function, require_arguments=False)
    if problem:
        return problem
    if "description" in function and not isinstance(function["description"], str):
        return f".description must be a string; got {json_kind(function['description'])}"
    if "parameters" in function and not isinstance(function["parameters"], dict):
        return f".parameters must be a JSON Schema object; got {json_kind(function['parameters'])}"
    return None


def _field(obj: dict[str, Any], key: str) -> str:
    """``it is missing`` or the JSON kind and value of ``obj[key]``, for messages."""
    return "nothing (it is missing)" if key not in obj else json_kind(obj[key])


def json_kind(value: Any) -> str:
    """Name a JSON value's type for a message, with a short preview of scalars: ``a number (2)``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({_preview(value)})"
    if isinstance(value, int | float):
        return f"a number ({_preview(value)})"
    if isinstance(value, str):
        return f"a string ({_preview(value)})" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _preview(value: Any) -> str:
    """A short rendering of a JSON value: strings in single quotes, others as JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if len(text) > _PREVIEW_CHARS:
        text = text[: _PREVIEW_CHARS - 1] + "…"
    return f"'{text}'" if isinstance(value, str) else text
