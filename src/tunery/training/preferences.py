"""Turn a preference (DPO) JSONL file into tokenized pairs: the prompt with the chosen reply, and with the rejected.

Each line ``{"input": {"messages": [...], "tools"?: [...]}, "preferred_output": [msg], "non_preferred_output":
[msg]}`` (or the older ``preferred_completion``/``non_preferred_completion``) becomes two ``Example``s rendered
with the base model's chat template. Labels cover the output message only: assistant turns inside ``input``
are context (as if they had ``weight: 0``). It does not check the file (``training.datasets`` did that).
A pair longer than ``max_seq_len`` keeps the first ``max_seq_len`` tokens of each side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.catalog.chat_tokenizer import ChatTokenizer
from tunery.domain.errors import InvalidRequest
from tunery.training.example_rules import output_of
from tunery.training.examples import IGNORE_INDEX, Example, InvalidTrainingData, chat_tools, records

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PreferencePair:
    """One prompt with a chosen and a rejected reply; ``reference`` holds the reference model's summed
    log-probabilities of the two replies once they have been computed (``training.dpo``)."""

    chosen: Example
    rejected: Example
    reference: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def trainable_count(self) -> int:
        return self.chosen.trainable_count + self.rejected.trainable_count


def encode_pair(record: dict[str, Any], tokenizer: ChatTokenizer, max_seq_len: int) -> tuple[PreferencePair, bool]:
    """Tokenize one preference record. Returns the pair and whether a side was cut to ``max_seq_len``.

    Raises:
        InvalidRequest: the chat template cannot render the messages.
    """
    prompt = record["input"]
    context = [{**m, "weight": 0} if m.get("role") == "assistant" else m for m in prompt["messages"]]
    tools = chat_tools(prompt)
    sides = []
    truncated = False
    for name in ("preferred_output", "non_preferred_output"):
        encoded = tokenizer.encode_chat([*context, output_of(record, name)[0]], tools)
        ids = encoded.input_ids
        labels = [t if trainable else IGNORE_INDEX for t, trainable in zip(ids, encoded.trainable, strict=True)]
        truncated = truncated or len(ids) > max_seq_len
        sides.append(Example(input_ids=ids[:max_seq_len], labels=labels[:max_seq_len]))
    return PreferencePair(chosen=sides[0], rejected=sides[1]), truncated


def read_pairs(path: Path, tokenizer: ChatTokenizer, max_seq_len: int) -> list[PreferencePair]:
    """Read and tokenize every pair of a preference JSONL file, in file order.

    Raises:
        InvalidTrainingData: a line is not a preference example, the chat template cannot render it, or a
            side has no trainable token left after truncation.
    """
    pairs: list[PreferencePair] = []
    truncated_lines: list[int] = []
    for number, record in records(path):
        try:
            pair, truncated = encode_pair(record, tokenizer, max_seq_len)
        except (InvalidRequest, KeyError, TypeError, IndexError) as exc:
            detail = exc.message if isinstance(exc, InvalidRequest) else f"not a preference example ({exc!r})"
            raise InvalidTrainingData(f"{path.name} line {number}: {detail}") from exc
        if not pair.chosen.trainable_count or not pair.rejected.trainable_count:
            raise InvalidTrainingData(
                f"{path.name} line {number}: the prompt fills all {max_seq_len} tokens, so no reply is left to compare."
            )
        pairs.append(pair)
        if truncated:
            truncated_lines.append(number)
    if truncated_lines:
        log.warning(
            "%s: %d pair(s) longer than %d tokens were cut (lines %s).",
            path.name,
            len(truncated_lines),
            max_seq_len,
            ", ".join(str(n) for n in truncated_lines[:10]),
        )
    if not pairs:
        raise InvalidTrainingData(f"{path.name} holds no preference pairs.")
    return pairs
