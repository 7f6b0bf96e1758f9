"""Builds the ``sample`` namespace (``output_text``, ``output_json``, ``choices``, ``output_tools``)."""

from __future__ import annotations

import contextlib
import json
from typing import Any


def sample_from_text(
    text: str,
    *,
    parse_json: bool = True,
    finish_reason: str = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The sample for one model answer. ``output_json`` is present only when ``parse_json`` and the text
    is valid JSON (for ``/graders/run``: "populated if the model sample is a valid JSON string")."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message["tool_calls"] = tool_calls
    sample: dict[str, Any] = {
        "output_text": text,
        "output_tools": list(tool_calls or []),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    }
    if parse_json:
        with contextlib.suppress(ValueError):
            sample["output_json"] = json.loads(text)
    return sample
