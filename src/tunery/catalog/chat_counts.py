"""Count the tokens of rendered chats fast: encode the pieces between added tokens once each, without offsets.

``tokenizers`` cuts a text at its added tokens (``<|im_start|>``, ``<|im_end|>``, ...) before anything else
and encodes the pieces in between independently. So a chat's token count is one per added token plus the
count of each piece, and a trained span that starts inside a piece (after a role header such as
``assistant\\n``) holds that piece's tokens minus the header's, provided the piece's ids start with the
header's ids (then no token crosses the span's start). ``PieceCounter`` cuts the rendered chats itself,
encodes each distinct piece of a batch once with ``encode_batch_fast`` (no offsets: about a fifth less
work, and a system prompt repeated on every line is encoded once per batch), and adds the counts up.

It only takes tokenizers whose configuration makes the pieces independent (``for_tokenizer`` returns
``None`` for the others), and it answers ``None`` for a chat it cannot count exactly (a span edge inside a
piece it cannot split); ``ChatTokenizer`` counts those from token offsets. Rendering and the spans are
``ChatTokenizer``'s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Encoding, Tokenizer

Span = tuple[int, int]
Rendered = tuple[str, list[Span]]  # a rendered chat and its trained character spans

# Pipeline parts that treat each piece alone, whatever comes before it (Metaspace's "first" prepend does not).
_PIECEWISE_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD", "Lowercase"})
_PIECEWISE_PRE_TOKENIZERS = frozenset(
    {"ByteLevel", "Split", "Digits", "Punctuation", "Whitespace", "WhitespaceSplit", "BertPreTokenizer"}
)


# (start, end, text) of a piece of a rendered chat; text is None for an added token (one token).
_Piece = tuple[int, int, str | None]


@dataclass(frozen=True, slots=True)
class CountPlan:
    """Rendered chats cut into pieces, and the distinct pieces to encode (``PieceCounter.plan``)."""

    rendered: Sequence[Rendered]
    pieces: list[list[_Piece]]
    distinct: list[str]


class PieceCounter:
    """Counts rendered chats piece by piece, exactly as ``ChatTokenizer.encode_chat`` tokenizes and marks them.

    Thread-safe: it keeps no state between calls.
    """

    def __init__(self, tokenizer: Tokenizer, added_tokens: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        # Longest first, so that the regex takes the leftmost-longest added token, as tokenizers does.
        alternatives = "|".join(re.escape(token) for token in sorted(added_tokens, key=len, reverse=True))
        self._cut = re.compile(f"({alternatives})") if alternatives else None

    @classmethod
    def for_tokenizer(cls, tokenizer: Tokenizer) -> PieceCounter | None:
        """A counter for this tokenizer, or ``None`` when its pieces may depend on each other."""
        added = tokenizer.get_added_tokens_decoder().values()
        if getattr(tokenizer.model, "dropout", None):  # BPE dropout: encodings are random
            return None
        if any(t.normalized or t.lstrip or t.rstrip or t.single_word for t in added):
            return None
        parts = (tokenizer.normalizer, tokenizer.pre_tokenizer, tokenizer.post_processor)
        normalizer, pre_tokenizer, post_processor = (
            None if part is None else json.loads(part.__getstate__()) for part in parts
        )
        if not (
            _all_of(normalizer, "normalizers", _PIECEWISE_NORMALIZERS)
            and _all_of(pre_tokenizer, "pretokenizers", _PIECEWISE_PRE_TOKENIZERS)
            and _post_processor_keeps_offsets(post_processor)
        ):
            return None
        return cls(tokenizer, [t.content for t in added])

    def count(self, rendered: Sequence[Rendered]) -> list[tuple[int, int] | None]:
        """(all tokens, trainable tokens) of each rendered chat, or ``None`` where it cannot say exactly."""
        plan = self.plan(rendered)
        return self.counts(plan, self.encode(plan))

    def plan(self, rendered: Sequence[Rendered]) -> CountPlan:
        """Cut the chats at their added tokens (Python, under the GIL)."""
        pieces = [self._pieces(text) for text, _ in rendered]
        distinct = list(dict.fromkeys(text for chat in pieces for _, _, text in chat if text is not None))
        return CountPlan(rendered, pieces, distinct)

    def encode(self, plan: CountPlan) -> list[Encoding]:
        """Encode the distinct pieces (Rust, without the GIL: run it on another thread to overlap)."""
        return list(self._tokenizer.encode_batch_fast(plan.distinct, add_special_tokens=False))

    def counts(self, plan: CountPlan, encodings: list[Encoding]) -> list[tuple[int, int] | None]:
        """Add the pieces' counts up per chat and per trained span."""
        encoded = dict(zip(plan.distinct, encodings, strict=True))
        headers: dict[str, list[int]] = {}
        return [
            self._count(pieces, spans, encoded, headers)
            for pieces, (_, spans) in zip(plan.pieces, plan.rendered, strict=True)
        ]

    def _pieces(self, text: str) -> list[_Piece]:
        parts = self._cut.split(text) if self._cut is not None else [text]
        pieces: list[_Piece] = []
        start = 0
        for index, part in enumerate(parts):  # odd indices are the added tokens the regex captured
            if part:
                pieces.append((start, start + len(part), None if index % 2 else part))
            start += len(part)
        return pieces

    def _count(
        self, pieces: list[_Piece], spans: list[Span], encoded: dict[str, Encoding], headers: dict[str, list[int]]
    ) -> tuple[int, int] | None:
        sizes = [1 if text is None else len(encoded[text]) for _, _, text in pieces]
        trainable = 0
        for start, end in spans:
            for (piece_start, piece_end, text), size in zip(pieces, sizes, strict=True):
                if piece_end <= start or piece_start >= end:
                    continue
                if start <= piece_start and piece_end <= end:
                    trainable += size
                elif text is not None and piece_start < start and piece_end <= end:
                    header = text[: start - piece_start]
                    if header not in headers:
                        headers[header] = self._tokenizer.encode(header, add_special_tokens=False).ids
                    header_ids = headers[header]
                    if encoded[text].ids[: len(header_ids)] != header_ids:
                        return None  # a token crosses the span's start
                    trainable += size - len(header_ids)
                else:
                    return None  # the span ends inside a piece, or cuts an added token
        return sum(sizes), trainable


def _all_of(config: dict[str, Any] | None, children: str, allowed: frozenset[str]) -> bool:
    """Whether a normalizer / pre-tokenizer config (maybe a ``Sequence``) is made of allowed types only."""
    if config is None:
        return True
    if config.get("type") == "Sequence":
        return all(_all_of(child, children, allowed) for child in config.get(children, []))
    return config.get("type") in allowed


def _post_processor_keeps_offsets(config: dict[str, Any] | None) -> bool:
    """Post-processors add nothing without special tokens; a trimming ``ByteLevel`` one moves offsets."""
    if config is None:
        return True
    kind = config.get("type")
    if kind == "Sequence":
        return all(_post_processor_keeps_offsets(child) for child in config.get("processors", []))
    return kind == "TemplateProcessing" or (kind == "ByteLevel" and not config.get("trim_offsets", True))
