"""The rules for one training example: is this parsed JSON object a valid chat, preference (DPO) or RFT line?

Pure functions over already-parsed JSON; no I/O, no line numbers, no token counting (``training.datasets``
streams the file and calls these), and no per-message rules (``training.message_rules``). Codes are stable
snake_case, the OpenAI cookbook's where one exists. Formats follow spec §5.2 (chat), §5.5 (preference) and
§5.6 (reinforcement: messages ending in a user turn, any other top-level keys are reference fields).
"""

from __future__ import annotations

from typing import Any

from tunery.domain.datasets import DatasetFormat
from tunery.training.message_rules import (
    Issue,
    check_functions,
    check_message,
    check_messages,
    check_tool_fields,
    json_kind,
)

CHAT_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")
# Preference outputs under their current name, with the older OpenAI name accepted as an alias.
OUTPUT_ALIASES = {"preferred_output": "preferred_completion", "non_preferred_output": "non_preferred_completion"}
PREFERENCE_KEYS = ("input", *OUTPUT_ALIASES, *OUTPUT_ALIASES.values())
_PREFERENCE_MARKERS = frozenset(PREFERENCE_KEYS)
_CHAT_KEY_SET = frozenset(CHAT_KEYS)
_PREFERENCE_KEY_SET = frozenset(PREFERENCE_KEYS)
_INPUT_KEY_SET = frozenset(INPUT_KEYS)


# ---------------------------------------------------------------------------------------- formats
# RFT: "messages and tools are the only reserved keywords"; every other key is a reference field for graders.
RFT_RESERVED_KEYS = ("messages", "tools", "parallel_tool_calls")


def detect_format(example: dict[str, Any]) -> DatasetFormat | None:
    """The format a line's keys say it is in: ``messages`` → chat, or reinforcement when the last message is a
    user turn (nothing to imitate, a prompt to answer); ``input``/outputs → preference."""
    if "messages" in example:
        messages = example["messages"]
        last = messages[-1] if isinstance(messages, list) and messages else None
        if isinstance(last, dict) and last.get("role") == "user":
            return DatasetFormat.REINFORCEMENT
        return DatasetFormat.CHAT
    if not _PREFERENCE_MARKERS.isdisjoint(example):
        return DatasetFormat.PREFERENCE
    return None


def same_family(found: DatasetFormat, decided: DatasetFormat) -> bool:
    """Chat and reinforcement lines both have ``messages``: a line of one in a file of the other is checked by
    the file's rules (a chat line missing its assistant reply is that, not a reinforcement line)."""
    family = {DatasetFormat.CHAT, DatasetFormat.REINFORCEMENT}
    return found is decided or {found, decided} <= family


def describe_format(fmt: DatasetFormat) -> str:
    """How a format is named in messages, with the shape of a line."""
    if fmt is DatasetFormat.CHAT:
        return 'chat (supervised: {"messages": [...]})'
    if fmt is DatasetFormat.REINFORCEMENT:
        return 'reinforcement (RFT: {"messages": [..., {"role": "user", ...}], <reference fields>})'
    return 'preference (DPO: {"input": ..., "preferred_output": [...], "non_preferred_output": [...]})'


def check_example(example: dict[str, Any], fmt: DatasetFormat) -> list[Issue]:
    """All problems of one example in the given format; empty when it is valid."""
    if fmt is DatasetFormat.CHAT:
        return check_chat_example(example)
    if fmt is DatasetFormat.REINFORCEMENT:
        return check_reinforcement_example(example)
    return check_preference_example(example)


# ---------------------------------------------------------------------------------- reinforcement
def check_reinforcement_example(example: dict[str, Any]) -> list[Issue]:
    """Problems of an RFT line ``{"messages": [..., user turn], "tools"?, <reference fields>...}`` (spec §5.6).

    The prompt the model answers; the grader reads every other key as ``{{item.<key>}}``. The last message must
    be a user turn (the model writes the next one); ``weight`` means nothing here (nothing is imitated).
    """
    if "messages" not in example:
        return [_missing_messages(example)]
    out: list[Issue] = []
    messages = example["messages"]
    if check_messages(messages, "messages", out):
        last = messages[-1]
        if last["role"] != "user":
            out.append(
                Issue(
                    "invalid_last_message",
                    f"messages[{len(messages) - 1}] is the last message and has role '{last['role']}'; a "
                    "reinforcement example must end with the user message the model answers (the grader, not the "
                    "file, judges the answer)",
                )
            )
        weighted = [i for i, m in enumerate(messages) if "weight" in m]
        if weighted:
            out.append(
                Issue(
                    "unexpected_weight",
                    f"messages[{weighted[0]}] has a weight; reinforcement examples are not imitated, so no "
                    "message takes a weight",
                )
            )
    check_tool_fields(example, "", out)
    return out


# ------------------------------------------------------------------------------------------- chat
def check_chat_example(example: dict[str, Any]) -> list[Issue]:
    """Problems of a supervised line ``{"messages": [...], "tools"?, "parallel_tool_calls"?, "functions"?}``."""
    if "messages" not in example:
        return [_missing_messages(example)]  # it names the keys found; no separate unrecognized_key
    out: list[Issue] = []
    _check_keys(example, _CHAT_KEY_SET, CHAT_KEYS, "a chat example", out)
    messages = example["messages"]
    if check_messages(messages, "messages", out):
        _check_assistant_turns(messages, out)
    check_tool_fields(example, "", out)
    if "functions" in example:
        check_functions(example["functions"], out)
    return out


