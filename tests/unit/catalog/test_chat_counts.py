"""PieceCounter counts rendered chats exactly as the offsets of the full encoding do, and only takes
tokenizers whose pieces between added tokens are encoded independently.

Run: .venv/bin/pytest tests/unit/catalog/test_chat_counts.py -q  (prepares SmolLM2's tokenizer once, ~6 s)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers

from tunery.catalog import ChatTokenizer
from tunery.catalog.chat_counts import PieceCounter
from tunery.testing.tiny_model import SMOLLM2_CHAT_TEMPLATE

PIECES = ["\n", "\n\n", " ", "A", "Paris", "É", "e\u0301", "🙂", "<|im_end|>", "<|im_start|>", "東京", ".", "1234"]


def random_chats(seed: int, count: int) -> list[list[dict[str, Any]]]:
    """Chats whose contents mix whitespace, unicode and special-token text, to hit every edge of a span."""
    rng = random.Random(seed)
    chats = []
    for _ in range(count):
        messages: list[dict[str, Any]] = []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": "".join(rng.choices(PIECES, k=rng.randint(1, 6)))})
            reply = {"role": "assistant", "content": "".join(rng.choices(PIECES, k=rng.randint(1, 6)))}
            messages.append(reply | {"weight": 0} if rng.random() < 0.2 else reply)
        chats.append(messages)
    return chats


def variant(tokenizer_dir: Path, change: str) -> ChatTokenizer:
    backend = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    if change == "nfc":
        backend.normalizer = normalizers.NFC()
    elif change == "prefix-space":
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    return ChatTokenizer(
        backend,
        name=change,
        context_length=8192,
        chat_template=SMOLLM2_CHAT_TEMPLATE,
        special_tokens={"eos_token": "<|im_end|>"},
    )


@pytest.mark.parametrize("change", ["as-is", "nfc", "prefix-space"])
def test_piece_counts_equal_the_offset_counts(tokenizer_dir: Path, change: str) -> None:
    tokenizer = variant(tokenizer_dir, change)
    counter = PieceCounter.for_tokenizer(Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")))
    assert counter is not None
    chats = random_chats(seed=len(change), count=300)

    counted = tokenizer.count_chat_batch([(messages, None) for messages in chats])

    for messages, count in zip(chats, counted, strict=True):
        encoded = tokenizer.encode_chat(messages)
        assert count == (len(encoded.input_ids), encoded.trainable_count), messages


def test_a_span_starting_inside_a_token_is_left_to_the_offsets(smollm2_tokenizer_dir: Path) -> None:
    tokenizer = ChatTokenizer.from_dir(smollm2_tokenizer_dir)
    counter = PieceCounter.for_tokenizer(Tokenizer.from_file(str(smollm2_tokenizer_dir / "tokenizer.json")))
    assert counter is not None
    # "assistant\n" + "\n\nHi": SmolLM2 merges the header's "\n" with the content's into one token.
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "\n\nHi"}]
    text = tokenizer.render(messages)
    header = "<|im_start|>assistant\n"
    span = (text.index(header) + len(header), text.rindex("<|im_end|>") + len("<|im_end|>"))

    assert counter.count([(text, [span])]) == [None]
    encoded = tokenizer.encode_chat(messages)
    assert tokenizer.count_chat_batch([(messages, None)]) == [(len(encoded.input_ids), encoded.trainable_count)]


def _tiny_bpe() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    tokenizer.add_special_tokens(["<s>"])
    return tokenizer


def test_only_tokenizers_that_encode_pieces_independently_are_taken() -> None:
    assert PieceCounter.for_tokenizer(_tiny_bpe()) is not None

    metaspace = _tiny_bpe()
    metaspace.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")  # only the first piece gets "▁"
    stripping = _tiny_bpe()
    stripping.add_special_tokens([AddedToken("</s>", lstrip=True)])  # eats the whitespace before it
    dropout = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[], dropout=0.1))  # random encodings
    for tokenizer in (metaspace, stripping, dropout):
        assert PieceCounter.for_tokenizer(tokenizer) is None
