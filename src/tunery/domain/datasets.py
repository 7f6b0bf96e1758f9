"""The result of checking a training file: problems with line numbers, and statistics when it is good.

Produced by ``training.datasets`` (the checks) and stored with the file by ``services.files``. No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable


class DatasetFormat(StrEnum):
    CHAT = "chat"  # supervised: {"messages": [...]}
    PREFERENCE = "preference"  # DPO: {"input", "preferred_output", "non_preferred_output"}
    REINFORCEMENT = "reinforcement"  # RFT: {"messages": [... ending in a user turn], <reference fields>...}


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a file. ``line`` is 1-based; ``None`` for whole-file problems."""

    line: int | None
    code: str
    message: str

    def describe(self) -> str:
        return f"Line {self.line}: {self.message}" if self.line is not None else self.message


@dataclass(frozen=True, slots=True)
class DatasetStats:
    """Statistics of a good file; token counts use the default base model's tokenizer."""

    examples: int
    tokens_total: int
    tokens_min: int
    tokens_mean: float
    tokens_max: int
    trainable_tokens: int
    examples_over_context: int
    context_length: int | None = None
    tokenizer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetStats:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What the checks found. ``problems`` holds at most the first N; ``problem_count`` counts all."""

    format: DatasetFormat | None
    examples: int
    problems: list[Problem] = field(default_factory=list)
    problem_count: int = 0
    warnings: list[str] = field(default_factory=list)
    stats: DatasetStats | None = None
    unit: str = "examples"  # what ``examples`` counts, for the summary ("rows" in an evals file)

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def summary(self) -> str:
        """The plain-English text shown as the file's ``status_details``."""
        if self.ok:
            return f"{self.examples} valid {self.unit}."
        shown = len(self.problems)
        head = (
            f"{self.problem_count} problem(s) found"
            + (f"; the first {shown} are listed" if shown < self.problem_count else "")
            + ":"
        )
        return "\n".join([head, *(p.describe() for p in self.problems)])


class ExampleTokenizer(Protocol):
    """Counts the tokens of one chat example as the base model will see it (chat template applied).

    Implemented by ``catalog.chat_tokenizer.ChatTokenizer``; the dataset checks only need this much. A
    tokenizer that can also count many examples at once implements ``BatchExampleTokenizer`` (optional: the
    checks use it when it is there).
    """

    @property
    def name(self) -> str:
        """The base model whose tokenizer this is (shown in file statistics)."""
        ...

    @property
    def context_length(self) -> int:
        """The most tokens one training example may have."""
        ...

    def count_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> tuple[int, int]:
        """Return (total tokens, trainable tokens): trainable = assistant tokens whose ``weight`` is not 0."""
        ...


@runtime_checkable
class BatchExampleTokenizer(ExampleTokenizer, Protocol):
    """An ``ExampleTokenizer`` with the optional ``count_chat_batch``: the checks count in batches with it."""

    def count_chat_batch(
        self, examples: Sequence[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]]
    ) -> list[tuple[int, int]]:
        """``count_chat`` of each ``(messages, tools)`` example, in order, exactly as it counts them one by one.

        Raises:
            InvalidRequest: some example cannot be rendered; the caller counts them one by one to find which.
        """
        ...
