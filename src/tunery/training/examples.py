"""Turn a chat JSONL file into tokenized training examples: ids plus labels that say where the loss is taken.

Each line ``{"messages": [...], "tools"?: [...]}`` goes through ``ChatTokenizer.encode_chat``, the same
tokenization and assistant-only mask the dataset checks count with, so the trainer trains on exactly the
tokens the user was told about (assistant turns; ``weight: 0`` turns are context only). It does not check
the file (``training.datasets`` did that at upload and job start), pack, batch or shuffle (``training.packing``).
Examples longer than ``max_seq_len`` keep their first ``max_seq_len`` tokens and are logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.domain.errors import InvalidRequest

IGNORE_INDEX = -100  # the label of a token the loss is not taken on (PyTorch's cross-entropy default)

log = logging.getLogger(__name__)


class InvalidTrainingData(ValueError):
    """A line of a training or validation file cannot be turned into an example (the message names the line)."""


@dataclass(frozen=True, slots=True)
class Example:
    """One tokenized chat. ``labels[i]`` is ``input_ids[i]`` where the loss is taken, else ``IGNORE_INDEX``.

    Labels are aligned with the ids (the Hugging Face convention); the shift to next-token targets happens
    when examples are packed, inside each example, so no example ever predicts another's first token.
    """

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trainable_count(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def encode_example(record: dict[str, Any], tokenizer: ChatTokenizer, max_seq_len: int) -> tuple[Example, bool]:
    """Tokenize one chat record. Returns the example and whether it was truncated to ``max_seq_len``.

    Raises:
        InvalidRequest: the chat template cannot render the messages.
    """
    encoded = tokenizer.encode_chat(record["messages"], chat_tools(record))
    ids = encoded.input_ids
    labels = [token if trainable else IGNORE_INDEX for token, trainable in zip(ids, encoded.trainable, strict=True)]
    truncated = len(ids) > max_seq_len
    return Example(input_ids=ids[:max_seq_len], labels=labels[:max_seq_len]), truncated


def read_examples(path: Path, tokenizer: ChatTokenizer, max_seq_len: int) -> list[Example]:
    """Read and tokenize every example of a chat JSONL file, in file order.

    Raises:
        InvalidTrainingData: a line is not a chat example, or the chat template cannot render it.
    """
    examples: list[Example] = []
    truncated_lines: list[int] = []
    for number, record in records(path):
        try:
            example, truncated = encode_example(record, tokenizer, max_seq_len)
        except (InvalidRequest, KeyError, TypeError) as exc:
            detail = exc.message if isinstance(exc, InvalidRequest) else f"not a chat example ({exc!r})"
            raise InvalidTrainingData(f"{path.name} line {number}: {detail}") from exc
        examples.append(example)
        if truncated:
            truncated_lines.append(number)
    if truncated_lines:
        shown = ", ".join(str(n) for n in truncated_lines[:10]) + (", ..." if len(truncated_lines) > 10 else "")
        log.warning(
            "%s: %d example(s) longer than %d tokens were cut to their first %d tokens (lines %s).",
            path.name,
            len(truncated_lines),
            max_seq_len,
            max_seq_len,
            shown,
        )
    if not examples:
        raise InvalidTrainingData(f"{path.name} holds no examples.")
    return examples


def chat_tools(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The tools shown to the chat template; legacy ``functions`` are shown as tools (as the dataset checks do)."""
    if record.get("tools"):
        tools: list[dict[str, Any]] = record["tools"]
        return tools
    if record.get("functions"):
        return [{"type": "function", "function": function} for function in record["functions"]]
    return None


def records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, parsed object) for each non-blank line; a UTF-8 BOM is skipped."""
    with path.open(encoding="utf-8-sig") as source:
        for number, line in enumerate(source, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InvalidTrainingData(f"{path.name} line {number}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(record, dict):
                raise InvalidTrainingData(f"{path.name} line {number}: not a JSON object.")
            yield number, record
