"""Messages as a chat template receives them: cleaned, and tool calls written out as text when it cannot read them.

``ChatTokenizer`` prepares every chat with ``prepare_messages`` before rendering it, so training, file checks
and inference all show a model the same text. Pure functions over message dicts; no templates are rendered
here (``ChatTokenizer`` finds out what a template supports, see ``TemplateSupport``) and nothing is tokenized.

Every template gets messages the way transformers' ``apply_chat_template`` passes them: ``None`` values
dropped, a reasoning trace under ``thinking`` and ``reasoning_content``, and no ``weight`` (whether a turn is
trained is returned beside the messages instead). Content-part lists of text (``[{"type": "text", "text":
...}]``) are joined with newlines, since Tunery's models are text-only and not every template reads lists.

Templates that mention neither ``tool_calls`` nor ``tools`` (SmolLM2's, for one) know nothing about tools
and would fail on, or silently drop, tool calls. For them the tool parts of OpenAI chats are written out as
text in the Hermes / Qwen2.5 convention, which many open models are trained on:

* an assistant's ``tool_calls`` (and a legacy ``function_call``) are appended to its content, one block per
  call, separated by newlines; ``arguments`` is parsed from its JSON string when it parses, else kept as the
  string::

      <tool_call>
      {"name": "get_current_weather", "arguments": {"location": "Paris", "format": "celsius"}}
      </tool_call>

  The block is part of the assistant turn, so it is trained on like any reply (unless ``weight`` is 0).
* ``tool`` and legacy ``function`` results become role ``tool`` messages (role ``user`` if the template
  cannot render other roles; consecutive results are then merged into one message) whose content is
  ``<tool_response>\\n...\\n</tool_response>``. They are never trained on.
* the ``tools`` definitions (legacy ``functions`` arrive here as tools) are appended to the first system
  message, or put in a new one at the start, as ``TOOLS_PROMPT``: a short instruction, the definitions as a
  JSON list inside ``<tools>\\n...\\n</tools>``, and the ``<tool_call>`` format.

Templates that mention ``tool_calls`` or ``tools`` render them their own way: they get the messages and
tools unchanged (besides the clean-up above).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tunery.domain.errors import InvalidRequest

Message = Mapping[str, Any]

# Message fields a template may read a reasoning trace from; transformers fills the first two from any of them.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_MENTIONS_TOOLS = re.compile(r"\b(?:tool_calls|tools)\b")
_RESULT_ROLES = frozenset({"tool", "function"})
_SYSTEM_ROLES = frozenset({"system", "developer"})
TOOLS_PROMPT = (
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query. "
    "The functions you can call are described within <tools></tools> XML tags:\n"
    "<tools>\n{tools}\n</tools>\n\n"
    "To call a function, return a JSON object with the function name and arguments within "
    "<tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


@dataclass(frozen=True, slots=True)
class TemplateSupport:
    """What one chat template can render by itself."""

    tools: bool  # it reads tool_calls / tools: pass them through
    tool_role: str = "tool"  # the role tool results get when they are written out as text: "tool" or "user"


@dataclass(frozen=True, slots=True)
class TemplateInput:
    """The arguments for a chat template; ``trained[i]`` says whether ``messages[i]`` is trained on."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    trained: list[bool]


def mentions_tools(template: str) -> bool:
    """Whether a template's source reads ``tool_calls`` or ``tools`` (then it renders tool use itself)."""
    return _MENTIONS_TOOLS.search(template) is not None


def prepare_messages(
    messages: Sequence[Message], tools: list[dict[str, Any]] | None, support: TemplateSupport
) -> TemplateInput:
    """Clean the messages and, for a template without tool support, write the tool parts out as text.

    Raises:
        InvalidRequest: a message is not an object, or a tool call has no name (``param="messages"``).
    """
    cleaned = [_clean(message) for message in messages]
    trained = [m.get("role") == "assistant" and m.get("weight", 1) != 0 for m in messages]
    if support.tools:
        return TemplateInput(cleaned, tools, trained)
    out: list[dict[str, Any]] = []
    out_trained: list[bool] = []
    merge_results = support.tool_role != "tool"  # consecutive results in one user message, as Qwen2.5 does
    after_result = False
    for message, train in zip(cleaned, trained, strict=True):
        if message.get("role") in _RESULT_ROLES and isinstance(message.get("content"), str):
            result = _tool_response(message["content"])
            if merge_results and after_result:
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": support.tool_role, "content": result})
                out_trained.append(False)
            after_result = True
            continue
        after_result = False
        out.append(_with_calls_as_text(message) if message.get("role") == "assistant" else message)
        out_trained.append(train)
    if tools:
        _add_tools_prompt(out, out_trained, tools)
    return TemplateInput(out, None, out_trained)


def _clean(message: Message) -> dict[str, Any]:
    """A message as transformers hands it to templates (no ``None``, reasoning aliased), without ``weight``."""
    if not isinstance(message, Mapping):
        raise InvalidRequest(f"Each message must be an object, got {message!r}.", param="messages")
    clean = {key: value for key, value in message.items() if value is not None and key != "weight"}
    reasoning = next((clean[key] for key in _REASONING_FIELDS if key in clean), None)
    if reasoning is not None:
        clean = {"thinking": reasoning, **clean, "reasoning_content": reasoning}
    content = clean.get("content")
    if isinstance(content, list) and content and all(_is_text_part(part) for part in content):
        clean["content"] = "\n".join(part["text"] for part in content)
    return clean


def _is_text_part(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)


def _with_calls_as_text(message: dict[str, Any]) -> dict[str, Any]:
    """The assistant message with its ``tool_calls`` / ``function_call`` appended to its content."""
    calls = list(message.get("tool_calls") or [])
    if message.get("function_call"):
        calls.append(message["function_call"])
    content = message.get("content", "")
    if not calls or not isinstance(content, str):
        return message
    blocks = [_tool_call_text(call) for call in calls]
    rest = {key: value for key, value in message.items() if key not in ("tool_calls", "function_call")}
    return {**rest, "content": "\n".join([content, *blocks] if content else blocks)}


def _tool_call_text(call: Any) -> str:
    """One call as a ``<tool_call>`` block; takes an OpenAI tool call or a bare ``{"name", "arguments"}``."""
    function = call.get("function", call) if isinstance(call, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        raise InvalidRequest(f"Cannot render the tool call {call!r}: it has no function name.", param="messages")
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError, RecursionError):  # not JSON: shown as the string it is
            arguments = json.loads(arguments)
    payload = json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{payload}\n</tool_call>"


def _tool_response(content: str) -> str:
    return f"<tool_response>\n{content}\n</tool_response>"


def _add_tools_prompt(messages: list[dict[str, Any]], trained: list[bool], tools: list[dict[str, Any]]) -> None:
    prompt = TOOLS_PROMPT.format(tools=json.dumps(tools, ensure_ascii=False))
    first = messages[0] if messages else None
    if first is not None and first.get("role") in _SYSTEM_ROLES and isinstance(first.get("content"), str):
        messages[0] = {**first, "content": f"{first['content']}\n\n{prompt}" if first["content"] else prompt}
    else:
        messages.insert(0, {"role": "system", "content": prompt})
        trained.insert(0, False)
