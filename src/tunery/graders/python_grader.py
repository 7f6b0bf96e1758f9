"""The ``python`` grader: ``grade(sample, item)`` from the grader's source, run in the sandbox pool.

An exception or a non-number from ``grade`` is ``python_grader_runtime_error`` (with the traceback);
a timeout, memory exhaustion or a sandbox fault is ``python_grader_server_error`` with its type
(``timeout``, ``oom``, ``internal``). Either way the reward is 0 (spec §1.7).
"""

from __future__ import annotations

import ast
import threading
from typing import Any

from tunery.graders.errors import InvalidGrader
from tunery.graders.outcome import Outcome
from tunery.graders.sandbox import MAX_SOURCE_BYTES, PythonSandbox
from tunery.graders.specs import GraderPython

IMAGE_TAGS = ("2025-05-08",)
_default: PythonSandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> PythonSandbox:
    """The process-wide sandbox pool with default limits (services pass their own instead)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = PythonSandbox()
        return _default


def check_source(grader: GraderPython, *, param: str) -> None:
    """``InvalidGrader`` unless the source parses and defines ``grade`` with two positional parameters."""
    if len(grader.source.encode()) > MAX_SOURCE_BYTES:
        raise InvalidGrader(f"'{param}.source' is larger than {MAX_SOURCE_BYTES} bytes.", param=f"{param}.source")
    if grader.image_tag is not None and grader.image_tag not in IMAGE_TAGS:
        raise InvalidGrader(
            f"Unknown image_tag '{grader.image_tag}'; Tunery offers {', '.join(IMAGE_TAGS)}.",
            param=f"{param}.image_tag",
        )
    try:
        tree = ast.parse(grader.source)
    except SyntaxError as exc:
        raise InvalidGrader(
            f"'{param}.source' is not valid Python: {exc.msg} (line {exc.lineno}).", param=f"{param}.source"
        ) from None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "grade":
            positional = [*node.args.posonlyargs, *node.args.args]
            required = len(positional) - len(node.args.defaults)
            if (len(positional) >= 2 or node.args.vararg) and required <= 2:
                return
            raise InvalidGrader(
                f"'{param}.source' must define grade(sample, item) taking two positional arguments.",
                param=f"{param}.source",
            )
    raise InvalidGrader(f"'{param}.source' must define a function grade(sample, item).", param=f"{param}.source")


def grade_python(
    grader: GraderPython, *, sample: dict[str, Any], item: dict[str, Any], sandbox: PythonSandbox | None
) -> Outcome:
    reply = (sandbox or default_sandbox()).run(grader.source, sample=sample, item=item)
    outcome = Outcome(reward=reply.reward if reply.status == "ok" else 0.0, detail=reply.details)
    if reply.status == "runtime_error":
        outcome.errors.python_grader_runtime_error = True
        outcome.errors.python_grader_runtime_error_details = reply.details
    elif reply.status != "ok":
        outcome.errors.python_grader_server_error = True
        outcome.errors.python_grader_server_error_type = reply.status
        # The schema has no details field for server errors; the runtime-details field carries the message.
        outcome.errors.python_grader_runtime_error_details = reply.details
        if reply.status == "timeout":
            outcome.errors.unresponsive_reward_error = True
    return outcome