def _missing_messages(example: dict[str, Any]) -> Issue:
    return Issue(
        "missing_messages_list",
        f'missing \'messages\': a chat example is {{"messages": [{{"role": ..., "content": ...}}, ...]}} '
        f"(this line has keys: {_keys_of(example)}){_legacy_hint(example)}",
    )


def unrecognized_format(example: dict[str, Any]) -> Issue:
    """The issue for a line that matches neither format, while the file's format is still unknown."""
    return Issue(
        "unrecognized_format",
        f"this line is neither a {describe_format(DatasetFormat.CHAT)} nor a "
        f"{describe_format(DatasetFormat.PREFERENCE)} example (its keys: {_keys_of(example)})"
        f"{_legacy_hint(example)}",
    )


def _keys_of(example: dict[str, Any]) -> str:
    return ", ".join(sorted(example)) or "none"


def _legacy_hint(example: dict[str, Any]) -> str:
    if "prompt" in example or "completion" in example:
        return "; the legacy prompt/completion format is not supported"
    return ""


def _check_assistant_turns(messages: list[dict[str, Any]], out: list[Issue]) -> None:
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        out.append(
            Issue(
                "example_missing_assistant_message",
                "messages has no assistant message; every chat example needs at least one assistant reply "
                "to learn from",
            )
        )
    elif all(m.get("weight", 1) == 0 for m in assistants):
        out.append(
            Issue(
                "no_trainable_messages",
                f"all {len(assistants)} assistant message(s) have weight 0, so there is nothing to train on; "
                "give at least one assistant message weight 1 (or leave weight out, which means 1)",
            )
        )


# ------------------------------------------------------------------------------------- preference
def check_preference_example(example: dict[str, Any]) -> list[Issue]:
    """Problems of a DPO line ``{"input": {"messages": [...]}, "preferred_output": [...], ...}``."""
    out: list[Issue] = []
    _check_keys(example, _PREFERENCE_KEY_SET, PREFERENCE_KEYS[:3], "a preference example", out)
    for name, alias in OUTPUT_ALIASES.items():
        if name in example and alias in example:
            out.append(Issue("unrecognized_key", f"both {name} and its older name {alias} are set; keep one"))
    _check_input(example, out)
    preferred = _check_output(example, "preferred_output", out)
    non_preferred = _check_output(example, "non_preferred_output", out)
    if preferred is not None and preferred == non_preferred:
        out.append(
            Issue(
                "identical_outputs",
                "preferred_output and non_preferred_output are identical; "
                "preference training needs two different replies",
            )
        )
    return out


def output_of(example: dict[str, Any], name: str) -> Any:
    """The value of ``preferred_output``/``non_preferred_output``, or of its older alias."""
    return example[name] if name in example else example.get(OUTPUT_ALIASES[name])


def _check_input(example: dict[str, Any], out: list[Issue]) -> None:
    if "input" not in example:
        out.append(Issue("missing_input", "missing 'input': it must be {\"messages\": [...]}, the prompt"))
        return
    prompt = example["input"]
    if not isinstance(prompt, dict):
        out.append(
            Issue(
                "invalid_input",
                f'input must be an object like {{"messages": [...]}}; got {json_kind(prompt)}',
            )
        )
        return
    _check_keys(prompt, _INPUT_KEY_SET, INPUT_KEYS, "input", out, where="input ")
    check_tool_fields(prompt, "input.", out)
    messages: Any = prompt.get("messages")
    if check_messages(messages, "input.messages", out) and messages[-1]["role"] not in ("user", "tool"):
        out.append(
            Issue(
                "invalid_input_last_message",
                f"input.messages[{len(messages) - 1}] is the last input message and has role "
                f"'{messages[-1]['role']}'; it must be the user (or tool) message that the outputs answer",
            )
        )


def _check_output(example: dict[str, Any], name: str, out: list[Issue]) -> list[Any] | None:
    """Check one output side; return it when it is valid (for the identical-outputs check)."""
    key = name if name in example else OUTPUT_ALIASES[name]
    shape = '[{"role": "assistant", "content": "..."}]'
    if key not in example:
        out.append(Issue(f"missing_{name}", f"missing '{name}': it must be a list with one message, {shape}"))
        return None
    value = example[key]
    if isinstance(value, list) and not value:
        out.append(Issue(f"missing_{name}", f"{key} is an empty list; it must hold one message, {shape}"))
        return None
    if not isinstance(value, list) or len(value) != 1:
        got = f"{len(value)} messages" if isinstance(value, list) else json_kind(value)
        out.append(Issue(f"invalid_{name}", f"{key} must be a list with exactly one assistant message; got {got}"))
        return None
    before = len(out)
    check_message(value[0], f"{key}[0]", out, weight_allowed=False)
    if len(out) > before:
        return None
    message = value[0]
    if message["role"] != "assistant":
        out.append(
            Issue(
                f"invalid_{name}",
                f"{key}[0].role is '{message['role']}'; the output must be an assistant message",
            )
        )
        return None
    if not isinstance(message.get("content"), str) or not message["content"]:
        out.append(Issue("missing_content", f"{key}[0].content must be non-empty text"))
        return None
    return value


# ------------------------------------------------------------------------------------ shared bits
def _check_keys(
    obj: dict[str, Any],
    allowed: frozenset[str],
    listed: tuple[str, ...],
    what: str,
    out: list[Issue],
    *,
    where: str = "",
) -> None:
    if obj.keys() <= allowed:
        return
    extra = sorted(obj.keys() - allowed)
    noun = "key" if len(extra) == 1 else "keys"
    out.append(
        Issue(
            "unrecognized_key",
            f"unrecognized {where or 'top-level '}{noun} {', '.join(repr(k) for k in extra)}; "
            f"{what} may only have {', '.join(listed)}",
        )
    )
