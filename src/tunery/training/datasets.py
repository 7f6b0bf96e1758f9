"""Check a JSONL training file: problems with line numbers, and token statistics when a tokenizer is given.

The driver of the dataset checks (spec §5.1, §5.8): it streams the file through ``training.jsonl_lines``,
decodes and parses each line, decides the file's format, applies ``training.example_rules`` and counts
tokens, then builds a ``ValidationReport``. Memory stays flat whatever the file size. It imports nothing
heavy (the API process runs it on upload) and does not tokenize by itself: the caller passes an
``ExampleTokenizer``. ``validate_eval_jsonl`` runs the same line reading for files of purpose ``evals``,
which only need to be JSON objects, one a line.

Decisions worth knowing:

* Problem messages never start with "Line N": ``Problem.describe()`` adds that.
* The first JSON object with ``input``/``preferred_output``/``non_preferred_output`` (preference) decides
  the format, even if that line has other problems; ``expected`` overrides it. Lines with ``messages`` are
  chat or reinforcement (RFT) by their last turn (assistant or user), and one bad line must not decide a whole
  file: the first ``DECIDE_LINES`` such lines are read ahead (held, not yet judged) and the format most of them
  show wins (a tie goes to the first line's), so an RFT file whose line 1 ends with an assistant turn reports
  line 1, not every other line as a chat example without a reply.
* ``report.examples`` counts lines that pass the format rules; an example over the tokenizer's context
  length is still counted (and reported as ``exceeds_max_tokens``). The minimum-examples check counts
  those valid lines only, so a 12-line file with 3 broken lines has 9 examples.
* Blank lines in the middle are problems; blank lines at the very end are ignored.
* A file whose first non-blank line starts with ``[`` is a JSON array (often pretty-printed over hundreds
  of lines): one ``json_array`` problem on line 1 says so, instead of an ``invalid_json`` row per line.
* The minimum number of examples is a training file's rule: callers that do not know a file's role
  (the upload check) pass ``min_examples=0``; a job checks its training file when it is created.
* A file that is not UTF-8 text (UTF-16, gzip, NUL bytes on line 1) gets one whole-file problem and is
  not read further.
* An example the tokenizer's chat template cannot render is a ``chat_template_error`` problem on its line
  and is left out of the statistics (``stats.examples`` counts the tokenized examples only).
* Preference token counts: the prompt (``input.messages``, its assistant turns as context) plus the longer
  of the two outputs is the example's length; trainable tokens are those of the preferred output.
* Token counting is the slow part, so valid examples wait in a bounded batch (``COUNT_BATCH_EXAMPLES`` or
  ``COUNT_BATCH_BYTES`` of lines) and are counted together when the tokenizer has ``count_chat_batch``.
  The batch is counted before any later problem is recorded, so problems stay in line order.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import replace
from itertools import chain
from typing import Any, BinaryIO, NamedTuple

from tunery.domain.datasets import (
    BatchExampleTokenizer,
    DatasetFormat,
    DatasetStats,
    ExampleTokenizer,
    Problem,
    ValidationReport,
)
from tunery.domain.errors import InvalidRequest
from tunery.training.example_rules import (
    check_example,
    describe_format,
    detect_format,
    output_of,
    same_family,
    unrecognized_format,
)
from tunery.training.jsonl_lines import read_chunks, read_head, sniff_not_text, split_lines
from tunery.training.message_rules import Issue, json_kind

DEFAULT_MIN_EXAMPLES = 10
DEFAULT_MAX_PROBLEMS = 20
DEFAULT_MAX_LINE_BYTES = 8 * 1024 * 1024
# Valid examples wait for their token counts in batches of at most this many examples / bytes of JSON lines.
COUNT_BATCH_EXAMPLES = 256
COUNT_BATCH_BYTES = 1024 * 1024
_WARNING_SAMPLES = 3
_HINT_CHARS = 20
# A JSON escape of a UTF-16 surrogate; and one without its other half (valid JSON, but not text).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])|(?<![0-9a-fA-F]{4})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
_SYSTEM_ROLES = frozenset({"system", "developer"})
JSON_ARRAY_MESSAGE = (
    "this is a JSON array; JSONL needs one object per line (write each example as one JSON object on its own "
    "line, without the surrounding [ ] and the commas between examples)"
)


def validate_jsonl(
    stream: BinaryIO,
    *,
    expected: DatasetFormat | None = None,
    tokenizer: ExampleTokenizer | None = None,
    min_examples: int = DEFAULT_MIN_EXAMPLES,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ValidationReport:
    """Read a JSONL training file once, streaming, and report what is wrong with it.

    Args:
        stream: the file's bytes; only ``stream.read(n)`` is used, in 1 MiB chunks.
        expected: the format the job needs; ``None`` lets the first example decide.
        tokenizer: the base model's tokenizer; with it, examples are counted and checked against its
            context length and ``stats`` is filled.
        min_examples: fewer valid examples than this is a whole-file ``invalid_n_examples`` problem.
        max_problems: how many problems ``report.problems`` keeps; ``problem_count`` counts them all.
        max_line_bytes: a longer line is a ``line_too_long`` problem; it is skipped, never held whole.

    Returns:
        The report; ``report.ok`` is true when there are no problems (warnings do not count).
    """
    check = _FileCheck(expected, tokenizer, max_problems, max_line_bytes)
    chunks = read_chunks(stream)
    first = read_head(chunks)
    reason = sniff_not_text(first)
    if reason is not None:
        check.give_up("invalid_file_format", reason)
    else:
        if first.startswith(codecs.BOM_UTF8):
            first = first[len(codecs.BOM_UTF8) :]
        for number, line in enumerate(split_lines(chain((first,), chunks), max_line_bytes), start=1):
            check.line(number, line)
    return check.finish(min_examples)


def validate_eval_jsonl(
    stream: BinaryIO,
    *,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> ValidationReport:
    """Check a file uploaded with purpose ``evals``: one JSON object per line, nothing more.

    Rows are ``{"item": {...}, "sample"?: {...}}`` or a bare object (then it is the item), as eval runs read
    them; the chat-format rules, token counts and the minimum number of examples of training files do not
    apply (an eval's ``item_schema`` checks the items when a run starts). A pretty-printed JSON array (the
    usual mistake) is one whole-file problem instead of one per line.

    Returns:
        The report, ``format`` ``None``; ``examples`` counts the good rows.
    """
    check = _RowCheck(max_problems, max_line_bytes)
    chunks = read_chunks(stream)
    first = read_head(chunks)
    reason = sniff_not_text(first)
    if first.startswith(codecs.BOM_UTF8):
        first = first[len(codecs.BOM_UTF8) :]
    reason = reason or _json_array(first)
    if reason is not None:
        check.give_up("invalid_file_format", reason)
    else:
        for number, line in enumerate(split_lines(chain((first,), chunks), max_line_bytes), start=1):
            check.line(number, line)
    return replace(check.finish(min_examples=0), unit="rows")


_JSON_ARRAY_MESSAGE = (
    "File is a JSON array ({how}), not JSONL: an evals file holds one JSON object per line, such as "
    '{{"item": {{"question": "..."}}}}; write each element of the array on its own line '
    "(for example: jq -c '.[]' data.json > data.jsonl)"
)


def _json_array(head: bytes) -> str | None:
    """Why the file is a JSON array rather than JSONL, judging by its first line; ``None`` when it is not.

    A first line that is ``[`` alone, or starts with ``[`` and is not JSON by itself, is a pretty-printed
    array; a first line that is a whole array of objects is an array written on one line. A line that is a
    list of other things is left to the per-line checks."""
    first_line = head.lstrip(b" \t\r\n").split(b"\n", 1)[0].strip()
    if not first_line.startswith(b"["):
        return None
    try:
        value = json.loads(first_line)
    except (ValueError, RecursionError):
        return _JSON_ARRAY_MESSAGE.format(how="it starts with '[' and spans several lines")
    if isinstance(value, list) and value and all(isinstance(element, dict) for element in value):
        return _JSON_ARRAY_MESSAGE.format(how="a list of objects on one line")
    return None


class _Problems:
    """Keeps the first ``cap`` problems and counts them all."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept: list[Problem] = []
        self.count = 0

    def add(self, line: int | None, code: str, message: str) -> None:
        self.count += 1
        if len(self.kept) < self.cap:
            self.kept.append(Problem(line=line, code=code, message=message))


class _LineSample:
    """Counts lines with some property and remembers the first few of them (for warnings)."""

    def __init__(self) -> None:
        self.count = 0
        self.lines: list[int] = []

    def add(self, line: int) -> None:
        self.count += 1
        if len(self.lines) < _WARNING_SAMPLES:
            self.lines.append(line)

    def warning(self, what: str) -> str | None:
        if not self.count:
            return None
        return f"{self.count} example(s) {what} (e.g. line {', '.join(map(str, self.lines))})"


Chat = tuple[list[dict[str, Any]], list[dict[str, Any]] | None]  # (messages, tools), as a tokenizer counts them


class _Waiting(NamedTuple):
    """A valid example waiting to be counted: its line, and the chats whose counts make up its own."""

    line: int
    chats: list[Chat]
    calls_tools: bool


class _TokenTally:
    """Token statistics over the valid examples, as ``DatasetStats``."""

    def __init__(self, tokenizer: ExampleTokenizer) -> None:
        self.tokenizer = tokenizer
        self.batch = tokenizer if isinstance(tokenizer, BatchExampleTokenizer) else None
        self.context_length = tokenizer.context_length
        self.examples = 0
        self.total = 0
        self.smallest = 0
        self.largest = 0
        self.trainable = 0
        self.over_context = 0

    def add(self, tokens: int, trainable: int) -> None:
        self.smallest = tokens if not self.examples else min(self.smallest, tokens)
        self.largest = max(self.largest, tokens)
        self.examples += 1
        self.total += tokens
        self.trainable += trainable
        self.over_context += tokens > self.context_length

    def stats(self) -> DatasetStats:
        return DatasetStats(
            examples=self.examples,
            tokens_total=self.total,
            tokens_min=self.smallest,
            tokens_mean=round(self.total / self.examples, 1) if self.examples else 0.0,
            tokens_max=self.largest,
            trainable_tokens=self.trainable,
            examples_over_context=self.over_context,
            context_length=self.context_length,
            tokenizer=self.tokenizer.name,
        )


DECIDE_LINES = 32  # lines with ``messages`` read ahead to decide chat against reinforcement (see above)
HOLD_LINES = 4 * DECIDE_LINES  # ... and at most this many lines or bytes held meanwhile (memory stays flat)
HOLD_BYTES = 8 * 1024 * 1024


class _FileCheck:
    """The state of one pass over a file: format, counts, problems so far."""

    decides_family = True  # hold the first lines with ``messages`` until chat or reinforcement is decided

    def __init__(
        self,
        expected: DatasetFormat | None,
        tokenizer: ExampleTokenizer | None,
        max_problems: int,
        max_line_bytes: int,
    ) -> None:
        self.expected = expected
        self.format: DatasetFormat | None = expected
        self.format_line: int | None = None  # the line that decided the format, when not expected
        self.tokens = _TokenTally(tokenizer) if tokenizer is not None else None
        self.max_line_bytes = max_line_bytes
        self.problems = _Problems(max_problems)
        self.lines = 0  # non-blank lines
        self.examples = 0
        self.given_up = False
        self.blank_start = 0
        self.blank_count = 0
        self.no_system = _LineSample()
        self.no_user = _LineSample()
        self.waiting: list[_Waiting] = []  # valid examples not counted yet, in line order
        self.waiting_bytes = 0
        self.held: list[tuple[int, bytes | int]] | None = None  # lines read ahead while chat/RFT is undecided
        self.votes: list[tuple[int, DatasetFormat]] = []  # (line, format its last turn shows), in line order
        self.held_bytes = 0

    # ------------------------------------------------------------------------------- whole file
    def give_up(self, code: str, message: str) -> None:
        self.problems.add(None, code, message)
        self.given_up = True

    def finish(self, min_examples: int) -> ValidationReport:
        self._decide_family()
        self._count_waiting()
        if not self.given_up:
            if not self.lines:
                what = "has only blank lines" if self.blank_count else "is empty"
                self.problems.add(None, "empty_file", f"File {what}; it must hold one JSON object per line")
            elif self.examples < min_examples:
                self.problems.add(None, "invalid_n_examples", self._too_few(min_examples))
        warnings = [
            w
            for w in (self.no_system.warning("have no system message"), self.no_user.warning("have no user message"))
            if w
        ]
        return ValidationReport(
            format=self.format,
            examples=self.examples,
            problems=self.problems.kept,
            problem_count=self.problems.count,
            warnings=warnings,
            stats=self.tokens.stats() if self.tokens is not None else None,
        )

    def _too_few(self, min_examples: int) -> str:
        message = f"Training file has {self.examples} example(s), but must have at least {min_examples} examples"
        rejected = self.lines - self.examples
        if rejected:
            message += f" ({rejected} line(s) with problems are not counted)"
        return message

    # -------------------------------------------------------------------------------- each line
    def line(self, number: int, line: bytes | int) -> None:
        if self.given_up:
            return
        undecided = self.held is not None or (self.decides_family and self.format is None)
        if undecided and self._hold(number, line):
            return
        if isinstance(line, int):
            self._flush_blanks()
            self.lines += 1
            self._before_problem()
            self.problems.add(
                number,
                "line_too_long",
                f"this line is {line:,} bytes long; the limit is {self.max_line_bytes:,} bytes per line "
                "(one example per line: is the file missing line breaks?)",
            )
            return
        if not line or line.isspace():
            if not self.blank_count:
                self.blank_start = number
            self.blank_count += 1
            return
        self._flush_blanks()
        if not self.lines and line.lstrip().startswith(b"["):
            self.lines += 1
            self.problems.add(number, "json_array", JSON_ARRAY_MESSAGE)
            self.given_up = True
            return
        self.lines += 1
        example = self._parse(number, line)
        if example is not None:
            self._accept(number, example, len(line))

    def _hold(self, number: int, line: bytes | int) -> bool:
        """Read a line ahead while chat against reinforcement is undecided; False: judge it now instead."""
        found = _family_format(line)
        if self.held is None:
            if found is None:
                return False  # no messages yet: nothing to decide
            self.held = []
        self.held.append((number, line))
        self.held_bytes += 0 if isinstance(line, int) else len(line)
        if found is not None:
            self.votes.append((number, found))
        if len(self.votes) >= DECIDE_LINES or len(self.held) >= HOLD_LINES or self.held_bytes >= HOLD_BYTES:
            self._decide_family()
        return True

    def _decide_family(self) -> None:
        """Chat or reinforcement, by most of the lines read ahead; then judge them in order."""
        held, self.held = self.held, None
        if held is None:
            return
        tally = {fmt: sum(found is fmt for _, found in self.votes) for _, fmt in self.votes}
        first = self.votes[0][1]
        winner = max(tally, key=lambda fmt: (tally[fmt], fmt is first))
        self.format = winner
        self.format_line = next(n for n, found in self.votes if found is winner)
        self.decides_family = False
        for number, line in held:
            self.line(number, line)

    def _accept(self, number: int, example: dict[str, Any], size: int) -> None:
        """Judge one line that is a JSON object against the file's format rules, and count it."""
        fmt = self._format_of(number, example)
        if fmt is None:
            return
        issues = check_example(example, fmt)
        if issues:
            self._report(number, issues)
            return
        self.examples += 1
        self._note_roles(number, example, fmt)
        if self.tokens is not None:
            self._wait_for_count(self.tokens, number, example, fmt, size)

    def _flush_blanks(self) -> None:
        """Blank lines followed by more content are problems (trailing ones at the end are not)."""
        if not self.blank_count:
            return
        self._before_problem()
        room = max(self.problems.cap - len(self.problems.kept), 0)
        for number in range(self.blank_start, self.blank_start + min(self.blank_count, room)):
            self.problems.add(
                number, "empty_line", "this line is empty; every line must be one JSON object (remove blank lines)"
            )
        self.problems.count += max(self.blank_count - room, 0)
        self.blank_count = 0

    def _before_problem(self) -> None:
        """Count the waiting examples first while problems are still kept, so they stay in line order."""
        if self.waiting and len(self.problems.kept) < self.problems.cap:
            self._count_waiting()

    def _report(self, number: int, issues: list[Issue]) -> None:
        self._before_problem()
        for issue in issues:
            self.problems.add(number, issue.code, issue.message)

    def _parse(self, number: int, line: bytes) -> dict[str, Any] | None:
        """Decode and parse one line; report and return ``None`` unless it is a JSON object."""
        if 0 in line:
            self._report(number, [Issue("binary_content", _BINARY_MESSAGE)])
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            message = (
                f"this line is not valid UTF-8: byte 0x{line[exc.start]:02x} at byte {exc.start + 1} of the line "
                "cannot be decoded; save the file as UTF-8"
            )
            self._report(number, [Issue("invalid_encoding", message)])
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            message = f"this line is not valid JSON: {exc.msg} at column {exc.colno} (line starts with: {_hint(text)})"
            self._report(number, [Issue("invalid_json", message)])
            return None
        except RecursionError:
            self._report(number, [Issue("invalid_json", "this line is not valid JSON: it is nested too deeply")])
            return None
        if _SURROGATE_ESCAPE.search(text) and not _encodable(value):
            escape = _LONE_SURROGATE.search(text) or _SURROGATE_ESCAPE.search(text)
            column = escape.start() + 1 if escape else 1
            message = (
                f"this line has an unpaired UTF-16 surrogate escape ({text[column - 1 : column + 5]} at column "
                f"{column}): it is valid JSON but not text; write the character itself or a complete pair"
            )
            self._report(number, [Issue("invalid_encoding", message)])
            return None
        if not isinstance(value, dict):
            message = (
                "Expected file to have JSONL format, where every line is a JSON dictionary. This line is "
                f"{json_kind(value)}, not a dictionary (HINT: line starts with: {_hint(text)})"
            )
            self._report(number, [Issue("data_type", message)])
            return None
        return value

    def _format_of(self, number: int, example: dict[str, Any]) -> DatasetFormat | None:
        """The format to check this line against; ``None`` (after reporting) when it cannot be."""
        found = detect_format(example)
        if self.expected is not None:
            if found is not None and not same_family(found, self.expected):
                message = (
                    f"this line is a {describe_format(found)} example, but this file must hold "
                    f"{describe_format(self.expected)} examples"
                )
                self._report(number, [Issue("unexpected_format", message)])
                return None
            return self.expected
        if self.format is None:
            if found is None:
                self._report(number, [unrecognized_format(example)])
                return None
            self.format, self.format_line = found, number
            return found
        if found is not None and not same_family(found, self.format):
            message = (
                f"this line is a {describe_format(found)} example, but line {self.format_line} made this a "
                f"{self.format.value} file; every line must use the same format"
            )
            self._report(number, [Issue("mixed_formats", message)])
            return None
        return self.format

    def _note_roles(self, number: int, example: dict[str, Any], fmt: DatasetFormat) -> None:
        messages = example["input"]["messages"] if fmt is DatasetFormat.PREFERENCE else example["messages"]
        roles = {message["role"] for message in messages}
        if roles.isdisjoint(_SYSTEM_ROLES):
            self.no_system.add(number)
        if "user" not in roles:
            self.no_user.add(number)

    # ------------------------------------------------------------------------------------ tokens
    def _wait_for_count(
        self, tally: _TokenTally, number: int, example: dict[str, Any], fmt: DatasetFormat, size: int
    ) -> None:
        """Queue a valid example for counting; count the queue once it is a full batch (at once without one)."""
        if fmt is not DatasetFormat.PREFERENCE:
            chats = [(example["messages"], _chat_tools(example))]
        else:
            chats = _preference_chats(example)
        self.waiting.append(_Waiting(number, chats, _calls_tools(example)))
        self.waiting_bytes += size
        full = len(self.waiting) >= COUNT_BATCH_EXAMPLES or self.waiting_bytes >= COUNT_BATCH_BYTES
        if full or tally.batch is None:
            self._count_waiting()

    def _count_waiting(self) -> None:
        """Count the waiting examples (together when the tokenizer can) and record their statistics."""
        tally = self.tokens
        if tally is None or not self.waiting:
            return
        waiting, self.waiting, self.waiting_bytes = self.waiting, [], 0
        counted: list[tuple[int, int]] | None = None
        if tally.batch is not None:
            try:
                counted = tally.batch.count_chat_batch([chat for example in waiting for chat in example.chats])
            except InvalidRequest:  # some example cannot be rendered: count them one by one to find which
                counted = None
        position = 0
        for example in waiting:
            if counted is not None:
                counts = counted[position : position + len(example.chats)]
                position += len(example.chats)
            else:
                try:
                    counts = [tally.tokenizer.count_chat(messages, tools) for messages, tools in example.chats]
                except InvalidRequest as exc:  # the base model's chat template cannot render this example
                    hint = (
                        "; this example calls tools, which that template may not support" if example.calls_tools else ""
                    )
                    self._report(example.line, [Issue("chat_template_error", exc.message + hint)])
                    continue
            # A preference example is as long as its longer output; only the preferred one is trained on.
            tokens, trainable = max(total for total, _ in counts), counts[0][1]
            tally.add(tokens, trainable)
            if tokens > tally.context_length:
                message = f"example has {tokens} tokens; {tally.tokenizer.name} accepts at most {tally.context_length}"
                self._report(example.line, [Issue("exceeds_max_tokens", message)])


class _RowCheck(_FileCheck):
    """The checks of an evals file: each line one JSON object whose ``item`` and ``sample`` are objects."""

    decides_family = False

    def __init__(self, max_problems: int, max_line_bytes: int) -> None:
        super().__init__(None, None, max_problems, max_line_bytes)

    def _accept(self, number: int, example: dict[str, Any], size: int) -> None:
        issues = [
            Issue(
                f"invalid_{key}",
                f"'{key}' must be a JSON object (the row's {what}); got {json_kind(example[key])}",
            )
            for key, what in (("item", "fields templates read as {{item.*}}"), ("sample", "ready model output"))
            if key in example and not isinstance(example[key], dict)
        ]
        if issues:
            self._report(number, issues)
            return
        self.examples += 1


def _family_format(line: bytes | int) -> DatasetFormat | None:
    """Chat or reinforcement, when ``line`` is a JSON object with ``messages`` (else ``None``: not a vote)."""
    if isinstance(line, int) or b"messages" not in line:
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    found = detect_format(value) if isinstance(value, dict) else None
    return found if found in (DatasetFormat.CHAT, DatasetFormat.REINFORCEMENT) else None


_BINARY_MESSAGE = "this line contains NUL (0x00) bytes, so it is binary data, not JSON text"


def _chat_tools(example: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The example's tools for the chat template; legacy ``functions`` are shown to it as tools."""
    if example.get("tools"):
        tools: list[dict[str, Any]] = example["tools"]
        return tools
    if example.get("functions"):
        return [{"type": "function", "function": function} for function in example["functions"]]
    return None


def _calls_tools(example: dict[str, Any]) -> bool:
    messages = example["messages"] if "messages" in example else example["input"]["messages"]
    return any(m["role"] in ("tool", "function") or "tool_calls" in m or "function_call" in m for m in messages)


def _preference_chats(example: dict[str, Any]) -> list[Chat]:
    """The preferred and the rejected chat of a preference example, in that order."""
    prompt = example["input"]
    # Assistant turns inside the prompt are context: only the preferred output is trained on.
    context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in prompt["messages"]]
    tools = prompt.get("tools") or None
    return [
        (context + output_of(example, "preferred_output"), tools),
        (context + output_of(example, "non_preferred_output"), tools),
    ]


def _encodable(value: Any) -> bool:
    """Whether every string in the value can be written as UTF-8 (a lone ``\\ud83d`` escape cannot)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hint(text: str) -> str:
    start = text.lstrip()[:_HINT_CHARS]
    return f"'{start}...'" if len(text.lstrip()) > _HINT_CHARS else f"'{start}'"
