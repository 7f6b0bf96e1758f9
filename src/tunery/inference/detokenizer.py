"""Turning one request's generated token ids into streamed text: incremental decoding, then stop strings.

``IncrementalDetokenizer`` yields the new text of each token. Decoding tokens one at a time is wrong for
byte-level vocabularies (a character's UTF-8 bytes can be split over several tokens) and for SentencePiece
ones (a token's leading space depends on its neighbours), so it decodes a short window of recent tokens
and emits only text that is complete: nothing while the window ends in half a character (U+FFFD). The window
starts inside the prompt, so the first token's spacing is decided as the full decode would.

``StopStrings`` holds back text that could be the start of a stop string, and cuts the output before the
first stop string found (the stop string itself is never emitted, as OpenAI does). Neither class knows about
models or batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

# Prompt tokens the decoding window starts with, so the first generated token gets its spacing from context.
_PROMPT_CONTEXT = 4
_INCOMPLETE = "\ufffd"


class IncrementalDetokenizer:
    """New text per generated token, for ``decode(ids) -> str`` (special tokens already skipped by it)."""

    def __init__(self, decode: Callable[[list[int]], str], prompt_ids: Sequence[int]) -> None:
        self._decode = decode
        self._ids = list(prompt_ids[-_PROMPT_CONTEXT:])
        self._prefix_start = 0  # the window decoded as "what was already emitted" starts here...
        self._read_start = len(self._ids)  # ...and ends here; tokens after it have not been emitted yet

    def push(self, token_id: int) -> str:
        """Add a generated token; return the text that became complete (often all of it, maybe '')."""
        self._ids.append(token_id)
        prefix = self._decode(self._ids[self._prefix_start : self._read_start])
        text = self._decode(self._ids[self._prefix_start :])
        if len(text) > len(prefix) and not text.endswith(_INCOMPLETE):
            self._prefix_start, self._read_start = self._read_start, len(self._ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Text still held back at the end of generation (an incomplete character comes out as U+FFFD)."""
        prefix = self._decode(self._ids[self._prefix_start : self._read_start])
        text = self._decode(self._ids[self._prefix_start :])
        self._prefix_start = self._read_start = len(self._ids)
        return text[len(prefix) :] if len(text) > len(prefix) else ""


class StopStrings:
    """Filters streamed text: ``push`` returns what is safe to emit and whether a stop string was reached."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""  # received, not yet emitted: it may be the start of a stop string
        self.stopped = False

    def push(self, text: str) -> str:
        """Add decoded text; return the part that can be emitted now. After a stop string, returns ''."""
        if self.stopped:
            return ""
        pending = self._pending + text
        if not self._stops:
            return pending
        found = [i for i in (pending.find(stop) for stop in self._stops) if i >= 0]
        if found:
            self.stopped = True
            self._pending = ""
            return pending[: min(found)]
        keep = self._partial_match(pending)
        self._pending = pending[len(pending) - keep :] if keep else ""
        return pending[: len(pending) - keep]

    def flush(self) -> str:
        """At the end of generation: the held-back text (it did not grow into a stop string)."""
        pending, self._pending = self._pending, ""
        return "" if self.stopped else pending

    def _partial_match(self, text: str) -> int:
        """Length of the longest end of ``text`` that is the beginning of some stop string."""
        longest = min(max(len(s) for s in self._stops) - 1, len(text))
        for size in range(longest, 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0
